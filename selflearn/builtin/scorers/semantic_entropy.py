"""``semantic-entropy``: entropy over meaning clusters of the answers (Kuhn et al., 2023).

1. **Clustering** (the original rule, stricter than the research code's): answers are taken in
   order (the reference y* first when ``include_reference``) and each joins the first cluster
   whose first member it *entails and is entailed by* (NLI argmax = entailment in both
   directions); otherwise it opens a new cluster. Like Kuhn et al., each answer is prefixed
   with the question (``with_question``) and the two texts go to the NLI model as a text pair.
2. **Cluster mass**: with log-probabilities for every sample (``ScoreItem.sample_logprobs``),
   a cluster's log-mass is the logsumexp of its members' length-normalised sequence
   log-probabilities (mean token log-probability); otherwise each sample counts 1. Masses are
   normalised over the clusters. The reference carries no mass: it is not a sample of the
   distribution being measured, it only anchors the clusters.
3. **Item score** = entropy -sum_c p_c log p_c divided by log(N), N = number of usable samples,
   so 0 = every sample means the same, 1 = every sample means something different.
4. **Per-sample score**: with the reference included, 0 for a sample that means the same as
   y*, else 0.5 + 0.5 * p(its cluster) in (0.5, 1]: every disagreeing sample scores above 0.5
   and, among them, the model's most probable wrong meaning scores highest (the best DPO
   rejected answer). Without the reference: 1 - p(its cluster) (the rarest meaning highest).

The NLI model may have 3 classes (the default ``microsoft/deberta-large-mnli``, as in Kuhn et
al. and the research code) or 2 (entailment/contradiction: "entailment" then means
P(entailment) > P(contradiction)).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import attrs

from ...core.options import bounded
from ...core.protocols import ScoreItem, ScoreResult
from ._nli import Attention, NLIEngine, engine_from_options


@attrs.frozen
class Options:
    #: cluster the reference y* with the samples (per-sample scores then say "same meaning as y*")
    include_reference: bool = True
    #: prefix every answer with the question before the NLI call (Kuhn et al.)
    with_question: bool = True
    #: weigh clusters by the samples' token log-probabilities (the scores stage stops with an error when no sample has any: set generations.logprobs: true); false: by counts
    use_logprobs: bool = True
    #: NLI model and engine options, as in selfcheck-nli
    model: str = "microsoft/deberta-large-mnli"
    device: str = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    max_length: int = bounded(512, ge=1)
    batch_size: int = bounded(256, ge=1)
    max_tokens_per_batch: int = bounded(32768, ge=1)
    attention: Attention = "auto"
    entailment_label: int | None = bounded(None, ge=0)
    contradiction_label: int | None = bounded(None, ge=0)


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return -math.inf
    return top + math.log(sum(math.exp(v - top) for v in values))


def cluster_masses(clusters: list[int], logmass: list[float] | None) -> dict[int, float]:
    """Normalised probability of each cluster id (``clusters[k]`` is sample k's cluster)."""
    ids = sorted(set(clusters))
    if logmass is None:
        return {c: clusters.count(c) / len(clusters) for c in ids}
    per = {c: logsumexp([lm for lm, ck in zip(logmass, clusters, strict=True) if ck == c]) for c in ids}
    total = logsumexp(list(per.values()))
    return {c: math.exp(v - total) for c, v in per.items()}


def normalised_entropy(masses: dict[int, float], n: int) -> float:
    if n <= 1:
        return 0.0
    h = -sum(p * math.log(p) for p in masses.values() if p > 0)
    return max(0.0, min(1.0, h / math.log(n)))


class SemanticEntropy:
    """See the module docstring."""

    def __init__(self, options: Options, engine: NLIEngine) -> None:
        self.options = options
        self.engine = engine

    @property
    def needs_logprobs(self) -> bool:
        """The scores stage checks that the generations carry log-probabilities."""
        return self.options.use_logprobs

    def identity(self) -> dict[str, Any]:
        o = self.options
        return {
            "scorer": "semantic-entropy",
            "include_reference": o.include_reference,
            "with_question": o.with_question,
            "use_logprobs": o.use_logprobs,
            **self.engine.identity(),
        }

    def _text(self, question: str, answer: str) -> str:
        return f"{question.strip()} {answer.strip()}" if self.options.with_question else answer.strip()

    def _cluster(self, answers: list[list[str]]) -> list[list[int]]:
        """Cluster id of each answer of each item; all items advance together, one answer per
        round, so each round is one batched NLI call."""
        labels = self.engine.labels
        ent = labels["entailment"]
        assignments: list[list[int]] = [[] for _ in answers]
        reps: list[list[str]] = [[] for _ in answers]  # first member of each cluster
        for j in range(max((len(a) for a in answers), default=0)):
            pairs: list[tuple[str, str]] = []
            for texts, rep in zip(answers, reps, strict=True):
                if j < len(texts):
                    for r in rep:
                        pairs += [(texts[j], r), (r, texts[j])]
            probs = iter(self.engine.probabilities(pairs)) if pairs else iter(())
            for texts, rep, assigned in zip(answers, reps, assignments, strict=True):
                if j >= len(texts):
                    continue
                chosen = None
                for c in range(len(rep)):
                    forward, backward = next(probs), next(probs)
                    same = _argmax(forward) == ent and _argmax(backward) == ent
                    if same and chosen is None:
                        chosen = c
                if chosen is None:
                    rep.append(texts[j])
                    chosen = len(rep) - 1
                assigned.append(chosen)
        return assignments

    def score(self, items: Sequence[ScoreItem]) -> list[ScoreResult]:
        o = self.options
        answers: list[list[str]] = []
        valid: list[list[int]] = []  # indices of usable samples
        for item in items:
            idx = [k for k, s in enumerate(item.samples) if s.strip()]
            texts = [self._text(item.question, item.samples[k]) for k in idx]
            if o.include_reference:
                texts = [self._text(item.question, item.reference)] + texts
            answers.append(texts if item.reference.strip() or not o.include_reference else [])
            valid.append(idx)
        assignments = self._cluster(answers)
        results = []
        for item, idx, assigned in zip(items, valid, assignments, strict=True):
            if not assigned or not idx:
                results.append(ScoreResult(None, [None] * len(item.samples)))
                continue
            ref_cluster = assigned[0] if o.include_reference else None
            clusters = assigned[1:] if o.include_reference else assigned
            masses = cluster_masses(clusters, self._logmass(item, idx))
            per: list[float | None] = [None] * len(item.samples)
            for k, c in zip(idx, clusters, strict=True):
                if ref_cluster is None:
                    per[k] = 1.0 - masses[c]
                else:
                    per[k] = 0.0 if c == ref_cluster else 0.5 + 0.5 * masses[c]
            results.append(ScoreResult(normalised_entropy(masses, len(idx)), per))
        return results

    def _logmass(self, item: ScoreItem, idx: list[int]) -> list[float] | None:
        """Length-normalised sequence log-probabilities of the usable samples, when all exist."""
        if not self.options.use_logprobs or item.sample_logprobs is None:
            return None
        out = []
        for k in idx:
            lps = item.sample_logprobs[k] if k < len(item.sample_logprobs) else None
            if not lps:
                return None
            out.append(sum(lps) / len(lps))
        return out

    def close(self) -> None:
        self.engine.close()


def _argmax(probs: Sequence[float]) -> int:
    return max(range(len(probs)), key=lambda i: probs[i])


def create(options: Options, context: Any) -> SemanticEntropy:
    return SemanticEntropy(options, engine_from_options(options, context))
