"""``benchmarks/gpu_smoke.py``, the pre-release GPU smoke test, on a tiny model on the CPU: the
script runs end to end and passes its checks (greedy == generate, sampler counters, refill ==
no refill), and its check of the GPU path fails when the GPU pieces are off (as on a CPU)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_the_smoke_script_passes_on_a_tiny_model(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": "1",
           "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--tiny", "--out", str(out),
         "--assets", str(tmp_path / "none"), "--nli-assets", str(tmp_path / "none")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SMOKE PASSED" in proc.stdout
    result = json.loads((out / "smoke.json").read_text())
    tiny = result["models"]["tiny"]
    assert result["ok"] and tiny["ok"] and result["versions"]["transformers"]
    assert tiny["greedy"] == {"prompts": 4, "identical": 4, "ok": True}
    assert tiny["sampler"]["rows"] == 80 and tiny["sampler"]["empty_rows"] == 0
    assert tiny["sampler"]["truncated_rows"] == 0 and tiny["sampler"]["path"]["decoder"] == "SharedPrefixDecoder"
    assert tiny["refill"]["identical"] == tiny["refill"]["rows"] == 8
    assert tiny["mixed"] == {"greedy_identical": 2, "sampled_identical": 8, "rows": [2, 8], "ok": True}


def test_the_gpu_path_check_fails_without_the_gpu_pieces(tiny_llama: str) -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import gpu_smoke
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    b: Any = gpu_smoke.backend(tiny_llama, "cpu", decoder="shared")
    on_cpu = gpu_smoke.check_path(b, gpu=False)
    as_gpu = gpu_smoke.check_path(b, gpu=True)
    assert on_cpu["ok"] and not as_gpu["ok"]
    assert as_gpu["fuse"] == "off" and as_gpu["cuda_graphs"] is False
