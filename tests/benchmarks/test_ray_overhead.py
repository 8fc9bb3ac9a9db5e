"""``benchmarks/ray_overhead.py --gpu`` on the CPU with a tiny model: the script the GPU
measurement depends on runs both engines, each arm in a new process (``--fresh``), and a second
invocation with ``--arms`` adds to the results of the first (a long comparison split over calls)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(out: Path, model: str, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    cmd = [sys.executable, str(ROOT / "benchmarks" / "ray_overhead.py"), "--gpu", "--model", model,
           "--questions", "4", "--k", "2", "--max-new-tokens", "6", "--batch-size", "8", "--fresh",
           "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=400, cwd=ROOT)


@pytest.mark.slow
def test_fresh_arms_split_over_two_invocations(tiny_llama: str, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    out = tmp_path / "bench"
    first = _run(out, tiny_llama, "--arms", "local")
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    report = json.loads((out / "ray.json").read_text())
    assert set(report["summary"]) == {"local"} and "ray_overhead_percent" not in report
    second = _run(out, tiny_llama, "--arms", "ray-1")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    report = json.loads((out / "ray.json").read_text())
    assert report["fresh_processes"] is True and set(report["summary"]) == {"local", "ray-1"}
    ray = report["runs"]["ray-1"][0]
    assert ray["execution"] == {"engine": "ray", "workers": 1}
    assert ray["outputs"] == {"questions.jsonl": True, "generations.jsonl": True}  # equal to local's, byte for byte
    assert set(ray["per_worker"]["generations"]) != {"local"}  # shards ran on a Ray worker
    assert isinstance(report["ray_overhead_percent"]["ray-1"], float)
    assert "| ray-1 |" in second.stdout and "Ray's overhead" in second.stdout


def test_short_prepared_run_stops_the_benchmark(tmp_path: Path) -> None:
    """A prepared run with fewer questions than --questions is an error, not a smaller stage
    timed as if it were the asked one (the three topics used before gave 2,472 of 5,780)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import ray_overhead

    (tmp_path / "questions.jsonl").write_text('{"id": 1}\n{"id": 2}\n')
    ray_overhead.check_questions(tmp_path, 2)
    with pytest.raises(SystemExit, match="holds 2 questions, fewer than the 3"):
        ray_overhead.check_questions(tmp_path, 3)
    config = ray_overhead.paper_shape(str(tmp_path / "run"), None, 5780)
    assert config["source"]["options"]["categories"] is None  # every topic: three hold too few leads
    assert config["generations"]["limit"] == 5780 and config["documents"]["limit"] > 5780
