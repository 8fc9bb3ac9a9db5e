"""``benchmarks/run_gpu.py --smoke``: the whole benchmark on tiny models on the CPU, so that
the script the GPU run depends on cannot rot (every section runs, JSON and table are written,
and greedy decoding of the ``shared`` decoder equals ``generate`` token for token in float32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_gpu.py"), "--smoke", "--out", str(out),
         "--assets", str(tmp_path / "none"), "--nli-assets", str(tmp_path / "none"), "--nli-compile"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "bench.json").read_text())
    assert "errors" not in result, result.get("errors")
    row = result["generation"]["tiny"]["8 tokens"]
    assert result["generation"]["tiny"]["decoder"] == "SharedPrefixDecoder"
    for key in ("hf shared, 4 seqs", "eager generate"):
        assert row[key]["tokens_per_s"] > 0 and row[key]["runs"]
    greedy = result["greedy_equality"]["tiny float32"]
    assert greedy["identical"] == greedy["prompts"] == 4
    nli = result["nli"]["~128-token pairs"]
    assert nli["pairs"] == nli["computed"] > 0 and nli["scorer_pairs_per_s"] > 0
    for length in (16, 32):  # the bare forward, eager and under torch.compile (--nli-compile)
        assert result["nli"][f"bare, every pair {length} tokens"] > 0
        assert result["nli"][f"bare compiled, every pair {length} tokens"] > 0
    assert result["dpo"]["median_step_s"] > 0 and result["dpo"]["steps"] == 3
    table = (out / "table.md").read_text()
    assert "greedy == generate, tiny float32 | 4/4 identical" in table
    assert table.strip() in proc.stdout


def test_the_paper_scale_estimate_from_recorded_runs(tmp_path: Path) -> None:
    """``--sections '' --merge GEN NLI``: the estimate of docs/performance.md from the recorded
    JSON of runs 14 (generation) and 12 (NLI), without running anything."""
    results = ROOT / "benchmarks" / "results"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_gpu.py"), "--sections", "", "--out", str(tmp_path),
         "--merge", str(results / "h100-run14-gen.json"), str(results / "h100-run12-nli-dpo-greedy.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    est = json.loads((tmp_path / "bench.json").read_text())["estimate_paper_scale_1.1b"]
    # 46.6 M tokens: 5,780 x 20 x 384 sampled at the 2,560-row rate, 5,780 x 384 greedy
    assert est["generated_tokens"] == 5780 * 21 * 384
    gen = 5780 * 20 * 384 / 129289.2 + 5780 * 384 / 60372.7
    assert abs(est["generation_s"] - gen) < 0.1
    nli = 5780 * 2 * 10 * 3 / 1628.2  # the scorer's rate of run 12 on ~128-token pairs
    assert est["total_minutes, NLI ~128-token pairs"] == round((gen + nli) / 60, 1) == 9.9
