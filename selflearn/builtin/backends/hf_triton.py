"""A Triton kernel for the shared decoder's two attention parts: few queries per key-value
head, an additive per-key bias, output and log-sum-exp in float32.

Why: both parts of a decode step's attention (:mod:`.hf_attention`) have few queries per
(batch, key-value head): the rows' own tokens gq = query heads / key-value heads (often 3-8),
the prompt prefix m x gq (the prompt's samples side by side, 30 for K = 10 and gq = 3).
PyTorch's memory-efficient kernel computes 64-query tiles, so most of its work is padding: on
an H100 it took 40% of a SmolLM2-135M decode step at 640 rows. Here one program handles one
(batch, head) pair, pads its queries only to 16 (the smallest matrix-product tile), streams the
keys and values once in blocks of 64 and keeps an online softmax (as FlashAttention does). The number of keys is a compile-time
constant: the decoder's shapes are fixed per CUDA graph (attention buckets, prompt widths in
multiples of 64), so a run compiles a handful of versions, each during a warm-up step.

The kernel computes what :func:`.hf_attention.gen_part` writes in plain torch (the reference
of the tests; they run the kernel in Triton's interpreter on the CPU). It is used on CUDA when
Triton is installed and the head dimension is a power of two from 16 to 256 (see
:func:`available`); otherwise the memory-efficient kernel stays.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def available(head_dim: int) -> bool:
    """Whether :func:`attention` can run heads of this size (and Triton imports)."""
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _kernel() -> Any:
    import triton
    import triton.language as tl

    @triton.jit
    def small_query_attention(  # type: ignore[no-untyped-def]
        q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr,  # noqa: ANN001
        sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sbias_b,  # noqa: ANN001
        so_b, so_h, so_m, sl_b, sl_h,  # noqa: ANN001
        n_queries, scale,  # noqa: ANN001
        N_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD: tl.constexpr,
    ):
        b = tl.program_id(0)
        h = tl.program_id(1)
        rm = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
        rd = tl.arange(0, HEAD)
        rn = tl.arange(0, BLOCK_N)
        q = tl.load(q_ptr + b * sq_b + h * sq_h + rm[:, None] * sq_m + rd[None, :],
                    mask=rm[:, None] < n_queries, other=0.0)
        top = tl.full([BLOCK_M], float("-inf"), tl.float32)
        total = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
        for start in range(0, N_KEYS, BLOCK_N):
            n = start + rn
            inside = n < N_KEYS
            k = tl.load(k_ptr + b * sk_b + h * sk_h + n[:, None] * sk_n + rd[None, :],
                        mask=inside[:, None], other=0.0)
            s = tl.dot(q, tl.trans(k)) * scale
            bias = tl.load(bias_ptr + b * sbias_b + n, mask=inside, other=float("-inf"))
            s = s + bias[None, :]
            new_top = tl.maximum(top, tl.max(s, 1))
            # a block with every key masked keeps -inf: shift by 0 instead (exp(-inf) = 0)
            shift = tl.where(new_top == float("-inf"), 0.0, new_top)
            p = tl.exp(s - shift[:, None])
            alpha = tl.exp(top - shift)
            total = total * alpha + tl.sum(p, 1)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + n[:, None] * sv_n + rd[None, :],
                        mask=inside[:, None], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            top = new_top
        out = acc / total[:, None]
        keep = rm < n_queries
        tl.store(o_ptr + b * so_b + h * so_h + rm[:, None] * so_m + rd[None, :], out, mask=keep[:, None])
        tl.store(lse_ptr + b * sl_b + h * sl_h + rm, top + tl.log(total), mask=keep)

    return small_query_attention


def query_block(m: int) -> int:
    """Queries per program: the next power of two from 16, at most 128 (more queries, e.g. many
    samples per prompt in the prefix part, are split over programs: registers stay bounded)."""
    return min(128, max(16, 1 << (m - 1).bit_length()))


def default_warps(m: int) -> int:
    """The default warps per program for ``m`` queries (see :func:`attention`)."""
    return 2 if query_block(m) <= 32 else 4


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
    *, block_n: int = 64, num_warps: int | None = None, num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q`` (B, H, M, d) over ``k``/``v`` (B, H, N, d) plus an additive
    float32 ``bias`` per key, (B, N) or (N,) (shared by the batch): float32 output (B, H, M, d)
    and log-sum-exp (B, H, M). Only the last dimension of q, k, v needs to be contiguous.
    ``block_n``, ``num_warps``, ``num_stages``: the launch configuration. The defaults were
    the best or within 5% of the best of 36 configurations on an H100 for the decode shapes of
    benchmarks/profile_step.py (2 warps up to 32 queries, 4 above; they take 41-46% less time than
    PyTorch's memory-efficient kernel on the own-token part, 53-57% less on the prefix part)."""
    import torch

    bsz, heads, m, d = q.shape
    n = k.shape[2]
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(bsz, heads, m, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(bsz, heads, m, dtype=torch.float32, device=q.device)
    block_m = query_block(m)
    if num_warps is None:
        num_warps = default_warps(m)
    _kernel()[(bsz, heads, -(-m // block_m))](
        q, k, v, bias, out, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), bias.stride(0) if bias.dim() == 2 else 0,
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1),
        m, scale, N_KEYS=n, BLOCK_M=block_m, BLOCK_N=block_n, HEAD=d,
        num_warps=num_warps, num_stages=num_stages,
    )
    return out, lse
