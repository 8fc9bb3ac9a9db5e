"""Agreement (offline, judge-free): how far each model's closed-book answer is from the
passage-grounded reference.

The baseline answers each test and known question *with* its passage (the reference, as y* in
training); the configured scorer scores each model's closed-book answer against it (lower =
closer to what the passage says). Fills ``disagreement`` of the answer rows, writes
``evaluation/references.jsonl``, and the ``disagreement``/``by_category`` parts of report.json's
``test`` and ``known`` sections. Off with ``evaluate.agreement: false``.
"""

from __future__ import annotations

from typing import Any

from ....core.evaluation import (
    BaseEvaluator,
    EvalItem,
    EvaluationContext,
    EvaluationResult,
    GenerationRequest,
    MeasureRow,
    PanelRow,
)
from ....core.prompts import rc_messages
from ....core.protocols import ScoreItem
from ..summaries import agreement_summary

GROUNDED = ("test", "known")


def _grounded(ctx: EvaluationContext) -> list[EvalItem]:
    return [x for name in GROUNDED for x in ctx.sets.get(name, [])]


class AgreementEvaluator(BaseEvaluator):
    def outputs(self, ctx: EvaluationContext) -> list[str]:
        return ["references.jsonl"] if ctx.options.agreement else []

    def requests(self, ctx: EvaluationContext) -> list[GenerationRequest]:
        if not ctx.options.agreement:
            return []
        prompts = [rc_messages(x.passage or "", x.question) for x in _grounded(ctx)]
        return [GenerationRequest("references", "baseline", prompts, ctx.greedy_params(),
                                  desc="evaluate: references")]

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        if not ctx.options.agreement:
            return EvaluationResult(report={"params": {"scorer": None}})
        grounded = _grounded(ctx)
        refs = [r[0].text if r else "" for r in ctx.generated("references")]
        scorer = ctx.component("scorer")
        self._score(ctx, scorer, dict(zip((x.key for x in grounded), refs, strict=True)))
        baseline = ctx.models["baseline"]
        ctx.write_jsonl("references.jsonl", [
            {"set": x.set, "question_id": x.id, "model": baseline, "reference": r}
            for x, r in zip(grounded, refs, strict=True)
        ])
        report: dict[str, Any] = {"params": {"scorer": scorer.identity()}}
        rows: list[MeasureRow] = []
        panel: list[PanelRow] = []
        summary: dict[str, Any] = {}
        for set_name in GROUNDED:
            if not ctx.sets.get(set_name):
                continue
            part = agreement_summary(set_name, ctx.pairs, resamples=ctx.resamples, seed=ctx.seed)
            report[set_name] = part
            agr = part["disagreement"]
            n = agr["difference"]["n"]
            rows.append(MeasureRow(
                f"{set_name}: disagreement with the passage-grounded reference (lower is better)",
                n, agr["baseline"], agr["candidate"], agr["difference"]))
            panel.append((f"{set_name} (n={n})", agr["baseline"], agr["candidate"]))
            summary[f"{set_name}_disagreement"] = {
                "baseline": agr["baseline"]["mean"], "candidate": agr["candidate"]["mean"],
                "difference": agr["difference"]["mean"],
            }
        return EvaluationResult(report=report, rows=rows, summary=summary,
                                panels=[("disagreement with reference (lower is better)", panel)])

    @staticmethod
    def _score(ctx: EvaluationContext, scorer: Any, ref_of: dict[tuple[str, str], str]) -> None:
        """Fill ``disagreement`` of every grounded row (scores cached by content)."""
        cache = ctx.cache("evaluate-agreement")
        ident = scorer.identity()
        rows: list[dict[str, Any]] = []
        keyed: list[tuple[str, ScoreItem]] = []
        for b, c in ctx.pairs:
            ref = ref_of.get((b["set"], b["question_id"]))
            if ref is None:
                continue
            for row in (b, c):
                rows.append(row)
                keyed.append((cache.key("agreement", ident, b["question"], ref, row["answer"]),
                              ScoreItem(reference=ref, samples=[row["answer"]], question=b["question"])))
        scores = ctx.cached_scores(scorer, cache, keyed, "evaluate: agreement")
        for row, score in zip(rows, scores, strict=True):
            row["disagreement"] = score


def create(options: None, context: Any) -> AgreementEvaluator:
    return AgreementEvaluator()
