"""The ``shared`` decoder of the ``hf`` backend (shared prompt prefix, fixed shapes, top-k
candidate sampling) on the tiny random Llama, on the CPU: the same tokens as the ``loop``
decoder, exactness of the candidate set, counted truncation, batch invariance, stops and EOS."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from selflearn.builtin.backends.hf import HFBackend, Options
from selflearn.builtin.backends.hf.candidate_sampling import penalize_ids, select_candidates
from selflearn.builtin.backends.hf.loop_decoder import Decoder
from selflearn.builtin.backends.hf.sampling import SamplingConfig, select, vocab_keys
from selflearn.builtin.backends.hf.shared_decoder import SharedPrefixDecoder, unsupported_reason
from selflearn.core.errors import ConfigError
from selflearn.core.protocols import GenerationParams

from .test_backend import GREEDY, PROMPTS, SAMPLED, tokens


def backend(tiny_llama: str, peaked: bool = False, **options: Any) -> HFBackend:
    """An hf backend; ``peaked`` adds a fixed random bias to the logits so that top-p nuclei
    are small (as with a trained model) instead of most of the random model's vocabulary."""
    import torch

    b = HFBackend(Options(**{"batch_size": 16, **options}), tiny_llama, seed=42)
    b._load()
    if peaked:
        g = torch.Generator().manual_seed(0)
        bias = torch.randn(b._model.config.vocab_size, generator=g) * 6
        b._model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    return b


@pytest.fixture(scope="module")
def loop(tiny_llama: str) -> HFBackend:
    return backend(tiny_llama, decoder="loop")


@pytest.fixture(scope="module")
def loop_peaked(tiny_llama: str) -> HFBackend:
    return backend(tiny_llama, peaked=True, decoder="loop")


def test_auto_is_the_loop_decoder_on_cpu_and_shared_on_request(tiny_llama: str) -> None:
    assert isinstance(backend(tiny_llama)._decoder, Decoder)
    assert isinstance(backend(tiny_llama, decoder="shared")._decoder, SharedPrefixDecoder)


def test_full_vocabulary_shared_decoder_equals_the_loop(tiny_llama: str, loop: HFBackend) -> None:
    shared = backend(tiny_llama, decoder="shared", candidates=0)
    for params, n in ((SAMPLED, 4), (GREEDY, 2)):
        a, b = loop.generate(PROMPTS, params, n=n), shared.generate(PROMPTS, params, n=n)
        assert tokens(a) == tokens(b)
        for ra, rb in zip(a, b, strict=True):
            for x, y in zip(ra, rb, strict=True):
                assert y.logprobs == pytest.approx(x.logprobs, abs=1e-4)
                assert (x.text, x.finish_reason) == (y.text, y.finish_reason)


def test_overflow_rows_take_the_exact_path(tiny_llama: str, loop: HFBackend) -> None:
    # 8 candidates out of a few hundred: every nucleus of the random model overflows
    shared = backend(tiny_llama, decoder="shared", candidates=8, overflow_share=1.0)
    assert tokens(shared.generate(PROMPTS, SAMPLED, n=4)) == tokens(loop.generate(PROMPTS, SAMPLED, n=4))
    stats = shared._decoder.last_stats  # type: ignore[union-attr]
    assert stats["overflow_rows"] > 0 and stats["truncated_rows"] == 0


def test_candidates_are_exact_when_the_nucleus_fits(tiny_llama: str, loop_peaked: HFBackend) -> None:
    shared = backend(tiny_llama, peaked=True, decoder="shared", candidates=16, overflow_share=0.0)
    params = GenerationParams(**{**SAMPLED.to_dict(), "stop": ()})
    assert tokens(shared.generate(PROMPTS, params, n=4)) == tokens(loop_peaked.generate(PROMPTS, params, n=4))
    assert shared._decoder.last_stats == {"overflow_rows": 0, "truncated_rows": 0}  # type: ignore[union-attr]


def test_truncated_rows_are_counted_and_logged(tiny_llama: str, caplog: pytest.LogCaptureFixture) -> None:
    shared = backend(tiny_llama, decoder="shared", candidates=4, overflow_share=0.0)
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"):
        out = shared.generate(PROMPTS[:2], SAMPLED, n=3)
    assert all(c.completion_tokens > 0 for row in out for c in row)
    assert shared._decoder.last_stats["truncated_rows"] > 0  # type: ignore[union-attr]
    assert "sampled from their candidates" in caplog.text
    # later batches add to the total quietly (DEBUG), so a long run is not flooded
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"):
        shared.generate(PROMPTS[2:4], SAMPLED, n=3)
    assert "sampled from their candidates" not in caplog.text
    first = shared._decoder.last_stats["truncated_rows"]  # type: ignore[union-attr]
    assert shared._decoder.truncated_total > first  # type: ignore[union-attr]


def test_shared_decoder_is_batch_invariant(tiny_llama: str) -> None:
    # exact for every row (no truncation): what makes a row independent of its batch
    shared = backend(tiny_llama, decoder="shared", candidates=8, overflow_share=1.0)
    batched = shared.generate(PROMPTS, SAMPLED, n=4)
    for i, prompt in enumerate(PROMPTS):
        assert tokens(shared.generate([prompt], SAMPLED, n=4))[0] == tokens(batched)[i]
    tail = shared.generate(PROMPTS, SAMPLED, n=2, sample_offset=2)
    assert tokens(tail) == [row[2:] for row in tokens(batched)]
    small = backend(tiny_llama, decoder="shared", candidates=8, overflow_share=1.0, batch_size=3)
    assert tokens(small.generate(PROMPTS, SAMPLED, n=4)) == tokens(batched)


