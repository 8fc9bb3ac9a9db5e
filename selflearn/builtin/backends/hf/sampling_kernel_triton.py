"""The Triton code of :mod:`.sampling_kernel` (imported only when the kernel runs: it needs Triton,
which CPU installs may lack; Triton resolves the helpers below as module globals)."""

# mypy: ignore-errors
# ruff: noqa: ANN001, ANN202, SIM102, SIM108

import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _mix64(x):
    # splitmix64's finaliser on uint64 (logical shifts, wrapping products): sampling.mix64
    x = x ^ (x >> 30)
    x = x * 0xBF58476D1CE4E5B9
    x = x ^ (x >> 27)
    x = x * 0x94D049BB133111EB
    return x ^ (x >> 31)


@triton.jit
def _gumbel(step_key, ids, LIBDEVICE: tl.constexpr):
    # sampling.uniform_at at these token ids, then -log(-log(u)); libdevice's logarithm is
    # accurate to the last bit (as PyTorch's); Triton's interpreter (CPU tests) lacks it
    h = _mix64(step_key + ids.to(tl.uint64) * 0xD1B54A32D192ED03)
    u = (((h >> 41) & 0x7FFFFF).to(tl.float32) + 0.5) * (1.0 / 8388608.0)
    if LIBDEVICE:
        g = -libdevice.log(-libdevice.log(u))
    else:
        g = -tl.log(-tl.log(u))
    return g


@triton.jit
def _insert(z0, z1, z2, z3, i0, i1, i2, i3, zb, ib):
    # (zb, ib) into the list z0 >= z1 >= z2 >= z3 of the best noisy scores so far and their ids
    # (strictly greater only: of equal scores the earlier id stays first, as argmax's)
    n3 = tl.where(zb > z2, z2, tl.where(zb > z3, zb, z3))
    j3 = tl.where(zb > z2, i2, tl.where(zb > z3, ib, i3))
    n2 = tl.where(zb > z1, z1, tl.where(zb > z2, zb, z2))
    j2 = tl.where(zb > z1, i1, tl.where(zb > z2, ib, i2))
    n1 = tl.where(zb > z0, z0, tl.where(zb > z1, zb, z1))
    j1 = tl.where(zb > z0, i0, tl.where(zb > z1, ib, i1))
    n0 = tl.where(zb > z0, zb, z0)
    j0 = tl.where(zb > z0, ib, i0)
    return n0, n1, n2, n3, j0, j1, j2, j3


