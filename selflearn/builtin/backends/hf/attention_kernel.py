"""A Triton kernel for the shared decoder's two attention parts: few queries per key-value
head, an additive per-key bias, output and log-sum-exp in float32.

Why: both parts of a decode step's attention (:mod:`.attention`) have few queries per
(batch, key-value head): the rows' own tokens gq = query heads / key-value heads (often 3-8),
the prompt prefix m x gq (the prompt's samples side by side, 30 for K = 10 and gq = 3).
PyTorch's memory-efficient kernel computes 64-query tiles, so most of its work is padding: on
an H100 it took 40% of a SmolLM2-135M decode step at 640 rows. Here one program handles one
(batch, head) pair, pads its queries only to 16 (the smallest matrix-product tile), streams the
keys and values once in blocks of 64 and keeps an online softmax (as FlashAttention does). The
number of keys is a compile-time constant: the decoder's shapes are fixed per CUDA graph
(attention buckets, prompt widths in multiples of 64), so a run compiles a handful of versions,
each during a warm-up step. The decoder launches both parts of a layer at once
(:func:`attention_pair`): the prefix part alone has few programs and would leave most of the
GPU idle.

The kernels (in :mod:`.attention_kernel_triton`) compute what :func:`.attention.plain_attention`
writes in plain torch (the reference of the tests; they run the kernels in Triton's
interpreter on the CPU). They are used on CUDA when Triton is installed and the head dimension
is a power of two from 16 to 256 (see :func:`available`); otherwise the memory-efficient kernel
stays.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from ...triton_support import importable
from .fallbacks import AttentionKernelFailed, piece

if TYPE_CHECKING:
    import torch


def available(head_dim: int) -> bool:
    """Whether :func:`attention` can run heads of this size (and Triton imports)."""
    if head_dim < 16 or head_dim > 256 or head_dim & (head_dim - 1):
        return False
    return importable()


@functools.cache
def _kernels() -> Any:
    from . import attention_kernel_triton

    return attention_kernel_triton


def query_block(m: int) -> int:
    """Queries per program: the next power of two from 16, at most 128 (more queries, e.g. many
    samples per prompt in the prefix part, are split over programs: registers stay bounded)."""
    return min(128, max(16, 1 << (m - 1).bit_length()))


def default_warps(m: int) -> int:
    """The default warps per program for ``m`` queries (see :func:`attention`)."""
    return 2 if query_block(m) <= 32 else 4


#: keys per block of the own-token part (its keys after the current step are not read, so
#: over 128 steps it reads 64.5 keys per row on average instead of the 96 of its buckets)
OWN_BLOCK_N = 64


def _args(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
          first: torch.Tensor | None, last: torch.Tensor | None) -> tuple[list[Any], torch.Tensor, torch.Tensor]:
    """One attention's pointer and stride arguments (``first``/``last``: a stand-in pointer when
    None), and its new float32 output and log-sum-exp buffers (B, H, M, d) and (B, H, M)."""
    import torch

    bsz, heads, m, d = q.shape
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    out = torch.empty(bsz, heads, m, d, dtype=torch.float32, device=q.device)
    lse = torch.empty(bsz, heads, m, dtype=torch.float32, device=q.device)
    args = [
        q, k, v, bias, out, lse,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2), bias.stride(0) if bias.dim() == 2 else 0,
        out.stride(0), out.stride(1), out.stride(2), lse.stride(0), lse.stride(1), m,
        first if first is not None else lse, last if last is not None else lse,
    ]
    return args, out, lse


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor, scale: float,
    *, first: torch.Tensor | None = None, last: torch.Tensor | None = None,
    block_n: int = 64, num_warps: int | None = None, num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q`` (B, H, M, d) over ``k``/``v`` (B, H, N, d) plus an additive
    float32 ``bias`` per key, (B, N) or (N,) (shared by the batch): float32 output (B, H, M, d)
    and log-sum-exp (B, H, M). Only the last dimension of q, k, v needs to be contiguous.

    ``first`` (integers (B,)): the first key of each batch item that may be unmasked (left
    padding before it); ``last`` (integers (B,), contiguous): the last key of each batch item
    that may be unmasked (later positions not generated yet: each row's own step, which differs
    between rows once finished rows are refilled). Keys outside are not read; the bias must mask
    them too (it does the masking; these only save memory traffic).

    ``block_n``, ``num_warps``, ``num_stages``: the launch configuration. The defaults were
    the best or within 5% of the best of 36 configurations on an H100 for the decode shapes of
    benchmarks/profile_step.py (2 warps up to 32 queries, 4 above; they take 41-46% less time than
    PyTorch's memory-efficient kernel on the own-token part, 53-57% less on the prefix part)."""
    bsz, heads, m, d = q.shape
    args, out, lse = _args(q, k, v, bias, first, last)
    block_m = query_block(m)
    with piece(AttentionKernelFailed):
        _kernels().small_query_attention[(bsz, heads, -(-m // block_m))](
            *args, scale, N_KEYS=k.shape[2], BLOCK_M=block_m, BLOCK_N=block_n, HEAD=d,
            HAS_FIRST=first is not None, HAS_LAST=last is not None,
            num_warps=num_warps or default_warps(m), num_stages=num_stages,
        )
    return out, lse


Part = tuple["torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor", "torch.Tensor | None", "torch.Tensor | None"]


def attention_pair(
    first: Part, second: Part, scale: float, *, block_n: tuple[int, int] = (64, OWN_BLOCK_N),
    num_warps: int | None = None, num_stages: int = 2,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`attention` of two independent (q, k, v, bias, first, last) in **one launch**
    (same head size and scale): the decode step's prefix part and own-token part. Why: the
    prefix part alone has few programs (prompts x heads) and leaves most of the GPU idle;
    launched together, its programs run beside the own-token part's, and a step has one launch
    per layer fewer. Returns (output, log-sum-exp) of the first, then of the second."""
    (q1, k1, v1, b1, f1, e1), (q2, k2, v2, b2, f2, e2) = first, second
    args1, o1, l1 = _args(q1, k1, v1, b1, f1, e1)
    args2, o2, l2 = _args(q2, k2, v2, b2, f2, e2)
    bm1, bm2 = query_block(q1.shape[2]), query_block(q2.shape[2])
    z1, z2 = -(-q1.shape[2] // bm1), -(-q2.shape[2] // bm2)
    programs = q1.shape[0] * q1.shape[1] * z1
    with piece(AttentionKernelFailed):
        _kernels().two_attentions[(programs + q2.shape[0] * q2.shape[1] * z2,)](
            *args1, *args2, scale,
            HEADS=q1.shape[1], Z=z1, PROGRAMS=programs, HEADS2=q2.shape[1], Z2=z2,
            N_KEYS=k1.shape[2], BLOCK_M=bm1, BLOCK_N=block_n[0], HAS_FIRST=f1 is not None,
            HAS_LAST=e1 is not None, N_KEYS2=k2.shape[2], BLOCK_M2=bm2, BLOCK_N2=block_n[1],
            HAS_FIRST2=f2 is not None, HAS_LAST2=e2 is not None, HEAD=q1.shape[3],
            num_warps=num_warps or default_warps(max(q1.shape[2], q2.shape[2])), num_stages=num_stages,
        )
    return o1, l1, o2, l2
