"""This plugin's contract tests, with selflearn's kit for plugin authors.

Run them with ``pytest examples/plugin-hello/tests`` after ``pip install ./examples/plugin-hello``
(or with the package folder on PYTHONPATH).
"""

from __future__ import annotations

from pathlib import Path

import selflearn_hello.plugin

from selflearn.plugins.testing import (
    build_component,
    check_evaluator,
    check_knowledge_source,
    check_plugin,
)


def test_plugin_loads_cleanly() -> None:
    specs = check_plugin(selflearn_hello.plugin)
    assert sorted((s.kind, s.name) for s in specs) == [("evaluator", "answer-length"),
                                                       ("knowledge_source", "faq")]


def test_faq_source_contract(tmp_path: Path) -> None:
    folder = tmp_path / "faqs"
    folder.mkdir()
    (folder / "billing.yaml").write_text('- {question: "How do I pay?", answer: By card.}\n')
    (folder / "shipping.yaml").write_text('- {question: "When does it ship?", answer: In two days.}\n')
    source = build_component("knowledge_source",
                             {"use": "faq", "options": {"folder": str(folder), "test_files": ["billing"]}},
                             plugins=[selflearn_hello.plugin], run_dir=tmp_path / "run")
    docs = check_knowledge_source(source)
    assert [(d.id, d.metadata["split"]) for d in docs] == [("faq:billing", "test"), ("faq:shipping", "train")]


def test_answer_length_evaluator_contract(tmp_path: Path) -> None:
    out = check_evaluator({"use": "answer-length", "options": {"long_words": 3}},
                          plugins=[selflearn_hello.plugin], run_dir=tmp_path / "run")
    measure = out["report"]["answer-length"]
    assert measure["n"] == 3  # the sample run: two held-out questions and one known item
    assert "## Answer length" in (tmp_path / "run" / "report.md").read_text()
