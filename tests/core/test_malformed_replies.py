"""Malformed 200 replies (not JSON, another shape, a field missing, empty text) from the four
HTTP components: each is retried with the retry policy and, when it persists, ends in one clear
error naming the server, the endpoint and an excerpt of the body, with nothing stored; a 4xx
carries the server's reason. Servers run on 127.0.0.1 (tests/servers.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.builtin.backends import openai_compat, tgi
from selflearn.builtin.judges.openai_judge import OpenAIJudge, client_options
from selflearn.builtin.judges.openai_judge import Options as JudgeOptions
from selflearn.builtin.openai_client import ChatClient
from selflearn.cli import main
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import BackendError
from selflearn.core.generation import CachedBackend
from selflearn.core.protocols import GenerationParams, JudgeItem
from tests.backends.helpers import FakeContext, tgi_handler
from tests.questions.conftest import ListSource, Script, _doc, good
from tests.servers import FakeServer, openai_handler

SECRET = "sk-test-abcdef0123456789secret"
GREEDY = GenerationParams(max_new_tokens=20)
RETRIES = 3
HTML = (b"<html><body><h1>502 Bad Gateway</h1> upstream sent Authorization: Bearer "
        + SECRET.encode() + b"</body></html>")

#: name -> (body, what the error must quote from it)
COMMON = {
    "html": (HTML, "502 Bad Gateway"),
    "truncated": (b'{"id": "x", "choices": [{"index": 0, "message": {"content": "Paris is', '"id": "x"'),
    "wrong_shape": (b'{"result": "ok", "data": [1, 2, 3]}', '"result": "ok"'),
    "empty_body": (b"", "an empty body"),
    "json_list": (b"[1, 2, 3]", "[1, 2, 3]"),
}
OPENAI_BODIES = {
    **COMMON,
    "no_content": (b'{"choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}]}',
                   '"role": "assistant"'),
    "no_choices": (b'{"choices": [], "usage": {"prompt_tokens": 3}}', '"choices": []'),
    "tgi_reply": (b'{"generated_text": "Paris"}', "generated_text"),
    "empty_uncounted": (b'{"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "stop"}]}',
                        '"content": ""'),
}
#: for the question writer and the judge, an empty answer is never an answer
TEXT_REQUIRED = {
    **OPENAI_BODIES,
    "empty_text": (b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": " "}, "finish_reason": "stop"}]}',
                   '"content": " "'),
}
TGI_BODIES = {
    **COMMON,
    "openai_reply": (b'{"choices": [{"index": 0, "message": {"content": "Paris"}}]}', '"choices"'),
    "no_generated_text": (b'{"details": {"finish_reason": "eos_token", "tokens": []}}', '"details"'),
    "bad_tokens": (b'{"generated_text": "Paris", "details": {"tokens": ["Paris"]}}', '"tokens": ["Paris"]'),
    "empty_uncounted": (b'{"generated_text": "", "details": {"finish_reason": "eos_token"}}',
                        '"generated_text": ""'),
}


def always(body: bytes) -> Callable[[str, dict[str, Any]], tuple[int, Any, dict[str, str]]]:
    """A handler that answers every request with ``body`` (status 200)."""
    return lambda path, req: (200, body, {})


def check_error(err: BackendError, server: FakeServer, endpoint: str, quote: str) -> None:
    """One paragraph naming the server and endpoint, quoting the body, never the key."""
    msg = str(err)
    assert server.url in msg and endpoint in msg, msg
    assert quote in msg, msg
    assert SECRET not in msg and "\n" not in msg


# -- the openai backend ------------------------------------------------------------------
def openai_backend(server: FakeServer, tmp_path: Path) -> CachedBackend:
    opts = openai_compat.Options(base_url=server.url + "/v1", model="test-model", backoff=0.01,
                                 max_retries=RETRIES, api_key_env="MY_KEY")
    backend = openai_compat.create(opts, FakeContext(secrets={"MY_KEY": SECRET}))
    return CachedBackend(backend, JsonlCache(str(tmp_path / "gen.jsonl")))


@pytest.mark.parametrize("kind", sorted(OPENAI_BODIES))
def test_openai_backend_retries_then_fails_clearly_storing_nothing(kind: str, tmp_path: Path) -> None:
    body, quote = OPENAI_BODIES[kind]
    with FakeServer(always(body)) as server:
        cached = openai_backend(server, tmp_path)
        with pytest.raises(BackendError) as err:
            cached.generate(["q"], GREEDY, n=2)
        assert len(server.requests) == RETRIES  # retried, then given up
        check_error(err.value, server, "/chat/completions", quote)
        assert len(cached.cache) == 0


def test_openai_backend_recovers_from_one_malformed_reply(tmp_path: Path) -> None:
    with FakeServer(openai_handler(lambda b, i: "Paris")) as server:
        server.faults.append(("raw", 200, HTML, {"Content-Type": "text/html"}))
        cached = openai_backend(server, tmp_path)
        out = cached.generate(["q"], GREEDY, n=2)
        assert [c.text for c in out[0]] == ["Paris", "Paris"]
        assert len(server.requests) == 2
        assert cached.backend.usage()["retries"] == 1  # type: ignore[attr-defined]


def test_completions_endpoint_malformed_reply(tmp_path: Path) -> None:
    with FakeServer(always(b'{"choices": [{"index": 0, "message": {"content": "chat"}}]}')) as server:
        opts = openai_compat.Options(base_url=server.url + "/v1", model="m", backoff=0.01,
                                     max_retries=2, endpoint="completions")
        with pytest.raises(BackendError) as err:
            openai_compat.create(opts, FakeContext()).generate(["raw prompt"], GREEDY)
        assert "/completions" in str(err.value) and "`text` string" in str(err.value)


# -- the tgi backend ---------------------------------------------------------------------
def tgi_backend(server: FakeServer, tmp_path: Path) -> CachedBackend:
    opts = tgi.Options(url=server.url, backoff=0.01, max_retries=RETRIES, api_key_env="MY_KEY")
    backend = tgi.create(opts, FakeContext(secrets={"MY_KEY": SECRET}))
    backend.info()  # GET /info answered by the real handler before the faults
    return CachedBackend(backend, JsonlCache(str(tmp_path / "gen.jsonl")))


@pytest.mark.parametrize("kind", sorted(TGI_BODIES))
def test_tgi_backend_retries_then_fails_clearly_storing_nothing(kind: str, tmp_path: Path) -> None:
    body, quote = TGI_BODIES[kind]
    with FakeServer(tgi_handler()) as server:
        cached = tgi_backend(server, tmp_path)
        server.faults.extend([("raw", 200, body)] * RETRIES)
        with pytest.raises(BackendError) as err:
            cached.generate(["q"], GREEDY, n=1)
        assert len(server.requests) == 1 + RETRIES
        check_error(err.value, server, "/generate", quote)
        assert len(cached.cache) == 0


def test_tgi_backend_recovers_and_messages_api_is_checked_too(tmp_path: Path) -> None:
    with FakeServer(tgi_handler()) as server:
        cached = tgi_backend(server, tmp_path)
        server.faults.append(("raw", 200, b'{"details": {}}'))
        out = cached.generate(["q"], GREEDY, n=1)
        assert out[0][0].text and len(server.requests) == 3
        opts = tgi.Options(url=server.url, backoff=0.01, max_retries=2, chat="messages")
        messages = tgi.create(opts, FakeContext())
        messages.info()
        server.faults.extend([("raw", 200, b'{"generated_text": "x"}')] * 2)
        with pytest.raises(BackendError) as err:
            messages.generate([[{"role": "user", "content": "q"}]], GREEDY)
        assert "/v1/chat/completions" in str(err.value) and "message.content" in str(err.value)


# -- the openai question generator ------------------------------------------------------
def questions_pipeline(run_dir: Path, url: str) -> Pipeline:
    source = ListSource([_doc("Alpha", "train", 6)])
    return Pipeline({
        "run_dir": str(run_dir),
        "source": source,
        "chunker": {"use": "sentences", "options": {"max_tokens": 40, "min_tail_fraction": 0.0}},
        "question_generator": {"use": "openai", "options": {
            "base_url": url + "/v1", "model": "test-model", "backoff": 0.01,
            "max_retries": RETRIES, "concurrency": 1}},
    })


def cached_texts(run_dir: Path) -> list[Any]:
    """Every value of every cache file under the run directory."""
    rows = []
    for path in run_dir.rglob("*.jsonl"):
        if "cache" in str(path.relative_to(run_dir)):
            rows += [json.loads(x).get("v") for x in path.read_text().splitlines() if x.strip()]
    return rows


@pytest.mark.parametrize("kind", sorted(TEXT_REQUIRED))
def test_question_generator_retries_then_fails_writing_nothing(kind: str, tmp_path: Path) -> None:
    body, quote = TEXT_REQUIRED[kind]
    with FakeServer(always(body)) as server:
        with pytest.raises(BackendError) as err:
            questions_pipeline(tmp_path / "run", server.url).run(until="questions")
        assert len(server.requests) == RETRIES  # the first passage, retried, then stop
        check_error(err.value, server, "/chat/completions", quote)
    assert not (tmp_path / "run" / "questions.jsonl").exists()
    assert cached_texts(tmp_path / "run") == []


def test_question_generator_recovers_from_malformed_replies(tmp_path: Path) -> None:
    with FakeServer(openai_handler(Script(good))) as server:
        server.faults.extend([("raw", 200, HTML), ("raw", 200, TEXT_REQUIRED["empty_text"][0])])
        questions_pipeline(tmp_path / "run", server.url).run(until="questions")
    rows = [json.loads(x) for x in (tmp_path / "run" / "questions.jsonl").read_text().splitlines()]
    assert rows and all(r["text"].strip() for r in rows)
    assert all(v["text"].strip() for v in cached_texts(tmp_path / "run"))


# -- the openai judge ----------------------------------------------------------------------
ITEM = JudgeItem("q1", "How deep is Baikal?", "Lake Baikal is 1642 metres deep.",
                 candidate="1642 metres.", baseline="No idea.")


def judge(server: FakeServer, cache: JsonlCache) -> OpenAIJudge:
    opts = JudgeOptions(base_url=server.url + "/v1", model="test-model", backoff=0.01,
                        max_retries=RETRIES, concurrency=1)
    return OpenAIJudge(opts, ChatClient(client_options(opts), lambda name: SECRET), seed=7, cache=cache)


@pytest.mark.parametrize("kind", sorted(TEXT_REQUIRED))
def test_judge_retries_then_fails_recording_no_verdict(kind: str, tmp_path: Path) -> None:
    body, quote = TEXT_REQUIRED[kind]
    cache = JsonlCache(str(tmp_path / "judge.jsonl"))
    with FakeServer(always(body)) as server:
        with pytest.raises(BackendError) as err:
            judge(server, cache).judge([ITEM])
        assert len(server.requests) == RETRIES
        check_error(err.value, server, "/chat/completions", quote)
    assert len(cache) == 0


def test_judge_recovers_from_a_malformed_reply(tmp_path: Path) -> None:
    cache = JsonlCache(str(tmp_path / "judge.jsonl"))
    with FakeServer(openai_handler(lambda b, i: "A")) as server:
        server.faults.append(("raw", 200, b"not json at all"))
        verdicts = judge(server, cache).judge([ITEM])
        assert len(server.requests) == 3  # both orders, one retried
    assert verdicts[0].outcome in {"win", "lose", "tie"}


# -- 4xx reasons and the CLI -------------------------------------------------------------
def test_a_422_carries_the_servers_reason_redacted(tmp_path: Path) -> None:
    detail = {"detail": [{"loc": ["body", "logprobs"], "msg": f"Extra inputs are not permitted (key {SECRET})",
                          "type": "extra_forbidden"}]}
    with FakeServer(lambda path, req: (422, detail, {})) as server:
        cached = openai_backend(server, tmp_path)
        with pytest.raises(BackendError) as err:
            cached.generate(["q"], GREEDY)
        assert len(server.requests) == 1  # a refused request is not retried
        msg = str(err.value)
        assert "HTTP 422" in msg and "body.logprobs: Extra inputs are not permitted" in msg
        assert SECRET not in msg and "[redacted]" in msg
    with FakeServer(tgi_handler()) as server:
        backend = tgi_backend(server, tmp_path)
        server.faults.append(("raw", 422, b'{"error": "Input validation error: `top_p` must be > 0.0", '
                                          b'"error_type": "validation"}'))
        with pytest.raises(BackendError, match=r"HTTP 422\): Input validation error: `top_p` must be > 0.0"):
            backend.generate(["q"], GREEDY)


def test_cli_exits_2_with_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(" ".join(f"Alpha has property {k} described here." for k in range(20)))
    with FakeServer(always(HTML)) as server:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(
            f"run_dir: {tmp_path / 'run'}\nsource: {{use: files, options: {{url: {docs}}}}}\n"
            f"question_generator: {{use: openai, options: {{base_url: '{server.url}/v1', "
            f"model: m, backoff: 0.01, max_retries: 2}}}}\n"
        )
        assert main(["run", str(cfg), "--until", "questions"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "502 Bad Gateway" in err and server.url in err
    assert SECRET not in err


def test_an_empty_answer_backed_by_a_generated_token_is_kept(tmp_path: Path) -> None:
    """A model that ends at once (only its end-of-sequence token) is a real, empty answer."""
    ended = (b'{"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "stop"}], '
             b'"usage": {"prompt_tokens": 3, "completion_tokens": 1}}')
    with FakeServer(always(ended)) as server:
        out = openai_backend(server, tmp_path).generate(["q"], GREEDY)
        assert out[0][0].text == "" and len(server.requests) == 1
    with FakeServer(tgi_handler()) as server:
        backend = tgi_backend(server, tmp_path / "tgi")
        server.faults.append(("raw", 200, b'{"generated_text": "", "details": {"finish_reason": '
                                          b'"eos_token", "generated_tokens": 1, "tokens": []}}'))
        out = backend.generate(["q"], GREEDY)
        assert out[0][0].text == "" and len(server.requests) == 2


def test_a_judges_own_empty_answer_is_unparseable_not_fatal(tmp_path: Path) -> None:
    """An empty verdict the server counts a token for is the model's answer: the protocol asks
    again with the next seed and, when it stays empty, the item is "unjudged" (no stage error,
    no empty verdict)."""
    ended = (b'{"choices": [{"index": 0, "message": {"content": ""}, "finish_reason": "stop"}], '
             b'"usage": {"prompt_tokens": 9, "completion_tokens": 1}}')
    with FakeServer(always(ended)) as server:
        verdicts = judge(server, JsonlCache(str(tmp_path / "judge.jsonl"))).judge([ITEM])
        assert len(server.requests) == 2 * 3  # both orders, max_attempts each, no client retry
    assert verdicts[0].outcome == "unjudged"
