"""QA accuracy against gold answers: how we measure knowledge offline, with no judge model.

Three per-item metrics, each the maximum over the gold answer's aliases:

- ``exact``: the SQuAD exact match. Both strings are normalised (lower case, punctuation
  removed, the articles "a", "an", "the" removed, whitespace collapsed) and compared whole.
  Unlike SQuAD's script, punctuation becomes a space rather than vanishing, so "Jean-Paul"
  matches "Jean Paul" and "61.6" is the tokens "61 6" (the same on both sides).
  Strict: a chat model that answers "The capital of France is Paris." scores 0 against
  "Paris".
- ``f1``: the SQuAD token F1 between the normalised answer and alias (bag of tokens),
  partial credit for long answers that contain the gold tokens among others.
- ``contains``: 1 when a normalised alias appears in the normalised answer as a whole run of
  tokens ("paris" in "capital of france is paris", but "ore" not in "more"). This is the
  headline metric for chat models, which answer in sentences. It can be fooled by an answer
  that lists several candidates; read it together with ``exact`` and ``f1``.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation) | {"\u2018", "\u2019", "\u201c", "\u201d", "\u2013", "\u2014"}

#: the per-item metric names, in report order
METRICS = ("exact", "f1", "contains")


@attrs.frozen
class QAItem:
    """A question with its accepted answers (aliases), from a QA loader."""

    id: str
    question: str
    answers: list[str]
    source: str
    category: str | None = None
    metadata: dict[str, Any] = attrs.field(factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


def normalize_answer(text: str) -> str:
    """SQuAD-style normalisation: lower case, punctuation to spaces, no articles, single spaces."""
    text = text.lower()
    text = "".join(" " if ch in _PUNCT else ch for ch in text)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _aliases(golds: Sequence[str]) -> list[str]:
    return [n for n in (normalize_answer(str(g)) for g in golds) if n]


def exact_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when the normalised prediction equals a normalised alias."""
    pred = normalize_answer(prediction)
    return float(any(pred == g for g in _aliases(golds)))


def _f1(pred_tokens: list[str], gold_tokens: list[str]) -> float:
    common = Counter(pred_tokens) & Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, golds: Sequence[str]) -> float:
    """The best SQuAD token F1 of the prediction against any alias."""
    pred = normalize_answer(prediction).split()
    if not pred:
        return 0.0
    return max((_f1(pred, g.split()) for g in _aliases(golds)), default=0.0)


def contains_match(prediction: str, golds: Sequence[str]) -> float:
    """1.0 when a normalised alias occurs in the normalised prediction as whole tokens."""
    pred = f" {normalize_answer(prediction)} "
    return float(any(f" {g} " in pred for g in _aliases(golds)))


def score_answer(prediction: str, golds: Sequence[str]) -> dict[str, float]:
    """All three metrics of one answer: ``{"exact", "f1", "contains"}``."""
    return {
        "exact": exact_match(prediction, golds),
        "f1": token_f1(prediction, golds),
        "contains": contains_match(prediction, golds),
    }
