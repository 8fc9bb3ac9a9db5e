"""The ``tgi`` backend against a local server speaking TGI's HTTP API, with injected faults."""

from __future__ import annotations

import time
from typing import Any

import pytest

from selflearn.builtin.backends.tgi import Options, TGIBackend, create
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import BackendError, ConfigError
from selflearn.core.generation import CachedBackend
from selflearn.core.protocols import GenerationParams
from tests.backends.helpers import FakeContext, fake_text, free_port_url, tgi_handler
from tests.servers import FakeServer

SAMPLED = GenerationParams(max_new_tokens=20, temperature=0.7, top_p=0.9, repetition_penalty=1.1, logprobs=True)
GREEDY = GenerationParams(max_new_tokens=20, repetition_penalty=1.1)


def backend(server: FakeServer, **kw: Any) -> TGIBackend:
    opts = Options(url=server.url, backoff=0.01, **kw)
    return create(opts, FakeContext(model=kw.pop("tokenizer", None), seed=11))


def generate_calls(server: FakeServer) -> list[dict[str, Any]]:
    return [body for path, body, _ in server.requests if path == "/generate"]


def test_seeded_samples_reproduce_and_extend() -> None:
    with FakeServer(tgi_handler()) as server:
        b = backend(server)
        out = b.generate(["q1", "q2"], SAMPLED, n=3)
        assert [len(r) for r in out] == [3, 3]
        calls = generate_calls(server)
        assert len(calls) == 6  # one seeded request per sample
        params = [c["parameters"] for c in calls]
        assert all(p["do_sample"] and p["details"] and p["temperature"] == 0.7 and p["top_p"] == 0.9
                   and p["repetition_penalty"] == 1.1 and p["max_new_tokens"] == 20 for p in params)
        seeds = {(c["inputs"], c["parameters"]["seed"]) for c in calls}
        assert len(seeds) == 6
        for row, prompt in zip(out, ["q1", "q2"], strict=True):
            assert len({c.text for c in row}) == 3
            # the server's text for that seed: the backend passes it through unchanged
            for c in row:
                assert any(c.text == fake_text(prompt, f"{s}-0") for p, s in seeds if p == prompt)
        again = backend(server).generate(["q1", "q2"], SAMPLED, n=3)
        assert [[c.text for c in r] for r in again] == [[c.text for c in r] for r in out]
        tail = backend(server).generate(["q1", "q2"], SAMPLED, n=2, sample_offset=1)
        assert [[c.text for c in r] for r in tail] == [[c.text for c in r[1:]] for r in out]


def test_logprobs_tokens_and_finish_reasons() -> None:
    with FakeServer(tgi_handler()) as server:
        comp = backend(server).generate(["q"], SAMPLED, n=1)[0][0]
        assert comp.finish_reason == "stop"  # eos_token
        assert comp.tokens is not None and comp.logprobs is not None
        assert len(comp.tokens) == len(comp.logprobs) == comp.completion_tokens == 9  # 8 words + EOS
        assert "".join(comp.tokens[:-1]) == comp.text and comp.tokens[-1] == "</s>"
        short = backend(server).generate(["q"], GenerationParams(max_new_tokens=3, temperature=1.0), n=1)[0][0]
        assert short.finish_reason == "length" and short.completion_tokens == 3
        assert short.logprobs is None


def test_greedy_is_one_request_and_valid_for_tgi() -> None:
    with FakeServer(tgi_handler()) as server:
        out = backend(server).generate(["q1"], GREEDY, n=3)
        assert len(out[0]) == 3 and len({c.text for c in out[0]}) == 1
        (call,) = generate_calls(server)
        assert call["parameters"]["do_sample"] is False
        assert "temperature" not in call["parameters"] and "seed" not in call["parameters"]


def test_best_of_mode_uses_best_of_sequences_and_splits_by_max_best_of() -> None:
    with FakeServer(tgi_handler(max_best_of=4)) as server:
        out = backend(server, samples="best_of").generate(["q"], SAMPLED, n=6)
        assert len(out[0]) == 6 and len({c.text for c in out[0]}) == 6
        calls = generate_calls(server)
        assert sorted(c["parameters"]["best_of"] for c in calls) == [2, 4]
        assert all("seed" not in c["parameters"] for c in calls)  # TGI refuses seed with best_of


def test_stop_strings_are_cut_client_side() -> None:
    with FakeServer(tgi_handler()) as server:
        full = backend(server).generate(["q"], SAMPLED)[0][0]
        stop = full.text.split()[2]
        cut = backend(server).generate(["q"], GenerationParams(**{**SAMPLED.to_dict(), "stop": (stop,)}))[0][0]
        assert cut.text == full.text[: full.text.index(stop)]
        assert cut.finish_reason == "stop"
        assert stop in "".join(cut.tokens or []) and len(cut.tokens or []) == 3
        assert generate_calls(server)[-1]["parameters"]["stop"] == [stop]


def test_chat_prompts_rendered_with_the_tokenizer_template(tiny_llama: str) -> None:
    from transformers import AutoTokenizer

    messages = [{"role": "user", "content": "What is Mont Blanc?"}]
    with FakeServer(tgi_handler()) as server:
        b = backend(server, tokenizer=tiny_llama)
        b.generate([messages], GREEDY)
        expected = AutoTokenizer.from_pretrained(tiny_llama).apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False)
        assert generate_calls(server)[0]["inputs"] == expected
        assert b.identity()["tokenizer"] == tiny_llama and b.identity()["model"] == "tgi-model"


