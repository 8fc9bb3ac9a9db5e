"""Knowledge detection quality on the QA sets (:mod:`..detection`): the baseline samples K
closed-book answers per QA question, the scorer(s) give S_K of its greedy answer against them,
and the AUROC of S_K for wrong answers is reported. Active when ``evaluate.detection`` is
given: its mapping is these options (None: off). Runs after the
``qa`` evaluator, whose per-answer QA scores label the wrong answers."""

from __future__ import annotations

from typing import Any

from ....core.config import parse_slot
from ....core.errors import ConfigError
from ....core.evaluation import (
    BaseEvaluator,
    EvaluationContext,
    EvaluationResult,
    GenerationRequest,
)
from ....core.prompts import closed_book_messages
from ....core.protocols import GenerationParams, ScoreItem
from ..detection import DetectionOptions
from ..report import detection_markdown
from .qa import PREFIX

PATH = "evaluate.detection"
#: the options (the ``evaluate.detection`` mapping)
Options = DetectionOptions


class DetectionEvaluator(BaseEvaluator):
    def __init__(self, options: DetectionOptions | None) -> None:
        self.options = options

    def outputs(self, ctx: EvaluationContext) -> list[str]:
        return ["detection.jsonl", "detection_roc.png"] if self.options is not None else []

    def validate(self, ctx: EvaluationContext) -> None:
        det = self.options
        if det is None:
            return
        if not ctx.options.qa:
            raise ConfigError(
                "detection measures S_K against gold answers, so it needs QA sets: add e.g. "
                "qa: [\"trivia:general\", \"fanoutqa\"] to the evaluate section, or remove "
                "detection", PATH,
            )
        if det.k < 2:
            raise ConfigError(f"k must be at least 2 samples, got {det.k}", f"{PATH}.k")
        if det.metric not in ("contains", "exact", "f1"):
            raise ConfigError(f"metric must be contains, exact or f1, got {det.metric!r}",
                              f"{PATH}.metric")
        if not ctx.has("scorer"):
            raise ConfigError("detection scores S_K with the configured scorer: set `scorer:`",
                              "scorer")
        for i, value in enumerate(det.scorers):
            parse_slot(value, f"{PATH}.scorers[{i}]")

    def requests(self, ctx: EvaluationContext) -> list[GenerationRequest]:
        det = self.options
        if det is None:
            return []
        params = GenerationParams(
            max_new_tokens=det.max_new_tokens or ctx.options.max_new_tokens,
            temperature=det.temperature,
            top_p=det.top_p,
            repetition_penalty=ctx.options.repetition_penalty,
            seed=ctx.seed,
        )
        prompts = [closed_book_messages(x.question) for name, items in ctx.sets.items()
                   if name.startswith(PREFIX) for x in items]
        return [GenerationRequest("samples", "baseline", prompts, params, n=det.k,
                                  desc="evaluate: detection samples")]

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        from .. import detection as dmod

        det = self.options
        if det is None:
            return EvaluationResult(report={"detection": None})
        rows = [b for b, _ in ctx.pairs if b["set"].startswith(PREFIX)]
        out_rows = [
            {"set": r["set"].removeprefix(PREFIX), "question_id": r["question_id"],
             "question": r["question"], "greedy": r["answer"], "samples": [c.text for c in s],
             "gold": r["gold"], "wrong": dmod.is_wrong(r["qa"], det.metric), "s_k": {}}
            for r, s in zip(rows, ctx.generated("samples"), strict=True)
        ]
        names = _score_all(ctx, det, out_rows)
        ctx.write_jsonl("detection.jsonl", out_rows)
        ctx.write_bytes("detection_roc.png", dmod.plot_roc(out_rows, names))
        summary = dmod.summarize(out_rows, names, resamples=ctx.resamples, seed=ctx.seed)
        out = {"model": "baseline", "k": det.k, "temperature": det.temperature,
               "metric": det.metric, "scorers": names, "sets": summary}
        auroc = {set_name: {name: r["auroc"] for name, r in entry["scorers"].items()}
                 for set_name, entry in summary.items()}
        return EvaluationResult(report={"detection": out}, markdown=detection_markdown(out),
                                summary={"detection_auroc": auroc})


def _scorers(ctx: EvaluationContext, det: DetectionOptions) -> list[tuple[str, Any, bool]]:
    """(name, scorer, built here) of the configured scorer and each ``detection.scorers``."""
    spec = ctx.run.slots["scorer"]
    scorers: list[tuple[str, Any, bool]] = [
        ((spec.name if spec else None) or "scorer", ctx.component("scorer"), False)
    ]
    for i, value in enumerate(det.scorers):
        built = ctx.build("scorer", value, f"{PATH}.scorers[{i}]")
        name = value if isinstance(value, str) else str(value.get("use")) + "(" + ", ".join(
            f"{k}={v}" for k, v in sorted((value.get("options") or {}).items())) + ")"
        while name in [n for n, _, _ in scorers]:
            name += "'"
        scorers.append((name, built, True))
    return scorers


def _score_all(ctx: EvaluationContext, det: DetectionOptions, out_rows: list[dict[str, Any]]) -> list[str]:
    """S_K of each QA question under each scorer (cached by content), into ``out_rows``."""
    scorers = _scorers(ctx, det)
    cache = ctx.cache("evaluate-detection")
    try:
        for name, scorer, _ in scorers:
            ident = scorer.identity()
            keyed = [(cache.key("s_k", ident, r["question"], r["greedy"], r["samples"]),
                      ScoreItem(reference=r["greedy"], samples=r["samples"], question=r["question"]))
                     for r in out_rows]
            scores = ctx.cached_scores(scorer, cache, keyed, f"evaluate: detection ({name})", f" {name!r}")
            for r, score in zip(out_rows, scores, strict=True):
                r["s_k"][name] = score
    finally:
        for _, scorer, own in scorers:
            close = getattr(scorer, "close", None)
            if own and callable(close):
                close()
    return [n for n, _, _ in scorers]


def create(options: DetectionOptions | None, context: Any) -> DetectionEvaluator:
    return DetectionEvaluator(options)