@triton.jit
def _scores(base, start, temperature, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
    # the block of scores s = logit / T from token id start on (-inf past the vocabulary)
    ids = start + tl.arange(0, BLOCK)
    inside = ids < VOCAB
    return ids, inside, tl.load(base + ids, mask=inside, other=float("-inf")) / temperature


@triton.jit
def _ranked_above(s, ids, s_tok, tok):
    # the full path's order (a stable ascending sort): a higher score, or an equal score and a
    # higher id, ranks above
    return (s > s_tok) | ((s == s_tok) & (ids > tok))


@triton.jit
def _mass_above(base, tok, s_tok, lse, temperature, VOCAB: tl.constexpr, BLOCK: tl.constexpr):
    # probability mass of the tokens ranked above tok
    mass = tl.zeros([], tl.float32)
    for start in range(0, VOCAB, BLOCK):
        ids, inside, s = _scores(base, start, temperature, VOCAB, BLOCK)
        above = inside & _ranked_above(s, ids, s_tok, tok)
        mass += tl.sum(tl.where(above, tl.exp(s - lse), 0.0), 0)
    return mass


@triton.jit
def _try_entry(base, out_ptr, row, tok, s_tok, mass, cand, lse, top_p, temperature,
               VOCAB: tl.constexpr, BLOCK: tl.constexpr):
    # tok was rejected (mass >= top_p): the next list entry ranked above it, if any, is the
    # Gumbel argmax over the tokens ranked above tok; check it
    if mass >= top_p:
        s_c = tl.load(base + cand) / temperature
        if _ranked_above(s_c, cand, s_tok, tok):
            tok = cand
            s_tok = s_c
            tl.store(out_ptr + row, tok.to(tl.int64))
            mass = _mass_above(base, tok, s_tok, lse, temperature, VOCAB, BLOCK)
    return tok, s_tok, mass


@triton.jit
def nucleus_sample(
    s_ptr, stride_s, keys_ptr, step_ptr, stride_step, out_ptr, greedy_ptr,
    top_p, temperature,
    VOCAB: tl.constexpr, FILTER: tl.constexpr, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr,
    MIXED: tl.constexpr,
):
    """One program per row; see sampling_kernel's module docstring for the passes. With MIXED,
    rows whose ``greedy_ptr`` entry is nonzero take the argmax of their scores instead: no
    noise, temperature 1, and no nucleus check (the best token is always in the nucleus)."""
    row = tl.program_id(0)
    if MIXED:
        noisy = tl.load(greedy_ptr + row) == 0
        temperature = tl.where(noisy, temperature, 1.0)
    else:
        noisy = True
    base = s_ptr + row.to(tl.int64) * stride_s
    key = tl.load(keys_ptr + row).to(tl.uint64, bitcast=True)
    step = tl.load(step_ptr + row * stride_step).to(tl.uint64, bitcast=True)
    step_key = _mix64(key + (step + 1) * 0x9E3779B97F4A7C15)
    # pass 1: log-sum-exp, and the four best noisy scores s + g over every token (the first
    # is the Gumbel argmax; the others are the next candidates should it be outside the nucleus)
    top = tl.full([], float("-inf"), tl.float32)
    total = tl.zeros([], tl.float32)
    z0 = tl.full([], float("-inf"), tl.float32)
    z1 = z0
    z2 = z0
    z3 = z0
    i0 = tl.zeros([], tl.int32)
    i1 = i0
    i2 = i0
    i3 = i0
    for start in range(0, VOCAB, BLOCK):
        ids, inside, s = _scores(base, start, temperature, VOCAB, BLOCK)
        new_top = tl.maximum(top, tl.max(s, 0))
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        total = total * tl.exp(top - shift) + tl.sum(tl.exp(s - shift), 0)
        top = new_top
        g = _gumbel(step_key, ids, LIBDEVICE)
        if MIXED:
            g = tl.where(noisy, g, 0.0)
        z = tl.where(inside, s + g, float("-inf"))
        if tl.max(z, 0) > z3:  # this block holds at least one of the four best so far
            for _ in tl.static_range(4):
                zb = tl.max(z, 0)
                ib = start + tl.argmax(z, 0, tie_break_left=True)
                z0, z1, z2, z3, i0, i1, i2, i3 = _insert(z0, z1, z2, z3, i0, i1, i2, i3, zb, ib)
                z = tl.where(ids == ib, float("-inf"), z)
    tl.store(out_ptr + row, i0.to(tl.int64))
    if FILTER:
        if noisy:  # nested: FILTER is a compile-time constant, noisy (MIXED) a loaded value
            _nucleus_check(base, out_ptr, row, step_key, top + tl.log(total), i0, i1, i2, i3, top_p, temperature,
                           VOCAB, BLOCK, LIBDEVICE)


@triton.jit
def _nucleus_check(base, out_ptr, row, step_key, lse, i0, i1, i2, i3, top_p, temperature,
                   VOCAB: tl.constexpr, BLOCK: tl.constexpr, LIBDEVICE: tl.constexpr):
    # passes 2 and 3 of the module docstring: the Gumbel argmax i0 checked against the nucleus,
    # then the other three best, then (rarely) passes that compute the noise again. The answer
    # is stored as soon as a candidate is known and again at each later candidate: on the GPU,
    # a value reassigned inside a while loop was not seen after it (Triton 3.6, found on an
    # H100; the interpreter does not show it)
    tok = i0
    s_tok = tl.load(base + tok) / temperature
    mass = _mass_above(base, tok, s_tok, lse, temperature, VOCAB, BLOCK)
    # if not in the nucleus, the next candidates from the list (about 1 - top_p of the rows)
    tok, s_tok, mass = _try_entry(base, out_ptr, row, tok, s_tok, mass, i1, lse, top_p, temperature, VOCAB, BLOCK)
    tok, s_tok, mass = _try_entry(base, out_ptr, row, tok, s_tok, mass, i2, lse, top_p, temperature, VOCAB, BLOCK)
    tok, s_tok, mass = _try_entry(base, out_ptr, row, tok, s_tok, mass, i3, lse, top_p, temperature, VOCAB, BLOCK)
    if mass >= top_p:
        # the list ran out (rare): from tok on, passes that check a candidate and find the
        # argmax over the tokens ranked above it (the noise computed again)
        cand = tok
        moved = cand == cand
        while (mass >= top_p) & moved:
            tok = cand
            tl.store(out_ptr + row, tok.to(tl.int64))
            s_tok = tl.load(base + tok) / temperature
            mass = tl.zeros([], tl.float32)
            best = tl.full([], float("-inf"), tl.float32)
            for start in range(0, VOCAB, BLOCK):
                ids, inside, s = _scores(base, start, temperature, VOCAB, BLOCK)
                above = inside & _ranked_above(s, ids, s_tok, tok)
                mass += tl.sum(tl.where(above, tl.exp(s - lse), 0.0), 0)
                z = tl.where(above, s + _gumbel(step_key, ids, LIBDEVICE), float("-inf"))
                zb = tl.max(z, 0)
                ib = start + tl.argmax(z, 0, tie_break_left=True)
                cand = tl.where(zb > best, ib, cand)
                best = tl.maximum(zb, best)
            # no token above tok can be drawn (all -inf): tok stays
            moved = cand != tok
