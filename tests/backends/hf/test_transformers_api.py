"""The ``hf`` decoders against the installed transformers: every decoder path (the loop with
its dynamic and static caches, the shared decoder with the model's modules and with fused
layers) on tiny random Llama, Qwen2 and Qwen3 models, with every deprecation warning turned
into a failure. transformers renames arguments in minor releases and warns for a few releases
before removing the old name; this test fails on the first warning, not on the removal."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from selflearn.builtin.backends.hf import HFBackend, Options
from selflearn.builtin.backends.hf.transformers_api import cache_argument, returned_cache

from .test_backend import GREEDY, PROMPTS, SAMPLED, tokens
from .test_fused_layers import model_path  # noqa: F401  (the Llama/Qwen2/Qwen3 fixture)

PATHS: dict[str, dict[str, Any]] = {
    "loop-dynamic": {"decoder": "loop"},
    "loop-static": {"decoder": "loop", "cache": "static"},
    "shared-modules": {"decoder": "shared", "fuse": "off"},
    "shared-fused": {"decoder": "shared", "fuse": "eager"},
}


def _deprecations(caught: list[warnings.WarningMessage]) -> list[str]:
    return [
        f"{w.category.__name__}: {w.message} ({w.filename}:{w.lineno})"
        for w in caught
        if issubclass(w.category, (FutureWarning, DeprecationWarning, PendingDeprecationWarning))
    ]


@pytest.mark.parametrize("path", list(PATHS))
def test_decoders_raise_no_deprecation_warning(model_path: str, path: str) -> None:  # noqa: F811
    b = HFBackend(Options(batch_size=16, **PATHS[path]), model_path, seed=3)
    b._load()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sampled = b.generate(PROMPTS, SAMPLED, n=2)
        greedy = b.generate(PROMPTS, GREEDY, n=1)
    assert _deprecations(caught) == []
    assert all(tokens(sampled)) and all(tokens(greedy))  # it decoded something


def test_the_cache_argument_is_the_one_the_model_declares(model_path: str) -> None:  # noqa: F811
    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    model = AutoModelForCausalLM.from_pretrained(model_path)
    name = cache_argument(model)
    assert name in ("cache", "past_key_values")
    assert cache_argument(model.model.layers[0]) == name
    kv = DynamicCache(config=model.config)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        out = model(input_ids=torch.tensor([[3, 4, 5]]), use_cache=True, **{name: kv})
    assert returned_cache(out) is kv and kv.get_seq_length() == 3
