"""The Triton code of :mod:`._deberta_attention` (imported only when the kernel runs: it needs
Triton, which CPU installs may lack)."""

# mypy: ignore-errors
# ruff: noqa: ANN001, ANN202, SIM108

import triton
import triton.language as tl

from ..online_softmax_triton import online_softmax_step


@triton.jit
def _key_block(q, k_ptr, v_ptr, c2p_rows, p2c_ptr, c2p_idx_ptr, p2c_idx_ptr, keep_ptr, block, rm, rd, rn,
               row_in, b, h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h, sp_b, sp_h, sp_l, sm_b, length, scale,
               top, total, acc, BLOCK_N: tl.constexpr, IEEE: tl.constexpr):
    # one block of BLOCK_N keys: the online softmax's running max, sum and output, updated
    n = block * BLOCK_N + rn
    col_in = n < length
    keep = tl.load(keep_ptr + b * sm_b + n, mask=col_in, other=0) != 0
    k = tl.load(k_ptr + b * sk_b + h * sk_h + n[:, None] * sk_l + rd[None, :],
                mask=col_in[:, None], other=0.0)
    if IEEE:
        s = tl.dot(q, tl.trans(k), input_precision="ieee")
    else:
        s = tl.dot(q, tl.trans(k))
    # c2p[i, idx]: along a row of the tile (j) the addresses are consecutive. p2c[j, idx]
    # is read as a (key, query) tile, where they are consecutive along a row (i), and
    # transposed in the chip (read as (query, key), every element is another row)
    both = row_in[:, None] & col_in[None, :]
    ci = tl.load(c2p_idx_ptr + (rm[:, None] - n[None, :] + length - 1), mask=both, other=0)
    c2p = tl.load(c2p_rows + ci, mask=both, other=0.0).to(tl.float32)
    both_t = col_in[:, None] & row_in[None, :]
    pi_t = tl.load(p2c_idx_ptr + (rm[None, :] - n[:, None] + length - 1), mask=both_t, other=0)
    p2c_t = tl.load(p2c_ptr + b * sp_b + h * sp_h + n[:, None] * sp_l + pi_t, mask=both_t, other=0.0)
    s = (s + c2p + tl.trans(p2c_t).to(tl.float32)) * scale
    s = tl.where(keep[None, :], s, float("-inf"))
    p, alpha, new_top, total = online_softmax_step(s, top, total)
    v = tl.load(v_ptr + b * sv_b + h * sv_h + n[:, None] * sv_l + rd[None, :],
                mask=col_in[:, None], other=0.0)
    if IEEE:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision="ieee")
    else:
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    top = new_top
    return top, total, acc


@triton.jit(do_not_specialize=["length"])
def disentangled_attention(
    q_ptr, k_ptr, v_ptr, c2p_ptr, p2c_ptr, c2p_idx_ptr, p2c_idx_ptr, keep_ptr, o_ptr,
    sq_b, sq_l, sq_h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
    sc_b, sc_h, sc_l, sp_b, sp_h, sp_l, sm_b, so_b, so_l, so_h,
    heads, length, scale,
    HEAD: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, STATIC: tl.constexpr,
    N_BLOCKS: tl.constexpr, IEEE: tl.constexpr,
):
    # queries zq*BLOCK_M.. of (batch b, head h) against every key of the sequence, as DeBERTa's
    # DisentangledSelfAttention computes them: score(i, j) = (q_i.k_j + c2p[i, c2p_idx[i-j]]
    # + p2c[j, p2c_idx[i-j]]) * scale, padded keys masked, online softmax over blocks of BLOCK_N
    # keys (as FlashAttention does), so no (length x length) tensor is ever written
    zq = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    rm = zq * BLOCK_M + tl.arange(0, BLOCK_M)
    rd = tl.arange(0, HEAD)
    rn = tl.arange(0, BLOCK_N)
    row_in = rm < length
    q = tl.load(q_ptr + b * sq_b + h * sq_h + rm[:, None] * sq_l + rd[None, :],
                mask=row_in[:, None], other=0.0)
    c2p_rows = c2p_ptr + b * sc_b + h * sc_h + rm[:, None] * sc_l
    top = tl.full([BLOCK_M], float("-inf"), tl.float32)
    total = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD], tl.float32)
    # the key loop's bound: a runtime value on a GPU (one compiled version for every length),
    # a compile-time one in Triton's interpreter (STATIC; it cannot run a runtime bound)
    if STATIC:
        for block in range(0, N_BLOCKS):
            top, total, acc = _key_block(q, k_ptr, v_ptr, c2p_rows, p2c_ptr, c2p_idx_ptr, p2c_idx_ptr, keep_ptr,
                                         block, rm, rd, rn, row_in, b, h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
                                         sp_b, sp_h, sp_l, sm_b, length, scale, top, total, acc, BLOCK_N, IEEE)
    else:
        for block in range(0, tl.cdiv(length, BLOCK_N)):
            top, total, acc = _key_block(q, k_ptr, v_ptr, c2p_rows, p2c_ptr, c2p_idx_ptr, p2c_idx_ptr, keep_ptr,
                                         block, rm, rd, rn, row_in, b, h, sk_b, sk_l, sk_h, sv_b, sv_l, sv_h,
                                         sp_b, sp_h, sp_l, sm_b, length, scale, top, total, acc, BLOCK_N, IEEE)
    # a sequence with no unmasked key (never one the scorer builds) gives zeros, not NaN
    out = acc / tl.where(total == 0.0, 1.0, total)[:, None]
    tl.store(o_ptr + b * so_b + h * so_h + rm[:, None] * so_l + rd[None, :],
             out.to(o_ptr.dtype.element_ty), mask=row_in[:, None])
