"""A fused attention kernel for DeBERTa-v2/v3 classifiers, the NLI scorers' model.

Why: transformers' ``DisentangledSelfAttention`` writes a (rows x heads x length x length)
tensor about fifteen times per layer (content scores, the two gathered position terms, their
sums and scales, the mask, the softmax). At 512-token pairs that is most of the forward: on an
H100, DeBERTa-v3-large ran 254 pairs/s eagerly and 512 under ``torch.compile``, whose one fused
bias-and-softmax kernel still took 47% of the time (run 22, docs/performance.md). The paper's
stage scores ~135k such pairs at scale.

The kernel (:mod:`._deberta_kernel_triton`) computes the same attention as FlashAttention
computes plain attention: for a block of queries it streams the keys and values once and keeps
an online softmax, so no (length x length) tensor is written. The two position terms are
gathered inside the kernel from their small (length x 2 * span) products:

    score(i, j) = (q_i . k_j + c2p[i, c2p_idx[i - j]] + p2c[j, p2c_idx[i - j]]) / sqrt(3 d)

where c2p = Q . PosK^T and p2c = K . PosQ^T are matrix products (cuBLAS, as transformers
computes them) and the index tables follow from the model's own relative positions, which
depend on i - j only. Sums and the softmax run in float32 (transformers rounds each partial
tensor to bfloat16), so the probabilities differ from transformers' within bfloat16 rounding;
the engine checks them against transformers' own attention on its first batch.

:func:`install` replaces ``forward`` on each attention module of one loaded model; anything
the kernel does not cover (training, returned attention maps, separate query states, a
relative-position tensor that is not the model's own) goes to the original ``forward``.
"""

from __future__ import annotations

import functools
import types
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import triton_support

if TYPE_CHECKING:
    import torch


class FusedAttentionFailed(Exception):
    """The kernel raised (``__cause__`` is the original error); the engine falls back to
    transformers' attention."""


def unsupported(config: Any) -> str | None:
    """Why the kernel cannot run a model of this config (None: it can). Needs no weights."""
    if getattr(config, "model_type", None) != "deberta-v2":
        return f"model_type {getattr(config, 'model_type', None)!r} is not deberta-v2 (DeBERTa-v2/v3)"
    if not getattr(config, "relative_attention", False):
        return "relative_attention is off"
    kinds = set(getattr(config, "pos_att_type", None) or [])
    if kinds != {"c2p", "p2c"}:
        return f"pos_att_type {sorted(kinds)} is not ['c2p', 'p2c']"
    head = getattr(config, "attention_head_size", None) or config.hidden_size // config.num_attention_heads
    if head < 16 or head > 128 or head & (head - 1):
        return f"head size {head} is not a power of two from 16 to 128"
    if not triton_support.importable():
        return "Triton is not installed"
    return None


@functools.cache
def _kernel() -> Any:
    from ._deberta_kernel_triton import disentangled_attention

    return disentangled_attention


