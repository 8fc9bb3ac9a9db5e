"""``generate_mixed`` of the ``hf`` backend: a greedy answer and the samples of the same prompts
in one run of the shared or the loop decoder (row_plan.py) give the same completions as one
``generate`` call per parameter set, in float32 on the CPU; parameter sets that cannot share a
run fall back to one call each."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from selflearn.builtin.backends.hf import HFBackend, Options
from selflearn.builtin.backends.hf.row_plan import Part, plan, unmixable
from selflearn.builtin.backends.hf.sampling import SamplingConfig, row_key
from selflearn.builtin.backends.hf.shared_decoder import SharedPrefixDecoder
from selflearn.core.protocols import GenerationParams

from .test_backend import PROMPTS, tokens

REFERENCE = GenerationParams(max_new_tokens=12, temperature=0.0, repetition_penalty=1.1, logprobs=True)
SAMPLES = GenerationParams(max_new_tokens=12, temperature=0.7, top_p=0.9, repetition_penalty=1.1, logprobs=True)


def backend(tiny_llama: str, **options: Any) -> HFBackend:
    b = HFBackend(Options(**{"batch_size": 16, "decoder": "shared", **options}), tiny_llama, seed=42)
    b._load()
    return b


def runs(b: HFBackend, monkeypatch: pytest.MonkeyPatch) -> list[SamplingConfig]:
    """The SamplingConfig of every decoder run ``b`` makes from now on."""
    seen: list[SamplingConfig] = []
    real = b._decoder.run

    def spy(batch: Any, cfg: SamplingConfig, *args: Any, **kwargs: Any) -> Any:
        seen.append(cfg)
        return real(batch, cfg, *args, **kwargs)

    monkeypatch.setattr(b._decoder, "run", spy)
    return seen


def assert_same(mixed: list[list[list[Any]]], separate: list[list[list[Any]]]) -> None:
    assert [tokens(p) for p in mixed] == [tokens(p) for p in separate]
    for part_m, part_s in zip(mixed, separate, strict=True):
        for row_m, row_s in zip(part_m, part_s, strict=True):
            for x, y in zip(row_m, row_s, strict=True):
                assert (x.text, x.finish_reason, x.completion_tokens) == (y.text, y.finish_reason, y.completion_tokens)
                assert x.logprobs == pytest.approx(y.logprobs, abs=1e-4)


@pytest.mark.parametrize("options", [{}, {"batch_size": 8}, {"refill": False, "batch_size": 8},
                                     {"fuse": "eager"}, {"candidates": 0}, {"decoder": "loop"},
                                     {"decoder": "loop", "batch_size": 5}, {"decoder": "loop", "cache": "static"}])
def test_mixed_equals_one_call_per_parameter_set(tiny_llama: str, options: dict[str, Any],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(tiny_llama, **options)
    parts = [(REFERENCE, 3), (SAMPLES, 4)]
    separate = [b.generate(PROMPTS, params, n=n) for params, n in parts]
    cfgs = runs(b, monkeypatch)
    mixed = b.generate_mixed(PROMPTS, parts)
    assert_same(mixed, separate)
    assert cfgs and all(c.mixed and not c.greedy and c.temperature == 0.7 for c in cfgs)
    assert len(mixed[0][0]) == 3 and len({c.text for c in mixed[0][0]}) == 1  # the greedy answer, repeated


def test_greedy_rows_ignore_the_samples_temperature(tiny_llama: str) -> None:
    """A hot temperature for the samples leaves the greedy rows' argmax alone."""
    b = backend(tiny_llama)
    hot = attrs.evolve(SAMPLES, temperature=5.0, top_p=1.0)
    mixed = b.generate_mixed(PROMPTS, [(hot, 2), (REFERENCE, 1)])
    assert tokens(mixed[1]) == tokens(b.generate(PROMPTS, REFERENCE))
    assert tokens(mixed[0]) == tokens(b.generate(PROMPTS, hot, n=2))


