"""The built-in judges and the ``openai`` question generator pass the contract tests of
``selflearn.plugins.testing``: the judges against the scripted, position-biased judge model
(which only mirrors when both orders are asked), over a backend and over a local
OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selflearn.core.records import Document
from selflearn.plugins.testing import (
    build_component,
    check_chunker,
    check_judge,
    check_question_generator,
)
from tests.evaluation.conftest import ScriptedPlugin, scripted_judge_answer
from tests.questions.conftest import Script, good
from tests.servers import FakeServer, openai_handler


def _judged(verdicts: list[Any]) -> None:
    assert sum(v.outcome != "unjudged" for v in verdicts) == len(verdicts), "the contract judged nothing"


def test_local_judge(tmp_path: Path) -> None:
    judge = build_component("judge", "local", plugins=[ScriptedPlugin()], run_dir=tmp_path / "run",
                            backend="scripted")
    _judged(check_judge(judge))


def test_openai_judge(tmp_path: Path) -> None:
    def respond(body: dict[str, Any], i: int) -> str:
        return scripted_judge_answer(body["messages"][-1]["content"])

    with FakeServer(openai_handler(respond, model="judge-4")) as server:
        judge = build_component("judge", {"use": "openai", "options": {
            "base_url": server.url + "/v1", "model": "judge-4", "backoff": 0.01}}, run_dir=tmp_path / "run")
        _judged(check_judge(judge))


def test_openai_question_generator(tmp_path: Path) -> None:
    doc = Document(id="d1", title="Mont Blanc", text=" ".join(
        f"Mont Blanc has glacier number {i}, which ends at {1000 + 37 * i} metres." for i in range(40)))
    with FakeServer(openai_handler(Script(good))) as server:
        run = tmp_path / "run"
        chunker = build_component("chunker", {"use": "sentences", "options": {"max_tokens": 40}}, run_dir=run)
        passages = check_chunker(chunker, doc)
        gen = build_component("question_generator", {"use": "openai", "options": {
            "base_url": server.url + "/v1", "model": "test-model", "backoff": 0.01}}, run_dir=run)
        questions = check_question_generator(gen, passages[:3], per_passage=1)
    assert len(questions) == 3
