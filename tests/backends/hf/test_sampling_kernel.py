"""The Triton sampling kernel of the shared decoder (``sampler: triton``, sampling_kernel.py), run
in Triton's interpreter on the CPU: the same token as the full-vocabulary path of
sampling.select for every row (flat and peaked rows, ties, -inf logits, temperatures,
top_p 1.0, rows whose first draw falls outside the nucleus, rows whose token is not among the
four best noisy scores), the raw log-probabilities, and the
shared decoder with the kernel equal to the loop decoder; plus when the kernel is chosen and
its fallback."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.backends.hf import HFBackend, Options
from selflearn.builtin.backends.hf.sampling import SamplingConfig
from selflearn.builtin.backends.hf.sampling_kernel import select_nucleus

NUCLEUS_SCRIPT = """
import os, sys
os.environ["TRITON_INTERPRET"] = "1"  # Triton's interpreter: the kernel runs on the CPU
import torch
sys.path.insert(0, os.getcwd())
from selflearn.builtin.backends.hf.sampling_kernel import sample, select_nucleus
from selflearn.builtin.backends.hf.sampling import SamplingConfig, select, uniform_noise, top_p_filter, vocab_keys

torch.manual_seed(0)
rows, vocab = 24, 3000  # 120 rows over the five settings: enough of each kind below (20 and 4)
outside = beyond = 0
for temp, top_p, spread, ties in ((1.0, 0.9, 1.0, False), (0.7, 0.9, 4.0, True), (1.3, 0.3, 2.0, False),
                                  (1.0, 1.0, 3.0, False), (1.0, 0.95, 9.0, True)):
    logits = torch.randn(rows, vocab) * spread
    if ties:  # bfloat16 logits cast to float32, as a model's: many exact ties
        logits = logits.bfloat16().float()
    logits[:, 100:160] = float("-inf")
    keys = torch.randint(0, 2**62, (rows,))
    cfg = SamplingConfig(greedy=False, temperature=temp, top_p=top_p)
    no_seen = torch.zeros(rows, vocab, dtype=torch.bool)
    ref, _ = select(logits.clone(), no_seen, keys, 5, cfg, vocab_keys(vocab))
    got = sample(logits.clone(), keys, torch.tensor(5), top_p, temp, block=512)
    assert got.dtype == torch.int64 and torch.equal(got, ref), (temp, top_p, spread, (got != ref).sum())
    # rows whose unrestricted Gumbel argmax lies outside the nucleus: the kernel's later passes
    scores = logits / temp
    g = -torch.log(-torch.log(uniform_noise(keys, 5, vocab)))
    first = (scores + g).argmax(-1)
    kept = top_p_filter(scores, top_p) > float("-inf")
    outside += int((~kept.gather(1, first[:, None])).sum())
    # rows whose token is not among the four best noisy scores: the kernel's fallback passes
    beyond += int((~((scores + g).topk(4, dim=-1).indices == ref[:, None]).any(-1)).sum())
assert outside >= 10 and beyond >= 3, (outside, beyond)
# with the repetition penalty and raw log-probabilities, through the decoder's entry point
logits = torch.randn(rows, vocab) * 3
keys = torch.randint(0, 2**62, (rows,))
seen_ids = torch.cat([logits.topk(3).indices, torch.randint(0, vocab, (rows, 37))], 1)  # some of the best
seen = torch.zeros(rows, vocab, dtype=torch.bool).scatter_(1, seen_ids, True)
cfg = SamplingConfig(greedy=False, temperature=0.8, top_p=0.9, repetition_penalty=1.3, logprobs="model")
ref, ref_lp = select(logits.clone(), seen, keys, 11, cfg, vocab_keys(vocab))
got, lp = select_nucleus(logits.clone(), seen_ids, keys, torch.tensor(11), cfg)
assert torch.equal(got, ref)
assert float((lp - ref_lp).abs().max()) < 1e-5
assert bool((seen.gather(1, ref[:, None])).any())  # some chosen tokens were penalised ones
# greedy rows mixed in (per-row flag): their argmax at temperature 1, the other rows' samples unchanged
logits = (torch.randn(rows, vocab) * 2).bfloat16().float()  # ties, as a model's
logits[:, :40] = logits[:, 40:41]  # and a tied best block
greedy = torch.arange(rows) % 3 == 0
cfg = SamplingConfig(greedy=False, temperature=0.6, top_p=0.9, repetition_penalty=1.3)
alone, _ = select_nucleus(logits.clone(), seen_ids, keys, torch.tensor(11), cfg)
mixed, _ = select_nucleus(logits.clone(), seen_ids, keys, torch.tensor(11), cfg, greedy)
best, _ = select(logits.clone(), seen, keys, 11, SamplingConfig(greedy=True, repetition_penalty=1.3), vocab_keys(vocab))
assert torch.equal(mixed[~greedy], alone[~greedy]) and torch.equal(mixed[greedy], best[greedy])
assert not torch.equal(alone[greedy], best[greedy])
# the shared decoder with the kernel (sampler triton) against the loop decoder
from selflearn.builtin.backends.hf import HFBackend, Options
from tests.backends.hf.test_backend import PROMPTS, SAMPLED, tokens
model = sys.argv[1]
make = lambda **o: HFBackend(Options(batch_size=16, **o), model, seed=42)
shared, loop = make(decoder="shared", sampler="triton"), make(decoder="loop")
shared._load()
assert shared._decoder.nucleus
a, b = shared.generate(PROMPTS, SAMPLED, n=3), loop.generate(PROMPTS, SAMPLED, n=3)
assert tokens(a) == tokens(b)
for ra, rb in zip(a, b):
    for x, y in zip(ra, rb):
        assert max(abs(p - q) for p, q in zip(x.logprobs, y.logprobs)) < 1e-4
