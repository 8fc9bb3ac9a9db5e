"""Exact top-p sampling in one Triton kernel: the token :func:`.sampling.select` chooses,
without sorting the vocabulary and without a candidate set.

Why: the shared decoder's token selection on top-k candidates (:mod:`.candidate_sampling`) spent
about a quarter of a small model's decode step in ``torch.topk`` over the whole vocabulary, a
vocabulary-wide log-sum-exp and copies, plus a full sort for a fixed number of "overflow" rows
whose nucleus did not fit in the candidates (and rows beyond those slots were *truncated*:
sampled from their candidates only). This kernel needs neither a sort nor candidates.

**The idea.** The full path picks ``argmax over the nucleus N of (s_u + g_u)`` (Gumbel-max with
the counter-based noise ``g`` of :func:`.sampling.uniform_noise`), where N is the set of
tokens whose *mass ranked above them* is below ``top_p``. That membership is a property of
one token, checkable in one pass: ``mass_above(v) = sum of softmax(s)_u over the tokens u
ranked above v`` (higher score, or equal score and a higher id: the order of the full path's
stable ascending sort). So, per row (one program per row):

1. one pass: the log-sum-exp of the row and the four best noisy scores ``s_u + g_u`` over
   *all* tokens (the first, v, is the Gumbel argmax);
2. one pass of plain sums (no noise): ``mass_above(v)``; if it is below ``top_p``, v is in N
   and is the answer (every token of N competes in the same argmax with the same noise). If
   not, v and every token ranked below it are outside N, so the answer is the argmax over the
   tokens ranked above v: the first of the other three best that is ranked above v, if any
   (the noisy scores between them belong to tokens ranked below v); step 2 repeats with it.
3. Only when the four are used up (rare) do passes compute the noise again: each checks a
   candidate and finds the argmax over the tokens ranked above it.

Each check succeeds with probability at least ``mass(N) >= top_p`` (Gumbel-max over the
tokens above v picks a token of N with probability ``mass(N) / mass(above v)``), so a row
takes about two passes over its logits on average (one with noise, about 1.1 without),
whatever the shape of its distribution: flat rows with huge nuclei cost the same as peaked
ones. Nothing is truncated and nothing depends on the other rows.

**Exactness.** The chosen token is the full path's token, up to float rounding: the mass sums
are added in another order than the full path's cumulative sum (a token whose ranked-above
mass is within about 1e-7 of ``top_p`` can fall on the other side), and the Gumbel noise's
logarithms may differ from PyTorch's in the last bit (which changes the argmax only for two
scores within about 1e-7 of each other).

The repetition penalty is applied before (a scatter over the seen ids, as in
:mod:`.candidate_sampling`); temperature is applied on load (``s = x / T``, as the full path
divides). Log-probabilities under the processed distribution (``logprobs: sampling``) need the
nucleus' total mass, which this kernel does not compute: that mode keeps the candidate path.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from .candidate_sampling import penalize_ids
from .fallbacks import SamplingKernelFailed, piece
from .sampling import SamplingConfig

if TYPE_CHECKING:
    import torch

#: logits per block of the kernel's passes (a power of two) and warps per program (one program
#: per row): the best of 9 launch configurations on an H100 for 640 rows of 49,152 and 32,000
#: logits (benchmarks/profile_step.py, part select)
BLOCK = 4096
WARPS = 8


@functools.cache
def _kernel() -> Any:
    from .sampling_kernel_triton import nucleus_sample

    return nucleus_sample


def sample(
    scores: torch.Tensor, keys: torch.Tensor, step: torch.Tensor, top_p: float, temperature: float,
    *, greedy: torch.Tensor | None = None, block: int = BLOCK, num_warps: int = WARPS,
) -> torch.Tensor:
    """One token per row of ``scores`` (float32 (rows, V), repetition penalty applied,
    temperature not): Gumbel-max over the top-p nucleus of ``softmax(scores / temperature)``
    with the noise of row key ``keys`` (int64 (rows,)) at ``step`` (an int64 tensor, one
    element or one per row: each row's own step after refills; a tensor so that a CUDA graph
    replays with the current step). ``greedy`` (bool (rows,), optional): rows that take the
    argmax of their scores instead (temperature 1), so that a greedy answer and samples of
    the same prompt decode in one batch. int64 (rows,)."""
    import torch

    rows, vocab = scores.shape
    step = step.reshape(-1)
    if scores.stride(-1) != 1:
        scores = scores.contiguous()
    out = torch.empty(rows, dtype=torch.int64, device=scores.device)
    with piece(SamplingKernelFailed):
        _kernel()[(rows,)](
            scores, scores.stride(0), keys, step, 1 if step.numel() > 1 else 0, out,
            greedy if greedy is not None else keys, float(top_p), float(temperature),
            VOCAB=vocab, FILTER=top_p < 1.0, BLOCK=block, LIBDEVICE=scores.is_cuda, MIXED=greedy is not None,
            num_warps=num_warps,
        )
    return out


def select_nucleus(
    logits: torch.Tensor, seen_ids: torch.Tensor, keys: torch.Tensor, step: torch.Tensor, cfg: SamplingConfig,
    greedy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The shared decoder's token selection with :func:`sample` (sampling configurations with
    ``logprobs`` None or "model"; see the module docstring). ``logits`` (float32 (rows, V)) is
    modified in place (repetition penalty), as by :func:`.candidate_sampling.select_candidates`.
    ``greedy``: bool (rows,), the rows that decode greedily (see :func:`sample`). Returns
    (tokens, log-probabilities under the raw model or None)."""
    import torch

    if cfg.greedy or cfg.logprobs == "sampling":
        raise ValueError("select_nucleus samples (greedy and logprobs='sampling' use select_candidates)")
    raw_lse = raw_seen = None
    if cfg.logprobs == "model":
        # the raw logit of the chosen token: unchanged unless the penalty touched it
        raw_lse = logits.logsumexp(dim=-1)
        raw_seen = logits.gather(1, seen_ids)
    scores = penalize_ids(logits, seen_ids, cfg.repetition_penalty)
    tokens = sample(scores, keys, step, cfg.top_p, cfg.temperature, greedy=greedy)
    if raw_lse is None or raw_seen is None:
        return tokens, None
    raw = scores.gather(1, tokens[:, None])[:, 0]
    hit = seen_ids == tokens[:, None]  # every copy of a seen id holds the same raw value
    from_seen = raw_seen.masked_fill(~hit, float("-inf")).amax(dim=1)
    raw = torch.where(hit.any(dim=1), from_seen, raw)
    return tokens, raw - raw_lse
