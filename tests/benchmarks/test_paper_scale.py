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


def _run(out: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "paper_scale.py"), "--smoke", "--out", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def test_paper_scale_smoke_runs_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "ps"
    first = _run(out)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    result = json.loads((out / "paper_scale.json").read_text())
    this = result["invocations"][0]
    assert this["rows"] == {"questions": 6, "generations": 6, "scores": 6}
    assert {"generations", "scores"} <= set(this["ran_s"])
    assert result["measured_in"].startswith("one invocation")
    minutes = result["data_stage_minutes"]
    assert minutes == round((this["ran_s"]["generations"] + this["ran_s"]["scores"]) / 60, 2)
    scores = [json.loads(line) for line in (out / "run" / "scores.jsonl").read_text().splitlines()]
    assert all(0.0 <= s["s_k"] <= 1.0 for s in scores), scores[0]
    second = _run(out)
    assert second.returncode == 0, second.stderr[-3000:]
    again = json.loads((out / "paper_scale.json").read_text())
    assert len(again["invocations"]) == 2 and "generations" not in again["invocations"][1]["ran_s"]
    assert again["data_stage_minutes"] == minutes  # nothing re-ran, the figure stays
