"""The knowledge filters and the preference-pair choice, in pure Python (method.md 7.3, 7.4, 9).

Kept apart from the stage so that they can be checked on hand-made score tables:

- :func:`decide`: keep a question iff S_L <= tau_L (consistency filter on) and S_K > tau_K
  (knowledge filter on). The two filters are independent: switching one off never switches
  the other off (the research code dropped the consistency filter whenever tau_K was 0). A
  missing score (None, or NaN) removes the question when its filter is on, and is counted.
- :func:`rejected_candidates`: the Y_r samples that may be rejected, most contradicting first.
- :func:`single_pair` / :func:`multiple_pairs` / :func:`no_passage_pairs`: the pair modes.

The length/termination asymmetry (method.md 7.4): y* is clean, but a sample that hit
``max_new_tokens`` ends mid-sentence, and DPO could learn "unfinished = bad" instead of
"wrong = bad". ``truncated`` decides what happens to such samples: ``drop`` (default: never
use them in a pair), ``trim`` (cut them after their last complete sentence; dropped if nothing
is left) or ``keep`` (use them as they are; the pair's provenance marks it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

import attrs

from ..records import Completion

Truncated = Literal["drop", "trim", "keep"]

_SENTENCE_END = re.compile(r"[.!?][\"'\u201d\u2019)\]]*(?=\s|$)")


@attrs.frozen
class FilterConfig:
    tau_l: float = 0.5
    tau_k: float = 0.5
    consistency: bool = True
    knowledge: bool = True


def _missing(value: float | None) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def decide(s_l: float | None, s_k: float | None, cfg: FilterConfig) -> str:
    """``"kept"``, or why the question is removed: ``s_l_missing``, ``consistency``,
    ``s_k_missing`` or ``knowledge`` (checked in this order, so counts are disjoint)."""
    if cfg.consistency:
        if _missing(s_l):
            return "s_l_missing"
        assert s_l is not None
        if not s_l <= cfg.tau_l:
            return "consistency"
    if cfg.knowledge:
        if _missing(s_k):
            return "s_k_missing"
        assert s_k is not None
        if not s_k > cfg.tau_k:
            return "knowledge"
    return "kept"


@attrs.frozen
class Candidate:
    """One answer that may enter a pair: where it comes from, its text and score."""

    source: str  # "reference", "with_passage[i]" or "without_passage[i]"
    index: int  # index in its sample list (-1 for the reference)
    text: str
    score: float | None
    finish_reason: str = "stop"
    trimmed: bool = False


def trim_to_sentence(text: str) -> str:
    """``text`` cut after its last complete sentence ("" if it has none)."""
    ends = list(_SENTENCE_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def usable(
    source: str, index: int, comp: Completion, score: float | None, truncated: Truncated
) -> Candidate | None:
    """A candidate from a completion, or None (no score, empty, or a dropped truncation)."""
    if _missing(score):
        return None
    text = comp.text.strip()
    trimmed = False
    if comp.finish_reason == "length":
        if truncated == "drop":
            return None
        if truncated == "trim":
            text, trimmed = trim_to_sentence(text), True
    if not text:
        return None
    return Candidate(source, index, text, score, comp.finish_reason, trimmed)


def _candidates(
    name: str, samples: Sequence[Completion], scores: Sequence[float | None], truncated: Truncated
) -> list[Candidate]:
    out = []
    for i, comp in enumerate(samples):
        score = scores[i] if i < len(scores) else None
        cand = usable(f"{name}[{i}]", i, comp, score, truncated)
        if cand is not None:
            out.append(cand)
    return out


def rejected_candidates(
    chosen: str,
    samples: Sequence[Completion],
    scores: Sequence[float | None],
    truncated: Truncated = "drop",
    *,
    min_score: float | None = None,
) -> list[Candidate]:
    """Y_r samples usable as rejected, highest score first (ties: lower index first).

    A sample whose text equals ``chosen`` is never a rejected answer; with ``min_score``,
    only samples scoring strictly above it are kept.
    """
    cands = [
        c
        for c in _candidates("without_passage", samples, scores, truncated)
        if c.text != chosen.strip() and (min_score is None or (c.score or 0.0) > min_score)
    ]
    return sorted(cands, key=lambda c: (-(c.score or 0.0), c.index))


def single_pair(
    reference: Completion,
    samples: Sequence[Completion],
    scores: Sequence[float | None],
    truncated: Truncated = "drop",
) -> tuple[Candidate, Candidate] | None:
    """(chosen = y*, rejected = the Y_r sample with the highest per-sample score), or None."""
    rejected = rejected_candidates(reference.text, samples, scores, truncated)
    if not rejected or not reference.text.strip():
        return None
    return Candidate("reference", -1, reference.text.strip(), None), rejected[0]


def multiple_pairs(
    reference: Completion,
    with_passage: Sequence[Completion],
    consistency_scores: Sequence[float | None],
    without_passage: Sequence[Completion],
    knowledge_scores: Sequence[float | None],
    cfg: FilterConfig,
    max_pairs: int = 4,
    truncated: Truncated = "drop",
) -> list[tuple[Candidate, Candidate]]:
    """Up to ``max_pairs`` pairs per question (method.md 9.2, made deterministic).

    Chosen candidates: y* first, then the Y_c samples with per-sample score <= tau_L (when the
    consistency filter is on), least contradicting first. Rejected candidates: the Y_r samples
    with per-sample score > tau_K (when the knowledge filter is on), most contradicting first.
    Pair i joins chosen i with rejected i, for i < min(#chosen, #rejected, max_pairs); so the
    first pair is always the single-mode pair. No pair has equal texts on both sides.
    """
    if not reference.text.strip():
        return []
    chosen = [Candidate("reference", -1, reference.text.strip(), None)]
    seen = {chosen[0].text}
    extra = _candidates("with_passage", with_passage, consistency_scores, truncated)
    for c in sorted(extra, key=lambda c: (c.score or 0.0, c.index)):
        if cfg.consistency and not (c.score or 0.0) <= cfg.tau_l:
            continue
        if c.text not in seen:
            seen.add(c.text)
            chosen.append(c)
    rejected = rejected_candidates(
        reference.text,
        without_passage,
        knowledge_scores,
        truncated,
        min_score=cfg.tau_k if cfg.knowledge else None,
    )
    rejected = [r for r in rejected if r.text not in seen]
    n = min(len(chosen), len(rejected), max(max_pairs, 0))
    return list(zip(chosen[:n], rejected[:n], strict=True))


def no_passage_pairs(
    samples: Sequence[Completion],
    mutual_scores: Sequence[float | None],
    max_pairs: int = 1,
    truncated: Truncated = "drop",
) -> list[tuple[Candidate, Candidate]]:
    """The no-passage variant (method.md 9.4): each Y_r sample scored against the others;
    chosen = the least contradicted sample, rejected = the most contradicted one. With
    ``max_pairs`` > 1, the i-th lowest is paired with the i-th highest while they differ."""
    cands = _candidates("without_passage", samples, mutual_scores, truncated)
    ordered = sorted(cands, key=lambda c: (c.score or 0.0, c.index))
    pairs: list[tuple[Candidate, Candidate]] = []
    lo, hi = 0, len(ordered) - 1
    while lo < hi and len(pairs) < max_pairs:
        chosen, rejected = ordered[lo], ordered[hi]
        if (chosen.score or 0.0) < (rejected.score or 0.0) and chosen.text != rejected.text:
            pairs.append((chosen, rejected))
        lo, hi = lo + 1, hi - 1
    return pairs
