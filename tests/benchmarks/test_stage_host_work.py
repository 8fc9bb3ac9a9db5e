"""``benchmarks/stage_host_work.py`` on a few questions: the generations stage with the echo
backend, its seconds split into echo's own and the stage's host work."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_host_work_is_the_stage_less_the_backend(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import stage_host_work

    stage_host_work.main(["--questions", "12", "--words", "30", "--chunk-size", "5", "--out", str(tmp_path)])
    got = json.loads((tmp_path / "host_work.json").read_text())
    assert got["questions"] == 12 and got["generations"] == 12 * 21  # y* + 10 + 10 each
    calls = got["call_seconds"]
    assert min(calls[k] for k in ("reference", "with_passage", "without_passage")) > 0, calls
    assert calls["reference+with_passage"] == 0  # echo answers each parameter set alone
    assert 0 < got["echo_s"] <= sum(calls.values()) + 0.01 <= got["stage_s"] + 0.02
    assert abs(got["host_work_s"] - (got["stage_s"] - got["echo_s"])) <= 0.011
    lines = (tmp_path / "run" / "generations.jsonl").read_text().splitlines()
    assert len(lines) == 12 and len(json.loads(lines[0])["with_passage"]) == 10
