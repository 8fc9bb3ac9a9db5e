"""``selfcheck-nli``: SelfCheckGPT-NLI, the paper's contradiction score (method.md 7.2).

For a reference r and samples s_1..s_K:

1. r is split into sentences (:func:`selflearn.core.text.split_sentences`); samples stay whole;
2. every (sentence_i, sample_k) pair is classified with the **sentence first** and the sample
   second; c_ik = P(contradiction), softmax over all logits;
3. per-sample score c_k = mean_i c_ik; item score = mean_k c_k (equal to the grand mean over
   the sentence x sample grid, and to SelfCheckGPT's per-sentence mean then passage mean).

Empty samples (after stripping) get ``None`` and are left out of the mean; an empty reference
gives ``None`` (the item cannot be scored). The scores equal those of the reference
implementation, ``selfcheckgpt.modeling_selfcheck.SelfCheckNLI``, given the same sentences and
model (tests/scoring/test_nli.py checks this).

All pairs of all items of a call go to the NLI engine together: it de-duplicates them, sorts
them by length, batches them by a token budget and caches each probability (see ``_nli``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ...core.options import bounded
from ...core.protocols import ScoreItem, ScoreResult
from ...core.text import split_sentences
from ._nli import Attention, NLIEngine, engine_from_options

Dtype = Literal["auto", "float32", "bfloat16", "float16"]


@attrs.frozen
class Options:
    #: MNLI sequence classifier: hub id or local folder (2-class or 3-class head)
    model: str = "potsawee/deberta-v3-large-mnli"
    #: "auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ...
    device: str = "auto"
    #: "auto" = bfloat16 on CUDA, float32 on CPU
    dtype: Dtype = "auto"
    #: tokens per (sentence, sample) pair; longer pairs are truncated (longest first)
    max_length: int = bounded(512, ge=1)
    #: most pairs per forward pass
    batch_size: int = bounded(256, ge=1)
    #: most padded tokens per forward pass (rows x longest row)
    max_tokens_per_batch: int = bounded(32768, ge=1)
    #: "auto": DeBERTa-v2/v3 attention as one fused Triton kernel on CUDA (checked against
    #: transformers' on the first batch), else transformers'; "transformers"; "triton" (required)
    attention: Attention = "auto"
    #: output index of "entailment" / "contradiction" when config.id2label does not name them
    entailment_label: int | None = bounded(None, ge=0)
    contradiction_label: int | None = bounded(None, ge=0)


def sentence_grid(items: Sequence[ScoreItem]) -> list[tuple[list[str], list[str | None]]]:
    """Per item: the reference's sentences and the stripped samples (None for empty ones)."""
    out = []
    for item in items:
        sentences = split_sentences(item.reference)
        samples = [s.strip() or None for s in item.samples]
        out.append((sentences, samples))
    return out


def grid_scores(
    engine: NLIEngine, items: Sequence[ScoreItem], label: str
) -> list[list[list[float] | None]]:
    """For each item and sample, P(label) of every reference sentence vs that sample.

    ``None`` for an empty sample; an empty list for every sample of an empty reference.
    """
    grids = sentence_grid(items)
    pairs = [(sent, sample) for sents, samples in grids for sample in samples if sample for sent in sents]
    probs = iter(engine.probabilities(pairs)) if pairs else iter(())
    index = engine.labels[label]
    out: list[list[list[float] | None]] = []
    for sents, samples in grids:
        per_sample: list[list[float] | None] = []
        for sample in samples:
            if sample is None:
                per_sample.append(None)
            else:
                per_sample.append([next(probs)[index] for _ in sents])
        out.append(per_sample)
    return out


def mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


class SelfCheckNLI:
    """See the module docstring."""

    def __init__(self, options: Options, engine: NLIEngine) -> None:
        self.options = options
        self.engine = engine

    def identity(self) -> dict[str, Any]:
        return {"scorer": "selfcheck-nli", **self.engine.identity()}

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        results = []
        for per_sample in grid_scores(self.engine, items, "contradiction"):
            sample_scores: list[float | None] = [
                None if probs is None or not probs else sum(probs) / len(probs)
                for probs in per_sample
            ]
            results.append(ScoreResult(mean_or_none(sample_scores), sample_scores))
        return results

    def close(self) -> None:
        self.engine.close()


def create(options: Options, context: Any) -> SelfCheckNLI:
    return SelfCheckNLI(options, engine_from_options(options, context))
