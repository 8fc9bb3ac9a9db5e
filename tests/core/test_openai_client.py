"""The shared OpenAI-compatible client against a local server with injected faults."""

from __future__ import annotations

import time

import pytest

from selflearn.builtin.openai_client import ChatClient, ClientOptions
from selflearn.core.errors import (
    AuthenticationError,
    BackendError,
    BudgetExceededError,
    ConfigError,
)
from tests.servers import FakeServer, openai_handler


def _echo(body, i):
    content = body["messages"][-1]["content"] if "messages" in body else body["prompt"]
    return f"reply {i} to {content}"


def _client(server, **kw):
    opts = ClientOptions(base_url=server.url + "/v1", model="test-model", backoff=0.01, **kw)
    return ChatClient(opts, lambda name: "sk-secret-value")


def test_chat_n_choices_logprobs_and_usage():
    with FakeServer(openai_handler(_echo)) as server:
        client = _client(server, price_input_per_mtok=1e6, price_output_per_mtok=2e6)
        res = client.chat([{"role": "user", "content": "hello"}], n=3, logprobs=True, max_tokens=20)
        assert [c.text for c in res.choices] == [f"reply {i} to hello" for i in range(3)]
        assert res.choices[0].logprobs == [-0.5] * 4
        assert client.usage["requests"] == 1
        assert client.usage["completion_tokens"] == 12
        assert client.usage["cost_usd"] == pytest.approx(1 * 1 + 12 * 2)
        _, _, headers = server.requests[0]
        assert headers.get("authorization") == "Bearer sk-secret-value"


def test_completions_endpoint():
    with FakeServer(openai_handler(_echo)) as server:
        res = _client(server).complete("raw prompt", n=2, max_tokens=3)
        assert [c.finish_reason for c in res.choices] == ["length", "length"]
        assert server.requests[0][0] == "/v1/completions"


def test_retries_429_with_retry_after_500_and_drop():
    with FakeServer(openai_handler(_echo)) as server:
        server.faults.extend([("status", 429, {"Retry-After": "0.2"}), ("status", 500), ("drop",)])
        client = _client(server)
        t0 = time.monotonic()
        res = client.chat([{"role": "user", "content": "x"}])
        assert res.choices[0].text == "reply 0 to x"
        assert time.monotonic() - t0 >= 0.2  # honoured Retry-After
        assert client.usage["retries"] == 3
        assert len(server.requests) == 4


def test_timeout_is_retried_then_fails_clearly():
    with FakeServer(openai_handler(_echo)) as server:
        server.faults.extend([("sleep", 1.0)] * 3)
        client = _client(server, timeout=0.2, max_retries=2)
        with pytest.raises(BackendError) as err:
            client.chat([{"role": "user", "content": "x"}])
        assert server.url in str(err.value) and "test-model" in str(err.value)
        assert "sk-secret-value" not in str(err.value)


def test_401_and_404_are_clear_errors():
    with FakeServer(openai_handler(_echo)) as server:
        server.faults.append(("status", 401))
        with pytest.raises(AuthenticationError, match="OPENAI_API_KEY"):
            _client(server).chat([{"role": "user", "content": "x"}])
        opts = ClientOptions(base_url=server.url + "/v1", model="nope", backoff=0.01)
        with pytest.raises(BackendError, match="404 for model 'nope'"):
            ChatClient(opts, lambda n: None).chat([{"role": "user", "content": "x"}])


def test_missing_key_for_official_api_is_an_error_before_any_call():
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        ChatClient(ClientOptions(), lambda n: None)


def test_spend_cap_stops_cleanly():
    with FakeServer(openai_handler(_echo)) as server:
        client = _client(server, price_output_per_mtok=1e6, max_cost_usd=5.0, concurrency=1)
        client.chat([{"role": "user", "content": "a"}])  # 4 completion tokens: $4
        client.chat([{"role": "user", "content": "b"}])  # $8 now, over the cap
        with pytest.raises(BudgetExceededError, match="max_cost_usd"):
            client.chat([{"role": "user", "content": "c"}])
        assert len(server.requests) == 2


def test_map_keeps_order_and_bounds_concurrency():
    with FakeServer(openai_handler(_echo)) as server:
        client = _client(server, concurrency=4)
        out = client.map(lambda i: client.chat([{"role": "user", "content": str(i)}]).choices[0].text, range(10))
        assert out == [f"reply 0 to {i}" for i in range(10)]
