"""Replica lists for the ``openai`` and ``tgi`` backends (local protocol servers on 127.0.0.1):
requests spread over the replicas, a dead or failing replica's requests answered by another,
per-replica counts, and results equal to one healthy server's."""

from __future__ import annotations

from typing import Any

import pytest

from selflearn.builtin.backends import openai_compat, tgi
from selflearn.core.errors import BackendError, ConfigError
from selflearn.core.protocols import GenerationParams
from tests.backends.helpers import FakeContext, fake_text, free_port_url, tgi_handler
from tests.servers import FakeServer, openai_handler

SAMPLED = GenerationParams(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=5)
PROMPTS = [f"question {i}" for i in range(6)]


def seeded(body: dict[str, Any], i: int) -> str:
    prompt = body["messages"][-1]["content"]
    return fake_text(prompt, f"{body.get('seed')}-{i}")


def openai(urls: Any) -> Any:
    opts = openai_compat.Options(base_url=urls, model="test-model", backoff=0.01, max_retries=2)
    return openai_compat.create(opts, FakeContext(seed=3))


def texts(out: list[list[Any]]) -> list[list[str]]:
    return [[c.text for c in row] for row in out]


def test_openai_requests_spread_over_replicas_with_the_same_results() -> None:
    with FakeServer(openai_handler(seeded)) as a, FakeServer(openai_handler(seeded)) as b:
        single = texts(openai(a.url + "/v1").generate(PROMPTS, SAMPLED, n=3))
        a.requests.clear()
        backend = openai([a.url + "/v1", b.url + "/v1"])
        out = backend.generate(PROMPTS, SAMPLED, n=3)
        assert texts(out) == single  # seeded samples do not depend on the replica
        assert len(a.requests) == len(b.requests) == 3  # 6 prompts, one request each
        replicas = backend.usage()["replicas"]
        assert [r["prompts"] for r in replicas.values()] == [3, 3]
        assert backend.identity()["base_url"] == "replicas"  # adding a replica keeps the cache


def test_openai_a_dead_and_a_failing_replica_are_failed_over() -> None:
    dead = free_port_url() + "/v1"  # nothing listens: connection refused
    with FakeServer(openai_handler(seeded)) as good, FakeServer(openai_handler(seeded)) as failing:
        for _ in range(20):
            failing.faults.append(("status", 500, {}))
        backend = openai([dead, good.url + "/v1", failing.url + "/v1"])
        out = backend.generate(PROMPTS, SAMPLED, n=2)
        assert [len(r) for r in out] == [2] * 6 and all(c.text for row in out for c in row)
        replicas = backend.usage()["replicas"]
        counts = {name: (r["prompts"], r["failures"]) for name, r in replicas.items()}
        # (a group moving off one bad replica may try the other before it is marked down)
        assert counts[dead][0] == 0 and counts[dead][1] >= 1
        assert counts[failing.url + "/v1"][0] == 0 and counts[failing.url + "/v1"][1] >= 1
        assert counts[good.url + "/v1"] == (6, 0)
        # the failed replicas sit out the next call: it goes to the good one alone
        before = len(failing.requests)
        backend.generate(["another question"], SAMPLED, n=1)
        assert len(failing.requests) == before
        assert backend.usage()["replicas"][good.url + "/v1"]["prompts"] == 7


def test_every_replica_down_is_one_clear_error() -> None:
    backend = openai([free_port_url() + "/v1", free_port_url() + "/v1"])
    with pytest.raises(BackendError, match="every replica failed"):
        backend.generate(["q"], SAMPLED, n=1)


def test_tgi_replicas_survive_a_dead_one() -> None:
    with FakeServer(tgi_handler()) as server:
        dead = free_port_url()
        backend = tgi.create(tgi.Options(url=[dead, server.url], model="tgi-model", backoff=0.01,
                                         max_retries=2), FakeContext(seed=11))
        single = tgi.create(tgi.Options(url=server.url, model="tgi-model"), FakeContext(seed=11))
        out = backend.generate(["q1", "q2", "q3"], SAMPLED, n=2)
        assert texts(out) == texts(single.generate(["q1", "q2", "q3"], SAMPLED, n=2))
        replicas = backend.usage()["replicas"]
        assert replicas[dead]["failures"] == 1 and replicas[server.url]["prompts"] == 3


@pytest.mark.parametrize("urls", [[], ["http://a", "http://a"], ["http://a", 3]])
def test_bad_replica_lists_are_config_errors(urls: list[Any]) -> None:
    with pytest.raises(ConfigError, match="base_url"):
        openai(urls)
