"""Silent emptiness is said out loud (issue 23): a filter that removed nothing, filters that kept
nothing and an empty known-items pool appear, with their likely cause, in the stage summaries,
the CLI's output and report.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from selflearn import Pipeline
from selflearn.cli import main
from selflearn.core.notes import evaluation_notes, filter_notes
from selflearn.core.records import Scores
from tests.evaluation.conftest import write_run

from .test_dry_run import _config
from .test_rerun import CountingEcho


def _summary(**kw: Any) -> dict[str, Any]:
    base = {"questions": 36, "scored": 36, "kept_questions": 36, "removed": {},
            "would_fail": {"consistency": 3, "knowledge": 5}, "filters": {"consistency": True, "knowledge": True},
            "thresholds": {"tau_l": 0.5, "tau_k": 0.5}, "s_k": {"min": 0.61}, "s_l": {"max": 0.9}}
    base.update(kw)
    return base


def test_filter_notes_name_what_happened_and_why():
    assert filter_notes(_summary()) == []
    (note,) = filter_notes(_summary(would_fail={"consistency": 3, "knowledge": 0}))
    assert "knowledge filter removed none of the 36" in note and "tau_K = 0.5" in note and "0.61" in note
    (note,) = filter_notes(_summary(would_fail={"consistency": 0, "knowledge": 4}))
    assert "consistency filter removed none of the 36" in note
    (note,) = filter_notes(_summary(kept_questions=0, removed={"knowledge": 30, "consistency": 6}))
    assert "kept none of the 36" in note and "already knows the answers" in note and "lower tau_K" in note
    # a filter that is off is not reported as removing nothing
    assert filter_notes(_summary(would_fail={"consistency": 3, "knowledge": 0},
                                 filters={"consistency": True, "knowledge": False})) == []


def test_datasets_summary_and_cli_carry_the_notes(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")
    config = _config(tmp_path, CountingEcho([0]), datasets={"self_label": "off", "consistency_filter": False,
                                                              "tau_k": 0.0})
    outcome = Pipeline(config).run(until="datasets")[-1]
    notes = outcome.summary["notes"]
    assert any("knowledge filter removed none" in n for n in notes), notes
    on_disk = json.loads((Path(config["run_dir"]) / "datasets_summary.json").read_text())
    assert on_disk["notes"] == notes

    # the CLI prints them under the stage (a plain YAML config with a named echo backend)
    cfg = {**config, "backend": "echo", "run_dir": str(tmp_path / "cli-run"),
           "datasets": {"self_label": "off", "tau_l": 0.0, "tau_k": 0.0}}
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps(cfg))
    assert main(["run", str(path), "--until", "datasets"]) == 0
    out = capsys.readouterr().out
    assert "note: the filters kept none of the" in out and "Likely cause:" in out


def test_empty_known_pool_is_in_the_summary_and_report(run_dir: str) -> None:
    root = write_run(run_dir)
    # every training question unknown (S_K above the known threshold): the probe has no pool
    (root / "scores.jsonl").write_text("".join(
        json.dumps(Scores(question_id=q, s_l=0.1, s_k=0.9).to_dict()) + "\n" for q in ("k1", "k2", "u1")))
    datasets = _summary(would_fail={"consistency": 3, "knowledge": 0})
    datasets["notes"] = filter_notes(datasets)  # as the datasets stage records it
    (root / "manifest.json").write_text(json.dumps({"stages": {"datasets": {"summary": datasets}}}))
    pipe = Pipeline({"run_dir": run_dir, "backend": "echo", "scorer": "lexical",
                     "evaluate": {"max_new_tokens": 16, "bootstrap_resamples": 20}}, load_entry_points=False)
    summary = pipe.stage("evaluate").run()
    pipe.close()
    (note,) = summary["notes"]
    assert "known-items probe had an empty pool" in note and "S_K <= 0.5" in note
    report = (root / "report.md").read_text()
    notes = report[report.index("## Notes"):report.index("## Counts")]
    assert "**evaluate**: the known-items probe had an empty pool" in notes
    assert "**datasets**: the knowledge filter removed none of the 36" in notes


def test_evaluation_notes_on_an_empty_qa_set():
    report = {"items": {"known": {"status": "off"}, "qa": {"trivia:x": {"items": 0, "skipped": {"no_answer": 4}}}}}
    (note,) = evaluation_notes(report)
    assert "'trivia:x' had no usable item" in note and "no_answer" in note


def test_self_labelling_that_labelled_nothing_is_a_note():
    from selflearn.core.notes import sft_notes

    assert sft_notes({"self_label_questions": 3, "self_label_rows": 2}) == []
    (note,) = sft_notes({"self_label_questions": 3, "self_label_rows": 0,
                         "self_label_rejections": {"truncated": 3}})
    assert "labelled none of its 3 questions" in note and "self_label_max_new_tokens" in note
    (note,) = filter_notes(_summary(sft={"self_label_questions": 3, "self_label_rows": 0,
                                         "self_label_rejections": {"repetition": 2, "empty": 1}}))
    assert "repeat themselves" in note
