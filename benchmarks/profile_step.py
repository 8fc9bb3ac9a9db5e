"""Where a decode step of the ``shared`` decoder spends its time (GPU only).

    python benchmarks/profile_step.py [--out DIR] [--parts ...] [--assets .assets/perf] [--nli-assets .assets/bench_nli]

Times, on random-weight SmolLM2-135M- and TinyLlama-1.1B-shaped models in bfloat16, K = 10:

* whole decode runs (128 new tokens, DecodeBatch straight to the decoder: no tokenisation)
  at 640 and 2560 rows: the default (compiled fused layers, Triton attention kernel, Triton
  sampling kernel), the same with top-k candidate sampling (the previous default), and at 640
  rows the model's own modules with PyTorch's kernel and candidates; the first call (capture,
  compilation) apart;
* one replayed step graph (the forward pass plus token selection) at those sizes;
* token selection alone, captured in a CUDA graph: the Triton sampling kernel (default; its
  launch configurations, and its tokens against the full-vocabulary path's) and top-k
  candidates with and without the exact overflow slots (compiled), on flat and peaked rows;
* the relative difference between the fused and the matrix-product attention;
* ``--parts nli``: the NLI classifier (DeBERTa-v3-large shape, bfloat16) on 32 pairs of exactly
  128 and 512 tokens, eager, under ``torch.compile`` and with the fused attention kernel:
  milliseconds per forward and the kernel table of one forward (where the paper-scale scores'
  time goes, runs 21-22), each arm's probabilities against float32's, the engine's check;
* ``--parts long``: the paper-scale stage's regime (1.1B shape, 2,560 rows, 384 new tokens,
  ~320-token prompts): a whole run's tokens/s, one replayed step per attention bucket and the
  kernel tables of buckets 128 and 384 (where the stage's step time grows).

Writes ``profile.json`` to --out and prints one line per figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from functools import partial
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(__file__))

from run_gpu import SMOLLM2_135M, TINYLLAMA_1B, build_lm  # noqa: E402

OUT: dict[str, Any] = {}
OUT_FILE: list[str] = []  # profile.json's path: rewritten after every figure (a killed run keeps them)


def graph_time(fn: Any, reps: int = 20) -> float:
    """Median milliseconds of one replay of ``fn`` captured in a CUDA graph."""
    import torch

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def kernel_table(fn: Any, top: int = 14) -> dict[str, Any]:
    """Kernels of one call of ``fn`` (a graph replay) under the profiler: count, total
    microseconds, and the most expensive kernel names."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
    rows = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.device_time_total for e in rows)
    count = sum(e.count for e in rows)
    best = sorted(rows, key=lambda e: -e.device_time_total)[:top]
    return {"kernels": count, "gpu_us": round(total, 1),
            "top": [[e.key[:70], e.count, round(e.device_time_total, 1)] for e in best]}


def report(key: str, value: Any) -> None:
    OUT[key] = value
    print(key, value, flush=True)
    if OUT_FILE:
        with open(OUT_FILE[0], "w") as f:
            json.dump(OUT, f, indent=2)


