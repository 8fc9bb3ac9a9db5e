"""Fused decoder layers of the shared decoder (``fuse`` option, fused_layers.py) on tiny random
Llama, Qwen2 (q/k/v biases) and Qwen3 (per-head q/k norms) models in float32 on the CPU: the
same tokens and log-probabilities as the models' own modules, packing without extra memory,
the compiled version, the fallback when compilation fails, and who may be fused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.backends.hf import HFBackend, Options
from selflearn.builtin.backends.hf.fused_layers import resolve, unfusable_reason

from ...conftest import build_tiny_tokenizer
from .test_backend import GREEDY, PROMPTS, SAMPLED, tokens


def build(path: Path, kind: str) -> str:
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config, Qwen3Config

    tok = build_tiny_tokenizer(path)
    common: dict[str, Any] = dict(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id,
        tie_word_embeddings=False, use_sliding_window=False,
    )
    config = Qwen2Config(**common) if kind == "qwen2" else Qwen3Config(**common, head_dim=8)
    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random biases (Qwen2 initialises them to zero) and norm weights
        for name, p in model.named_parameters():
            if name.endswith(".bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def model_path(request: pytest.FixtureRequest, tiny_llama: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    if request.param == "llama":
        return tiny_llama
    return build(tmp_path_factory.mktemp(request.param), request.param)


def backend(path: str, **options: Any) -> HFBackend:
    b = HFBackend(Options(**{"batch_size": 16, "decoder": "shared", **options}), path, seed=7)
    b._load()
    return b


def outputs(b: HFBackend) -> list[Any]:
    return [b.generate(PROMPTS, SAMPLED, n=3), b.generate(PROMPTS, GREEDY, n=1)]


def assert_same(a: list[Any], b: list[Any], tol: float) -> None:
    for x, y in zip(a, b, strict=True):
        assert tokens(x) == tokens(y)
        for rx, ry in zip(x, y, strict=True):
            for cx, cy in zip(rx, ry, strict=True):
                assert cy.logprobs == pytest.approx(cx.logprobs, abs=tol)
                assert (cx.text, cx.finish_reason) == (cy.text, cy.finish_reason)


def test_fused_layers_equal_the_models_modules(model_path: str) -> None:
    off, fused = backend(model_path, fuse="off"), backend(model_path, fuse="eager")
    assert off._decoder.fuse == "off" and fused._decoder.fuse == "eager"  # type: ignore[union-attr]
    assert_same(outputs(off), outputs(fused), tol=1e-5)


def test_packing_keeps_the_model_and_its_memory(tiny_llama: str) -> None:
    import torch

    plain = backend(tiny_llama, fuse="off")
    ids = torch.tensor([[3, 5, 7, 11, 13]])
    before = plain._model(ids).logits
    b = backend(tiny_llama, fuse="eager")
    attn = b._model.model.layers[0].self_attn
    packed = b._decoder.layers.layers[0].qkv_w  # type: ignore[union-attr]
    # the modules' weights are views of the packed matrix: no second copy
    assert attn.q_proj.weight.untyped_storage().data_ptr() == packed.untyped_storage().data_ptr()
    assert attn.v_proj.weight.data_ptr() > attn.k_proj.weight.data_ptr() > attn.q_proj.weight.data_ptr()
    assert torch.equal(b._model(ids).logits, before)  # same checkpoint, same forward pass


@pytest.mark.slow
def test_compiled_layers_equal_the_models_modules(tiny_llama: str) -> None:
    import warnings

    off, compiled = backend(tiny_llama, fuse="off"), backend(tiny_llama, fuse="compile")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = outputs(compiled)
    assert_same(outputs(off), got, tol=1e-4)
    assert compiled._decoder.fuse == "compile"  # type: ignore[union-attr]
    # dynamo's warnings about our traced code (e.g. tracing through a functools cache "may be
    # silently wrong") are bugs to fix, not noise for users
    assert [str(w.message)[:200] for w in caught if "_dynamo" in w.filename] == []


def test_a_failing_compilation_falls_back_to_the_uncompiled_layers(
    tiny_llama: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    def broken(fn: Any, **kwargs: Any) -> Any:
        def call(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("inductor: no C++ compiler found\ndetails")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    b = backend(tiny_llama, fuse="compile")
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"):
        got = outputs(b)
    assert b._decoder.fuse == "eager"  # type: ignore[union-attr]
    for what in ("token selection", "the fused layers"):
        assert f"compiling {what} failed (RuntimeError: inductor: no C++ compiler found)" in caplog.text
    monkeypatch.undo()
    assert_same(outputs(backend(tiny_llama, fuse="off")), got, tol=1e-5)


def test_who_is_fused(tiny_llama: str, caplog: pytest.LogCaptureFixture) -> None:
    b = backend(tiny_llama, fuse="off")
    model = b._model
    assert unfusable_reason(model) is None
    assert resolve("auto", model) == "off"  # CPU: the model's modules, as before
    assert resolve("eager", model) == "eager"
    handle = model.lm_head.register_forward_hook(lambda m, i, o: o)
    assert "lm_head" in (unfusable_reason(model) or "")
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"):
        assert resolve("compile", model) == "off"
    assert "fused layers are not possible" in caplog.text
    handle.remove()
    model.model.layers[1].mlp.up_proj = _Wrapped(model.model.layers[1].mlp.up_proj)
    assert unfusable_reason(model) == "layer 1: mlp.up_proj is not a plain nn.Linear"


def _Wrapped(inner: Any) -> Any:
    """Stands for a LoRA or quantised layer: a module that is not a plain ``nn.Linear``."""
    import torch

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: Any) -> Any:
            return self.inner(x)

    return Wrapped()


def test_the_merge_of_two_parts_is_one_softmax_over_both() -> None:
    """merge_parts of the prefix part and the own-token part (each with its log-sum-exp)
    equals the plain path's single float32 softmax over both."""
    import torch

    from selflearn.builtin.backends.hf.attention import (
        Shared,
        merge_parts,
        plain_attention,
        prefix_queries,
    )

    torch.manual_seed(0)
    g, m, hkv, gq, d, w, t, scale = 3, 2, 2, 3, 8, 10, 16, 0.3
    rows = g * m
    q = torch.randn(rows, hkv, gq, d)
    k, v = torch.randn(rows, hkv, t, d), torch.randn(rows, hkv, t, d)
    pk, pv = torch.randn(g, hkv, w, d), torch.randn(g, hkv, w, d)
    own = torch.tensor([11, 3, 0, 15, 7, 11])  # each row's own step (refilled rows restart)
    gen_bias = torch.where(torch.arange(t)[None, :] <= own[:, None], 0.0, float("-inf"))
    prefix_bias = torch.zeros(g, w)
    prefix_bias[:, :4] = float("-inf")  # left padding
    o1, l1 = reference(prefix_queries(q, g), pk, pv, prefix_bias[:, None, None, :], scale)
    o2, l2 = reference(q, k, v, gen_bias[:, None, None, :], scale)
    merged = merge_parts(o1.float(), l1.float(), o2.float(), l2.float(), torch.float32)
    st = Shared([pk], [pv], prefix_bias, prefix_bias, gen_bias, gen_bias, False)
    ref = plain_attention(q.reshape(rows, hkv * gq, 1, d), k, v, pk, pv, st, scale)
    assert torch.allclose(merged.reshape(rows, 1, hkv * gq, d), ref, atol=1e-5)


