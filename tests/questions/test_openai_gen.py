"""The ``openai`` question generator and the questions stage against a local OpenAI-style server."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import AuthenticationError, BudgetExceededError, ConfigError
from tests.servers import FakeServer, openai_handler

from .conftest import Script, good


def _pipeline(run_dir: str, corpus: Any, url: str | None, *, test_url: str | None = None,
              questions: dict[str, Any] | None = None, **gen: Any) -> Pipeline:
    opts = {"model": "test-model", "backoff": 0.01, "concurrency": 4, **gen}
    if url is not None:
        opts["base_url"] = url + "/v1"
    cfg: dict[str, Any] = {
        "run_dir": run_dir,
        "source": corpus,
        "chunker": {"use": "sentences", "options": {"max_tokens": 40, "min_tail_fraction": 0.0}},
        "question_generator": {"use": "openai", "options": opts},
        "questions": questions or {},
    }
    if test_url is not None:
        cfg["test_question_generator"] = {"use": "openai", "options": {
            "base_url": test_url + "/v1", "model": "strong-model", "temperature": 0.0, "backoff": 0.01}}
    return Pipeline(cfg)


def _rows(run_dir: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(run_dir, name).read_text().splitlines()]


def test_questions_written_and_a_second_run_makes_no_calls(run_dir, corpus):
    with FakeServer(openai_handler(Script(good))) as server:
        outcome = _pipeline(run_dir, corpus, server.url).run(until="questions")[-1]
        passages = _rows(run_dir, "passages.jsonl")
        train = [p for p in passages if p["metadata"]["split"] == "train"]
        test = [p for p in passages if p["metadata"]["split"] == "test"]
        questions = _rows(run_dir, "questions.jsonl")
        assert len(train) >= 6 and len(questions) == len(train)
        assert [q["passage_id"] for q in questions] == [p["id"] for p in train]
        assert all(q["id"] == q["passage_id"] + "#q0" and q["split"] == "train" for q in questions)
        assert len({q["text"] for q in questions}) == len(questions)
        assert len(_rows(run_dir, "test_questions.jsonl")) == len(test) == 2  # 2 test passages
        # the paper's decoding, 3 shots, one request per passage
        n_calls = len(server.requests)
        assert n_calls == len(train) + len(test)
        for _, body, _ in server.requests:
            assert body["temperature"] == 0.5 and body["max_tokens"] == 64
            assert [m["role"] for m in body["messages"]] == ["system"] + ["user", "assistant"] * 3 + ["user"]
        assert outcome.summary["questions"] == len(train)
        assert outcome.summary["generator"]["usage"]["requests"] == len(train)
        before = Path(run_dir, "questions.jsonl").read_bytes()

        # the same command again: nothing to do, no HTTP call
        again = _pipeline(run_dir, corpus, server.url).run(until="questions")
        assert again[-1].status == "skipped" and len(server.requests) == n_calls
        # even when the stage must run again (its output was lost), every call is cached
        os.remove(Path(run_dir, "questions.jsonl"))
        rerun = _pipeline(run_dir, corpus, server.url).run(until="questions")[-1]
        assert rerun.status == "ran" and len(server.requests) == n_calls
        assert rerun.summary["generator"]["usage"]["cached_calls"] == len(train)
        assert Path(run_dir, "questions.jsonl").read_bytes() == before


def test_a_question_mentioning_the_passage_is_retried_and_replaced(run_dir, corpus):
    def plan(topic: str, tag: str, k: int) -> str:
        return f"What does the passage say about {topic}?" if k == 0 else good(topic, tag, k)

    with FakeServer(openai_handler(Script(plan))) as server:
        outcome = _pipeline(run_dir, corpus, server.url).run(until="questions")[-1]
        questions = _rows(run_dir, "questions.jsonl")
        assert questions and all("passage" not in q["text"] for q in questions)
        assert all(q["provenance"]["attempt"] == 1 for q in questions)
        stats = outcome.summary["generator"]["stats"]
        assert stats["rejected_mentions_source"] == len(questions)
        assert outcome.summary["passages_without_question"]["train"] == 0


def test_a_duplicate_within_a_document_is_retried(run_dir, corpus):
    def plan(topic: str, tag: str, k: int) -> str:
        return f"What is {topic}?" if k == 0 else good(topic, tag, k)

    with FakeServer(openai_handler(Script(plan))) as server:
        outcome = _pipeline(run_dir, corpus, server.url).run(until="questions")[-1]
        questions = _rows(run_dir, "questions.jsonl")
        by_doc: dict[str, list[str]] = {}
        for q in questions:
            by_doc.setdefault(q["document_id"], []).append(q["text"])
        for texts in by_doc.values():
            assert len(set(texts)) == len(texts)
            assert texts[0].startswith("What is ") and texts[0].endswith("?")  # first one kept
        assert outcome.summary["generator"]["stats"]["rejected_duplicate"] == len(questions) - len(by_doc)


def test_passage_given_up_after_three_attempts(run_dir, corpus):
    with FakeServer(openai_handler(Script(lambda t, tag, k: "No question here."))) as server:
        with pytest.raises(Exception, match="no question was accepted"):
            _pipeline(run_dir, corpus, server.url).run(until="questions")
        n_train = sum(1 for p in _rows(run_dir, "passages.jsonl") if p["metadata"]["split"] == "train")
        assert len(server.requests) == 3 * n_train  # attempts per passage, then given up


def test_rate_limits_and_server_errors_are_recovered(run_dir, corpus):
    with FakeServer(openai_handler(Script(good))) as server:
        server.faults.extend([("status", 429, {"Retry-After": "0"}), ("status", 500), ("status", 503)])
        outcome = _pipeline(run_dir, corpus, server.url, concurrency=1).run(until="questions")[-1]
        assert outcome.summary["passages_without_question"] == {"train": 0, "test": 0}
        assert outcome.summary["generator"]["usage"]["retries"] == 3


def test_401_stops_with_a_clear_message(run_dir, corpus, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-wrong-secret")

    def refuse(path: str, body: dict[str, Any]):
        return 401, {"error": {"message": "Incorrect API key provided"}}, {}

    with FakeServer(refuse) as server, pytest.raises(AuthenticationError) as err:
        _pipeline(run_dir, corpus, server.url).run(until="questions")
    message = str(err.value)
    assert "401" in message and "OPENAI_API_KEY" in message and "sk-wrong-secret" not in message
    assert not Path(run_dir, "questions.jsonl").exists()


def test_missing_api_key_fails_before_any_work(run_dir, corpus, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    pipe = _pipeline(run_dir, corpus, None)  # the official API needs a key
    with pytest.raises(ConfigError, match="no API key: set the environment variable OPENAI_API_KEY"):
        pipe.run(until="questions")
    assert not Path(run_dir, "questions.jsonl").exists()


def test_usage_and_cost_go_into_the_manifest(run_dir, corpus):
    with FakeServer(openai_handler(Script(good))) as server:
        _pipeline(run_dir, corpus, server.url, price_input_per_mtok=1.0, price_output_per_mtok=2.0).run(
            until="questions")
    manifest = json.loads(Path(run_dir, "manifest.json").read_text())
    usage = manifest["stages"]["questions"]["summary"]["generator"]["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected = (usage["prompt_tokens"] * 1.0 + usage["completion_tokens"] * 2.0) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected, rel=1e-3)
    assert "sk-" not in json.dumps(manifest)


def test_spend_cap_stops_and_the_next_run_resumes_from_the_cache(run_dir, corpus):
    with FakeServer(openai_handler(Script(good))) as server:
        with pytest.raises(BudgetExceededError):
            _pipeline(run_dir, corpus, server.url, concurrency=1, price_input_per_mtok=1000.0,
                      max_cost_usd=0.5).run(until="questions")
        done = len(server.requests)
        assert done > 0 and not Path(run_dir, "questions.jsonl").exists()
        outcome = _pipeline(run_dir, corpus, server.url, concurrency=1, price_input_per_mtok=1000.0,
                            max_cost_usd=100.0).run(until="questions")[-1]
        total = outcome.summary["questions"] + outcome.summary["test_questions"]
        assert len(server.requests) == total  # the calls made before the cap were not repeated


def test_test_set_with_a_stronger_generator(run_dir, corpus):
    with FakeServer(openai_handler(Script(good))) as weak, \
         FakeServer(openai_handler(Script(lambda t, tag, k: f"Which fact {k} about {t} in part {tag} matters?"),
                                   model="strong-model")) as strong:
        outcome = _pipeline(run_dir, corpus, weak.url, test_url=strong.url,
                            questions={"test_per_passage": 2}).run(until="questions")[-1]
        test_q = _rows(run_dir, "test_questions.jsonl")
        assert len(test_q) == 4  # 2 test passages x 2 questions
        assert {q["split"] for q in test_q} == {"test"}
        assert {q["provenance"]["generator"]["model"] for q in test_q} == {"strong-model"}
        assert all(b["model"] == "strong-model" for _, b, _ in strong.requests)
        assert all(b["model"] == "test-model" for _, b, _ in weak.requests)
        # greedy first question, sampled second one (a greedy repeat would be a duplicate)
        assert sorted(b["temperature"] for _, b, _ in strong.requests) == [0.0, 0.0, 0.7, 0.7]
        assert outcome.summary["test_generator"]["identity"]["model"] == "strong-model"


def test_dry_run_estimate(run_dir, corpus):
    with FakeServer(openai_handler(Script(good))) as server:
        pipe = _pipeline(run_dir, corpus, server.url, attempts=2)
        forecast = pipe.plan(until="questions")[-1]
        # a source object without size_hint(): no forecast of the counts, and it says so
        assert forecast["estimated"] and "unknown" in forecast["estimate"]["note"]
        pipe.run(until="passages")
        est = _pipeline(run_dir, corpus, server.url, attempts=2).plan(until="questions")[-1]["estimate"]
        assert est["train_passages"] + est["test_passages"] == len(_rows(run_dir, "passages.jsonl"))
        assert est["question_calls_at_most"] == 2 * est["train_passages"] + 2 * est["test_passages"]
        assert server.requests == []
