"""The ``local`` question generator through inference backends (scripted, echo, real SmolLM2)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import StageError
from selflearn.core.hashing import content_hash
from selflearn.core.protocols import BackendCapabilities, GenerationParams, Prompt
from selflearn.core.records import Completion

from .conftest import passage_of, topic_of


class ScriptedBackend:
    """Greedy: a chatty answer whose question names the source (invalid); sampled: a valid
    question wrapped like a small model would wrap it. Records every call."""

    def __init__(self, chat: bool = True) -> None:
        self.capabilities = BackendCapabilities(chat=chat, raw=True, seed=True)
        self.calls: list[tuple[int, GenerationParams]] = []

    def identity(self) -> dict[str, Any]:
        return {"backend": "scripted"}

    def _reply(self, prompt: Prompt, params: GenerationParams) -> str:
        if isinstance(prompt, str):
            topic = prompt.rsplit("Topic: ", 1)[1].split("\n", 1)[0]
            tag = content_hash(prompt.rsplit("Reference passage:", 1)[1], 6)
        else:
            topic, tag = topic_of(list(prompt)), content_hash(passage_of(list(prompt)), 6)
        if params.temperature == 0:
            return f"Sure!\nWhat does the text tell us about {topic}?\nAnswer: a lot."
        return f"Here is one.\nQuestion: What is {topic} known for (seed {params.seed % 97}, {tag})?\nAnswer: x"

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        self.calls.append((len(prompts), params))
        return [[Completion(self._reply(p, params), "stop", 10, 12)] * n for p in prompts]

    def close(self) -> None:
        pass


def _pipeline(run_dir: str, corpus: Any, backend: Any = None, **gen: Any) -> Pipeline:
    cfg: dict[str, Any] = {
        "run_dir": run_dir,
        "source": corpus,
        "chunker": {"use": "sentences", "options": {"max_tokens": 40, "min_tail_fraction": 0.0}},
        "question_generator": {"use": "local", "options": {"temperature": 0.0, **gen}},
    }
    if backend is not None:
        cfg["backend"] = backend
    return Pipeline(cfg)


def _rows(run_dir: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(run_dir, name).read_text().splitlines()]


def test_greedy_first_then_seeded_retries_batched_and_cached(run_dir, corpus):
    backend = ScriptedBackend()
    outcome = _pipeline(run_dir, corpus, backend).run(until="questions")[-1]
    questions = _rows(run_dir, "questions.jsonl")
    n_train = outcome.summary["passages"]["train"]
    assert len(questions) == n_train
    for q in questions:
        assert q["text"].startswith("What is ") and q["text"].endswith("?")  # extracted, cleaned
        assert q["provenance"]["attempt"] == 1 and q["provenance"]["temperature"] == 0.7
        assert q["provenance"]["generator"]["backend"] == {"backend": "scripted"}
    # one batched call per round: greedy train, sampled train, greedy test, sampled test
    assert [(n, p.temperature) for n, p in backend.calls] == [(n_train, 0.0), (n_train, 0.7), (2, 0.0), (2, 0.7)]
    assert backend.calls[0][1].seed is None and backend.calls[1][1].seed is not None
    assert backend.calls[0][1].max_new_tokens == 64
    assert outcome.summary["generator"]["stats"]["rejected_mentions_source"] == n_train
    assert outcome.summary["generator"]["usage"]["generated"] == 2 * n_train

    # a fresh pipeline on the same run directory: the backend is not called again
    os.remove(Path(run_dir, "questions.jsonl"))
    again = ScriptedBackend()
    _pipeline(run_dir, corpus, again).run(until="questions")
    assert again.calls == []
    assert _rows(run_dir, "questions.jsonl") == questions


def test_backend_without_chat_gets_a_plain_prompt(run_dir, corpus):
    backend = ScriptedBackend(chat=False)
    _pipeline(run_dir, corpus, backend, shots=1).run(until="questions")
    assert _rows(run_dir, "questions.jsonl")
    assert all(p.temperature in (0.0, 0.7) for _, p in backend.calls)


def test_backend_from_the_options_and_a_generator_that_never_succeeds(run_dir, corpus):
    # greedy echo answers with the first sentence of the passage: never a question
    pipe = Pipeline({
        "run_dir": run_dir, "source": corpus,
        "chunker": {"use": "sentences", "options": {"max_tokens": 40, "min_tail_fraction": 0.0}},
        "question_generator": {"use": "local", "options": {
            "backend": {"use": "echo"}, "temperature": 0.0, "retry_temperature": 0.0}},
    })
    with pytest.raises(StageError, match="no question was accepted"):
        pipe.run(until="questions")


@pytest.mark.slow
def test_real_smollm2_writes_questions_for_real_wikipedia_passages(run_dir):
    """The default prompt works with the small offline instruction model (SmolLM2-135M)."""
    from selflearn.core.models import OFFLINE_SMOLLM2

    pipe = Pipeline({
        "run_dir": run_dir,
        "model": OFFLINE_SMOLLM2,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["Geography", "Arts"], "train_per_category": 3, "test_per_category": 0,
            "min_words": 60}},
        "chunker": {"use": "sentences", "options": {"max_tokens": 160}},
        "question_generator": {"use": "local", "options": {"temperature": 0.0}},
        "backend": {"use": "hf", "options": {"device": "cpu"}},
    })
    outcome = pipe.run(until="questions")[-1]
    questions = _rows(run_dir, "questions.jsonl")
    assert len(questions) >= 0.5 * outcome.summary["passages"]["train"], outcome.summary
    for q in questions:
        assert q["text"].endswith("?") and "passage" not in q["text"].lower()