def reference(q: Any, k: Any, v: Any, bias: Any, scale: float) -> tuple[Any, Any]:
    """Softmax attention in float64 and its log-sum-exp."""
    s = (q.double() @ k.double().transpose(-1, -2)) * scale + bias.double()
    return s.softmax(-1) @ v.double(), s.logsumexp(-1)


TRITON_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # Triton's interpreter: the kernel runs on the CPU
import torch
sys.path.insert(0, os.getcwd())
from selflearn.builtin.backends.hf.attention import Shared, fused_parts, merge_parts, plain_attention, prefix_queries
from selflearn.builtin.backends.hf.attention_kernel import attention, attention_pair
from tests.backends.hf.test_fused_layers import reference

torch.manual_seed(0)
worst = 0.0
for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
    for b, h, m, n, d in ((5, 2, 3, 70, 16), (4, 3, 30, 192, 32), (2, 1, 17, 64, 64), (2, 1, 150, 40, 16)):
        q = torch.randn(b, h, m, d).to(dtype)
        k = torch.randn(b, h, n + 7, d).to(dtype)[:, :, :n]  # a slice of a longer buffer
        v = torch.randn(b, h, n, d).to(dtype)
        shared = torch.zeros(n)
        shared[n // 2:] = float("-inf")  # keys past the current step
        per_row = torch.zeros(b, n)
        per_row[:, : min(n - 1, 64)] = float("-inf")  # left padding: a whole block masked
        for bias, ref_bias in ((shared, shared), (per_row, per_row[:, None, None, :])):
            out, lse = attention(q, k, v, bias, 0.125)
            ro, rl = reference(q, k, v, ref_bias, 0.125)
            assert out.dtype == torch.float32 and out.shape == (b, h, m, d), out.shape
            err = max(float((out.double() - ro).abs().max()), float((lse.double() - rl).abs().max()))
            assert err < tol, (dtype, b, h, m, n, d, err)
            worst = max(worst, err)
# two attentions of other shapes in one launch: the same as one launch each
for (b1, h1, m1, n1), (b2, h2, m2, n2) in (((3, 2, 30, 128), (12, 2, 3, 64)), ((2, 1, 150, 64), (5, 3, 8, 192))):
    one = (torch.randn(b1, h1, m1, 16), torch.randn(b1, h1, n1, 16), torch.randn(b1, h1, n1, 16), torch.zeros(b1, n1))
    two = (torch.randn(b2, h2, m2, 16), torch.randn(b2, h2, n2, 16), torch.randn(b2, h2, n2, 16), torch.zeros(n2))
    pad = torch.randint(0, n1 - 1, (b1,))  # left padding per batch item, whole blocks of it skipped
    one[3][torch.arange(n1)[None, :] < pad[:, None]] = float("-inf")
    step = n2 // 3  # keys after the current step are masked and their blocks skipped
    two[3][step + 1:] = float("-inf")
    last = torch.full((b2,), step)
    got = attention_pair((*one, pad, None), (*two, None, last), 0.3)
    ref = (*attention(*one, 0.3), *attention(*two, 0.3))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, ref, strict=True))
    skip = (*attention(*one, 0.3, first=pad), *attention(*two, 0.3, last=last, block_n=32))
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(skip, ref, strict=True))
# each row's own last key (rows at different steps since refill): keys after it are not read at
# all (NaN there would poison the output if they were, masked by the bias or not)
own_steps = torch.tensor([0, 5, 63, 64, 100, 191])
kq, kk, kv = torch.randn(6, 2, 3, 16), torch.randn(6, 2, 192, 16), torch.randn(6, 2, 192, 16)
bias = torch.where(torch.arange(192)[None, :] <= own_steps[:, None], 0.0, float("-inf"))
ref = attention(kq, kk, kv, bias, 0.3)
after = (torch.arange(192)[None, None, :] > own_steps[:, None, None]).expand(6, 2, 192)
kk[after], kv[after] = float("nan"), float("nan")
for n_block in (32, 64):
    got = attention(kq, kk, kv, bias, 0.3, last=own_steps, block_n=n_block)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got, ref, strict=True)), n_block
    assert bool(attention(kq, kk, kv, bias, 0.3, last=own_steps.clamp(min=100))[0].isnan().any())
