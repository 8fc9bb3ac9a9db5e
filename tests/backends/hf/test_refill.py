"""Refill in the shared decoder (continuous batching): when every sample of a prompt has ended,
its group of slots takes the next waiting prompt. On the tiny random Llama (CPU, float32) with
EOS made likely so that rows end at different steps: refilled runs give the same tokens,
log-probabilities and finish reasons as runs without refill and as the loop decoder, the
refill really happens (groups restart mid-run), and stop strings end rows under refill too."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from selflearn.builtin.backends.hf import HFBackend, Options
from selflearn.builtin.backends.hf.schedule import Schedule
from selflearn.core.protocols import GenerationParams

from .test_backend import PROMPTS, tokens

MORE_PROMPTS = [*PROMPTS, "A star is", "The river flows through", "In 1905 Einstein", "Photosynthesis"]
SAMPLED = GenerationParams(max_new_tokens=20, temperature=1.0, top_p=0.95, repetition_penalty=1.1, logprobs=True)
GREEDY = GenerationParams(max_new_tokens=20, repetition_penalty=1.1, logprobs=True)


def backend(tiny_llama: str, eos_bias: float = 3.5, **options: Any) -> HFBackend:
    """An hf backend whose model makes EOS likely (a fixed logit bias; the random model's
    logits are small, so greedy rows need little), so rows end early and at different steps."""
    import torch

    b = HFBackend(Options(**{"batch_size": 6, "sync_every": 2, **options}), tiny_llama, seed=11)
    b._load()
    bias = torch.zeros(b._model.config.vocab_size)
    bias[b._tokenizer.eos_token_id] = eos_bias
    b._model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    return b


@pytest.fixture()
def starts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The global step at which each prompt's group started, over the test."""
    seen: list[int] = []
    assign = Schedule.assign

    def record(self: Schedule, t: int) -> list[tuple[int, int]]:
        pairs = assign(self, t)
        seen.extend(t for _ in pairs)
        return pairs

    monkeypatch.setattr(Schedule, "assign", record)
    return seen


def assert_same(a: list[Any], b: list[Any]) -> None:
    assert tokens(a) == tokens(b)
    for ra, rb in zip(a, b, strict=True):
        for x, y in zip(ra, rb, strict=True):
            assert (x.text, x.finish_reason) == (y.text, y.finish_reason)
            assert y.logprobs == pytest.approx(x.logprobs, abs=1e-4)


@pytest.mark.parametrize("params,n,eos_bias", [(SAMPLED, 3, 3.5), (GREEDY, 1, 0.2)])
def test_refilled_equals_unrefilled_and_the_loop(tiny_llama: str, starts: list[int], params: GenerationParams,
                                                 n: int, eos_bias: float) -> None:
    got = backend(tiny_llama, eos_bias, decoder="shared").generate(MORE_PROMPTS, params, n=n)
    assert len(starts) == len(MORE_PROMPTS)
    assert max(starts) > 0, "some prompts must start in slots that other prompts freed"
    batches = backend(tiny_llama, eos_bias, decoder="shared", refill=False).generate(MORE_PROMPTS, params, n=n)
    loop = backend(tiny_llama, eos_bias, decoder="loop").generate(MORE_PROMPTS, params, n=n)
    assert_same(batches, got)
    assert_same(loop, got)
    lengths = {len(c.tokens) for row in got for c in row}
    assert len(lengths) > 2 and "stop" in {c.finish_reason for row in got for c in row}  # EOS at different steps


def test_refill_with_the_fused_layers_and_stop_strings(tiny_llama: str, starts: list[int]) -> None:
    """Stop strings end rows at different steps (the fused layers compute the logits
    themselves, so no logit hook: the stop is a piece of a generated text)."""
    loop = backend(tiny_llama, eos_bias=0.0, decoder="loop")
    text = next(c.text for row in loop.generate(MORE_PROMPTS, SAMPLED, n=3) for c in row if len(c.text) > 6)
    stop = attrs.evolve(SAMPLED, stop=[text[2:4]])
    got = backend(tiny_llama, eos_bias=0.0, decoder="shared", fuse="eager", batch_size=3).generate(
        MORE_PROMPTS, stop, n=3)
    assert max(starts) > 0
    assert_same(loop.generate(MORE_PROMPTS, stop, n=3), got)
    ended = [c for row in got for c in row if c.finish_reason == "stop"]
    assert ended and all(text[2:4] not in c.text for c in ended)


def test_the_schedule_assigns_frees_and_bounds_steps() -> None:
    s = Schedule.of(prompts=5, groups=2, max_new_tokens=10)
    assert s.assign(0) == [(0, 0), (1, 1)] and s.active() == [0, 1]
    assert s.own_steps(7) == 7 and s.horizon() == 10
    assert s.release(1) == 1 and s.assign(7) == [(1, 2)]
    assert s.own_steps(9) == 9 and s.horizon() == 17  # group 0 from 0, group 1 from 7
    s.release(0)
    assert s.own_steps(9) == 2 and s.assign(9) == [(0, 3)]
    s.release(0), s.release(1)
    assert s.assign(12) == [(0, 4)] and s.active() == [0] and not s.waiting
