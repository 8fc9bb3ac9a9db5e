"""``benchmarks/run_gpu.py --smoke``: the whole benchmark on tiny models on the CPU, so that
the script the GPU run depends on cannot rot (every section runs, JSON and table are written,
and greedy decoding of the ``shared`` decoder equals ``generate`` token for token in float32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_benchmark_smoke_run(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run_gpu.py"), "--smoke", "--out", str(out),
         "--assets", str(tmp_path / "none"), "--nli-assets", str(tmp_path / "none")],
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
    assert result["dpo"]["median_step_s"] > 0 and result["dpo"]["steps"] == 3
    table = (out / "table.md").read_text()
    assert "greedy == generate, tiny float32 | 4/4 identical" in table
    assert table.strip() in proc.stdout
