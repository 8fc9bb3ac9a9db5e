"""Batch-invariant token selection for the ``hf`` backend.

Why not ``torch.multinomial`` with a seeded generator: a generator's stream is shared by all
the rows of a batch, so a sample would depend on which other prompts happened to share its
batch, on the batch size and on the order of the rows. A killed run that recomputes the batch
in flight with fewer rows, or a cache that asks for samples 5..9 alone when K grows from 5 to
10, would then get different samples.

Instead every row carries a 64-bit key (a hash of the seed, the prompt and the sample index,
see :func:`row_key`), and the noise of step ``t`` for vocabulary entry ``v`` is a pure integer
hash of (key, t, v), computed with vectorised torch integer ops on the device (counter-based
random numbers, as in Philox, with the splitmix64 finaliser as the mixing function). A token
is chosen by Gumbel-max: ``argmax(logits / T + Gumbel(u))`` over the tokens that survive top-p,
which samples exactly from ``softmax(logits / T)`` restricted to the nucleus. Nothing here
synchronises with the host, and every function has fixed shapes, so it can be compiled.

Processing order follows transformers' ``generate``: repetition penalty, temperature, top-p
(with the same tie rules), so greedy decoding equals ``generate(do_sample=False,
repetition_penalty=...)`` token for token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import attrs

from ....core.hashing import seed_from

if TYPE_CHECKING:
    import torch

MASK64 = (1 << 64) - 1


def _signed(x: int) -> int:
    """An unsigned 64-bit constant as the int64 value with the same bits."""
    x &= MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_VOCAB_MUL = _signed(0xD1B54A32D192ED03)
_M1 = _signed(0xBF58476D1CE4E5B9)
_M2 = _signed(0x94D049BB133111EB)


def row_key(seed: int, prompt_key: Any, index: int) -> int:
    """The 63-bit key of sample ``index`` of a prompt: what makes a row's noise its own."""
    return seed_from("hf-sample", seed, prompt_key, index)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on int64 tensors (wrapping multiplication, logical shifts).

    torch's ``>>`` on int64 is an arithmetic shift, so each shift is masked to make it logical;
    multiplication wraps modulo 2**64 on CPU and CUDA alike.
    """
    x = x ^ ((x >> 30) & ((1 << 34) - 1))
    x = x * _M1
    x = x ^ ((x >> 27) & ((1 << 37) - 1))
    x = x * _M2
    return x ^ ((x >> 31) & ((1 << 33) - 1))


def mix64_reference(x: int) -> int:
    """Pure-Python splitmix64 finaliser on unsigned 64-bit ints (for tests and documentation)."""
    x &= MASK64
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def vocab_keys(vocab_size: int, device: Any = None) -> torch.Tensor:
    """Per-vocabulary-entry hash offsets (computed once per decode, outside compiled code:
    inductor cannot fuse an index times a 64-bit constant)."""
    import torch

    return torch.arange(vocab_size, device=device, dtype=torch.int64) * _VOCAB_MUL


def uniform_noise(
    keys: torch.Tensor,
    step: torch.Tensor | int,
    vocab_size: int,
    vocab: torch.Tensor | None = None,
) -> torch.Tensor:
    """Uniform numbers in (0, 1), shape (rows, vocab): a pure function of (key, step, vocab id).

    ``vocab`` is :func:`vocab_keys` (computed here when not given).

    The 23 high bits of the hash give ``(m + 0.5) / 2**23``, exact in float32 and never 0 or 1,
    so the Gumbel transform below is always finite.
    """

    if vocab is None:
        vocab = vocab_keys(vocab_size, keys.device)
    return uniform_at(keys, step, vocab[None, :])


def uniform_at(keys: torch.Tensor, step: torch.Tensor | int, offsets: torch.Tensor) -> torch.Tensor:
    """:func:`uniform_noise` at chosen vocabulary entries: ``offsets`` is :func:`vocab_keys`
    indexed by token id, (rows, n) or (1, n). Same values as the full table at those ids."""
    import torch

    if isinstance(step, int):  # a Python product would overflow int64: wrap it here
        offset: torch.Tensor | int = _signed((step + 1) * 0x9E3779B97F4A7C15)
    else:
        offset = (step + 1) * _GOLDEN
    step_key = mix64(keys + offset)  # (rows,)
    h = mix64(step_key[:, None] + offsets)
    return (((h >> 41) & 0x7FFFFF).to(torch.float32) + 0.5) * (1.0 / (1 << 23))


def uniform_reference(key: int, step: int, vocab_id: int) -> float:
    """The value :func:`uniform_noise` gives for one (key, step, vocab id), in pure Python."""
    step_key = mix64_reference(key + (step + 1) * 0x9E3779B97F4A7C15)
    h = mix64_reference(step_key + vocab_id * 0xD1B54A32D192ED03)
    return ((h >> 41) + 0.5) / (1 << 23)


LogprobSource = Literal["model", "sampling"]


@attrs.frozen
class SamplingConfig:
    """The per-call constants of :func:`select` (plain Python values, so compiled versions of
    :func:`select` specialise on them once per call type)."""

    greedy: bool
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    #: None: no log-probabilities; "model": log-softmax of the raw logits; "sampling": of the
    #: processed distribution (penalty, temperature, top-p) the token was drawn from
    logprobs: LogprobSource | None = None
    #: the batch mixes greedy rows (``DecodeBatch.greedy``: the argmax of the penalised logits,
    #: as with ``greedy``) with rows sampled by these values: the shared decoder decodes a
    #: prompt's greedy answer and its samples together (one prefill, one batch)
    mixed: bool = False


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """transformers' repetition penalty: seen tokens' logits divided (>0) or multiplied (<0)."""
    import torch

    if penalty == 1.0:
        return logits
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def top_p_filter(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """transformers' ``TopPLogitsWarper`` (ascending sort, keep the top token at least)."""
    if top_p >= 1.0:
        return scores
    sorted_logits, sorted_idx = scores.sort(dim=-1, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    mask = remove.scatter(1, sorted_idx, remove)
    return scores.masked_fill(mask, float("-inf"))


def can_mix(cfg: SamplingConfig) -> bool:
    """Whether a run of ``cfg``'s sampling values can also hold greedy rows
    (``SamplingConfig.mixed``): not with log-probabilities of the sampling distribution, which
    greedy rows would report for another distribution than their own call's."""
    return not cfg.greedy and cfg.logprobs != "sampling"


def select(
    logits: torch.Tensor,
    seen: torch.Tensor,
    keys: torch.Tensor,
    step: torch.Tensor | int,
    cfg: SamplingConfig,
    vocab: torch.Tensor | None = None,
    greedy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Choose one token per row; return (tokens, log-probabilities of those tokens or None).

    ``logits``: float32 (rows, vocab) of the last position; ``seen``: bool (rows, vocab), the
    tokens of the prompt and of the generation so far (for the repetition penalty); ``keys``:
    int64 (rows,) row keys; ``step``: index of the token being generated; ``vocab``:
    :func:`vocab_keys` of the logits' width (optional); ``greedy``: bool (rows,), rows that take
    the argmax of their penalised logits instead (a mixed run, see :func:`can_mix`).
    """
    import torch

    scores = apply_repetition_penalty(logits, seen, cfg.repetition_penalty)
    if cfg.greedy:
        tokens = scores.argmax(dim=-1)
    else:
        penalised = scores
        scores = scores / cfg.temperature
        scores = top_p_filter(scores, cfg.top_p)
        u = uniform_noise(keys, step, scores.shape[-1], vocab)
        gumbel = -torch.log(-torch.log(u))
        tokens = (scores + gumbel).argmax(dim=-1)
        if greedy is not None:  # a mixed run's greedy rows: the argmax before the temperature
            tokens = torch.where(greedy, penalised.argmax(dim=-1), tokens)
    if cfg.logprobs is None:
        return tokens, None
    source = logits if cfg.logprobs == "model" else scores
    logprobs = source.log_softmax(dim=-1).gather(1, tokens[:, None])[:, 0]
    return tokens, logprobs
