"""``CachedBackend.generate_mixed``: prompts with nothing cached go to the backend's
``generate_mixed`` in one call, prompts partly cached are completed one parameter set at a
time, the results equal one ``generate`` per set, and everything lands in the cache."""

from __future__ import annotations

from typing import Any

from selflearn.builtin.backends.echo import EchoBackend
from selflearn.builtin.backends.echo import Options as EchoOptions
from selflearn.core.cache import JsonlCache
from selflearn.core.generation import CachedBackend
from selflearn.core.protocols import GenerationParams

GREEDY = GenerationParams(max_new_tokens=20)
SAMPLED = GenerationParams(max_new_tokens=20, temperature=0.7, top_p=0.9, seed=3)


class Mixing(EchoBackend):
    def __init__(self) -> None:
        super().__init__(EchoOptions())
        self.mixed: list[list[Any]] = []
        self.single: list[tuple[list[Any], int, int]] = []

    def generate(self, prompts: Any, params: Any, *, n: int = 1, sample_offset: int = 0) -> Any:
        self.single.append((list(prompts), n, sample_offset))
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)

    def generate_mixed(self, prompts: Any, parts: Any) -> Any:
        self.mixed.append(list(prompts))
        return [EchoBackend.generate(self, prompts, params, n=n) for params, n in parts]


def test_fresh_prompts_go_in_one_mixed_call_and_partly_cached_ones_per_set(tmp_path: Any) -> None:
    prompts = ["one two three", "four five six", "seven eight", "nine ten"]
    plain = EchoBackend(EchoOptions())
    expected = [plain.generate(prompts, GREEDY), plain.generate(prompts, SAMPLED, n=3)]
    inner = Mixing()
    cached = CachedBackend(inner, JsonlCache(str(tmp_path / "cache.jsonl")))
    cached.generate(prompts[:1], SAMPLED, n=2)  # prompt 0: samples 0-1 cached, the rest not
    cached.generate(prompts[1:2], GREEDY)  # prompt 1: y* cached
    inner.single.clear()
    got = cached.generate_mixed(prompts, [(GREEDY, 1), (SAMPLED, 3)])
    assert got == expected
    assert inner.mixed == [prompts[2:]]  # only the prompts with nothing cached
    assert sorted((p, n, o) for ps, n, o in inner.single for p in ps) == sorted([
        (prompts[0], 1, 0), (prompts[0], 1, 2), (prompts[1], 3, 0)])
    assert cached.calls == 2 * (1 + 3) + 1 + 1 + 3 + 2 + 1  # mixed, then per set, and the two set-up calls
    inner.mixed.clear()
    inner.single.clear()
    assert cached.generate_mixed(prompts, [(GREEDY, 1), (SAMPLED, 3)]) == expected
    assert inner.mixed == [] and inner.single == []  # all cached now


def test_a_backend_without_generate_mixed_is_asked_per_set(tmp_path: Any) -> None:
    inner = EchoBackend(EchoOptions())
    cached = CachedBackend(inner, JsonlCache(str(tmp_path / "cache.jsonl")))
    prompts = ["a b c", "d e f"]
    assert cached.generate_mixed(prompts, [(GREEDY, 2), (SAMPLED, 2)]) == [
        inner.generate(prompts, GREEDY, n=2), inner.generate(prompts, SAMPLED, n=2)]
    assert cached.calls == 8
