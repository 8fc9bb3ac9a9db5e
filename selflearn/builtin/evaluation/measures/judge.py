"""Pairwise judging (method.md 13.2): the configured judge compares the candidate's and the
baseline's answers to each test and known question in both orders; win/tie/lose overall, per
category, and the losing rate on the known items. Active when the ``judge`` slot is set."""

from __future__ import annotations

from typing import Any

from ....core.errors import ConfigError, StageError
from ....core.evaluation import BaseEvaluator, EvalItem, EvaluationContext, EvaluationResult
from ....core.protocols import JudgeItem
from ....core.records import Verdict
from ..report import judge_markdown, outcome_summary, outcomes_by_category, plot_outcomes


class JudgeEvaluator(BaseEvaluator):
    def outputs(self, ctx: EvaluationContext) -> list[str]:
        return ["verdicts.jsonl", "outcomes.png"] if ctx.has("judge") else []

    def validate(self, ctx: EvaluationContext) -> None:
        """A judge on the official OpenAI API without a key fails now, not after the answers
        were generated (any judge whose options extend the shared ClientOptions)."""
        from ....core.options import build_options
        from ...openai_client import ClientOptions

        spec = ctx.run.slots.get("judge")
        if spec is None or spec.is_object or spec.name is None:
            return
        cls = ctx.run.host.registry.get("judge", spec.name, "judge").load_options_class()
        if cls is None or not (isinstance(cls, type) and issubclass(cls, ClientOptions)):
            return
        opts = build_options(cls, spec.options, "judge.options")
        official = opts.base_url is None or "api.openai.com" in opts.base_url
        if official and not (opts.api_key_env and ctx.secret(opts.api_key_env)):
            raise ConfigError(
                f"the judge calls the OpenAI API but no key is set: set the environment variable "
                f"{opts.api_key_env} (or point judge.options.base_url at a local "
                "OpenAI-compatible server)",
                "judge.options.api_key_env",
            )

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        if not ctx.has("judge"):
            return EvaluationResult(report={"judge": None})
        judge = ctx.component("judge")
        answers = {(b["set"], b["question_id"]): (b["answer"], c["answer"]) for b, c in ctx.pairs}
        out: dict[str, Any] = {"identity": judge.identity()}
        for set_name in ("test", "known"):
            items = ctx.sets.get(set_name, [])
            if not items:
                out[set_name] = None
                continue
            verdicts = _judge_set(judge, items, answers)
            fname = "verdicts.jsonl" if set_name == "test" else "verdicts_known.jsonl"
            ctx.write_records(fname, verdicts)
            if set_name == "test":
                out["test"] = outcomes_by_category(verdicts, {x.id: x.category for x in items})
            else:
                out["known"] = {"overall": outcome_summary(verdicts)}
        usage = getattr(judge, "usage", None)
        out["usage"] = dict(usage) if isinstance(usage, dict) else None
        return _result(ctx, out)


def _judge_set(judge: Any, items: list[EvalItem],
               answers: dict[tuple[str, str], tuple[str, str]]) -> list[Verdict]:
    jitems = [
        JudgeItem(question_id=x.id, question=x.question, passage=x.passage or "",
                  candidate=answers[x.key][1], baseline=answers[x.key][0])
        for x in items
    ]
    verdicts: list[Verdict] = list(judge.judge(jitems))
    if len(verdicts) != len(jitems) or any(
        v.question_id != j.question_id for v, j in zip(verdicts, jitems, strict=False)
    ):
        raise StageError(
            f"the judge returned {len(verdicts)} verdicts for {len(jitems)} items, or out "
            "of order; a judge must return one verdict per item, aligned"
        )
    return verdicts


def _result(ctx: EvaluationContext, out: dict[str, Any]) -> EvaluationResult:
    """The report section, the outcomes chart, the Markdown section and the summary."""
    groups: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if out.get("test"):
        groups["test: all"] = out["test"]["overall"]
        groups.update({f"test: {c}": s for c, s in out["test"]["by_category"].items()})
        s = out["test"]["overall"]
        summary["judge"] = {k: s[k] for k in ("win", "tie", "lose", "unjudged")}
        if out.get("known"):
            summary["judge"]["known_lose_rate"] = out["known"]["overall"]["lose_rate"]
    if out.get("known"):
        groups["known items"] = out["known"]["overall"]
    ctx.write_bytes("outcomes.png", plot_outcomes(groups, "candidate vs baseline"))
    return EvaluationResult(
        report={"judge": out}, markdown=judge_markdown(out),
        images=[("Win / tie / lose", "evaluation/outcomes.png")], summary=summary,
    )


def create(options: None, context: Any) -> JudgeEvaluator:
    return JudgeEvaluator()
