"""QA accuracy: both models answer the questions of the sets named in ``evaluate.qa``
(FanOutQA, trivia lists) closed-book, scored against the gold aliases (contains, exact, F1;
:mod:`..qa`). Each set is a seeded sample of ``evaluate.qa_limit`` questions.
"""

from __future__ import annotations

from typing import Any

from ....core.evaluation import (
    BaseEvaluator,
    EvalItem,
    EvaluationContext,
    EvaluationResult,
    MeasureRow,
)
from ..qa import score_answer
from ..summaries import qa_summary

PREFIX = "qa:"


class QaEvaluator(BaseEvaluator):
    def __init__(self) -> None:
        self._info: dict[str, Any] = {}

    def validate(self, ctx: EvaluationContext) -> None:
        from ..loaders import check_qa_name

        for i, name in enumerate(ctx.options.qa):
            check_qa_name(name, f"evaluate.qa[{i}]")

    def items(self, ctx: EvaluationContext) -> dict[str, list[EvalItem]]:
        from ..loaders import load_qa

        sets: dict[str, list[EvalItem]] = {}
        for i, name in enumerate(ctx.options.qa):
            loaded, skipped = load_qa(name, f"evaluate.qa[{i}]")
            loaded = sorted(ctx.sample(sorted(loaded, key=lambda x: x.id), ctx.options.qa_limit),
                            key=lambda x: x.id)
            sets[PREFIX + name] = [
                EvalItem(PREFIX + name, x.id, x.question, x.category, None, list(x.answers))
                for x in loaded
            ]
            self._info[name] = {"items": len(loaded), "skipped": skipped}
        return sets

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        names = list(ctx.options.qa)
        for b, c in ctx.pairs:
            if b["set"].startswith(PREFIX) and b["set"][len(PREFIX):] in names:
                b["qa"] = score_answer(b["answer"], b["gold"])
                c["qa"] = score_answer(c["answer"], c["gold"])
        summaries = {name: qa_summary(name, ctx.pairs, resamples=ctx.resamples, seed=ctx.seed)
                     for name in names}
        rows = [
            MeasureRow(f"QA {name}: {metric}", q["n"], q["baseline"][metric], q["candidate"][metric],
                       q["difference"][metric], percent=True)
            for name, q in summaries.items() for metric in ("contains", "exact", "f1")
        ]
        panel = [(f"{name} (n={q['n']})", q["baseline"]["contains"], q["candidate"]["contains"])
                 for name, q in summaries.items()]
        summary = {f"qa:{name}": {"n": q["n"], "baseline_contains": q["baseline"]["contains"]["mean"],
                                  "candidate_contains": q["candidate"]["contains"]["mean"]}
                   for name, q in summaries.items()}
        return EvaluationResult(
            report={"items": {"qa": dict(self._info)}, "qa": summaries}, rows=rows,
            panels=[("QA accuracy (contains)", panel)], summary=summary,
        )


def create(options: None, context: Any) -> QaEvaluator:
    return QaEvaluator()