@pytest.mark.parametrize("other", [attrs.evolve(SAMPLES, repetition_penalty=1.0),
                                   attrs.evolve(SAMPLES, stop=["."]), attrs.evolve(SAMPLES, logprobs=False)])
def test_parameter_sets_that_cannot_share_a_run_are_asked_one_by_one(
        tiny_llama: str, other: GenerationParams, monkeypatch: pytest.MonkeyPatch) -> None:
    b = backend(tiny_llama)
    separate = [b.generate(PROMPTS, REFERENCE), b.generate(PROMPTS, other, n=2)]
    cfgs = runs(b, monkeypatch)
    assert_same(b.generate_mixed(PROMPTS, [(REFERENCE, 1), (other, 2)]), separate)
    assert [c.mixed for c in cfgs] == [False, False]


def test_sampling_logprobs_fall_back(tiny_llama: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy rows would report log-probabilities of the samples' distribution: one call each."""
    for decoder in ("shared", "loop"):
        b = backend(tiny_llama, logprobs="sampling", decoder=decoder)
        separate = [b.generate(PROMPTS, REFERENCE), b.generate(PROMPTS, SAMPLES, n=2)]
        cfgs = runs(b, monkeypatch)
        assert_same(b.generate_mixed(PROMPTS, [(REFERENCE, 1), (SAMPLES, 2)]), separate)
        assert len(cfgs) == 2 and not any(c.mixed for c in cfgs)


def test_the_option_says_whether_the_stage_should_mix(tiny_llama: str) -> None:
    from selflearn.plugins import MixedBackend

    def mixes(**options: Any) -> bool:
        b = HFBackend(Options(**options), tiny_llama, seed=1)
        assert isinstance(b, MixedBackend)
        return b.capabilities.mixed

    assert mixes() and mixes(decoder="loop") and mixes(decoder="shared", mix_greedy="on")  # auto: the CPU's loop decoder
    assert not mixes(decoder="shared") and not mixes(mix_greedy="off")
    assert not mixes(device="cuda") and mixes(device="cuda", cache="static") and mixes(device="cuda", mix_greedy="on")


def test_empty_parts_and_prompts(tiny_llama: str) -> None:
    b = backend(tiny_llama)
    assert b.generate_mixed([], [(REFERENCE, 1), (SAMPLES, 2)]) == [[], []]
    out = b.generate_mixed(PROMPTS, [(REFERENCE, 1), (SAMPLES, 0)])
    assert out[1] == [[] for _ in PROMPTS] and tokens(out[0]) == tokens(b.generate(PROMPTS, REFERENCE))


def test_the_plan_gives_samples_the_keys_of_their_own_call() -> None:
    parts = [Part(REFERENCE, 3), Part(SAMPLES, 4, offset=2)]
    rp = plan(["a", "b"], parts, 42, "model", lambda p: p)
    assert rp.per_prompt == 5 and rp.starts == [0, 1] and rp.cfg.mixed
    assert rp.greedy is not None and [rp.greedy[(1, j)] for j in range(5)] == [True, False, False, False, False]
    assert [rp.keys[(1, 1 + j)] for j in range(4)] == [row_key(42, "b", 2 + j) for j in range(4)]
    assert not plan(["a"], [Part(SAMPLES, 2)], 42, "model", lambda p: p).cfg.mixed
    assert unmixable(parts) is None
    assert "sampled" in (unmixable([Part(REFERENCE, 1), Part(REFERENCE, 2)]) or "")
    assert "repetition_penalty" in (unmixable([Part(REFERENCE, 1), Part(attrs.evolve(SAMPLES, repetition_penalty=1), 2)]) or "")
    assert unmixable([Part(REFERENCE, 1), Part(attrs.evolve(SAMPLES, max_new_tokens=3), 2)]) is None
    lengths = plan(["a"], [Part(REFERENCE, 1), Part(attrs.evolve(SAMPLES, max_new_tokens=3), 2)], 1, "model", str)
    assert lengths.max_new == {(0, 0): 12, (0, 1): 3, (0, 2): 3} and lengths.longest.max_new_tokens == 12
    assert rp.max_new is None


def test_the_decoders_refuse_greedy_rows_they_cannot_pick(tiny_llama: str) -> None:
    from selflearn.builtin.backends.hf.loop_decoder import DecodeBatch, Decoder

    batch = DecodeBatch(prompts=[[1, 2, 3]], rows=[0, 0], keys=[1, 2], greedy=[True, False])
    for decoder, kind in (("shared", SharedPrefixDecoder), ("loop", Decoder)):
        dec = backend(tiny_llama, decoder=decoder)._decoder
        assert isinstance(dec, kind)
        with pytest.raises(ValueError, match="greedy rows"):
            dec.run(batch, SamplingConfig(greedy=False, temperature=0.7, logprobs="sampling", mixed=True), 4)


def test_the_generations_stage_mixes_with_the_same_records(tiny_llama: str, tmp_path: Any) -> None:
    """The stage through the cache with ``mix_greedy`` on: one mixed call per chunk for y* and
    Y_c, and the records of the stage with it off (float32, CPU)."""
    from tests.backends.test_generations_stage import rows, run_stage

    short = {"max_new_tokens": 8}
    out = {}
    for mix in (False, True):
        b = HFBackend(Options(decoder="shared", batch_size=16, mix_greedy="on" if mix else "off"), tiny_llama, seed=42)
        records, summary = run_stage(str(tmp_path / str(mix)), b, k=3, chunk_size=4, reference=short,
                                     with_passage=short, without_passage=short)
        out[mix] = (rows(records), summary["execution"]["call_seconds"])
    assert out[True][0] == out[False][0]
    assert out[True][1]["reference+with_passage"] > 0 and out[True][1]["reference"] == 0
    assert out[False][1]["reference+with_passage"] == 0 and out[False][1]["reference"] > 0


@pytest.mark.parametrize("options", [{}, {"refill": False, "batch_size": 8}, {"decoder": "loop"},
                                     {"decoder": "loop", "batch_size": 5}, {"decoder": "loop", "cache": "static"}])
def test_rows_of_different_lengths_share_a_run(tiny_llama: str, options: dict[str, Any],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """y* with more new tokens than Y_c (the offline default run: 64 and 48): each row stops
    at its own length, as in its own call."""
    b = backend(tiny_llama, **options)
    parts = [(attrs.evolve(REFERENCE, max_new_tokens=16), 2), (attrs.evolve(SAMPLES, max_new_tokens=7), 3)]
    separate = [b.generate(PROMPTS, params, n=n) for params, n in parts]
    cfgs = runs(b, monkeypatch)
    mixed = b.generate_mixed(PROMPTS, parts)
    assert_same(mixed, separate)
    assert cfgs and all(c.mixed for c in cfgs)
    assert {c.completion_tokens for c in mixed[1][0]} == {7} and mixed[0][0][0].completion_tokens > 7


def test_prompts_cut_differently_per_length_are_asked_per_set(tiny_llama: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A prompt that fits the context left by Y_c's length but not by y*'s longer one: separate
    calls keep each set's own cut."""
    b = backend(tiny_llama)
    longest = max(len(ids) for ids in b._encode_all(PROMPTS, None))
    monkeypatch.setattr(b._model.config, "max_position_embeddings", longest + 10)  # 16 tokens cut it, 7 do not
    parts = [(attrs.evolve(REFERENCE, max_new_tokens=16), 1), (attrs.evolve(SAMPLES, max_new_tokens=7), 2)]
    separate = [b.generate(PROMPTS, params, n=n) for params, n in parts]
    cfgs = runs(b, monkeypatch)
    assert_same(b.generate_mixed(PROMPTS, parts), separate)
    assert [c.mixed for c in cfgs] == [False, False]