# a greedy answer and samples in one run (generate_mixed) equal to one call each
from tests.backends.hf.test_mixed import REFERENCE, SAMPLES
parts = [(REFERENCE, 2), (SAMPLES, 3)]
mixed = shared.generate_mixed(PROMPTS, parts)
assert [tokens(m) for m in mixed] == [tokens(shared.generate(PROMPTS, p, n=n)) for p, n in parts]
print("ok", outside, beyond)
"""


@pytest.mark.slow
def test_the_kernel_chooses_the_full_paths_token(tiny_llama: str) -> None:
    """sampling_kernel's kernel in Triton's interpreter: the full path's tokens and log-probs, and the
    shared decoder with it equal to the loop decoder (see NUCLEUS_SCRIPT)."""
    import subprocess
    import sys

    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[3]  # the repository root (tests/backends/hf/...)
    done = subprocess.run(
        [sys.executable, "-c", NUCLEUS_SCRIPT, tiny_llama], cwd=root, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def backend(path: str, **options: Any) -> HFBackend:
    b = HFBackend(Options(**{"batch_size": 16, "decoder": "shared", **options}), path, seed=7)
    b._load()
    return b


def test_the_kernel_is_for_cuda_and_falls_back_when_it_fails(
    tiny_llama: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On the CPU (no interpreter) the candidates path samples, with a warning when the kernel
    was asked for; an error raised inside sampling_kernel turns the kernel off, once."""
    import torch

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not backend(tiny_llama)._decoder.nucleus  # type: ignore[union-attr]
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"):
        dec: Any = backend(tiny_llama, sampler="triton")._decoder
    assert not dec.nucleus and "needs CUDA and Triton" in caplog.text
    dec.nucleus = True  # as on a GPU

    from selflearn.builtin.backends.hf import sampling_kernel

    def broken_kernel() -> Any:
        raise RuntimeError("PassManager::run failed")

    monkeypatch.setattr(sampling_kernel, "_kernel", broken_kernel)
    b = HFBackend(Options(batch_size=16, decoder="shared"), tiny_llama, seed=7)
    b._load()
    b._decoder = dec
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="selflearn.hf"), torch.inference_mode():
        st, bucket = _one_state(dec)
        dec._warm_up(st, bucket, SamplingConfig(greedy=False, top_p=0.9), torch.tensor([2]))
    assert not dec.nucleus and "sampling kernel failed" in caplog.text
    from .test_backend import PROMPTS, SAMPLED

    assert b.generate(PROMPTS, SAMPLED, n=2)  # goes on with the candidates


def _one_state(dec: Any) -> tuple[Any, int]:
    """A prefilled state of the decoder for two rows of one prompt, and its first bucket."""
    st, _ = dec._state(1, 2, 64, 64, SamplingConfig(greedy=False, top_p=0.9))
    dec._load(st, [(0, [1, 2, 3], [5, 6], [False, False], [8, 8])], 64)
    assert st.keys.tolist() == [5, 6] and not st.done.any()
    st.max_new.fill_(64)
    return st, dec.bucket


def test_select_nucleus_refuses_what_it_does_not_compute() -> None:
    import torch

    x = torch.zeros(2, 8)
    ids = torch.zeros(2, 1, dtype=torch.long)
    for cfg in (SamplingConfig(greedy=True), SamplingConfig(greedy=False, top_p=0.9, logprobs="sampling")):
        with pytest.raises(ValueError, match="select_candidates"):
            select_nucleus(x, ids, ids[:, 0], torch.tensor(0), cfg)
