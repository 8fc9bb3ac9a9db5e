"""Stage ``generations``: the model's answers that knowledge detection compares.

For every training question, through the configured (cached) inference backend:

* ``reference`` y*: greedy, passage in context (``rc_messages``), repetition penalty 1.1;
* ``with_passage`` Y_c: K samples with the passage (temperature 0.7 as in the research code;
  the paper says 1.0), top-p 0.9, repetition penalty 1.1;
* ``without_passage`` Y_r: K samples of the bare question (``closed_book_messages``),
  temperature 1.0, top-p 0.9, repetition penalty 1.1;

all with at most 384 new tokens and K = 10 (method.md, sections 7.1 and 12); every value is an
option. Questions go to the backend in deterministic chunks; the backend's content-keyed cache
(:class:`selflearn.core.generation.CachedBackend`) stores each finished chunk, so a killed run
resumes at the chunk it lost, a re-run makes no backend call, and raising K asks only for the
new samples. Before anything is written, :mod:`._diversity` checks that the samples vary (a
server that ignores temperature) and that log-probabilities asked for came back.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import attrs

from ..config import SlotSpec
from ..errors import ConfigError, StageError
from ..execution import Shard, Task, run_shards
from ..execution.usage import attribute
from ..generation import CachedBackend, cached_completions
from ..options import Options, bounded
from ..prompts import closed_book_messages, rc_messages
from ..protocols import GenerationParams, MixedBackend
from ..records import Completion, Generations, Passage, Question
from ._diversity import diversity_problem, missing_logprobs, no_logprobs_message, sample_diversity
from .base import Stage
from .train import SFT_MODEL_FILE, recorded_sft_model

_PAPER_BACKEND = (
    "flow: paper generates y*, Y_c and Y_r with the SFT model by replacing the backend's "
    "'model' option, so the backend must be given by name ({use: NAME, options: {...}}), not "
    "as a ready Python object"
)

log = logging.getLogger("selflearn")


@attrs.frozen
class ReferenceOptions(Options):
    """Decoding of y* (greedy with the passage)."""

    #: 0 = greedy (the paper); a positive value samples the reference instead
    temperature: float = bounded(0.0, ge=0)
    #: nucleus sampling mass (only used when sampling)
    top_p: float = bounded(1.0, gt=0, le=1)
    #: transformers-style repetition penalty (1.0: none)
    repetition_penalty: float = bounded(1.1, gt=0)
    #: most new tokens per answer
    max_new_tokens: int = bounded(384, ge=1, le=1_000_000)
    #: stop strings: the answer is cut before the first one
    stop: list[str] = attrs.field(factory=list)


@attrs.frozen
class WithPassageOptions(Options):
    """Decoding of Y_c (samples with the passage)."""

    #: 0.7 in the research code (method.md 7.1); the paper reports 1.0
    temperature: float = bounded(0.7, ge=0)
    #: nucleus sampling mass
    top_p: float = bounded(0.9, gt=0, le=1)
    #: transformers-style repetition penalty (1.0: none)
    repetition_penalty: float = bounded(1.1, gt=0)
    #: most new tokens per answer
    max_new_tokens: int = bounded(384, ge=1, le=1_000_000)
    #: stop strings: answers are cut before the first one
    stop: list[str] = attrs.field(factory=list)
    #: samples per question (None: the stage's k); 0 skips Y_c
    k: int | None = bounded(None, ge=0, le=10_000)


@attrs.frozen
class WithoutPassageOptions(Options):
    """Decoding of Y_r (samples of the bare question)."""

    #: sampling temperature (the paper and the research code: 1.0)
    temperature: float = bounded(1.0, ge=0)
    #: nucleus sampling mass
    top_p: float = bounded(0.9, gt=0, le=1)
    #: transformers-style repetition penalty (1.0: none)
    repetition_penalty: float = bounded(1.1, gt=0)
    #: most new tokens per answer
    max_new_tokens: int = bounded(384, ge=1, le=1_000_000)
    #: stop strings: answers are cut before the first one
    stop: list[str] = attrs.field(factory=list)
    #: samples per question (None: the stage's k); 0 skips Y_r
    k: int | None = bounded(None, ge=0, le=10_000)


@attrs.frozen
class GenerationsOptions(Options):
    #: K, samples per question with and without the passage (the paper: 10)
    k: int = bounded(10, ge=1, le=10_000)
    #: decoding of the reference y* (greedy, passage in context)
    reference: ReferenceOptions = ReferenceOptions()
    #: decoding of Y_c (K samples with the passage)
    with_passage: WithPassageOptions = WithPassageOptions()
    #: decoding of Y_r (K samples without the passage)
    without_passage: WithoutPassageOptions = WithoutPassageOptions()
    #: ask for per-token log-probabilities (needed by the semantic-entropy scorer)
    logprobs: bool = False
    #: questions per backend call: the unit of progress and of work lost to a kill
    chunk_size: int = bounded(64, ge=1)
    #: question splits to answer (questions.jsonl holds training questions)
    splits: list[str] = attrs.field(factory=lambda: ["train"])
    #: answer at most this many questions (None: all)
    limit: int | None = bounded(None, ge=1)
    #: sampling seed (None: the run's seed)
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: warn when more than this share of questions got K identical samples in a sample set (a server that ignores temperature); an error in strict mode (plugins.strict or SELFLEARN_STRICT_PLUGINS=1); 1.0: never
    max_identical_share: float = bounded(0.5, ge=0, le=1)


class GenerationsStage(Stage):
    name = "generations"
    flow_sensitive = True
    requires = ("passages", "questions")
    slots = ("backend",)
    options_class = GenerationsOptions

    def dependencies(self) -> tuple[str, ...]:
        """In ``flow: paper`` also the ``sft_model`` stage: its model answers."""
        return (*self.requires, "sft_model") if self.flow == "paper" else self.requires

    def _backend_spec(self) -> SlotSpec | None:
        """None: the run's backend; in ``flow: paper`` the same backend with its ``model`` option
        replaced by the SFT model of ``sft_model.json`` (G_SFT generates y*, Y_c and Y_r)."""
        if self.flow != "paper":
            return None
        spec = self.run_ctx.slots.get("backend")
        if spec is None or spec.is_object:
            raise ConfigError(_PAPER_BACKEND, "backend")
        model = recorded_sft_model(self.store)["model"]
        self.run_ctx.release("backend")
        return SlotSpec(name=spec.name, options={**spec.options, "model": model})

    # -- options ---------------------------------------------------------------------------
    def _ks(self) -> tuple[int, int]:
        o: GenerationsOptions = self.options
        kc = o.k if o.with_passage.k is None else o.with_passage.k
        kr = o.k if o.without_passage.k is None else o.without_passage.k
        return kc, kr

    def validate(self) -> None:
        super().validate()
        spec = self.run_ctx.slots.get("backend")
        if self.flow == "paper" and spec is not None and spec.is_object:
            raise ConfigError(_PAPER_BACKEND, "backend")
        o: GenerationsOptions = self.options
        kc, kr = self._ks()
        for value, path in ((o.k, "k"), (kc, "with_passage.k"), (kr, "without_passage.k")):
            if value < 0:
                raise ConfigError(f"expected a number of samples >= 0, got {value}", f"generations.{path}")
        if o.chunk_size < 1:
            raise ConfigError(f"expected a positive integer, got {o.chunk_size}", "generations.chunk_size")

    def params(self) -> dict[str, GenerationParams]:
        """The decoding parameters of the three call types (also the records' provenance)."""
        o: GenerationsOptions = self.options
        seed = o.seed if o.seed is not None else self.run_ctx.seed
        out = {}
        for name, c in (("reference", o.reference), ("with_passage", o.with_passage),
                        ("without_passage", o.without_passage)):
            greedy = c.temperature <= 0
            out[name] = GenerationParams(
                max_new_tokens=c.max_new_tokens,
                temperature=c.temperature,
                top_p=c.top_p,
                repetition_penalty=c.repetition_penalty,
                stop=tuple(c.stop),
                seed=None if greedy else seed,
                logprobs=o.logprobs,
            )
        return out

    # -- inputs ------------------------------------------------------------------------------
    def _questions(self) -> list[Question]:
        o: GenerationsOptions = self.options
        questions = [
            q for q in self.store.read_records("questions.jsonl", Question) if q.split in o.splits
        ]
        return questions[: o.limit] if o.limit is not None else questions

    def call_groups(self) -> list[tuple[list[Any], GenerationParams, int]]:
        """Every backend call of :meth:`run` as (prompts, parameters, samples per prompt):
        the dry-run counts these against the cache, so its count equals the run's."""
        questions = self._questions()
        passages = {p.id: p for p in self.store.read_records("passages.jsonl", Passage)}
        questions = [q for q in questions if q.passage_id in passages]
        rc = [rc_messages(passages[q.passage_id].text, q.text) for q in questions]
        closed = [closed_book_messages(q.text) for q in questions]
        params = self.params()
        kc, kr = self._ks()
        groups = [(rc, params["reference"], 1), (rc, params["with_passage"], kc), (closed, params["without_passage"], kr)]
        return [g for g in groups if g[2] > 0]

    def planned_backend(self) -> Any:
        """The (cached) backend :meth:`run` would use, or None while it cannot be known (the
        SFT model of ``flow: paper`` before the sft_model stage ran)."""
        if self.flow == "paper" and not self.store.exists(SFT_MODEL_FILE):
            return None
        spec = self._backend_spec()
        if spec is None:
            return self.run_ctx.component("backend")
        from ..generation import CachedBackend

        backend = self.run_ctx.build("inference_backend", spec, "generations.backend")
        return CachedBackend(backend, self.run_ctx.cache("generations"))

    def estimate(self) -> dict[str, Any]:
        kc, kr = self._ks()
        per = 1 + kc + kr
        if not self.store.exists("questions.jsonl"):
            return {"generations_per_question": per}
        n = len(self._questions())
        mt = self.params()
        tokens = n * sum(mt[c].max_new_tokens * k for c, k in
                         (("reference", 1), ("with_passage", kc), ("without_passage", kr)))
        return {"questions": n, "generations": n * per, "max_new_tokens_total": tokens}

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        o: GenerationsOptions = self.options
        questions = self._questions()
        if not questions:
            raise StageError(
                f"questions.jsonl has no question of split(s) {o.splits}; run the questions "
                "stage first or change generations.splits"
            )
        passages = {p.id: p for p in self.store.read_records("passages.jsonl", Passage)}
        missing = sorted({q.passage_id for q in questions if q.passage_id not in passages})
        if missing:
            raise StageError(
                f"{len(missing)} question(s) refer to passages not in passages.jsonl (e.g. "
                f"{missing[0]!r}); re-run the passages and questions stages together"
            )
        engine = self.run_ctx.engine
        task = Task("backend", "selflearn.core.stages.generations:generate_shard", "generations",
                    spec=self._backend_spec(), usage="selflearn.core.stages.generations:backend_usage")
        try:
            probe = engine.probe(task)
            identity = probe["identity"]
            if o.logprobs and not probe["logprobs"]:
                raise ConfigError(
                    f"generations.logprobs is true, but the backend {identity} cannot return "
                    "log-probabilities; use one that can (hf, tgi, openai) or set it to false",
                    "generations.logprobs",
                )
            records, made, execution = self._generate(task, identity, questions, passages)
            diversity, notes = self._check(records, identity)
            self.store.write_records("generations.jsonl", records)
        finally:
            if self.flow == "paper":
                engine.release("backend")  # G_SFT's backend is this stage's own
        summary = self._summary(records, made, self._ks())
        summary.update(execution.pop("usage"))  # backend_usage, summed over the shards
        summary["execution"] = execution
        summary["sample_diversity"] = diversity
        if notes:  # first in report.md (a warning in a log is easy to miss)
            summary["notes"] = notes
        if o.logprobs:
            summary["missing_logprobs"] = missing_logprobs(records)[1]
        return summary

    def _generate(self, task: Task, identity: Any, questions: list[Question], passages: dict[str, Passage]
                  ) -> tuple[list[Generations], int, dict[str, Any]]:
        """Every question's record: chunks whose completions are all cached are answered here,
        the others go to the engine as shards (one chunk each); the records in question order,
        the completions the backend made and the execution summary."""
        o: GenerationsOptions = self.options
        ks, params = self._ks(), self.params()
        provenance = {
            "backend": identity,
            "k": {"with_passage": ks[0], "without_passage": ks[1]},
            "params": {name: p.to_dict() for name, p in params.items()},
        }
        chunks = [
            [(q, passages[q.passage_id].text) for q in questions[start:start + o.chunk_size]]
            for start in range(0, len(questions), o.chunk_size)
        ]
        done = [self._from_cache(identity, chunk, params, ks, provenance) for chunk in chunks]
        pending = [i for i, records in enumerate(done) if records is None]
        shards = [Shard({"chunks": [chunks[i]], "params": params, "ks": ks, "provenance": provenance},
                        items=len(chunks[i])) for i in pending]
        results, execution = run_shards(self.run_ctx.engine, task, shards)
        for i, out in zip(pending, results, strict=True):
            done[i] = [Generations.from_dict(r) for r in out["records"]]
        records = [r for chunk_records in done for r in chunk_records or []]
        execution["cached_chunks"] = len(chunks) - len(pending)
        # summed over the shards sent out (over several workers more than the stage's seconds)
        execution["call_seconds"] = {
            kind: round(sum(out["call_seconds"][kind] for out in results), 3)
            for kind in CALL_KINDS
        }
        return records, sum(out["calls"] for out in results), execution

    def _from_cache(
        self,
        identity: Any,
        chunk: list[tuple[Question, str]],
        params: dict[str, GenerationParams],
        ks: tuple[int, int],
        provenance: dict[str, Any],
    ) -> list[Generations] | None:
        """The chunk's records if every completion is in the run's cache (else None: pending)."""
        cache = self.run_ctx.cache("generations")
        records = []
        for q, text in chunk:
            rc, closed = rc_messages(text, q.text), closed_book_messages(q.text)
            ref = cached_completions(cache, identity, rc, params["reference"], 1)
            yc = cached_completions(cache, identity, rc, params["with_passage"], ks[0])
            yr = cached_completions(cache, identity, closed, params["without_passage"], ks[1])
            if ref is None or yc is None or yr is None:
                return None
            records.append(_record(q, ref[0], yc, yr, provenance))
        return records

    def _check(self, records: list[Generations], backend: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        """Samples that do not vary (a warning and a note in the report, an error in strict
        mode) and log-probabilities asked for but never returned (an error): before anything
        is written. Returns the sample diversity and the notes."""
        o: GenerationsOptions = self.options
        notes: list[str] = []
        if o.logprobs:
            answered, missing = missing_logprobs(records)
            if answered and missing == answered:
                raise StageError(no_logprobs_message(backend, answered))
            if missing:
                notes.append(f"{missing} of {answered} answers came back without log-probabilities "
                             f"from {backend}")
        params = self.params()
        greedy = [name for name in ("with_passage", "without_passage") if params[name].greedy]
        diversity = sample_diversity(records, greedy)
        problem = diversity_problem(diversity, o.max_identical_share, backend)
        if problem and self.run_ctx.host.strict:
            raise StageError(problem + " (strict mode)")
        if problem:
            notes.append(problem)
        for note in notes:
            log.warning("%s", note)
        return diversity, notes

    def _summary(self, records: list[Generations], made: int, ks: tuple[int, int]) -> dict[str, Any]:
        comps = [c for r in records for c in (r.reference, *r.with_passage, *r.without_passage)]
        total = len(comps)
        summary: dict[str, Any] = {
            "questions": len(records),
            "k": {"with_passage": ks[0], "without_passage": ks[1]},
            "generations": total,
            "empty_references": sum(1 for r in records if not r.reference.text.strip()),
            "finish_reasons": dict(Counter(c.finish_reason for c in comps)),
            "prompt_tokens": sum(c.prompt_tokens for c in comps),
            "completion_tokens": sum(c.completion_tokens for c in comps),
            "backend_generations": made,
            "cached_generations": max(0, total - made),
        }
        return summary


def _record(q: Question, ref: Completion, yc: list[Completion], yr: list[Completion],
            provenance: dict[str, Any]) -> Generations:
    return Generations(
        question_id=q.id,
        reference=ref,
        with_passage=yc,
        without_passage=yr,
        provenance={**provenance, "passage_id": q.passage_id, "document_id": q.document_id},
    )


def backend_usage(backend: Any) -> dict[str, Any]:
    """The backend's own counters under its cache wrapper (requests, tokens, cost, per replica),
    read before and after each shard by the run's engine, on whichever process holds it."""
    value = attribute(getattr(backend, "backend", backend), "usage")
    return {"backend_usage": dict(value)} if isinstance(value, Mapping) else {}


#: the stage's backend calls per chunk, in the order they run; "reference+with_passage": y*
#: and Y_c in one call, where the backend decodes them together (MixedBackend)
CALL_KINDS = ("reference", "with_passage", "without_passage", "reference+with_passage")


def generate_shard(backend: Any, payload: dict[str, Any]) -> dict[str, Any]:
    """Run on an engine's worker: the shard's chunks, one backend call per call type each.

    Returns the records as dicts, the completions the backend computed (not cached) and the
    seconds spent in each kind of call (``CALL_KINDS``): where a stage's time goes, e.g. a
    greedy reference pass of few rows per chunk that keeps a GPU backend below its rate.
    """
    params: dict[str, GenerationParams] = payload["params"]
    kc, kr = payload["ks"]
    calls_before = backend.calls if isinstance(backend, CachedBackend) else 0
    seconds = dict.fromkeys(CALL_KINDS, 0.0)
    records = []
    for chunk in payload["chunks"]:
        rc = [rc_messages(text, q.text) for q, text in chunk]
        closed = [closed_book_messages(q.text) for q, _ in chunk]
        if kc > 0 and _mixes(backend):
            refs, yc = _call_mixed(backend, rc, params, kc, seconds)
        else:
            refs = _call(backend, rc, params, "reference", 1, seconds)
            yc = _call(backend, rc, params, "with_passage", kc, seconds)
        yr = _call(backend, closed, params, "without_passage", kr, seconds)
        for i, (q, _) in enumerate(chunk):
            records.append(_record(q, refs[i][0], yc[i], yr[i], payload["provenance"]).to_dict())
    made = backend.calls - calls_before if isinstance(backend, CachedBackend) else 0
    return {"records": records, "calls": made, "call_seconds": seconds}


def _mixes(backend: Any) -> bool:
    """Whether ``backend`` (or the backend its cache wraps) answers y* and Y_c in one call."""
    inner = getattr(backend, "backend", backend)
    return hasattr(backend, "generate_mixed") and isinstance(inner, MixedBackend) and bool(
        getattr(inner.capabilities, "mixed", False))


def _call_mixed(backend: Any, prompts: list[Any], params: dict[str, GenerationParams], kc: int,
                seconds: dict[str, float]) -> tuple[list[list[Completion]], list[list[Completion]]]:
    """y* and Y_c of ``prompts`` in one ``generate_mixed`` call, its seconds added to
    ``seconds["reference+with_passage"]``."""
    t0 = time.perf_counter()
    refs, yc = backend.generate_mixed(prompts, [(params["reference"], 1), (params["with_passage"], kc)])
    seconds["reference+with_passage"] += time.perf_counter() - t0
    for out, n in ((refs, 1), (yc, kc)):
        _check_shape(out, prompts, n)
    return list(refs), list(yc)


def _check_shape(out: Any, prompts: list[Any], n: int) -> None:
    if len(out) != len(prompts) or any(len(r) != n for r in out):
        raise StageError(
            f"the backend returned {[len(r) for r in out][:5]}... completions for "
            f"{len(prompts)} prompts; expected {n} per prompt"
        )


def _call(backend: Any, prompts: list[Any], params: dict[str, GenerationParams], kind: str, n: int,
          seconds: dict[str, float]) -> list[list[Completion]]:
    """The ``kind`` call (one of ``CALL_KINDS``) of ``n`` completions per prompt, its seconds
    added to ``seconds[kind]``."""
    if n <= 0:
        return [[] for _ in prompts]
    t0 = time.perf_counter()
    out = backend.generate(prompts, params[kind], n=n)
    seconds[kind] += time.perf_counter() - t0
    _check_shape(out, prompts, n)
    return list(out)
