"""The generations stage's own host work at the paper-scale shape, with no model (issue 19).

The stage around the backend (per-call cache keys and writes, records, ``generations.jsonl``)
with the ``echo`` backend standing in for the model: what is left of the stage's seconds beyond
its backend calls (``execution.call_seconds``), and echo's own share of those calls, is the
host work a GPU run pays on top of its decoding. Questions as ``paper_scale.py`` makes them
(template questions over real Wikipedia leads, K = 10), echo samples of ``--words`` words
(about 384 tokens at 290). Run 24's figure (docs/performance.md) came from::

    python benchmarks/stage_host_work.py --questions 1000 --out runs/host-work

Writes ``host_work.json`` to ``--out`` and prints it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import ray_overhead  # noqa: E402  (paper_shape: the paper-scale run's config)

from selflearn import Pipeline  # noqa: E402
from selflearn.builtin.backends.echo import EchoBackend, Options  # noqa: E402
from selflearn.core.config import merge  # noqa: E402


class TimedEcho(EchoBackend):
    """The echo backend, counting its own seconds (the rest of a call is the stage's cache)."""

    def __init__(self, words: int) -> None:
        super().__init__(Options(sample_words=words))
        self.own_s = 0.0

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> Any:
        t0 = time.perf_counter()
        try:
            return super().generate(prompts, params, n=n, sample_offset=sample_offset)
        finally:
            self.own_s += time.perf_counter() - t0


def measure(out: Path, questions: int, words: int, chunk_size: int) -> dict[str, Any]:
    """The questions stage once (not timed), then the generations stage with the echo backend
    in a fresh cache: its seconds, its calls' seconds, echo's own, and the host work (the
    stage's seconds less echo's)."""
    run_dir = out / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    config = merge(ray_overhead.paper_shape(str(run_dir), None, questions, chunk_size=chunk_size),
                   {"backend": {"use": "echo"}, "run_dir": str(run_dir)})
    Pipeline(config).run(until="questions")
    echo = TimedEcho(words)
    t0 = time.perf_counter()
    outcomes = Pipeline({**config, "backend": echo}).run(until="generations")
    wall = time.perf_counter() - t0
    (stage,) = [o for o in outcomes if o.name == "generations" and o.status == "ran"]
    calls = stage.summary["execution"]["call_seconds"]
    return {
        "questions": stage.summary["questions"], "generations": stage.summary["generations"],
        "sample_words": words, "chunk_size": chunk_size, "wall_s": round(wall, 2),
        "stage_s": round(stage.seconds, 2), "call_seconds": calls, "echo_s": round(echo.own_s, 2),
        "host_work_s": round(stage.seconds - echo.own_s, 2),
        "host_work_s_per_1000_questions": round(1000 * (stage.seconds - echo.own_s) / max(1, questions), 2),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/host-work")
    ap.add_argument("--questions", type=int, default=1000)
    ap.add_argument("--words", type=int, default=290, help="words per echo sample")
    ap.add_argument("--chunk-size", type=int, default=256, help="questions per generations shard")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = measure(out, args.questions, args.words, args.chunk_size)
    (out / "host_work.json").write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
