"""The ``openai`` backend against a local OpenAI-compatible server, with injected faults."""

from __future__ import annotations

import time
from typing import Any

import pytest

from selflearn.builtin.backends.openai_compat import Options, create
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import BackendError
from selflearn.core.generation import CachedBackend
from selflearn.core.protocols import GenerationParams
from tests.backends.helpers import FakeContext, fake_text, free_port_url
from tests.servers import FakeServer, openai_handler

SAMPLED = GenerationParams(max_new_tokens=20, temperature=0.7, top_p=0.9, repetition_penalty=1.1, logprobs=True)
GREEDY = GenerationParams(max_new_tokens=20)


def seeded(body: dict[str, Any], i: int) -> str:
    """A server that honours seeds: the text is a function of (prompt, seed, choice index)."""
    prompt = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    if not body.get("temperature"):
        return fake_text(prompt, "greedy")
    return fake_text(prompt, f"{body.get('seed')}-{i}")


def make(server: FakeServer, **kw: Any) -> Any:
    model = kw.pop("context_model", None)
    opts = Options(base_url=server.url + "/v1", model=kw.pop("model", "test-model"), backoff=0.01, **kw)
    return create(opts, FakeContext(model=model, seed=3))


def bodies(server: FakeServer) -> list[dict[str, Any]]:
    return [b for _, b, _ in server.requests]


def test_chat_n_samples_in_one_request() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        b = make(server)
        out = b.generate(["q1", [{"role": "user", "content": "q2"}]], SAMPLED, n=4)
        assert [len(r) for r in out] == [4, 4]
        assert len(bodies(server)) == 2
        body = next(b for b in bodies(server) if b["messages"][0]["content"] == "q1")
        assert body["n"] == 4 and body["temperature"] == 0.7 and body["top_p"] == 0.9
        assert body["messages"] == [{"role": "user", "content": "q1"}] and isinstance(body["seed"], int)
        assert "repetition_penalty" not in body
        assert len({c.text for c in out[0]}) == 4
        c = out[0][0]
        assert c.logprobs is not None and len(c.logprobs) == len(c.tokens or []) == c.completion_tokens


def test_max_n_splits_requests() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        out = make(server, max_n=2).generate(["q"], SAMPLED, n=5)
        assert len(out[0]) == 5
        assert sorted(b["n"] for b in bodies(server)) == [1, 2, 2]


def test_seeded_samples_give_exact_sample_offsets() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        b = make(server, seeded_samples=True)
        full = b.generate(["q"], SAMPLED, n=4)
        assert all(body["n"] == 1 for body in bodies(server)) and len(bodies(server)) == 4
        assert len({body["seed"] for body in bodies(server)}) == 4
        tail = make(server, seeded_samples=True).generate(["q"], SAMPLED, n=2, sample_offset=2)
        assert [c.text for c in tail[0]] == [c.text for c in full[0][2:]]


def test_greedy_is_one_request_copied() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        out = make(server).generate(["q"], GREEDY, n=3)
        assert len(out[0]) == 3 and len({c.text for c in out[0]}) == 1
        (body,) = bodies(server)
        assert body["temperature"] == 0 and body["n"] == 1 and "seed" not in body


def test_completions_endpoint_renders_chat_prompts(tiny_llama: str) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "What is Mont Blanc?"}]
    with FakeServer(openai_handler(seeded)) as server:
        b = make(server, endpoint="completions", context_model=tiny_llama)
        out = b.generate([messages, "raw text"], SAMPLED, n=2)
        assert [len(r) for r in out] == [2, 2]
        expected = AutoTokenizer.from_pretrained(tiny_llama).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False)
        assert sorted(b["prompt"] for b in bodies(server)) == sorted([expected, "raw text"])
        assert {p for p, _, _ in server.requests} == {"/v1/completions"}
        assert out[0][0].logprobs is not None


def test_repetition_penalty_as_extra_parameter_and_stop() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        full = make(server, send_repetition_penalty=True).generate(["q"], SAMPLED)[0][0]
        assert bodies(server)[0]["repetition_penalty"] == 1.1
        stop = full.text.split()[3]
        params = GenerationParams(**{**SAMPLED.to_dict(), "stop": (stop,)})
        cut = make(server).generate(["q"], params)[0][0]
        assert bodies(server)[-1]["stop"] == [stop]
        assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reason == "stop"


def test_usage_and_finish_reasons() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        b = make(server)
        out = b.generate(["q"], GenerationParams(max_new_tokens=3, temperature=1.0), n=2)
        assert all(c.finish_reason == "length" and c.completion_tokens == 3 for c in out[0])
        usage = b.usage()
        assert usage["requests"] == 1 and usage["completion_tokens"] == 6 and usage["prompt_tokens"] == 1


def test_retries_429_500_drop_and_timeouts() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        server.faults.extend([("status", 429, {"Retry-After": "0.2"}), ("status", 500), ("drop",)])
        b = make(server, timeout=0.5)
        t0 = time.monotonic()
        assert b.generate(["q"], SAMPLED)[0][0].text
        assert time.monotonic() - t0 >= 0.2
        assert b.usage()["retries"] == 3
        server.faults.extend([("sleep", 1.0)] * 2)
        with pytest.raises(BackendError, match=server.url):
            make(server, timeout=0.2, max_retries=2).generate(["q2"], SAMPLED)


def test_wrong_model_and_unreachable_server_name_the_url() -> None:
    with FakeServer(openai_handler(seeded)) as server:
        with pytest.raises(BackendError) as err:
            make(server, model="no-such-model").generate(["q"], GREEDY)
        assert server.url in str(err.value) and "no-such-model" in str(err.value)
    url = free_port_url()
    b = create(Options(base_url=url + "/v1", model="m", max_retries=1), FakeContext())
    with pytest.raises(BackendError, match=url.replace(".", r"\.")):
        b.generate(["q"], GREEDY)


def test_finished_samples_are_kept_when_the_server_keeps_failing(tmp_path: Any) -> None:
    with FakeServer(openai_handler(seeded)) as server:
        b = make(server, seeded_samples=True, concurrency=1, max_retries=2)
        inner = server.handler
        server.handler = lambda path, body: (500, {"error": {"message": "down"}}, {}) if len(server.requests) > 2 else inner(path, body)
        cached = CachedBackend(b, JsonlCache(str(tmp_path / "gen.jsonl")))
        with pytest.raises(BackendError, match="kept failing"):
            cached.generate(["q"], SAMPLED, n=4)
        assert cached.calls == 2
        server.handler = inner
        before = len(server.requests)
        assert len(cached.generate(["q"], SAMPLED, n=4)[0]) == 4
        assert len(server.requests) - before == 2


def test_model_defaults_to_the_run_model() -> None:
    with FakeServer(openai_handler(seeded, model="served")) as server:
        b = create(Options(base_url=server.url + "/v1"), FakeContext(model="served"))
        assert b.identity()["model"] == "served"
        assert b.generate(["q"], GREEDY)[0][0].text
