"""The items the ``evaluate`` stage asks both models, and the rows of its answer files.

An answer file (``evaluation/answers_baseline.jsonl``, ``evaluation/answers_candidate.jsonl``)
has one JSON object per (set, question): ``set`` ("test", "known" or "qa:<name>"),
``question_id``, ``question``, ``category``, ``role`` ("baseline"/"candidate"), ``model``,
``answer``, ``finish_reason``, ``completion_tokens``, ``disagreement`` (the scorer's score of
the answer against the passage-grounded reference, lower is better; None when not computed),
and for QA sets ``gold`` (the accepted answers) and ``qa`` (``exact``, ``f1``, ``contains``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import attrs

from ...core.errors import StageError


@attrs.frozen
class EvalItem:
    """One question both models answer: a held-out or known training question (with its
    passage) or a QA question (with its gold answers)."""

    set: str
    id: str
    question: str
    category: str | None = None
    passage: str | None = None
    gold: list[str] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.set, self.id)


def answer_row(item: EvalItem, role: str, model: str, completion: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "set": item.set,
        "question_id": item.id,
        "question": item.question,
        "category": item.category,
        "role": role,
        "model": model,
        "answer": completion.text,
        "finish_reason": completion.finish_reason,
        "completion_tokens": completion.completion_tokens,
        "disagreement": None,
    }
    if item.gold is not None:
        row["gold"] = list(item.gold)
    return row


def pair_answers(
    baseline: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]
) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Baseline and candidate rows matched by (set, question_id), in the baseline's order.

    Two answer files must cover the same questions: comparing different question sets would
    silently bias every rate. A mismatch is a :class:`StageError` naming the missing ids.
    """

    def index(rows: Iterable[dict[str, Any]], name: str) -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = (str(row.get("set", "test")), str(row["question_id"]))
            if key in out:
                raise StageError(f"the {name} answers hold question {key[1]!r} ({key[0]}) twice")
            out[key] = row
        return out

    b, c = index(baseline, "baseline"), index(candidate, "candidate")
    only_b = sorted(f"{s}:{q}" for s, q in set(b) - set(c))
    only_c = sorted(f"{s}:{q}" for s, q in set(c) - set(b))
    if only_b or only_c:
        parts = []
        if only_b:
            parts.append(f"missing from the candidate's answers: {_ids(only_b)}")
        if only_c:
            parts.append(f"missing from the baseline's answers: {_ids(only_c)}")
        raise StageError(
            "the baseline and candidate answered different question sets ("
            + "; ".join(parts)
            + "). Answer the same held-out questions with both models (delete the stale answer "
            "file and run the evaluate stage again)."
        )
    return [(row, c[key]) for key, row in b.items()]


def _ids(ids: list[str], most: int = 10) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")
