"""The Triton code of :mod:`.attention_kernel` (imported only when a kernel runs: it needs Triton,
which CPU installs may lack; Triton resolves the helper below as a module global)."""

# mypy: ignore-errors
# ruff: noqa: ANN001, ANN202, SIM108

import triton
import triton.language as tl

from ...online_softmax_triton import online_softmax_step


@triton.jit
def _attend(q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr, b, h, zq,
            sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sbias_b,
            so_b, so_h, so_m, sl_b, sl_h, n_queries, scale, first_ptr, last_ptr,
            N_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD: tl.constexpr,
            HAS_FIRST: tl.constexpr, HAS_LAST: tl.constexpr):
    # queries zq*BLOCK_M.. of (batch b, head h) against the N_KEYS keys: online softmax over
    # blocks of BLOCK_N keys, float32 output and log-sum-exp. Keys before first_ptr[b] (left
    # padding) and after last_ptr[b] (positions this row has not generated yet: rows refilled
    # later are at earlier steps) are not read: the bias masks them anyway, and predicated-off
    # loads cost no memory traffic (a loop bound read from memory would skip their blocks too,
    # but Triton's interpreter cannot run one)
    if HAS_FIRST:
        lo = tl.load(first_ptr + b).to(tl.int32)
    else:
        lo = 0
    if HAS_LAST:
        hi = tl.load(last_ptr + b).to(tl.int32) + 1
    else:
        hi = N_KEYS
    rm = zq * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD)
    rn = tl.arange(0, BLOCK_N)
    q = tl.load(q_ptr + b * sq_b + h * sq_h + rm[:, None] * sq_m + rd[None, :],
                mask=rm[:, None] < n_queries, other=0.0)
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    for start in range(0, N_KEYS, BLOCK_N):
        n = start + rn
        inside = (n < N_KEYS) & (n >= lo) & (n < hi)
        k = tl.load(k_ptr + b * sk_b + h * sk_h + n[:, None] * sk_n + rd[None, :],
                    mask=inside[:, None], other=0.0)
        s = tl.dot(q, tl.trans(k)) * scale
        bias = tl.load(bias_ptr + b * sbias_b + n, mask=inside, other=float("-inf"))
        s = s + bias[None, :]
        p, alpha, new_top, total = online_softmax_step(s, top, total)
        v = tl.load(v_ptr + b * sv_b + h * sv_h + n[:, None] * sv_n + rd[None, :],
                    mask=inside[:, None], other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        top = new_top
    out = acc / total[:, None]
    keep = rm < n_queries
    tl.store(o_ptr + b * so_b + h * so_h + rm[:, None] * so_m + rd[None, :], out, mask=keep[:, None])
    tl.store(lse_ptr + b * sl_b + h * sl_h + rm, top + tl.log(total), mask=keep)


@triton.jit
def small_query_attention(
    q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr,
    sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sbias_b,
    so_b, so_h, so_m, sl_b, sl_h,
    n_queries, first_ptr, last_ptr, scale,
    N_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HEAD: tl.constexpr,
    HAS_FIRST: tl.constexpr, HAS_LAST: tl.constexpr,
):
    """One attention: a program per (batch, head, query block)."""
    _attend(q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr, tl.program_id(0), tl.program_id(1), tl.program_id(2),
            sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sbias_b, so_b, so_h, so_m, sl_b, sl_h,
            n_queries, scale, first_ptr, last_ptr, N_KEYS, BLOCK_M, BLOCK_N, HEAD, HAS_FIRST, HAS_LAST)


@triton.jit
def two_attentions(
    q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr,
    sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sbias_b,
    so_b, so_h, so_m, sl_b, sl_h, n_queries, first_ptr, last_ptr,
    q2_ptr, k2_ptr, v2_ptr, bias2_ptr, o2_ptr, lse2_ptr,
    sq2_b, sq2_h, sq2_m, sk2_b, sk2_h, sk2_n, sv2_b, sv2_h, sv2_n, sbias2_b,
    so2_b, so2_h, so2_m, sl2_b, sl2_h, n_queries2, first2_ptr, last2_ptr,
    scale,
    HEADS: tl.constexpr, Z: tl.constexpr, PROGRAMS: tl.constexpr,
    HEADS2: tl.constexpr, Z2: tl.constexpr,
    N_KEYS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, HAS_FIRST: tl.constexpr,
    HAS_LAST: tl.constexpr, N_KEYS2: tl.constexpr, BLOCK_M2: tl.constexpr, BLOCK_N2: tl.constexpr,
    HAS_FIRST2: tl.constexpr, HAS_LAST2: tl.constexpr, HEAD: tl.constexpr,
):
    """Two independent attentions in one launch: programs 0..PROGRAMS-1 do the first (a
    program per (batch, head, query block)), the rest the second; both run side by side."""
    pid = tl.program_id(0)
    if pid < PROGRAMS:
        b = pid // (HEADS * Z)
        h = (pid // Z) % HEADS
        _attend(q_ptr, k_ptr, v_ptr, bias_ptr, o_ptr, lse_ptr, b, h, pid % Z,
                sq_b, sq_h, sq_m, sk_b, sk_h, sk_n, sv_b, sv_h, sv_n, sbias_b, so_b, so_h, so_m, sl_b, sl_h,
                n_queries, scale, first_ptr, last_ptr, N_KEYS, BLOCK_M, BLOCK_N, HEAD, HAS_FIRST, HAS_LAST)
    else:
        p = pid - PROGRAMS
        b = p // (HEADS2 * Z2)
        h = (p // Z2) % HEADS2
        _attend(q2_ptr, k2_ptr, v2_ptr, bias2_ptr, o2_ptr, lse2_ptr, b, h, p % Z2,
                sq2_b, sq2_h, sq2_m, sk2_b, sk2_h, sk2_n, sv2_b, sv2_h, sv2_n, sbias2_b, so2_b, so2_h, so2_m,
                sl2_b, sl2_h, n_queries2, scale, first2_ptr, last2_ptr, N_KEYS2, BLOCK_M2, BLOCK_N2, HEAD,
                HAS_FIRST2, HAS_LAST2)
