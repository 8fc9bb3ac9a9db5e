"""Every built-in inference backend passes ``selflearn.plugins.testing.check_inference_backend``
(echo: tests/core/test_contracts.py): hf on the tiny random Llama, tgi and openai against
local servers that speak their HTTP APIs and honour seeds."""

from __future__ import annotations

from typing import Any

from selflearn.builtin.backends import openai_compat, tgi
from selflearn.plugins.testing import check_inference_backend
from tests.backends.helpers import FakeContext, tgi_handler
from tests.backends.test_openai_backend import seeded
from tests.servers import FakeServer, openai_handler


def test_hf_backend(hf_backend: Any) -> None:
    checked = check_inference_backend(hf_backend)
    assert checked["seed"] and checked["sample_offset"] and checked["logprobs"]
    assert checked["stop"], "the tiny model's greedy answers should be long enough to cut"
    assert checked["mixed"]  # the CPU's loop decoder mixes (mix_greedy: auto)


def test_hf_backend_shared_decoder_mixed(tiny_llama: str) -> None:
    from selflearn.builtin.backends.hf import HFBackend, Options

    backend = HFBackend(Options(decoder="shared", mix_greedy="on", batch_size=16), tiny_llama, seed=5)
    assert check_inference_backend(backend)["mixed"]


def test_tgi_backend(tiny_llama: str) -> None:
    with FakeServer(tgi_handler()) as server:  # chat prompts rendered with the model's template
        backend = tgi.create(tgi.Options(url=server.url, backoff=0.01), FakeContext(model=tiny_llama, seed=11))
        checked = check_inference_backend(backend)
        backend.close()
    assert checked == {"shape": True, "seed": True, "sample_offset": True, "logprobs": True, "stop": True,
                       "mixed": False}


def test_openai_backend() -> None:
    """With ``seeded_samples`` each sample is its own seeded request, so sample offsets hold;
    by default the n samples share one request and seed (reproducible, but a call with a sample
    offset cannot continue them), which the contract is told."""
    with FakeServer(openai_handler(seeded)) as server:
        for seeded_samples in (True, False):
            opts = openai_compat.Options(base_url=server.url + "/v1", model="test-model", backoff=0.01,
                                         seeded_samples=seeded_samples)
            backend = openai_compat.create(opts, FakeContext(seed=3))
            checked = check_inference_backend(backend, sample_offsets=seeded_samples)
            backend.close()
            assert checked == {"shape": True, "seed": True, "sample_offset": seeded_samples,
                               "logprobs": True, "stop": True, "mixed": False}
