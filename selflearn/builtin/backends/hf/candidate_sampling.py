"""Token selection on a top-k candidate set: the same samples as :func:`.sampling.select`,
without the vocabulary-wide sort and noise.

Why: :func:`.sampling.select` sorts every row's whole vocabulary for top-p and hashes one
noise value per vocabulary entry: at 640 rows x 49,152 entries that is 31 M sort keys and 31 M
64-bit hashes per generated token, more work than a small model's forward pass. Here each row
keeps only its ``k`` best-scoring tokens (``torch.topk``, sorted), and everything after that
works on (rows, k):

* the nucleus is computed from the candidates' probabilities under the **full** softmax (its
  normaliser is one vocabulary-wide log-sum-exp): a candidate is kept iff the probability mass
  of the candidates ranked above it is below ``top_p`` (transformers' ``TopPLogitsWarper`` rule,
  written from the top instead of the bottom);
* noise is hashed for the ``k`` candidate ids only, with the same counter-based hash of
  (row key, step, token id) as the full path, and Gumbel-max picks among the kept candidates.

**Exactness.** When a row's nucleus fits in its ``k`` candidates (the candidates hold at least
``top_p`` of the mass), the kept set is the nucleus and every kept token gets the same score
and the same noise as on the full path, so the chosen token is *the same token* the full path
chooses (not merely one from the same distribution), up to float rounding at the nucleus
boundary (the cumulative sums are added in another order; a token whose cumulative mass is
within about 1e-7 of ``top_p`` can fall on the other side).

**Rows whose nucleus is larger than k** (flat distributions) are *overflow rows*. Up to
``overflow_slots`` of them per step take the exact full-vocabulary path
(:func:`.sampling.select` on just those rows), so they too get exactly the full path's token.
Overflow rows beyond that are **truncated**: sampled from their ``k`` candidates (the top of
their nucleus, renormalised) - a different, slightly narrower distribution, and no longer
batch-invariant. Their number is added to a counter (``stats[1]``) that the decoder reports
(and logs) after each batch, so a run knows whether any sample was truncated; raise ``k`` or
the overflow share when it is not zero. ``stats[0]`` counts all overflow rows.

Greedy selection is ``argmax`` of the penalised logits, as on the full path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from .sampling import SamplingConfig, top_p_filter, uniform_at, uniform_noise

if TYPE_CHECKING:
    import torch


def _rows_of(step: torch.Tensor | int, idx: torch.Tensor) -> torch.Tensor | int:
    """``step`` at rows ``idx`` when it is one per row (the shared decoder's own steps)."""
    if isinstance(step, int) or step.dim() == 0 or step.numel() == 1:
        return step
    return step.index_select(0, idx)


def penalize_ids(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' repetition penalty from a list of seen token ids per row (in place).

    ``seen_ids`` (rows, S) may repeat ids (padding repeats a real one): every copy writes the
    same penalised value, computed from the unpenalised logit, so repeats are harmless. This
    costs rows x S work instead of a vocabulary-wide mask.
    """
    import torch

    if penalty == 1.0:
        return logits
    vals = logits.gather(1, seen_ids)
    vals = torch.where(vals < 0, vals * penalty, vals / penalty)
    # an indexed store, not scatter_: compiled (select_candidates), inductor lowers scatter_ on
    # an input as a copy of all the logits plus the scatter, and index_put_ in place
    rows = torch.arange(logits.shape[0], device=logits.device)[:, None]
    logits[rows, seen_ids] = vals
    return logits


def _full_rows(
    scores: torch.Tensor, keys: torch.Tensor, step: torch.Tensor | int, top_p: float,
    vocab: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The full path of :func:`.sampling.select` on some rows: tokens and the sampling
    log-probability of each under the nucleus."""
    import torch

    masked = top_p_filter(scores, top_p)
    u = uniform_noise(keys, step, scores.shape[-1], vocab)
    tokens = (masked - torch.log(-torch.log(u))).argmax(dim=-1)
    lp = masked.log_softmax(dim=-1).gather(1, tokens[:, None])[:, 0]
    return tokens, lp


#: :func:`full_rows_uncompiled`'s one function (a list, not ``functools.cache``: dynamo
#: traces through a cache wrapper and warns that doing so may be silently wrong)
_FULL_ROWS_UNCOMPILED: list[Callable[..., tuple[torch.Tensor, torch.Tensor]]] = []


def full_rows_uncompiled() -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """:func:`_full_rows` marked for ``torch.compile`` to leave alone (a graph break): its
    vocabulary-wide sort and cumulative sum run as PyTorch's own kernels, and inductor's split
    scan for a long cumulative sum over few rows fails to generate code in torch 2.11. Made
    once, outside traced code (dynamo cannot call ``torch.compiler.disable`` while tracing):
    the decoder calls this before compiling, and the traced call only reads the list."""
    if not _FULL_ROWS_UNCOMPILED:
        import torch

        _FULL_ROWS_UNCOMPILED.append(torch.compiler.disable(_full_rows))
    return _FULL_ROWS_UNCOMPILED[0]


def select_candidates(
    logits: torch.Tensor,
    seen_ids: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor | int,
    cfg: SamplingConfig,
    k: int,
    overflow_slots: int,
    stats: torch.Tensor,
    vocab: torch.Tensor,
    live: torch.Tensor | None = None,
    greedy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose one token per row (see the module docstring); fixed shapes, no host sync.

    ``logits``: float32 (rows, V) raw logits, **modified in place** (repetition penalty);
    ``seen_ids``: int64 (rows, S) prompt and generated ids; ``keys``: int64 (rows,);
    ``stats``: int64 (2,) counters (overflow rows, truncated rows), incremented in place;
    ``vocab``: :func:`.sampling.vocab_keys` of width V; ``live``: bool (rows,), the rows
    still generating (None: all); ``greedy``: bool (rows,), the rows that take the argmax of
    their penalised logits instead (a mixed run; not with ``logprobs`` "sampling"). Finished
    and padding rows keep running in a fixed-shape batch on logits that mean nothing (often
    flat): they neither take an exact slot from a live row nor count as overflow or truncated.
    """
    import torch

    raw_lse = logits.logsumexp(dim=-1) if cfg.logprobs == "model" else None
    raw_at = None
    if cfg.greedy:
        return _greedy(logits, seen_ids, cfg, raw_lse)
    if raw_lse is not None:
        # the raw logit of every candidate is needed later; keep the unpenalised row values
        raw_at = logits.clone()
    scores = penalize_ids(logits, seen_ids, cfg.repetition_penalty)
    # a mixed run's greedy rows and their argmax, taken before the temperature (as _greedy)
    argmax_rows = (greedy, scores.argmax(dim=-1)) if greedy is not None else None
    if cfg.temperature != 1.0:
        scores = scores.div_(cfg.temperature)
    tokens, lp, covered = _draw(scores, keys, step, cfg, k, vocab)
    over = ~covered if live is None else ~covered & live
    if argmax_rows is not None:
        over = over & ~argmax_rows[0]
    tokens, lp = _resample_overflow(over, scores, keys, step, cfg, overflow_slots, stats, vocab, tokens, lp)
    if argmax_rows is not None:
        tokens = torch.where(argmax_rows[0], argmax_rows[1], tokens)
    if raw_lse is not None and raw_at is not None:
        lp = raw_at.gather(1, tokens[:, None])[:, 0] - raw_lse
    return tokens, lp


def _draw(scores: torch.Tensor, keys: torch.Tensor, step: torch.Tensor | int, cfg: SamplingConfig, k: int,
          vocab: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Gumbel-max over each row's top-p nucleus among its ``k`` best ``scores`` (temperature
    applied): (tokens, their log-probabilities under that distribution for ``logprobs``
    "sampling" else None, whether the candidates held the row's whole nucleus)."""
    import torch

    kk = min(k, scores.shape[-1])
    top_v, top_i = scores.topk(kk, dim=-1)  # sorted, best first
    lse = scores.logsumexp(dim=-1, keepdim=True)
    probs = (top_v - lse).exp()
    cum = probs.cumsum(dim=-1)
    keep = (cum - probs) < cfg.top_p  # mass ranked above each candidate
    keep[:, 0] = True
    covered = cum[:, -1] >= cfg.top_p if kk < scores.shape[-1] else torch.ones_like(keep[:, 0])
    u = uniform_at(keys, step, vocab.index_select(0, top_i.reshape(-1)).view_as(top_i))
    masked = top_v.masked_fill(~keep, float("-inf"))
    pick = (masked - torch.log(-torch.log(u))).argmax(dim=-1, keepdim=True)
    tokens = top_i.gather(1, pick)[:, 0]
    lp = None
    if cfg.logprobs == "sampling":
        lp = (masked.gather(1, pick) - masked.logsumexp(dim=-1, keepdim=True))[:, 0]
    return tokens, lp, covered


def _greedy(logits: torch.Tensor, seen_ids: torch.Tensor, cfg: SamplingConfig,
            raw_lse: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`select_candidates` for greedy decoding: the best penalised token per row, and
    its log-probability under the model (``raw_lse``: the unpenalised logits are kept for it)
    or under the penalised distribution."""
    if raw_lse is not None:
        tokens = penalize_ids(logits.clone(), seen_ids, cfg.repetition_penalty).argmax(dim=-1)
        return tokens, logits.gather(1, tokens[:, None])[:, 0] - raw_lse
    scores = penalize_ids(logits, seen_ids, cfg.repetition_penalty)
    tokens = scores.argmax(dim=-1)
    if cfg.logprobs is None:
        return tokens, None
    return tokens, scores.log_softmax(dim=-1).gather(1, tokens[:, None])[:, 0]


def _resample_overflow(
    over: torch.Tensor, scores: torch.Tensor, keys: torch.Tensor, step: torch.Tensor | int,
    cfg: SamplingConfig, overflow_slots: int, stats: torch.Tensor, vocab: torch.Tensor,
    tokens: torch.Tensor, lp: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The rows whose top-p mass lies beyond the k candidates (``over``) sampled again over the
    full vocabulary, in at most ``overflow_slots`` fixed slots (fixed shapes: no host sync);
    the ``stats`` counters count overflow rows and those left without a slot (truncated)."""
    import torch

    over_n = over.sum()
    slots = min(overflow_slots, scores.shape[0])
    if slots <= 0:
        stats[1] += over_n
        stats[0] += over_n
        return tokens, lp
    # overflow rows first (stable: by row order); the rest of the slots do harmless work
    idx = torch.argsort(over.to(torch.int8), descending=True, stable=True)[:slots]
    use = over.index_select(0, idx)
    full = full_rows_uncompiled() if torch.compiler.is_compiling() else _full_rows
    sub_tok, sub_lp = full(
        scores.index_select(0, idx), keys.index_select(0, idx), _rows_of(step, idx), cfg.top_p, vocab
    )
    tokens = tokens.scatter(0, idx, torch.where(use, sub_tok, tokens.index_select(0, idx)))
    if lp is not None:
        lp = lp.scatter(0, idx, torch.where(use, sub_lp, lp.index_select(0, idx)))
    stats[1] += over_n - use.sum()
    stats[0] += over_n
    return tokens, lp
