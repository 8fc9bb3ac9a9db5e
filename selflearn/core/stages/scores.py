"""Stage ``scores``: knowledge detection scores of every answered question (method.md 7.2).

For each :class:`Generations` record: S_L = score(y*, Y_c) (consistency: do the samples *with*
the passage agree with the reference?) and S_K = score(y*, Y_r) (knowledge: do the samples
*without* the passage agree?), with the per-sample scores kept (they choose the DPO rejected
answer). With ``no_passage`` on, each Y_r sample is also scored against the other K-1 samples
(the paper's "without document" variant, method.md 9.4) and stored under
``provenance["no_passage"]``.

The items go to the scorer shard by shard (``execution.shard_size`` generation records, one
scorer call each, on the run's engine), so a model-based scorer de-duplicates, sorts and batches
a shard's pairs together; its caches and the finished shards make a re-run free.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import attrs

from ..errors import StageError
from ..execution import Shard, Task, run_shards
from ..hashing import content_hash
from ..protocols import ScoreItem, ScoreResult
from ..records import Completion, Generations, Question, Scores
from ..text import split_sentences
from .base import Stage


@attrs.frozen
class ScoresOptions:
    #: compute S_L (y* vs Y_c); off saves half the scoring when the consistency filter is off
    consistency: bool = True
    #: also score each Y_r sample against the other samples (the no-passage variant, 9.4)
    no_passage: bool = False


def _item(question: str, reference: Completion | None, samples: list[Completion]) -> ScoreItem:
    return ScoreItem(
        reference=reference.text if reference is not None else "",
        samples=[c.text for c in samples],
        question=question,
        reference_logprobs=reference.logprobs if reference is not None else None,
        sample_logprobs=[c.logprobs for c in samples],
    )


def describe_scores(values: Sequence[float | None]) -> dict[str, Any]:
    """Count, missing, mean, std, min, quartiles and max of a list of scores (None = missing)."""
    present = sorted(v for v in values if v is not None)
    out: dict[str, Any] = {"count": len(present), "missing": len(values) - len(present)}
    if not present:
        return out
    n = len(present)
    mean = sum(present) / n
    var = sum((v - mean) ** 2 for v in present) / n

    def quantile(q: float) -> float:
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return present[lo] + (present[hi] - present[lo]) * (pos - lo)

    out.update(
        mean=round(mean, 6),
        std=round(var**0.5, 6),
        min=round(present[0], 6),
        p25=round(quantile(0.25), 6),
        median=round(quantile(0.5), 6),
        p75=round(quantile(0.75), 6),
        max=round(present[-1], 6),
    )
    return out


def require_logprobs(gens: Sequence[Generations], scorer: dict[str, Any]) -> None:
    """A scorer that needs per-token log-probabilities and would get none for any sample: an
    error naming the backend that produced the answers, instead of a quiet fallback."""
    samples = [c for g in gens for c in (*g.with_passage, *g.without_passage) if c.text.strip()]
    if not samples or any(c.logprobs for c in samples):
        return
    prov = gens[0].provenance
    backend = json.dumps(prov.get("backend", "(not recorded)"), sort_keys=True)
    asked = ((prov.get("params") or {}).get("without_passage") or {}).get("logprobs")
    why = (
        "the backend ignored the request (it does not return log-probabilities)"
        if asked
        else "generations.logprobs was false when they were generated"
    )
    raise StageError(
        f"the scorer {scorer.get('scorer', scorer)!r} needs per-token log-probabilities, but none of "
        f"the {len(samples)} samples in generations.jsonl has any: {why}; backend {backend}. Set "
        "generations.logprobs: true with a backend that returns them (hf, tgi, or openai against "
        "vLLM, SGLang or llama.cpp's server; see docs/servers.md) and re-run the generations "
        "stage, or turn the scorer's use of them off (semantic-entropy: "
        "scorer.options.use_logprobs: false)"
    )


SCORE_TASK = Task("scorer", "selflearn.core.stages.scores:score_shard", "scores",
                  usage="selflearn.core.stages.scores:scorer_usage")


class ScoresStage(Stage):
    name = "scores"
    requires = ("questions", "generations")
    slots = ("scorer",)
    options_class = ScoresOptions

    def _inputs(self) -> tuple[list[Generations], dict[str, Question]]:
        gens = self.store.read_records("generations.jsonl", Generations)
        questions = {q.id: q for q in self.store.read_records("questions.jsonl", Question)}
        return gens, questions

    def _items(self, gens: list[Generations], questions: dict[str, Question]) -> list[ScoreItem]:
        """All items of the stage, in a fixed order: per record consistency (if on),
        knowledge, then (no_passage) one item per Y_r sample against the others."""
        o: ScoresOptions = self.options
        items: list[ScoreItem] = []
        for g in gens:
            q = questions[g.question_id].text
            if o.consistency:
                items.append(_item(q, g.reference, g.with_passage))
            items.append(_item(q, g.reference, g.without_passage))
            if o.no_passage:
                yr = g.without_passage
                for j, sample in enumerate(yr):
                    items.append(_item(q, sample, yr[:j] + yr[j + 1 :]))
        return items

    def estimate(self) -> dict[str, Any]:
        if not (self.store.exists("generations.jsonl") and self.store.exists("questions.jsonl")):
            return {"note": "scored after the generations stage: one item per question and sample set"}
        gens, questions = self._inputs()
        items = self._items([g for g in gens if g.question_id in questions], questions)
        pairs = sum(len(split_sentences(i.reference)) * len(i.samples) for i in items)
        return {"score_items": len(items), "sentence_sample_pairs": pairs}

    def run(self) -> dict[str, Any]:
        o: ScoresOptions = self.options
        gens, questions = self._inputs()
        if not gens:
            raise StageError(
                "generations.jsonl is empty: there is nothing to score. Run the generations stage "
                "first (and check that questions.jsonl has training questions)"
            )
        unknown = sorted({g.question_id for g in gens if g.question_id not in questions})
        if unknown:
            raise StageError(
                f"{len(unknown)} generation record(s) refer to questions not in questions.jsonl "
                f"(e.g. {unknown[0]!r}); re-run the questions and generations stages together"
            )
        probe = self.run_ctx.engine.probe(SCORE_TASK)
        if probe["needs_logprobs"]:
            require_logprobs(gens, probe["identity"])
        identity = probe["identity"]
        results, execution = self._score(gens, questions)
        it = iter(results)
        records: list[Scores] = []
        for g in gens:
            cons = next(it) if o.consistency else ScoreResult(None, [])
            know = next(it)
            provenance: dict[str, Any] = {
                "scorer": identity,
                "passage_id": g.provenance.get("passage_id", questions[g.question_id].passage_id),
                "document_id": g.provenance.get("document_id", questions[g.question_id].document_id),
            }
            if o.no_passage:
                mutual = [next(it).score for _ in g.without_passage]
                present = [v for v in mutual if v is not None]
                provenance["no_passage"] = {
                    "score": sum(present) / len(present) if present else None,
                    "sample_scores": mutual,
                }
            records.append(
                Scores(
                    question_id=g.question_id,
                    s_l=cons.score,
                    s_k=know.score,
                    consistency_samples=list(cons.sample_scores),
                    knowledge_samples=list(know.sample_scores),
                    provenance=provenance,
                )
            )
        self.store.write_records("scores.jsonl", records)
        summary: dict[str, Any] = {
            "questions": len(records),
            "score_items": len(results),
            "scorer": identity,
            "s_l": describe_scores([r.s_l for r in records]) if o.consistency else "not computed",
            "s_k": describe_scores([r.s_k for r in records]),
        }
        if o.no_passage:
            summary["no_passage"] = describe_scores([r.provenance["no_passage"]["score"] for r in records])
        summary.update(execution.pop("usage"))  # model passes, summed over the shards
        summary["execution"] = execution
        return summary

    def _score(self, gens: list[Generations], questions: dict[str, Question]) -> tuple[list[ScoreResult], dict[str, Any]]:
        """Every item's result, shard by shard (``execution.shard_size`` records each) on the
        run's engine; a finished shard is kept in the ``shards`` cache, so a resumed run (under
        either engine) sends out only the shards it lacks."""
        size = self.run_ctx.execution.shard_size
        scorer_spec = self.run_ctx.slots["scorer"]
        shards = []
        for start in range(0, len(gens), size):
            items = self._items(gens[start:start + size], questions)
            key = content_hash(["scores", scorer_spec.describe() if scorer_spec else None,
                                self.run_ctx.model, self.run_ctx.seed, [attrs.asdict(i) for i in items]])
            shards.append(Shard(items, items=len(items), key=key))
        values, execution = run_shards(self.run_ctx.engine, SCORE_TASK, shards, self.run_ctx.cache("shards"))
        results = [ScoreResult(score, list(samples)) for value in values for score, samples in value]
        return results, execution


def scorer_usage(scorer: Any) -> dict[str, int]:
    """The model passes the scorer's NLI engine or encoder made (not answered from their
    caches), read before and after each shard by the run's engine, wherever the scorer is."""
    out: dict[str, int] = {}
    for part in ("engine", "encoder"):
        computed = getattr(getattr(scorer, part, None), "computed", None)
        if isinstance(computed, int):
            out[f"{part}_computed"] = computed
    return out


def score_shard(scorer: Any, items: list[ScoreItem]) -> list[list[Any]]:
    """Run on an engine's worker: one scorer call for the shard's items, checked, as JSON."""
    results: list[ScoreResult] = list(scorer.score(items))
    if len(results) != len(items):
        raise StageError(
            f"the scorer returned {len(results)} results for {len(items)} items; a scorer must "
            "return one ScoreResult per ScoreItem, in order"
        )
    for item, res in zip(items, results, strict=True):
        if len(res.sample_scores) != len(item.samples):
            raise StageError(
                f"the scorer returned {len(res.sample_scores)} sample scores for an item with "
                f"{len(item.samples)} samples; sample_scores must align with the samples"
            )
    return [[res.score, list(res.sample_scores)] for res in results]
