"""Tokenising the NLI scorers' pairs: the tokenizer's own pair call against ``_pairs.PairEncoder``
(each distinct text once), side by side in one run, on the CPU (issue 19, run 21's scores stage).

Two workloads of ``selfcheck-nli`` pairs (each reference sentence x 20 samples), tokenised for
the DeBERTa-v3 NLI tokenizer at 512 tokens:

* ``paper-scale``: what benchmarks/paper_scale.py scores: references and samples of 384 random
  token ids of the 32k-id tokenizer, decoded (random-weight models never stop; ~2,500 characters);
* ``english``: Wikipedia leads as references, samples of 60 words of other leads (answers of
  the real SmolLM2 are about this long).

Each method runs with the tokenizers library's thread pool on and off (TOKENIZERS_PARALLELISM,
one child process each), medians of ``--repeats``; the ids are checked equal. Writes
``nli_tokenize.json`` to ``--out``.

    python benchmarks/nli_tokenize.py --out runs/nli-tokenize    # assets: prepare_bench_assets.py
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
ASSETS = HERE.parent / ".assets" / "bench"


def workloads(args: argparse.Namespace) -> dict[str, list[tuple[str, str]]]:
    """The two pair lists (same seed in every process)."""
    from transformers import AutoTokenizer

    from selflearn.builtin.scorers.nli import sentence_grid
    from selflearn.core.protocols import ScoreItem

    def grid(reference: str, samples: list[str]) -> list[tuple[str, str]]:
        """The (sentence, sample) pairs selfcheck-nli classifies for one item (its own grid)."""
        ((sentences, kept),) = sentence_grid([ScoreItem(reference=reference, samples=samples)])
        return [(s, x) for x in kept if x for s in sentences]

    rng = random.Random(0)
    lm = AutoTokenizer.from_pretrained(args.lm_tokenizer)
    vocab = len(lm)

    def noise() -> str:
        return str(lm.decode([rng.randrange(vocab) for _ in range(384)], skip_special_tokens=True))

    leads = json.loads(Path(args.nli_assets, "texts.json").read_text())
    out: dict[str, list[tuple[str, str]]] = {"paper-scale": [], "english": []}
    for q in range(args.questions):
        samples = [noise() for _ in range(20)]
        out["paper-scale"] += grid(noise(), samples)
        english = [" ".join(rng.choice(leads).split()[:60]) for _ in range(20)]
        out["english"] += grid(leads[q % len(leads)], english)
    return out


def child(args: argparse.Namespace) -> dict[str, Any]:
    """This process's medians (its TOKENIZERS_PARALLELISM is the parent's choice)."""
    from transformers import AutoTokenizer

    from selflearn.builtin.scorers._pairs import PairEncoder

    tok = AutoTokenizer.from_pretrained(Path(args.nli_assets, "tokenizer"))
    encoder = PairEncoder.of(tok, 512)
    assert encoder is not None
    result: dict[str, Any] = {}
    for name, pairs in workloads(args).items():
        def call(pairs: list[tuple[str, str]] = pairs) -> Any:
            enc = tok([p for p, _ in pairs], [h for _, h in pairs], truncation=True, max_length=512,
                      return_token_type_ids=True, return_attention_mask=False)
            return enc["input_ids"], enc["token_type_ids"]

        def once(pairs: list[tuple[str, str]] = pairs) -> Any:
            return encoder.encode(pairs, with_types=True)

        row: dict[str, Any] = {"pairs": len(pairs), "distinct_texts": len({t for p in pairs for t in p})}
        outputs = []
        for label, fn in (("tokenizer_call", call), ("each_text_once", once)):
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                got = fn()
                times.append(time.perf_counter() - t0)
            row[label] = {"pairs_per_s": round(len(pairs) / statistics.median(times)), "runs_s": [round(t, 3) for t in times]}
            outputs.append(got)
        row["equal"] = outputs[0] == outputs[1]
        row["speed_up"] = round(row["each_text_once"]["pairs_per_s"] / row["tokenizer_call"]["pairs_per_s"], 2)
        result[name] = row
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/nli-tokenize")
    ap.add_argument("--nli-assets", default=str(ASSETS / "bench_nli"))
    ap.add_argument("--lm-tokenizer", default=str(ASSETS / "perf" / "tok32k"))
    ap.add_argument("--questions", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    report: dict[str, Any] = {"cpus": os.cpu_count(), "questions": args.questions, "repeats": args.repeats}
    for parallel in ("true", "false"):
        cmd = [sys.executable, __file__, "--child", "--nli-assets", args.nli_assets, "--lm-tokenizer",
               args.lm_tokenizer, "--questions", str(args.questions), "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, env={**os.environ, "TOKENIZERS_PARALLELISM": parallel}, capture_output=True,
                              text=True, check=True)
        report[f"parallelism_{parallel}"] = json.loads(done.stdout.strip().splitlines()[-1])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "nli_tokenize.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