def test_messages_api_mode() -> None:
    messages = [{"role": "user", "content": "What is Mont Blanc?"}]
    with FakeServer(tgi_handler()) as server:
        out = backend(server, chat="messages").generate([messages], SAMPLED, n=2)
        paths = [p for p, _, _ in server.requests if p != "/info"]
        assert paths == ["/v1/chat/completions"] * 2
        bodies = [b for p, b, _ in server.requests if p == "/v1/chat/completions"]
        assert len({b["seed"] for b in bodies}) == 2 and bodies[0]["messages"] == messages
        assert all(c.logprobs and len(c.logprobs) == len(c.tokens or []) for c in out[0])


def test_retries_429_with_retry_after_500_and_dropped_connections() -> None:
    with FakeServer(tgi_handler()) as server:
        b = backend(server)
        b.info()
        server.faults.extend([("status", 429, {"Retry-After": "0.3"}), ("status", 500), ("drop",), ("status", 503)])
        t0 = time.monotonic()
        out = b.generate(["q"], SAMPLED)
        assert out[0][0].text
        assert time.monotonic() - t0 >= 0.3  # Retry-After honoured
        assert len(generate_calls(server)) == 5
        assert b.usage()["retries"] == 4


def test_slow_responses_time_out_then_fail_clearly() -> None:
    with FakeServer(tgi_handler()) as server:
        b = backend(server, timeout=0.2, max_retries=2)
        b.info()
        server.faults.extend([("sleep", 1.0)] * 2)
        with pytest.raises(BackendError) as err:
            b.generate(["q"], SAMPLED)
        assert server.url in str(err.value) and "2 attempts" in str(err.value)


def test_validation_errors_are_not_retried() -> None:
    with FakeServer(tgi_handler(max_best_of=2)) as server:
        with pytest.raises(BackendError, match="best_of"):
            # best_of=3 > max_best_of would be split; force it through a broken info
            b = backend(server, samples="best_of")
            b._info = {"model_id": "tgi-model", "max_best_of": 3}
            b.generate(["q"], SAMPLED, n=3)
        assert len(generate_calls(server)) == 1


def test_unreachable_server_and_wrong_model_name_the_url() -> None:
    url = free_port_url()
    b = create(Options(url=url, model="m"), FakeContext())
    assert b.identity()["model"] == "m"  # identity needs no server when the model is given
    with pytest.raises(BackendError, match=url.replace(".", r"\.")):
        b.generate(["q"], GREEDY)
    with FakeServer(tgi_handler(model_id="served-model")) as server:
        with pytest.raises(BackendError) as err:
            create(Options(url=server.url, model="wanted-model"), FakeContext()).generate(["q"], GREEDY)
        assert server.url in str(err.value) and "served-model" in str(err.value) and "wanted-model" in str(err.value)


def test_an_openai_server_is_not_taken_for_tgi() -> None:
    with FakeServer(lambda path, body: (404, {"error": "not found"}, {})) as server, \
            pytest.raises(BackendError, match="text-generation-inference"):
        create(Options(url=server.url), FakeContext()).generate(["q"], GREEDY)


def test_bounded_concurrency() -> None:
    stats: dict[str, Any] = {}
    with FakeServer(tgi_handler(stats=stats, delay=0.05)) as server:
        backend(server, concurrency=3).generate(["a", "b", "c", "d"], SAMPLED, n=3)
        assert stats["max_in_flight"] <= 3
        assert stats["max_in_flight"] >= 2


def test_finished_samples_are_kept_when_the_server_keeps_failing(tmp_path: Any) -> None:
    with FakeServer(tgi_handler()) as server:
        b = backend(server, concurrency=1, max_retries=2)
        b.info()
        cache = JsonlCache(str(tmp_path / "gen.jsonl"))
        cached = CachedBackend(b, cache)
        # 3 requests succeed, then the server fails for good
        ok = 3

        def failing(path: str, body: dict[str, Any], _h: Any = tgi_handler()) -> Any:
            if path == "/generate" and len(generate_calls(server)) > ok:
                return 500, {"error": "down"}, {}
            return _h(path, body)

        server.handler = failing
        with pytest.raises(BackendError, match="kept failing"):
            cached.generate(["q1", "q2"], SAMPLED, n=3)
        assert len(cache) == 3 and cached.calls == 3
        server.handler = tgi_handler()
        before = len(generate_calls(server))
        out = cached.generate(["q1", "q2"], SAMPLED, n=3)
        assert [len(r) for r in out] == [3, 3]
        assert len(generate_calls(server)) - before == 3  # only the missing samples


def test_token_from_secret_and_missing_token() -> None:
    with FakeServer(tgi_handler()) as server:
        b = create(Options(url=server.url, api_key_env="TGI_TOKEN"), FakeContext(secrets={"TGI_TOKEN": "hf_secret"}))
        b.generate(["q"], GREEDY)
        assert all(h.get("authorization") == "Bearer hf_secret" for _, _, h in server.requests)
        with pytest.raises(ConfigError, match="TGI_TOKEN"):
            create(Options(url=server.url, api_key_env="TGI_TOKEN"), FakeContext())