# the decoder's use: both parts with the kernel, merged, against the plain path
for mm in (4, 12):  # 12 prompts' queries per program (36) take other warps: two launches
    g, hkv, gq, d, w, t = 3, 2, 3, 16, 70, 64
    q = torch.randn(g * mm, hkv, gq, d)
    k, v = torch.randn(g * mm, hkv, t, d), torch.randn(g * mm, hkv, t, d)
    pk, pv = torch.randn(g, hkv, w, d), torch.randn(g, hkv, w, d)
    own = torch.randint(0, 40, (g * mm,))  # each row at its own step (refilled rows restart)
    gen_bias = torch.where(torch.arange(t)[None, :] <= own[:, None], 0.0, float("-inf"))
    prefix_bias = torch.zeros(g, w)
    prefix_bias[1, :20] = float("-inf")
    st = Shared([pk], [pv], prefix_bias, prefix_bias, gen_bias, gen_bias, True, True,
                prefix_first=torch.tensor([0, 20, 0]), gen_last=own)
    parts = fused_parts(prefix_queries(q, g), q, k, v, pk, pv, st, 0.25)
    got = merge_parts(*parts, torch.float32).reshape(g * mm, 1, hkv * gq, d)
    ref = plain_attention(q.reshape(g * mm, hkv * gq, 1, d), k, v, pk, pv, st, 0.25)
    assert torch.allclose(got, ref, atol=1e-5), float((got - ref).abs().max())