def select_times(vocab: int) -> None:
    """Token selection alone (one CUDA graph per variant, ms), on flat rows (random-weight-like)
    and peaked rows (trained-model-like); and how often sampling_kernel's kernel picks the full
    path's token on the GPU."""
    import torch

    from selflearn.builtin.backends.hf.candidate_sampling import select_candidates
    from selflearn.builtin.backends.hf.sampling import SamplingConfig, select, vocab_keys
    from selflearn.builtin.backends.hf.sampling_kernel import sample, select_nucleus

    cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.9, repetition_penalty=1.1)
    greedy = SamplingConfig(greedy=True, repetition_penalty=1.1)
    for spread, rows in ((0.5, 640), (4.0, 640), (0.5, 2560)):
        base = (torch.randn(rows, vocab, device="cuda") * spread).bfloat16().float()
        state = {
            "logits": base.clone(), "seen": torch.randint(0, vocab, (rows, 320), device="cuda"),
            "keys": torch.randint(0, 2**62, (rows,), device="cuda"),
            "stats": torch.zeros(2, dtype=torch.int64, device="cuda"), "vocab": vocab_keys(vocab, "cuda"),
            "step": torch.zeros((), dtype=torch.int64, device="cuda"),
        }
        tag = f"select V={vocab} rows={rows} spread={spread}"
        fn = partial(_nucleus_once, select_nucleus, base, state, cfg)
        report(f"{tag} nucleus kernel ms", round(graph_time(fn), 3))
        if rows == 640:
            try:
                report(f"{tag} nucleus kernel, kernels", kernel_table(fn, top=6))
            except Exception as exc:  # the profiler is a nicety
                report(f"{tag} nucleus kernel, kernels", repr(exc))
            configs = {}
            for block in (1024, 2048, 4096):
                for warps in (4, 8, 16):
                    run = partial(sample, base, state["keys"], state["step"], 0.9, 1.0, block=block, num_warps=warps)
                    configs[f"block {block} warps {warps}"] = round(graph_time(run) * 1000, 1)
            report(f"{tag} nucleus kernel alone, launch configs us", configs)
            # the full path's tokens on the same scores (no penalty): identical?
            seen = torch.zeros(rows, vocab, dtype=torch.bool, device="cuda")
            plain = SamplingConfig(greedy=False, temperature=1.0, top_p=0.9)
            same = 0
            for step in range(8):
                state["step"].fill_(step)
                ref, _ = select(base.clone(), seen, state["keys"], step, plain, state["vocab"])
                got = sample(base.clone(), state["keys"], state["step"], 0.9, 1.0)
                same += int((ref == got).sum())
            report(f"{tag} nucleus kernel == full path (8 steps)", f"{same}/{8 * rows}")
        variants = (("k1024 + exact slots 1/8 (previous default)", cfg, 1024, rows // 8), ("k1024", cfg, 1024, 0),
                    ("greedy", greedy, 1 << 30, 0))
        compiled = torch.compile(select_candidates, fullgraph=False)
        for name, c, k, slots in variants:
            fn = partial(_select_once, compiled, base, state, c, k, slots)
            report(f"{tag} {name} compiled ms", round(graph_time(fn), 3))


def _select_once(select: Any, base: Any, st: dict[str, Any], cfg: Any, k: int, slots: int) -> None:
    st["logits"].copy_(base)
    select(st["logits"], st["seen"], st["keys"], st["step"], cfg, k, slots, st["stats"], st["vocab"])


def _nucleus_once(select: Any, base: Any, st: dict[str, Any], cfg: Any) -> None:
    st["logits"].copy_(base)
    select(st["logits"], st["seen"], st["keys"], st["step"], cfg)


def attention_check() -> None:
    import torch

    from selflearn.builtin.backends.hf.attention import shared_prefix_attention

    class St:
        pass

    class Mod:
        layer_idx = 0

    g, m, hkv, gq, d, w, t = 16, 10, 3, 3, 64, 192, 128
    st: Any = St()
    st.prefix_k = [torch.randn(g, hkv, w, d, device="cuda", dtype=torch.bfloat16)]
    st.prefix_v = [torch.randn(g, hkv, w, d, device="cuda", dtype=torch.bfloat16)]
    bias = torch.zeros(g, w, device="cuda")
    bias[:, :37] = float("-inf")
    gen = torch.zeros(t, device="cuda")
    gen[50:] = float("-inf")
    st.prefix_bias, st.gen_bias = bias, gen
    st.prefix_bias_h, st.gen_bias_h = bias.bfloat16(), gen.bfloat16()
    q = torch.randn(g * m, hkv * gq, 1, d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(g * m, hkv, t, d, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(g * m, hkv, t, d, device="cuda", dtype=torch.bfloat16)
    st.fused, st.triton = False, False
    ref = shared_prefix_attention(Mod(), q.float(), k.float(), v.float(), None, d**-0.5, selflearn_shared=_f32(st))[0]
    plain = shared_prefix_attention(Mod(), q, k, v, None, d**-0.5, selflearn_shared=st)[0].float()
    st.fused = True
    fused = shared_prefix_attention(Mod(), q, k, v, None, d**-0.5, selflearn_shared=st)[0].float()
    report("attention rel. error vs float32: matmul", float((plain - ref).norm() / ref.norm()))
    report("attention rel. error vs float32: fused", float((fused - ref).norm() / ref.norm()))
    # the Triton kernel for both parts (the default on CUDA), merged
    from selflearn.builtin.backends.hf.attention import fused_parts, merge_parts, prefix_queries

    st.triton = True
    q_gen = q.reshape(g * m, hkv, gq, d)
    parts = fused_parts(prefix_queries(q_gen, g), q_gen, k, v, st.prefix_k[0], st.prefix_v[0], st, d**-0.5)
    mine = merge_parts(*parts, torch.bfloat16).reshape(g * m, 1, hkv * gq, d).float()
    report("attention rel. error vs float32: triton kernel", float((mine - ref).norm() / ref.norm()))


def kernel_configs() -> None:
    """The Triton attention kernel's launch configurations against PyTorch's memory-efficient
    kernel on the decode step's shapes (each call in a CUDA graph, microseconds)."""
    import itertools

    import torch

    from selflearn.builtin.backends.hf.attention import _part
    from selflearn.builtin.backends.hf.attention_kernel import attention, default_warps

    shapes = {  # (batch, kv heads, queries, keys, head dim, per-row bias)
        "135m own tokens t=128": (640, 3, 3, 128, 64, False),
        "135m own tokens t=384": (640, 3, 3, 384, 64, False),
        "135m prefix w=256": (64, 3, 30, 256, 64, True),
        "1.1b own tokens t=128": (640, 4, 8, 128, 64, False),
        "1.1b prefix w=256": (64, 4, 80, 256, 64, True),
    }
    for label, (b, h, m, n, d, per_row) in shapes.items():
        q = torch.randn(b, h, m, d, device="cuda", dtype=torch.bfloat16)
        k = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
        v = torch.randn(b, h, n, d, device="cuda", dtype=torch.bfloat16)
        bias = torch.zeros(b, n, device="cuda") if per_row else torch.zeros(n, device="cuda")
        bias_h = (bias[:, None, None, :] if per_row else bias[None, None, None, :]).bfloat16()
        times = {"sdpa": round(graph_time(partial(_part, q, k, v, bias_h, d**-0.5)) * 1000, 1)}
        for bn, warps, stages in itertools.product((32, 64, 128), (1, 2, 4, 8), (1, 2, 3)):
            fn = partial(attention, q, k, v, bias, d**-0.5, block_n=bn, num_warps=warps, num_stages=stages)
            try:
                times[f"n{bn} w{warps} s{stages}"] = round(graph_time(fn) * 1000, 1)
            except Exception as exc:  # a configuration that does not fit (registers, shared memory)
                times[f"n{bn} w{warps} s{stages}"] = repr(exc)[:80]
        ok = {key: t for key, t in times.items() if isinstance(t, float) and key != "sdpa"}
        best = min(ok, key=ok.__getitem__)
        default = f"n64 w{default_warps(m)} s2"  # attention()'s defaults
        report(f"kernel {label} us", {"sdpa": times["sdpa"], f"default {default}": times[default],
                                      "best": [best, ok[best]], "all": times})


def host_overhead(work: str, assets: str, nli_assets: str) -> None:
    """One end-to-end ``generate`` call of the hf backend (SmolLM2-135M shape, 2,560 rows, 128
    tokens) under cProfile after a warm-up call: where the time outside the decode loop goes."""
    import cProfile
    import io
    import pstats

    import torch
    from run_gpu import prompts, texts

    from selflearn.builtin.backends.hf import HFBackend, Options
    from selflearn.core.protocols import GenerationParams

    folder = build_lm(SMOLLM2_135M, os.path.join(assets, "smollm2_tok"), os.path.join(work, "host"), "cuda")
    corpus = texts(argparse.Namespace(nli_assets=nli_assets, smoke=False))
    backend = HFBackend(Options(batch_size=2560, device="cuda", dtype="bfloat16"), folder, seed=1)
    params = GenerationParams(max_new_tokens=128, temperature=1.0, top_p=0.9, repetition_penalty=1.1)
    batch = prompts(corpus, 256)
    backend.generate(batch, params, n=10)
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    backend.generate(batch, params, n=10, sample_offset=10)
    torch.cuda.synchronize()
    prof.disable()
    report("host: end-to-end s (2560 rows x 128 tokens)", round(time.perf_counter() - t0, 3))
    for order in ("cumulative", "tottime"):
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats(order).print_stats(22)
        report(f"host: cProfile by {order}", buf.getvalue()[-6000:])


def _f32(st: Any) -> Any:
    class S:
        pass

    out: Any = S()
    out.prefix_k = [x.float() for x in st.prefix_k]
    out.prefix_v = [x.float() for x in st.prefix_v]
    out.prefix_bias, out.gen_bias, out.fused = st.prefix_bias, st.gen_bias, False
    return out


DEFAULT_VARIANTS = "compile/triton/triton,compile/triton/candidates,off/sdpa/candidates"


def decode_runs(name: str, shape: dict[str, Any], tok_dir: str, work: str,
                variants_arg: str = DEFAULT_VARIANTS, rows_arg: str = "640,2560") -> None:
    """Decode loop rates and one replayed step per (fuse, kernel, sampler) variant of
    ``variants_arg`` ("fuse/kernel/sampler,..."); at rows above 640 only the first two."""
    import torch
    from transformers import AutoModelForCausalLM

    from selflearn.builtin.backends.hf.loop_decoder import DecodeBatch
    from selflearn.builtin.backends.hf.sampling import SamplingConfig
    from selflearn.builtin.backends.hf.shared_decoder import SharedPrefixDecoder

    folder = build_lm(shape, tok_dir, os.path.join(work, name), "cuda")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
    cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.9, repetition_penalty=1.1)
    rng = random.Random(0)
    variants = [tuple(v.split("/")) for v in variants_arg.split(",")]
    for rows in (int(r) for r in rows_arg.split(",")):
        groups = rows // 10
        prompts = [[rng.randrange(10, 30000) for _ in range(rng.randrange(160, 200))] for _ in range(groups)]
        batch = DecodeBatch(prompts=prompts, rows=[g for g in range(groups) for _ in range(10)],
                            keys=[rng.randrange(2**62) for _ in range(rows)])
        for fuse, kernel, sampler in variants if rows == 640 else variants[:2]:
            dec = SharedPrefixDecoder(model, eos_ids=(2,), pad_id=2, fuse=fuse, kernel=kernel,  # type: ignore[arg-type]
                                      sampler=sampler)  # type: ignore[arg-type]
            tag = f"{name} rows={rows} fuse={fuse} kernel={kernel} sampler={sampler}"
            t0 = time.perf_counter()
            dec.run(batch, cfg, 128)
            first = time.perf_counter() - t0
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            out = dec.run(batch, cfg, 128)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            n = sum(len(o.tokens) for o in out)
            report(f"{tag} tokens/s", round(n / dt, 1))
            report(f"{tag} first call s", round(first, 2))
            st = next(iter(dec._states.values()))
            graph = st.graphs[128]

            def replay(st: Any = st, graph: Any = graph) -> None:
                with torch.inference_mode():  # every row at step 70 (rows have their own steps since refill)
                    st.step.fill_(70)
                graph.replay()

            report(f"{tag} step ms (bucket 128)", round(_cuda_ms(replay, warmup=0), 3))
            if rows == 640 and fuse != "off":
                try:
                    report(f"{tag} kernels of one step", kernel_table(replay))
                except Exception as exc:  # the profiler is a nicety: keep the timings
                    report(f"{tag} kernels of one step", repr(exc))
            del dec, st, graph
            torch.cuda.empty_cache()
    del model
    torch.cuda.empty_cache()


def long_steps(tok_dir: str, work: str, prompt_len: int = 320) -> None:
    """The paper-scale stage's regime (issue 19's fourth target): the 1.1B shape at 2,560 rows,
    K = 10, 384 new tokens, prompts of about ``prompt_len`` tokens (a passage and a question).
    A whole decode run, then one replayed step per attention bucket (every row 32 steps before
    the bucket's end) and the kernel tables of the first and last buckets: how a step's time
    grows with the generated length, and what grows."""
    import torch
    from transformers import AutoModelForCausalLM

    from selflearn.builtin.backends.hf.loop_decoder import DecodeBatch
    from selflearn.builtin.backends.hf.sampling import SamplingConfig
    from selflearn.builtin.backends.hf.shared_decoder import SharedPrefixDecoder

    folder = build_lm(TINYLLAMA_1B, tok_dir, os.path.join(work, "tinyllama-1.1b"), "cuda")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).cuda().eval()
    cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.9, repetition_penalty=1.1)
    rng = random.Random(0)
    rows, groups = 2560, 256
    prompts = [[rng.randrange(10, 30000) for _ in range(rng.randrange(prompt_len - 40, prompt_len + 40))]
               for _ in range(groups)]
    batch = DecodeBatch(prompts=prompts, rows=[g for g in range(groups) for _ in range(10)],
                        keys=[rng.randrange(2**62) for _ in range(rows)])
    dec = SharedPrefixDecoder(model, eos_ids=(2,), pad_id=2)
    tag = f"long 1.1b rows={rows} prompt~{prompt_len} tokens=384"
    t0 = time.perf_counter()
    dec.run(batch, cfg, 384)
    report(f"{tag} first call s", round(time.perf_counter() - t0, 2))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = dec.run(batch, cfg, 384)
    torch.cuda.synchronize()
    report(f"{tag} tokens/s", round(sum(len(o.tokens) for o in out) / (time.perf_counter() - t0), 1))
    st = next(iter(dec._states.values()))
    for t_eff in sorted(st.graphs):
        def replay(st: Any = st, graph: Any = st.graphs[t_eff], step: int = t_eff - 32) -> None:
            with torch.inference_mode():
                st.step.fill_(step)
            graph.replay()

        report(f"{tag} step ms (bucket {t_eff})", round(_cuda_ms(replay, warmup=0), 3))
        if t_eff in (128, max(st.graphs)):
            try:
                report(f"{tag} kernels of one step (bucket {t_eff})", kernel_table(replay, top=18))
            except Exception as exc:
                report(f"{tag} kernels of one step (bucket {t_eff})", repr(exc))
    del dec, st, model
    torch.cuda.empty_cache()


