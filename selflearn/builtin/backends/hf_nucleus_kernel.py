"""The Triton code of :mod:`.hf_nucleus` (imported only when the kernel runs: it needs Triton,
which CPU installs may lack; Triton resolves the helpers below as module globals)."""

# mypy: ignore-errors
# ruff: noqa: ANN001, ANN202, SIM108

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _mix64(x):
    # splitmix64's finaliser on uint64 (logical shifts, wrapping products): hf_sampling.mix64
    x = x ^ (x >> 30)
    x = x * 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _gumbel(step_key, ids, LIBDEVICE: tl.constexpr):
    # hf_sampling.uniform_at at these token ids, then -log(-log(u)); libdevice's logarithm is
    # accurate to the last bit (as PyTorch's); Triton's interpreter (CPU tests) lacks it
    h = _mix64(step_key + ids.to(tl.uint64) * 0xD1B54A32D192ED03)
    u = (((h >> 41) & 0x7FFFFF).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    if LIBDEVICE:
        g = -libdevice.log(-libdevice.log(u))
    else:
        g = -tl.log(-tl.log(u))
    return g


@triton.jit
def nucleus_sample(
    s_ptr, stride_s, keys_ptr, step_ptr, out_ptr,
    top_p, temperature,
    VOCAB: tl.constexpr, FILTER: tl.constexpr, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr,
):
    """One program per row; see hf_nucleus's module docstring for the passes."""
    row = tl.program_id(0)
    base = s_ptr + row.to(tl.int64) * stride_s
    key = tl.load(keys_ptr + row).to(tl.uint64, bitcast=True)
    step = tl.load(step_ptr).to(tl.uint64, bitcast=True)
    step_key = _mix64(key + (step + 1) * 0x9E3779B97F4A7C15)
    lanes = tl.arange(0, BLOCK)
    # pass 1: log-sum-exp and the Gumbel argmax over every token
    top = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    best = tl.full([], float("-inf"), tl.float32)
    cand = tl.zeros([], tl.int32)
    for start in range(0, VOCAB, BLOCK):
        ids = start + lanes
        inside = ids < VOCAB
        s = tl.load(base + ids, mask=inside, other=float("-inf")) / temperature
        new_top = tl.maximum(top, tl.max(s, 0))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        total = total * tl.exp(top - shift) + tl.sum(tl.exp(s - shift), 0)
        top = new_top
        z = tl.where(inside, s + _gumbel(step_key, ids, LIBDEVICE), float("-inf"))
        zb = tl.max(z, 0)
        ib = start + tl.argmax(z, 0, tie_break_left=True)
        cand = tl.where(zb > best, ib, cand)
        best = tl.maximum(zb, best)
    # the answer is stored as soon as it is known, and again by each check below: on the GPU a
    # value reassigned inside the while loop was not seen after it (Triton 3.6; found on an H100)
    tl.store(out_ptr + row, cand.to(tl.int64))
    if FILTER:
        lse = top + tl.log(total)
        mass = tl.full([], 2.0, tl.float32)  # anything >= top_p: the check runs at least once
        moved = cand == cand
        while (mass >= top_p) & moved:
            # is tok in the nucleus? (mass ranked above it); and the argmax over the tokens
            # ranked above it, the next candidate should it not be
            tok = cand
            tl.store(out_ptr + row, tok.to(tl.int64))
            s_tok = tl.load(base + tok) / temperature
            mass = tl.zeros([], tl.float32)
            best = tl.full([], float("-inf"), tl.float32)
            for start in range(0, VOCAB, BLOCK):
                ids = start + lanes
                inside = ids < VOCAB
                s = tl.load(base + ids, mask=inside, other=float("-inf")) / temperature
                above = inside & ((s > s_tok) | ((s == s_tok) & (ids > tok)))
                mass += tl.sum(tl.where(above, tl.exp(s - lse), 0.0), 0)
                z = tl.where(above, s + _gumbel(step_key, ids, LIBDEVICE), float("-inf"))
                zb = tl.max(z, 0)
                ib = start + tl.argmax(z, 0, tie_break_left=True)
                cand = tl.where(zb > best, ib, cand)
                best = tl.maximum(zb, best)
            # no token above tok can be drawn (all -inf): tok stays
            moved = cand != tok