print("ok", worst)
"""


def test_the_triton_kernel_is_attention_with_its_log_sum_exp() -> None:
    """attention_kernel's kernel in Triton's interpreter (CPU; float32 and float16 - the interpreter
    has no bfloat16): output and log-sum-exp against float64 attention, for both parts' shapes
    (3, 17, 30 queries, and 150: split over programs), shared and per-row key masks, a fully masked block, a sliced key buffer,
    no key read after each row's own last one;
    two attentions of different shapes in one launch equal to one launch each; and the
    decoder's fused parts with it (rows at different own steps) equal the plain path."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[3]  # the repository root (tests/backends/hf/...)
    done = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], cwd=root, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def test_each_failing_piece_is_turned_off_and_only_that_piece(
    tiny_llama: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An error raised inside the attention kernel (say, no C compiler for Triton's launcher)
    turns the kernel off and keeps the compiled pieces; compiled selection and compiled layers
    are turned off only when they raised; an error of no piece is raised at once."""
    import torch

    from selflearn.builtin.backends.hf import attention_kernel
    from selflearn.builtin.backends.hf.candidate_sampling import select_candidates
    from selflearn.builtin.backends.hf.fallbacks import (
        CompiledLayersFailed,
        CompiledSelectionFailed,
        piece,
    )

    b = backend(tiny_llama, fuse="eager")
    dec: Any = b._decoder
    dec.triton, dec.fuse, dec._select = True, "compile", object()  # as on a GPU with everything on

    def broken_kernel() -> Any:
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(attention_kernel, "_kernels", broken_kernel)
    calls = []

    def step(*args: Any) -> None:
        calls.append((dec.triton, dec._select is select_candidates, dec.fuse))
        if dec.triton:
            x = torch.zeros(1, 1, 1, 16)
            attention_kernel.attention(x, x, x, torch.zeros(1), 1.0)
        # the selection runs inside the layers' piece here: the inner piece wraps first
        with piece(CompiledLayersFailed, active=dec.fuse == "compile"), \
                piece(CompiledSelectionFailed, active=dec._select is not select_candidates):
            raise ValueError("an operation inductor cannot lower")

    monkeypatch.setattr(dec, "_step", step)
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"), pytest.raises(ValueError, match="cannot lower"):
        dec._warm_up(None, 64, None, None)
    # kernel off; the selection's failure; then the layers'; then the error itself
    assert calls == [(True, False, "compile"), (False, False, "compile"), (False, True, "compile"),
                     (False, True, "eager")]
    assert "the Triton attention kernel failed (RuntimeError: Failed to find C compiler." in caplog.text
    assert "compiling token selection failed (ValueError: an operation inductor cannot lower)" in caplog.text

    def plain_error(*args: Any) -> None:
        calls.append("plain")
        raise KeyError("a bug, not a piece")

    dec.triton, dec.fuse = True, "compile"
    monkeypatch.setattr(dec, "_step", plain_error)
    with pytest.raises(KeyError, match="a bug"):
        dec._warm_up(None, 64, None, None)
    assert calls[-1] == "plain" and calls.count("plain") == 1 and dec.triton and dec.fuse == "compile"


def _buffers_of_shape(code: list[str], shape: tuple[int, ...]) -> list[str]:
    """The lines of inductor's generated code that allocate a buffer of ``shape``."""
    text = "(" + ", ".join(str(n) for n in shape) + ")"
    return [line for c in code for line in c.splitlines() if "empty_strided" in line and text in line]


def test_compiled_layers_write_the_step_into_the_cache_in_place(tiny_llama: str) -> None:
    """Each row's key and value land at its own step, and the compiled code allocates no copy
    of the cache: run 16 (performance.md) lost 45% of its throughput to a scatter_ that inductor
    lowered as a copy of the whole cache per layer and step."""
    import torch
    from torch._inductor.utils import run_and_get_code

    layers = backend(tiny_llama, fuse="compile")._decoder.layers  # type: ignore[union-attr]
    d, lw = layers.dims, layers.layers[0]
    rows, steps = 6, 40
    torch.manual_seed(3)
    hidden = torch.randn(rows, lw.norm_in.shape[0])
    cos, sin = torch.randn(rows, 1, d.head_dim), torch.randn(rows, 1, d.head_dim)
    t_index = torch.tensor([0, 5, 39, 7, 7, 1])
    args = (hidden, lw.norm_in, lw.qkv_w, lw.qkv_b, lw.q_norm, lw.k_norm, cos, sin, 3)
    cache = torch.zeros(2, rows, d.hkv, steps, d.head_dim)
    with torch.inference_mode():
        _, code = run_and_get_code(layers._first, *args, cache, t_index)
        expected = torch.zeros_like(cache)
        eager = backend(tiny_llama, fuse="eager")._decoder.layers  # type: ignore[union-attr]
        eager._first(*args, expected, t_index)
    assert _buffers_of_shape(code, tuple(cache.shape)) == []
    assert torch.allclose(cache, expected, atol=1e-5)
    written = cache.abs().sum(dim=(0, 2, 4)) > 0  # (rows, steps)
    assert written.nonzero().tolist() == [[r, int(t)] for r, t in enumerate(t_index)]


def test_compiled_repetition_penalty_changes_the_logits_in_place() -> None:
    """The penalty over seen ids, compiled as in ``select_candidates``, equals the eager one
    and allocates no copy of the logits (rows x vocabulary, the largest tensor of a step)."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from selflearn.builtin.backends.hf.candidate_sampling import penalize_ids

    torch.manual_seed(4)
    logits, seen = torch.randn(8, 1000), torch.randint(0, 1000, (8, 30))
    expected = penalize_ids(logits.clone(), seen, 1.3)
    compiled = torch.compile(penalize_ids)
    out = logits.clone()
    with torch.inference_mode():
        _, code = run_and_get_code(compiled, out, seen, 1.3)
    assert _buffers_of_shape(code, (8, 1000)) == []
    assert torch.equal(out, expected)


def test_compiled_half_precision_residuals_stay_out_of_the_matrix_products(tiny_llama: str) -> None:
    """In bfloat16 the compiled ``mid`` piece has plain matrix products, no ``addmm``: inductor
    folds a same-dtype residual ``h + mm`` into cuBLAS's addmm, which copies the residual into
    the output first (61 device copies per SmolLM2-135M step on an H100, run 24); the sums
    equal the model's own bfloat16 adds."""
    import torch
    from torch._inductor.utils import run_and_get_code

    from selflearn.builtin.backends.hf.fused_layers import _block_piece, pack_layers

    model = backend(tiny_llama, fuse="eager")._model
    layers, d, act = pack_layers(model)
    lw = layers[0]
    block = _block_piece(d, act)
    torch.manual_seed(5)
    h = torch.randn(8, lw.norm_in.shape[0], dtype=torch.bfloat16)
    merged = (torch.randn(8, d.hq * d.head_dim, dtype=torch.bfloat16),)
    weights = [w.to(torch.bfloat16) if w is not None else None
               for w in (lw.o_w, lw.o_b, lw.norm_post, lw.gu_w, lw.gu_b, lw.down_w, lw.down_b)]
    with torch.inference_mode():
        got, code = run_and_get_code(torch.compile(block, fullgraph=True), h, merged, *weights)
        o_w, _, norm_post, gu_w, _, down_w, _ = weights
        mid = h + merged[0] @ o_w.T  # the model's own order: bfloat16 product, bfloat16 add
        x = norm_post * (mid.float() * torch.rsqrt(mid.float().pow(2).mean(-1, keepdim=True) + d.eps)).to(mid.dtype)
        gate, up = (x @ gu_w.T).split([d.inter, d.inter], dim=-1)
        expected = mid + (act(gate) * up) @ down_w.T
    text = "\n".join(code)
    assert "addmm" not in text and text.count("extern_kernels.mm") == 3
    assert torch.allclose(got.float(), expected.float(), atol=0.05, rtol=0.02)
