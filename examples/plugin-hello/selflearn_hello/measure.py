"""The ``answer-length`` evaluator: how long each model's closed-book answers are, in words.

A measure of the ``evaluate`` stage (named in ``evaluate.evaluators``): training on passage
facts should not make answers balloon or shrink to nothing.
"""

from __future__ import annotations

from typing import Any

import attrs

from selflearn.plugins import BaseEvaluator, EvaluationContext, EvaluationResult, MeasureRow


@attrs.frozen
class Options:
    #: answers longer than this many words are counted as rambling
    long_words: int = 60


class AnswerLength(BaseEvaluator):
    def __init__(self, options: Options) -> None:
        self.options = options

    def outputs(self, ctx: EvaluationContext) -> list[str]:
        return ["answer_length.jsonl"]

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        rows = [{"set": b["set"], "question_id": b["question_id"],
                 "baseline": len(b["answer"].split()), "candidate": len(c["answer"].split())}
                for b, c in ctx.pairs]
        ctx.write_jsonl("answer_length.jsonl", rows)
        n = max(len(rows), 1)
        mean = {role: sum(r[role] for r in rows) / n for role in ("baseline", "candidate")}
        long = {role: sum(r[role] > self.options.long_words for r in rows) for role in mean}
        figure = {role: {"mean": m} for role, m in mean.items()}
        return EvaluationResult(
            report={"answer-length": {"n": len(rows), "mean_words": mean, "long": long}},
            rows=[MeasureRow("answer length (words)", len(rows), figure["baseline"],
                             figure["candidate"], {"mean": mean["candidate"] - mean["baseline"]})],
            markdown=(f"## Answer length\n\nAnswers over {self.options.long_words} words: "
                      f"baseline {long['baseline']}, candidate {long['candidate']}.\n"),
            summary={"answer_length": mean},
        )


def create(options: Options, context: Any) -> AnswerLength:
    return AnswerLength(options)