def index_tables(relative_pos: torch.Tensor, length: int, span: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The c2p and p2c gather indices by i - j (entry i - j + length - 1), read from the model's
    relative positions (1, L, L) or (L, L); None when they are not one shared (L, L) grid.

    transformers gathers c2p at clamp(rel[i, j] + span) and p2c, transposed, at
    clamp(-rel[j, i] + span); rel[i, j] depends on i - j only (``build_relative_position``)."""
    import torch

    if relative_pos.dim() < 2 or relative_pos.numel() != length * length:
        return None
    grid = relative_pos.reshape(length, length).long()
    by_diff = torch.cat([grid[0, 1:].flip(0), grid[:, 0]])  # rel at i - j = -(L-1) .. L-1
    c2p = torch.clamp(by_diff + span, 0, 2 * span - 1).to(torch.int32)
    p2c = torch.clamp(-by_diff.flip(0) + span, 0, 2 * span - 1).to(torch.int32)
    return c2p, p2c


def _position_projections(module: Any, rel_embeddings: torch.Tensor) -> tuple[Any, Any]:
    """PosQ and PosK (2 span, hidden) from the relative embeddings, as transformers projects
    them (with the content projections when ``share_att_key``)."""
    rel = rel_embeddings[: module.pos_ebd_size * 2]
    if module.share_att_key:
        return module.query_proj(rel), module.key_proj(rel)
    return module.pos_query_proj(rel), module.pos_key_proj(rel)


def _by_head(x: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
    """x (B, L, H * d) against pos (P, H * d) head by head: (B, H, L, P), one batched matrix
    product over views (no copy of either operand)."""
    bsz, length, _ = x.shape
    xh = x.view(bsz * length, heads, -1).transpose(0, 1)  # (H, B*L, d), rows H*d apart
    ph = pos.view(pos.shape[0], heads, -1).permute(1, 2, 0)  # (H, d, P)
    return (xh @ ph).view(heads, bsz, length, -1).transpose(0, 1)


class _LastOf:
    """The value computed from the last argument seen: the encoder hands every layer the same
    relative-position and mask tensors, so each forward computes tables and key mask once.
    The argument is held by a weak reference (a (B, 1, L, L) mask is not kept alive after its
    forward); a dead one never matches, so a new tensor at a reused address cannot either."""

    def __init__(self) -> None:
        self.ref: Callable[[], Any] = lambda: None
        self.value: Any = None

    def get(self, arg: Any, extra: Any, compute: Callable[[], Any]) -> Any:
        if self.ref() is not arg or self.value is None or self.value[0] != extra:
            self.ref, self.value = weakref.ref(arg), (extra, compute())
        return self.value[1]


_TABLES = _LastOf()
_KEEP = _LastOf()


def fused_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c2p: torch.Tensor, p2c: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor], keep: torch.Tensor, scale: float,
    *, block_m: int = 64, block_n: int = 32, num_warps: int = 4, num_stages: int = 2,
    static_bound: bool | None = None,
) -> torch.Tensor:
    """The kernel on q, k, v (B, L, H, d; last dimension contiguous), the position products
    c2p, p2c (B, H, L, 2 span; last dimension contiguous), the index tables (2L - 1,), the key
    mask ``keep`` (B, L; nonzero = attend): output (B, L, H, d) in q's dtype.

    ``static_bound``: the key loop's bound fixed at compile time (one compiled version per
    number of key blocks) instead of read at run time (one version in all). None: only in
    Triton's interpreter, which cannot run a runtime bound; on a GPU a version per length costs
    a second or more of compilation each, and the runtime bound 15-18% of the kernel's time
    (run 24, side by side, docs/performance.md; ``profile_step.py --parts nli`` measures both)."""
    import torch

    bsz, length, heads, head = q.shape
    out = torch.empty_like(q, memory_format=torch.contiguous_format)
    static = triton_support.interpreting() if static_bound is None else static_bound
    grid = (-(-length // block_m), bsz * heads)
    try:
        _kernel()[grid](
            q, k, v, c2p, p2c, tables[0], tables[1], keep, out,
            q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
            v.stride(0), v.stride(1), v.stride(2), c2p.stride(0), c2p.stride(1), c2p.stride(2),
            p2c.stride(0), p2c.stride(1), p2c.stride(2), keep.stride(0),
            out.stride(0), out.stride(1), out.stride(2), heads, length, scale,
            HEAD=head, BLOCK_M=block_m, BLOCK_N=block_n, STATIC=static, N_BLOCKS=-(-length // block_n) if static else 0,
            IEEE=q.dtype == torch.float32,
            num_warps=num_warps, num_stages=num_stages,
        )
    except Exception as exc:
        if type(exc).__name__ == "OutOfMemoryError":
            raise
        raise FusedAttentionFailed(f"{type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    return out


def _blocks(device: torch.device) -> dict[str, Any]:
    """Launch sizes other than :func:`fused_attention`'s defaults (64 queries x 32 keys on a GPU:
    run 22's sweep of the kernel alone on an H100 found them as fast as 64 x 64 at 32 x 512-token
    pairs and 26% faster at 128 x 128): 16 x 16 in Triton's interpreter, so that the tests' tiny
    models cross several blocks."""
    return {} if device.type == "cuda" else {"block_m": 16, "block_n": 16}


def _forward(
    module: Any, hidden_states: torch.Tensor, attention_mask: torch.Tensor,
    output_attentions: bool = False, query_states: torch.Tensor | None = None,
    relative_pos: torch.Tensor | None = None, rel_embeddings: torch.Tensor | None = None, **extra: Any,
) -> tuple[torch.Tensor, None]:
    """``DisentangledSelfAttention.forward`` through the kernel, or the original where the
    kernel does not apply (also for arguments a later transformers may add: ``extra``)."""
    import torch

    original: Callable[..., Any] = module._selflearn_original_forward
    bsz, length, _ = hidden_states.shape
    tables = None
    covered = not (module.training or output_attentions or query_states is not None)
    covered = covered and not extra and relative_pos is not None and rel_embeddings is not None
    covered = covered and attention_mask.dim() == 4
    if covered:
        assert relative_pos is not None
        span = module.pos_ebd_size
        tables = _TABLES.get(relative_pos, (length, span), lambda: index_tables(relative_pos, length, span))
    if tables is None:
        return original(hidden_states, attention_mask, output_attentions, query_states, relative_pos,
                        rel_embeddings, **extra)
    assert rel_embeddings is not None
    heads = module.num_attention_heads
    q, k, v = module.query_proj(hidden_states), module.key_proj(hidden_states), module.value_proj(hidden_states)
    pos_q, pos_k = _position_projections(module, rel_embeddings)
    c2p, p2c = _by_head(q, pos_k, heads), _by_head(k, pos_q, heads)  # (B, H, L, 2 span)
    # the model's mask is keep[i] * keep[j] (DebertaV2Encoder.get_attention_mask): its diagonal
    keep = _KEEP.get(attention_mask, length, lambda: attention_mask[:, 0].diagonal(dim1=-2, dim2=-1).to(torch.int32).contiguous())
    head = q.shape[-1] // heads
    split = (bsz, length, heads, head)
    # transformers' scale: sqrt(d * 3) for content, c2p and p2c (``unsupported`` requires both)
    out = fused_attention(q.view(split), k.view(split), v.view(split), c2p, p2c, tables, keep, (head * 3) ** -0.5,
                          **_blocks(hidden_states.device))
    return out.view(bsz, length, heads * head), None


def _attention_modules(model: Any) -> list[Any]:
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    return [m for m in model.modules() if isinstance(m, DisentangledSelfAttention)]


def install(model: Any) -> None:
    """Route each attention module of ``model`` through the kernel (idempotent)."""
    for module in _attention_modules(model):
        if "_selflearn_original_forward" not in module.__dict__:
            module._selflearn_original_forward = module.forward
            module.forward = types.MethodType(_forward, module)


def uninstall(model: Any) -> None:
    """Give each attention module of ``model`` back its original forward."""
    for module in _attention_modules(model):
        if "_selflearn_original_forward" in module.__dict__:
            del module.__dict__["_selflearn_original_forward"]
            module.__dict__.pop("forward", None)
