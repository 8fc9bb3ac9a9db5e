"""Forgetting: lm-evaluation-harness tasks on the baseline (before) and the candidate (after),
a task flagged when its metric drops by more than the margin (:mod:`..lm_eval`). Active when
``evaluate.forgetting`` is given: its mapping is these options (None: off)."""

from __future__ import annotations

from typing import Any

import attrs

from ....core.evaluation import BaseEvaluator, EvaluationContext, EvaluationResult
from ..lm_eval import ForgettingOptions
from ..report import forgetting_markdown

#: the options (the ``evaluate.forgetting`` mapping)
Options = ForgettingOptions


class ForgettingEvaluator(BaseEvaluator):
    def __init__(self, options: ForgettingOptions | None) -> None:
        self.options = options

    def validate(self, ctx: EvaluationContext) -> None:
        from ..lm_eval import require_lm_eval

        if self.options is not None:
            require_lm_eval()

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        from ..lm_eval import compare, model_fingerprint, run_lm_eval

        fopts = self.options
        if fopts is None:
            return EvaluationResult(report={"forgetting": None})
        cache = ctx.cache("lm_eval")
        results = {}
        for role, ref in (("before", ctx.models["baseline"]), ("after", ctx.models["candidate"])):
            key = cache.key("lm_eval", model_fingerprint(ref), attrs.asdict(fopts), ctx.seed)
            hit = cache.get(key)
            if hit is None:
                hit = run_lm_eval(ref, fopts, seed=ctx.seed)
                cache.put(key, hit)
            results[role] = hit
        out = compare(results["before"], results["after"], fopts.margin)
        out["lm_eval_version"] = results["after"].get("lm_eval_version")
        out["versions"] = results["after"].get("versions")
        return EvaluationResult(report={"forgetting": out}, markdown=forgetting_markdown(out),
                                summary={"forgetting_flagged": out["flagged"]})


def create(options: ForgettingOptions | None, context: Any) -> ForgettingEvaluator:
    return ForgettingEvaluator(options)
