"""``benchmarks/paper_scale.py --smoke`` on the CPU: the paper-scale data stage (questions ->
generations -> NLI scores) runs as a pipeline run, every question answered and scored once, and
the same command again resumes (runs nothing) without losing the first invocation's figure."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    first = _run(out, "--until", "generations")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    result = json.loads((out / "paper_scale.json").read_text())
    assert result["measured_in"] == "incomplete: scores not run yet"
    second = _run(out)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    result = json.loads((out / "paper_scale.json").read_text())
    gen, this = result["invocations"]
    rows = this["rows"]  # the questions stage writes a few more than are answered (see paper_shape)
    assert rows["generations"] == rows["scores"] == 6 and rows["questions"] >= 6, rows
    assert set(gen["ran_s"]) == {"generations"} and set(this["ran_s"]) == {"scores"}
    assert gen["generations_made"] == {"backend_generations": 30, "cached_generations": 0}  # 6 x (1 + 2 + 2)
    assert result["measured_in"].startswith("whole")
    minutes = result["data_stage_minutes"]
    assert minutes == round((gen["ran_s"]["generations"] + this["ran_s"]["scores"]) / 60, 2)
    scores = [json.loads(line) for line in (out / "run" / "scores.jsonl").read_text().splitlines()]
    assert all(0.0 <= s["s_k"] <= 1.0 for s in scores), scores[0]
    third = _run(out)
    assert third.returncode == 0, third.stderr[-3000:]
    again = json.loads((out / "paper_scale.json").read_text())
    assert len(again["invocations"]) == 3 and not set(again["invocations"][2]["ran_s"]) & {"generations", "scores"}
    assert again["data_stage_minutes"] == minutes  # nothing re-ran, the figure stays


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
