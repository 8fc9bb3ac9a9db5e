"""Evaluators are an extension point: an outside plugin's measure runs in the evaluate stage and
appears in report.json, report.md and the stage summary, next to the built-in measures."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import attrs
import pytest

from selflearn import Pipeline
from selflearn.core.errors import ConfigError, StageError, UnknownComponentError
from selflearn.core.evaluation import (
    BaseEvaluator,
    EvalItem,
    EvaluationContext,
    EvaluationResult,
    GenerationRequest,
    MeasureRow,
)
from selflearn.core.prompts import closed_book_messages
from selflearn.plugins import hookimpl
from tests.evaluation.conftest import write_run


@attrs.frozen
class LengthOptions:
    #: count answers in "words" or "chars"
    unit: str = "words"


def _length(text: str, unit: str) -> int:
    return len(text.split()) if unit == "words" else len(text)


class AnswerLength(BaseEvaluator):
    """Mean answer length of each model, plus one extra question and two extra samples."""

    def __init__(self, options: LengthOptions) -> None:
        self.unit = options.unit

    def validate(self, ctx: EvaluationContext) -> None:
        if self.unit not in ("words", "chars"):
            raise ConfigError(f"unit must be words or chars, got {self.unit!r}",
                              "evaluate.evaluators[0].options.unit")

    def outputs(self, ctx: EvaluationContext) -> list[str]:
        return ["answer_length.jsonl"]

    def items(self, ctx: EvaluationContext) -> dict[str, list[EvalItem]]:
        return {"length:extra": [EvalItem("length:extra", "x1", "What is the capital of Peru?")]}

    def requests(self, ctx: EvaluationContext) -> list[GenerationRequest]:
        prompt = closed_book_messages("Name a river.")
        return [GenerationRequest("river", "candidate", [prompt], ctx.greedy_params(), n=2)]

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        rows = [{"set": b["set"], "question_id": b["question_id"],
                 "baseline": _length(b["answer"], self.unit), "candidate": _length(c["answer"], self.unit)}
                for b, c in ctx.pairs]
        ctx.write_jsonl("answer_length.jsonl", rows)
        mean = {role: sum(r[role] for r in rows) / len(rows) for role in ("baseline", "candidate")}
        river = [c.text for c in ctx.generated("river")[0]]
        ci = {role: {"mean": m, "ci_low": None, "ci_high": None} for role, m in mean.items()}
        diff = {"mean": mean["candidate"] - mean["baseline"], "ci_low": None, "ci_high": None}
        return EvaluationResult(
            report={"answer-length": {"unit": self.unit, "n": len(rows), **mean, "river": river}},
            rows=[MeasureRow(f"answer length ({self.unit})", len(rows), ci["baseline"], ci["candidate"], diff)],
            markdown=f"## Answer length\n\nMean {self.unit} per answer, baseline {mean['baseline']:.2f}.\n",
            summary={"answer_length": mean},
        )


class LengthPlugin:
    __name__ = "length-plugin"

    @hookimpl
    def register_evaluators(self, register: Any) -> None:
        register("answer-length", lambda options, ctx: AnswerLength(options), options=LengthOptions,
                 description="mean answer length")


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _cfg(run_dir: str, **evaluate: Any) -> dict[str, Any]:
    return {"run_dir": run_dir, "backend": "echo", "scorer": "lexical",
            "evaluate": {"qa": ["trivia:worldcapitals"], "qa_limit": 3, **evaluate}}


@pytest.mark.hooks("register_evaluators")
def test_outside_evaluator_measure_in_report_json_and_md(run_dir: str) -> None:
    root = write_run(run_dir)
    cfg = _cfg(run_dir, evaluators=[{"use": "answer-length", "options": {"unit": "words"}}])
    pipe = Pipeline(cfg, plugin_objects=[LengthPlugin()], load_entry_points=False)
    stage = pipe.stage("evaluate")
    stage.validate()
    assert "evaluation/answer_length.jsonl" in stage.outputs()
    summary = stage.run()
    pipe.close()
    ev = root / "evaluation"
    base, cand = _rows(ev / "answers_baseline.jsonl"), _rows(ev / "answers_candidate.jsonl")
    # the contributed question was answered by both models, after the built-ins' sets
    assert base[-1]["set"] == "length:extra" and cand[-1]["question"] == "What is the capital of Peru?"
    expected = {role: sum(len(r["answer"].split()) for r in rows) / len(rows)
                for role, rows in (("baseline", base), ("candidate", cand))}
    report = json.loads((ev / "report.json").read_text())
    mine = report["answer-length"]
    assert mine["n"] == len(base) == 4 + 2 + 3 + 1
    assert (mine["baseline"], mine["candidate"]) == pytest.approx((expected["baseline"], expected["candidate"]))
    assert len(mine["river"]) == 2 and all("river" in t.lower() for t in mine["river"])
    # the built-in measures are still there, unchanged in shape
    assert report["qa"]["trivia:worldcapitals"]["n"] == 3 and "disagreement" in report["test"]
    md = (root / "report.md").read_text()
    assert f"| answer length (words) | {mine['n']} | {expected['baseline']:.3f} |" in md
    assert "## Answer length" in md and md.index("## Answer length") < md.index("## Figures")
    assert summary["answer_length"] == pytest.approx(expected) and "qa:trivia:worldcapitals" in summary
    assert len(_rows(ev / "answer_length.jsonl")) == mine["n"]


def test_outside_evaluator_errors_name_the_config_path(run_dir: str) -> None:
    write_run(run_dir)
    with pytest.raises(UnknownComponentError, match="answer-lenght") as err:
        Pipeline(_cfg(run_dir, evaluators=["answer-lenght"]), plugin_objects=[LengthPlugin()],
                 load_entry_points=False).stage("evaluate").validate()
    assert err.value.path == "evaluate.evaluators[0]" and "did you mean 'answer-length'" in str(err.value)
    with pytest.raises(ConfigError, match="unit must be words or chars"):
        Pipeline(_cfg(run_dir, evaluators=[{"use": "answer-length", "options": {"unit": "lines"}}]),
                 plugin_objects=[LengthPlugin()], load_entry_points=False).stage("evaluate").validate()


def test_evaluator_that_overwrites_a_builtin_figure_is_an_error(run_dir: str) -> None:
    write_run(run_dir)

    class Clobber(BaseEvaluator):
        def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
            return EvaluationResult(report={"qa": {"trivia:worldcapitals": 1.0}})

    class Plugin:
        @hookimpl
        def register_evaluators(self, register: Any) -> None:
            register("clobber", lambda options, ctx: Clobber())

    pipe = Pipeline(_cfg(run_dir, evaluators=["clobber"]), plugin_objects=[Plugin()], load_entry_points=False)
    with pytest.raises(StageError, match="evaluator 'clobber' reports qa.trivia:worldcapitals"):
        pipe.stage("evaluate").run()
    pipe.close()


def test_builtin_evaluator_can_be_disabled(run_dir: str) -> None:
    root = write_run(run_dir)
    cfg = {**_cfg(run_dir), "plugins": {"disable": ["selflearn.builtin.evaluation.measures.agreement"]}}
    pipe = Pipeline(cfg, load_entry_points=False)
    stage = pipe.stage("evaluate")
    assert [name for name, _ in stage.evaluators()] == ["qa", "judge", "forgetting", "detection"]
    stage.run()
    pipe.close()
    report = json.loads((root / "evaluation" / "report.json").read_text())
    assert "disagreement" not in report["test"] and report["qa"]["trivia:worldcapitals"]["n"] == 3
    assert not (root / "evaluation" / "references.jsonl").exists()


def test_object_without_evaluate_is_rejected(run_dir: str) -> None:
    write_run(run_dir)

    class NotAnEvaluator:
        pass

    class Plugin:
        @hookimpl
        def register_evaluators(self, register: Any) -> None:
            register("broken", lambda options, ctx: NotAnEvaluator())

    with pytest.raises(ConfigError, match="NotAnEvaluator is not an evaluator") as err:
        Pipeline(_cfg(run_dir, evaluators=["broken"]), plugin_objects=[Plugin()],
                 load_entry_points=False).stage("evaluate").validate()
    assert err.value.path == "evaluate.evaluators[0]"


def test_builtin_evaluator_options_errors_keep_their_section_path(run_dir: str) -> None:
    write_run(run_dir)
    with pytest.raises(ConfigError) as err:
        Pipeline(_cfg(run_dir, detection={"k": "ten"}), load_entry_points=False).stage("evaluate").validate()
    assert err.value.path == "evaluate.detection.k" and "ten" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Pipeline(_cfg(run_dir, forgetting={"margins": 0.1}), load_entry_points=False).stage("evaluate").validate()
    assert err.value.path.startswith("evaluate.forgetting") and "margins" in str(err.value)