def test_stops_and_eos_with_the_shared_decoder(tiny_llama: str, loop: HFBackend) -> None:
    import torch

    shared = backend(tiny_llama, decoder="shared", candidates=0)
    full = shared.generate([PROMPTS[1]], GenerationParams(max_new_tokens=24, logprobs=True))[0][0]
    stop = full.text[8:10]
    params = GenerationParams(max_new_tokens=24, logprobs=True, stop=(stop,))
    assert tokens(shared.generate([PROMPTS[1]], params)) == tokens(loop.generate([PROMPTS[1]], params))
    eos_backends = []
    for dec in ("loop", "shared"):
        b = backend(tiny_llama, decoder=dec, candidates=0)
        bias = torch.zeros(b._model.config.vocab_size)
        bias[b._tokenizer.eos_token_id] = 4.0
        b._model.lm_head.register_forward_hook(lambda m, i, o, bias=bias: o + bias)
        eos_backends.append(b)
    params = GenerationParams(max_new_tokens=30, temperature=1.0, logprobs=True)
    a, b = (x.generate([PROMPTS[0]], params, n=6)[0] for x in eos_backends)
    assert [c.tokens for c in a] == [c.tokens for c in b]
    assert any(c.finish_reason == "stop" for c in b)


def test_select_candidates_matches_select_row_by_row() -> None:
    import torch

    g = torch.Generator().manual_seed(1)
    rows, vocab = 64, 500
    logits = torch.randn(rows, vocab, generator=g) * 4
    seen_ids = torch.randint(0, vocab, (rows, 12), generator=g)
    seen = torch.zeros(rows, vocab, dtype=torch.bool).scatter_(1, seen_ids, True)
    keys = torch.randint(0, 2**62, (rows,), generator=g)
    for cfg in (
        SamplingConfig(greedy=False, temperature=0.7, top_p=0.9, repetition_penalty=1.2, logprobs="sampling"),
        SamplingConfig(greedy=False, temperature=1.0, top_p=0.95, repetition_penalty=1.0, logprobs="model"),
        SamplingConfig(greedy=True, repetition_penalty=1.3, logprobs="model"),
    ):
        ref_tok, ref_lp = select(logits, seen, keys, 5, cfg)
        stats = torch.zeros(2, dtype=torch.int64)
        tok, lp = select_candidates(logits.clone(), seen_ids, keys, 5, cfg, 64, rows, stats, vocab_keys(vocab))
        assert tok.tolist() == ref_tok.tolist()
        assert lp is not None and ref_lp is not None
        assert lp.tolist() == pytest.approx(ref_lp.tolist(), abs=1e-5)
        assert int(stats[1]) == 0


def test_finished_rows_take_no_exact_slot_and_are_not_counted() -> None:
    """Rows that already ended keep running in the fixed-shape batch on meaningless (here flat)
    logits: the exact overflow slots go to live rows, and only live rows are counted."""
    import torch

    g = torch.Generator().manual_seed(2)
    rows, vocab = 8, 500
    logits = torch.randn(rows, vocab, generator=g) * 0.01  # flat: every nucleus overflows 16 candidates
    seen_ids = torch.randint(0, vocab, (rows, 4), generator=g)
    seen = torch.zeros(rows, vocab, dtype=torch.bool).scatter_(1, seen_ids, True)
    keys = torch.randint(0, 2**62, (rows,), generator=g)
    cfg = SamplingConfig(greedy=False, temperature=1.0, top_p=0.9, repetition_penalty=1.1)
    live = torch.tensor([False, False, False, False, True, True, False, False])
    ref_tok, _ = select(logits, seen, keys, 3, cfg)
    stats = torch.zeros(2, dtype=torch.int64)
    tok, _ = select_candidates(logits.clone(), seen_ids, keys, 3, cfg, 16, 2, stats, vocab_keys(vocab), live)
    assert tok[live].tolist() == ref_tok[live].tolist()  # the two live rows got the exact slots
    assert stats.tolist() == [2, 0]
    # without the live mask the first rows (finished ones) would take both slots
    stats = torch.zeros(2, dtype=torch.int64)
    select_candidates(logits.clone(), seen_ids, keys, 3, cfg, 16, 2, stats, vocab_keys(vocab))
    assert stats.tolist() == [8, 6]


def test_penalize_ids_matches_the_mask_form() -> None:
    import torch

    from selflearn.builtin.backends.hf.sampling import apply_repetition_penalty

    logits = torch.randn(3, 40)
    ids = torch.tensor([[1, 1, 5, 7], [0, 2, 2, 2], [39, 3, 3, 39]])
    mask = torch.zeros(3, 40, dtype=torch.bool).scatter_(1, ids, True)
    assert torch.equal(penalize_ids(logits.clone(), ids, 1.3), apply_repetition_penalty(logits, mask, 1.3))


def test_options_and_unsupported_models(tiny_llama: str) -> None:
    with pytest.raises(ConfigError, match="candidates"):
        HFBackend(Options(candidates=-1), tiny_llama, seed=1)
    with pytest.raises(ConfigError, match="overflow_share"):
        HFBackend(Options(overflow_share=1.5), tiny_llama, seed=1)

    class Cfg:
        model_type = "gpt2"

    class Model:
        config = Cfg()

    assert "gpt2" in (unsupported_reason(Model()) or "")
    b = backend(tiny_llama, decoder="shared")
    assert unsupported_reason(b._model) is None