def _cuda_ms(fn: Any, reps: int = 10, warmup: int = 3) -> float:
    """Median milliseconds of ``fn`` between CUDA events, after ``warmup`` calls."""
    import torch

    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[reps // 2]


def _probs(model: Any, x: Any, m: Any) -> Any:
    import torch

    with torch.inference_mode():
        return model(input_ids=x, attention_mask=m).logits.float().softmax(-1)


def nli_forward(nli_assets: str, work: str) -> None:
    """The NLI classifier's forward at fixed shapes (32 pairs of exactly 128 and 512 tokens):
    transformers' attention eagerly, the same under ``torch.compile``, and the fused Triton
    attention kernel (the scorer's default on CUDA), with the kernels of one forward each; then
    each bfloat16 arm's probabilities against float32 transformers' on the same pairs (half of
    them right-padded), and whether the engine's first-batch check keeps the kernel."""
    import torch
    from run_gpu import DEBERTA_V3_LARGE, build_nli

    from selflearn.builtin.scorers._nli import NLIEngine

    folder = build_nli(DEBERTA_V3_LARGE, os.path.join(nli_assets, "tokenizer"), os.path.join(work, "nli"), "cuda")
    plain = NLIEngine(folder, device="cuda", attention="transformers")
    kernel = NLIEngine(folder, device="cuda", attention="triton")
    plain._load()
    kernel._load()
    arms = {"eager": plain._model, "compiled": torch.compile(plain._model, dynamic=False), "fused": kernel._model}
    for length in (128, 512):
        x = torch.randint(10, 30000, (32, length), device="cuda")
        m = torch.ones_like(x)
        for name, model in arms.items():
            ms = _cuda_ms(partial(_probs, model, x, m))
            report(f"nli {name} 32x{length} ms", round(ms, 2))
            report(f"nli {name} 32x{length} pairs/s", round(32 / ms * 1000, 1))
            try:
                report(f"nli {name} 32x{length} kernels", kernel_table(partial(_probs, model, x, m), top=18))
            except Exception as exc:
                report(f"nli {name} 32x{length} kernels", repr(exc))
    nli_numerics(folder, plain, kernel)
    nli_kernel_configs()


def nli_kernel_configs() -> None:
    """The fused attention kernel alone (DeBERTa-v3-large's heads: 16 x 64, 256 buckets over
    512 positions) at 32 x 512 and 128 x 128 pairs, for several launch configurations, each
    with the key loop's bound read at run time (the default) and, "static", fixed at compile
    time (a version per length: what the runtime bound costs, run 23)."""
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    from selflearn.builtin.scorers._deberta_attention import fused_attention, index_tables

    for rows, length in ((32, 512), (128, 128)):
        q, k, v = (torch.randn(rows, length, 16, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        c2p, p2c = (torch.randn(rows, 16, length, 512, device="cuda", dtype=torch.bfloat16) for _ in range(2))
        rel = build_relative_position(q.transpose(1, 2), k.transpose(1, 2), bucket_size=256, max_position=512)
        tables = index_tables(rel, length, 256)
        assert tables is not None
        keep = torch.ones(rows, length, dtype=torch.int32, device="cuda")
        got = {}
        configs = [(64, 64, 4, 2, False), (64, 64, 4, 3, False), (128, 64, 8, 2, False), (128, 64, 4, 2, False),
                   (64, 32, 4, 2, False), (128, 32, 4, 2, False), (32, 64, 4, 2, False), (128, 128, 8, 2, False),
                   (64, 32, 4, 2, True), (64, 64, 4, 2, True), (32, 64, 4, 2, True)]
        for bm, bn, warps, stages, static in configs:
            name = f"{bm}x{bn} w{warps} s{stages}" + (" static" if static else "")
            try:
                ms = _cuda_ms(partial(fused_attention, q, k, v, c2p, p2c, tables, keep, 0.07, block_m=bm,
                                      block_n=bn, num_warps=warps, num_stages=stages, static_bound=static))
                got[name] = round(ms, 3)
            except Exception as exc:
                got[name] = repr(exc)[:200]
        report(f"nli kernel alone {rows}x{length} ms by block_m x block_n, warps, stages", got)


def nli_numerics(folder: str, plain: Any, kernel: Any) -> None:
    """Largest probability difference of each bfloat16 arm from float32 transformers'."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from selflearn.builtin.scorers._nli import NLIEngine

    torch.manual_seed(0)
    x = torch.randint(10, 30000, (32, 512), device="cuda")
    m = torch.ones_like(x)
    for r in range(16):
        m[r, 512 - 24 * (r + 1):] = 0
    f32 = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).cuda().eval()
    ref = _probs(f32, x, m)
    for name, model in (("eager", plain._model), ("fused", kernel._model)):
        report(f"nli {name} bf16 vs float32 max |dp|", round(float((_probs(model, x, m) - ref).abs().max()), 5))
    report("nli fused vs eager bf16 max |dp|", round(float((_probs(kernel._model, x, m) - _probs(plain._model, x, m)).abs().max()), 5))
    report("nli float32 probabilities spread (std)", round(float(ref[:, 1].std()), 4))
    del f32
    auto = NLIEngine(folder, device="cuda")
    words = ["the", "of", "a", "river", "town", "music", "war", "film", "team", "city", "was", "in", "by", "and"]
    rng = random.Random(1)
    pairs = [(" ".join(rng.choice(words) for _ in range(rng.randrange(5, 300))),
              " ".join(rng.choice(words) for _ in range(rng.randrange(5, 300)))) for _ in range(256)]
    auto.probabilities(pairs)
    report("nli engine auto: kernel kept after the first-batch check", bool(auto.fused))


def decode_models(args: Any, work: str) -> None:
    models = {"135m": ("smollm2-135m", SMOLLM2_135M, "smollm2_tok"), "1.1b": ("tinyllama-1.1b", TINYLLAMA_1B, "tok32k")}
    for key in args.decode_models.split(","):
        name, shape, tok = models[key]
        decode_runs(name, shape, os.path.join(args.assets, tok), work, args.decode_variants, args.decode_rows)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "profile-out"))
    ap.add_argument("--parts", default="attention,kernel,select,decode")
    ap.add_argument("--assets", default=os.path.join(ROOT, ".assets", "perf"),
                    help="folder of smollm2_tok and tok32k (prepare_bench_assets.py writes .assets/bench/perf)")
    ap.add_argument("--nli-assets", default=os.path.join(ROOT, ".assets", "bench_nli"), help="folder of texts.json")
    ap.add_argument("--decode-variants", default=DEFAULT_VARIANTS, help="decode part: fuse/kernel/sampler,...")
    ap.add_argument("--decode-rows", default="640,2560", help="decode part: row counts")
    ap.add_argument("--decode-models", default="135m,1.1b", help="decode part: 135m and/or 1.1b")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    work = tempfile.mkdtemp()
    OUT_FILE.append(os.path.join(args.out, "profile.json"))
    parts = args.parts.split(",")
    for part, fn in (
        ("attention", attention_check),
        ("kernel", kernel_configs),
        ("host", lambda: host_overhead(work, args.assets, args.nli_assets)),
        ("select", lambda: (select_times(49152), select_times(32000))),
        ("nli", lambda: nli_forward(args.nli_assets, work)),
        ("long", lambda: long_steps(os.path.join(args.assets, "tok32k"), work)),
        ("decode", lambda: decode_models(args, work)),
    ):
        if part in parts:
            try:
                fn()
            except Exception as exc:
                import traceback

                report(f"{part} error", traceback.format_exc()[-2500:])
                print(exc, flush=True)


if __name__ == "__main__":
    main()
