"""``benchmarks/paper_scale.py --smoke`` on the CPU: the paper-scale data stage (questions ->
generations -> NLI scores) runs as a pipeline run, every question answered and scored once, and
the same command again resumes (runs nothing) without losing the first invocation's figure."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "paper_scale.py"), "--smoke", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_paper_scale_smoke_runs_and_resumes(tmp_path: Path) -> None:
    """The generations in one invocation and the scores in the next (two 10-minute calls on the
    GPU machine) make one whole figure; a third invocation runs nothing and keeps it."""
    out = tmp_path / "ps"
    first = _run(out, "--until", "generations", "--mix-greedy", "off")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    result = json.loads((out / "paper_scale.json").read_text())
    assert result["measured_in"] == "incomplete: scores not finished yet"
    second = _run(out, "--mix-greedy", "off")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    result = json.loads((out / "paper_scale.json").read_text())
    gen, this = result["invocations"]
    rows = this["rows"]  # the questions stage writes a few more than are answered (see paper_shape)
    assert rows["generations"] == rows["scores"] == 6 and rows["questions"] >= 6, rows
    assert set(gen["ran_s"]) == {"generations"} and set(this["ran_s"]) == {"scores"}
    assert gen["generations_made"] == {"backend_generations": 30, "cached_generations": 0}  # 6 x (1 + 2 + 2)
    # where the generations' time went: every call kind ran, inside the stage's seconds
    calls = gen["call_seconds"]
    assert min(calls[k] for k in ("reference", "with_passage", "without_passage")) > 0, calls
    assert calls["reference+with_passage"] == 0, calls
    assert sum(calls.values()) <= gen["ran_s"]["generations"] + 0.1
    # the scores' work is counted before they run and equals what the NLI engine computed
    assert this["nli_pairs"] >= this["nli_pairs_computed"] > 0, this
    assert result["measured_in"].startswith("whole")
    minutes = result["data_stage_minutes"]
    assert minutes == round((gen["ran_s"]["generations"] + this["ran_s"]["scores"]) / 60, 2)
    scores = [json.loads(line) for line in (out / "run" / "scores.jsonl").read_text().splitlines()]
    assert all(0.0 <= s["s_k"] <= 1.0 for s in scores), scores[0]
    third = _run(out, "--mix-greedy", "off")
    assert third.returncode == 0, third.stderr[-3000:]
    again = json.loads((out / "paper_scale.json").read_text())
    assert len(again["invocations"]) == 3 and not set(again["invocations"][2]["ran_s"]) & {"generations", "scores"}
    assert again["data_stage_minutes"] == minutes  # nothing re-ran, the figure stays


def test_mix_greedy_asks_for_y_star_and_y_c_together(tmp_path: Path) -> None:
    """By default ("auto": the CPU's loop decoder mixes)."""
    done = _run(tmp_path / "ps", "--until", "generations")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    gen = json.loads((tmp_path / "ps" / "paper_scale.json").read_text())["invocations"][0]
    calls = gen["call_seconds"]
    assert calls["reference+with_passage"] > 0 and calls["reference"] == calls["with_passage"] == 0, calls
    assert gen["generations_made"] == {"backend_generations": 30, "cached_generations": 0}
    config = json.loads((tmp_path / "ps" / "run" / "manifest.json").read_text())["stages"]["generations"]["config"]
    assert "mix_greedy" in json.dumps(config)


def test_interrupted_or_split_invocations_are_bounds() -> None:
    """A stage that ran after an invocation killed at a call's limit covers only the work left
    (lower bound); a stage split over complete invocations pays a start-up in each (upper)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paper_scale

    killed = {"started": "t0"}
    done = {"started": "t1", "ran_s": {"generations": 60.0, "scores": 30.0}}
    assert paper_scale.figure([done])["measured_in"].startswith("whole")
    lower = paper_scale.figure([killed, done])
    assert lower["measured_in"].startswith("a lower bound") and lower["data_stage_minutes"] == 1.5
    half = {"started": "t0", "ran_s": {"generations": 40.0}}
    upper = paper_scale.figure([half, done])
    assert upper["measured_in"].startswith("an upper bound: generations") and upper["data_stage_minutes"] == 2.17
    assert paper_scale.figure([done, killed, {"started": "t2", "ran_s": {}}])["measured_in"].startswith("whole")
    cut = {"started": "t0", "ran_s": {"generations": 40.0}, "cut": {"stage": "scores", "seconds": 20.0}}
    after = {"started": "t1", "ran_s": {"scores": 10.0}}
    assert paper_scale.figure([cut])["measured_in"] == "incomplete: scores not finished yet"
    both = paper_scale.figure([cut, after])
    assert both["measured_in"].startswith("an upper bound: scores") and both["data_stage_minutes"] == 1.17


class _CutInScores:
    """A pipeline whose generations run and whose scores stage is cut by SIGTERM (as
    ``timeout`` cuts a call) after it finished one shard and cached one NLI pair."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir

    def run(self, until: str) -> list[SimpleNamespace]:
        if until == "generations":
            return [SimpleNamespace(name="generations", status="ran", seconds=2.0,
                                    summary={"backend_generations": 5, "cached_generations": 0})]
        cache = self.run_dir / "cache"
        cache.mkdir()
        (cache / "shards.jsonl").write_text('{"k": "a", "v": []}\n')
        (cache / "nli.jsonl").write_text('{"k": "b", "v": [0.5, 0.5]}\n')
        time.sleep(0.2)  # the stage's seconds so far
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(30)  # the handler ends this
        raise AssertionError("SIGTERM did not cut the stage")


def test_sigterm_records_the_cut_stage_and_restores_the_handler(tmp_path: Path) -> None:
    """SIGTERM while the scores run: the invocation records the stage's seconds so far and its
    progress (shards and NLI pairs cached, pairs to do) instead of dying unrecorded, and the
    figure counts them (an upper bound once a later invocation finishes the stage)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import paper_scale

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    row = {"reference": {"text": "One. Two."}, "with_passage": [{"text": "a"}, {"text": " "}],
           "without_passage": [{"text": "b"}]}
    (run_dir / "generations.jsonl").write_text(json.dumps(row) + "\n")
    paper_scale.record(tmp_path, {"started": "t0"})
    before = signal.getsignal(signal.SIGTERM)
    entry = paper_scale.run_stages(_CutInScores(run_dir), "scores", run_dir)
    assert signal.getsignal(signal.SIGTERM) is before
    assert entry["ran_s"] == {"generations": 2.0} and entry["nli_pairs"] == 4  # 2 sentences x 2 samples
    cut = entry["cut"]
    assert cut["stage"] == "scores" and 0 < cut["seconds"] < 30, cut
    assert cut["shards_cached"] == 1 and cut["nli_pairs_cached"] == 1
    result = paper_scale.record(tmp_path, entry)
    assert result["measured_in"] == "incomplete: scores not finished yet"
    assert result["stages"]["scores"]["seconds"] == cut["seconds"]
