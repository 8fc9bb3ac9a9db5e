"""Stage ``evaluate``: the trained model against its baseline (method.md section 13).

Both models (candidate = the DPO model of ``train.json``, baseline = the SFT model, or the base
model when no SFT step ran; in an SFT-only run, ``trainer: null``, the SFT model against the
base model) answer the held-out test questions closed-book: greedy, no passage,
repetition penalty 1.1, through the configured backend with its ``model`` replaced. Up to
``known_items`` training questions the model already knew (S_K <= ``known_threshold``,
method.md 13.1) are answered too, to see whether training on unknown items damaged known ones.

The stage only orchestrates: the measures are evaluators (:mod:`selflearn.core.evaluation`),
registered through the ``register_evaluators`` hook. The built-in ones run in this order, each
configured by keys of this section: ``agreement`` (closed-book answers scored against the
passage-grounded reference), ``qa`` (accuracy on gold answers for the sets named in ``qa``),
``judge`` (pairwise, both orders, when the ``judge`` slot is set), ``forgetting``
(lm-evaluation-harness, when ``forgetting`` is set) and ``detection`` (AUROC of S_K, when
``detection`` is set); then each evaluator named in ``evaluators``. Each model is loaded once
and asked everything every evaluator needs; the stage then pairs the answers, calls each
evaluator, and writes ``evaluation/*.jsonl``, ``evaluation/report.json``, the before/after
chart and the run-level ``report.md`` from their results.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from ..config import SlotSpec
from ..context import ComponentContext, RunContext
from ..errors import ConfigError, StageError
from ..evaluation import (
    EVAL_DIR,
    EvalItem,
    EvaluationContext,
    EvaluationResult,
    Evaluator,
    GenerationRequest,
    answer_row,
    merge_report,
    pair_answers,
)
from ..execution import Shard, Task, run_shards
from ..generation import CachedBackend
from ..notes import evaluation_notes
from ..options import bounded, build_options
from ..prompts import closed_book_messages
from ..protocols import Prompt
from ..records import Completion, Passage, Question, Scores
from ..reporting import plot_before_after, render_report
from .base import Stage

#: the built-in evaluators, run first and in this order (each configured by this section)
BUILTIN_EVALUATORS = ("agreement", "qa", "judge", "forgetting", "detection")


@attrs.frozen
class EvaluateOptions:
    #: most new tokens per answer (the paper: 384)
    max_new_tokens: int = bounded(384, ge=1, le=1_000_000)
    #: repetition penalty of the greedy answers (the paper: 1.1)
    repetition_penalty: float = bounded(1.1, gt=0)
    #: prompts per backend call (also the granularity of progress and resume)
    batch_size: int = bounded(16, ge=1)
    #: evaluate at most this many held-out questions (None: all)
    test_limit: int | None = bounded(None, ge=1)
    #: the model after training; None: train.json's models.dpo
    candidate_model: str | None = None
    #: the model to compare with; None: train.json's models.sft, else its base_model
    baseline_model: str | None = None
    #: score each closed-book answer against the passage-grounded reference with the scorer
    agreement: bool = True
    #: known training items (S_K <= known_threshold) to evaluate too (the paper: 200; 0: off)
    known_items: int = bounded(200, ge=0)
    #: S_K at or below which a training item counts as known
    known_threshold: float = bounded(0.5, ge=0, le=1)
    #: QA sets with gold answers: "fanoutqa", "trivia", "trivia:LIST[,LIST]", "trivia:all"
    qa: list[str] = attrs.field(factory=list)
    #: questions per QA set (a seeded sample; None: all)
    qa_limit: int | None = bounded(200, ge=1)
    #: bootstrap resamples for the 95% intervals
    bootstrap_resamples: int = bounded(1000, ge=0, le=1_000_000)
    #: lm-evaluation-harness before/after (None: off); the options of the `forgetting` evaluator
    forgetting: dict[str, Any] | None = None
    #: knowledge detection quality on the QA sets (AUROC of S_K for wrong answers; None: off);
    #: the options of the `detection` evaluator
    detection: dict[str, Any] | None = None
    #: more evaluators (plugins' measures), by name or {use: NAME, options: {...}}
    evaluators: list[str | dict[str, Any]] = attrs.field(factory=list)


class EvaluateStage(Stage):
    name = "evaluate"
    requires = ("passages", "questions", "scores", "train")
    slots = ("backend", "judge", "scorer")
    options_class = EvaluateOptions

    def __init__(self, run: RunContext, options: Any) -> None:
        super().__init__(run, options)
        self._evaluators: list[tuple[str, Any]] | None = None
        #: (evaluator name, its EvaluationResult) of the last run
        self.results: list[tuple[str, Any]] = []
        #: what evaluators see (models and answers are filled as the run goes)
        self.context = EvaluationContext(run, options, {})

    # -- evaluators ----------------------------------------------------------------------
    def evaluators(self) -> list[tuple[str, Any]]:
        """(name, evaluator) of every measure this stage runs, built once: the registered
        built-ins (a disabled one is skipped), then those named in ``evaluate.evaluators``."""
        if self._evaluators is None:
            registered = set(self.run_ctx.host.registry.names("evaluator"))
            built = [(name, self._build_builtin(name)) for name in BUILTIN_EVALUATORS
                     if name in registered]
            for i, value in enumerate(self.options.evaluators):
                built.append((_evaluator_name(value), self._build(value, f"evaluate.evaluators[{i}]")))
            self._evaluators = built
        return self._evaluators

    def _build_builtin(self, name: str) -> Any:
        """A built-in evaluator; one with an options class takes them from this section's key
        of its own name (``evaluate.detection``), and gets None when that key is null (off)."""
        spec = self.run_ctx.host.registry.get("evaluator", name, "evaluate")
        cls = spec.load_options_class()
        raw = getattr(self.options, name, None)
        options = None if cls is None or raw is None else build_options(cls, raw, f"evaluate.{name}")
        ev = spec.load_factory()(options, ComponentContext(self.run_ctx, f"evaluate.{name}"))
        return self._check(ev, "evaluate")

    def _build(self, value: Any, path: str) -> Any:
        return self._check(self.run_ctx.build("evaluator", value, path), path)

    @staticmethod
    def _check(ev: Any, path: str) -> Any:
        if not isinstance(ev, Evaluator):
            raise ConfigError(
                f"{type(ev).__name__} is not an evaluator: it has no evaluate(ctx) method "
                "(see selflearn.core.evaluation)", path,
            )
        return ev

    def _call(self, method: str, default: Any) -> list[tuple[str, Any]]:
        """(name, result) of ``method(ctx)`` on every evaluator that has it."""
        ctx = self.context
        out = []
        for name, ev in self.evaluators():
            fn = getattr(ev, method, None)
            ctx.current = name
            out.append((name, fn(ctx) if callable(fn) else default))
        ctx.current = ""
        return out

    # -- contract ------------------------------------------------------------------------
    def outputs(self) -> list[str]:
        files = [
            f"{EVAL_DIR}/answers_baseline.jsonl",
            f"{EVAL_DIR}/answers_candidate.jsonl",
            f"{EVAL_DIR}/report.json",
            f"{EVAL_DIR}/before_after.png",
            "report.md",
        ]
        for _, names in self._call("outputs", []):
            files += [f"{EVAL_DIR}/{n}" for n in names]
        return files

    def validate(self) -> None:
        super().validate()
        spec = self.run_ctx.slots.get("backend")
        if spec is not None and spec.is_object:
            raise ConfigError(self._object_backend_message(), "backend")
        self._call("validate", None)

    def fingerprint_config(self) -> dict[str, Any]:
        """Also the held-out questions' hash: they are read whether or not the questions
        stage lists test_questions.jsonl among its outputs."""
        config = super().fingerprint_config()
        name = "test_questions.jsonl"
        config["test_questions"] = self.store.hash(name) if self.store.exists(name) else None
        return config

    def estimate(self) -> dict[str, Any]:
        opts: EvaluateOptions = self.options
        n = 0
        if self.store.exists("test_questions.jsonl"):
            n = sum(1 for _ in self.store.iter_jsonl("test_questions.jsonl"))
            n = min(n, opts.test_limit) if opts.test_limit is not None else n
        known = opts.known_items
        per = 3 if opts.agreement else 2
        return {
            "generations": n * per + known * per + 2 * (opts.qa_limit or 0) * len(opts.qa),
            "judge_calls_at_least": 2 * (n + known) if self.run_ctx.has("judge") else 0,
            "note": "known items counted at most; QA sets at qa_limit each",
        }

    # -- models --------------------------------------------------------------------------
    @staticmethod
    def _object_backend_message() -> str:
        return (
            "the evaluate stage loads each model (baseline, candidate) into the configured "
            "backend by replacing its 'model' option, so the backend must be given by name "
            "({use: NAME, options: {...}}), not as a ready Python object"
        )

    def _models(self) -> tuple[str, str]:
        opts: EvaluateOptions = self.options
        train: dict[str, Any] = {}
        if self.store.exists("train.json"):
            train = self.store.read_json("train.json") or {}
        models = train.get("models") or {}
        # an SFT-only run (trainer: null) evaluates the SFT model against the base model
        sft_only = not models.get("dpo") and bool(models.get("sft"))
        candidate = opts.candidate_model or models.get("dpo") or models.get("sft")
        baseline = (
            opts.baseline_model
            or (None if sft_only else models.get("sft"))
            or train.get("base_model")
            or self.run_ctx.model
        )
        if not candidate:
            raise StageError(
                "no model to evaluate: train.json names neither models.dpo nor models.sft (did "
                "the train stage run?) and evaluate.candidate_model is not set"
            )
        if not baseline:
            raise StageError(
                "no baseline model: train.json names neither models.sft nor base_model, and "
                "neither evaluate.baseline_model nor the top-level 'model' is set"
            )
        return str(candidate), str(baseline)

    def _task(self, model: str) -> Task:
        """The engine task answering with the configured backend, its ``model`` replaced."""
        spec = self.run_ctx.slots.get("backend")
        if spec is None:
            raise ConfigError("the evaluate stage needs an inference backend", "backend")
        if spec.is_object:
            raise ConfigError(self._object_backend_message(), "backend")
        return Task("backend", "selflearn.core.stages.evaluate:answer_shard", "evaluate",
                    spec=SlotSpec(name=spec.name, options={**spec.options, "model": model}))

    def _backend(self, model: str) -> CachedBackend:
        """The cached backend of ``model`` built here, for the dry-run's cache look-ups (a run
        sends its calls to the engine: :meth:`_batched`)."""
        task = self._task(model)
        backend = self.run_ctx.build("inference_backend", task.spec, "evaluate.backend")
        return CachedBackend(backend, self.run_ctx.cache("generations"))

    def _batched(self, task: Task, prompts: Sequence[Prompt], params: Any, n: int,
                 desc: str) -> list[list[Completion]]:
        """``n`` completions per prompt, ``batch_size`` prompts per shard (one backend call),
        on the run's engine: this process, or Ray workers holding the model."""
        opts: EvaluateOptions = self.options
        size = max(1, opts.batch_size)
        shards = [Shard({"prompts": list(prompts[start:start + size]), "params": params, "n": n},
                        items=len(prompts[start:start + size]))
                  for start in range(0, len(prompts), size)]
        values, _ = run_shards(self.run_ctx.engine, attrs.evolve(task, desc=desc), shards)
        return [[Completion.from_dict(c) for c in row] for value in values for row in value]

    # -- items ---------------------------------------------------------------------------
    def _items(self) -> tuple[list[EvalItem], list[EvalItem], dict[str, Any]]:
        """The held-out test items and the known training items (with report.json's
        ``items.known`` entry: the pool they were sampled from)."""
        opts: EvaluateOptions = self.options
        if not self.store.exists("test_questions.jsonl"):
            raise StageError(
                "test_questions.jsonl is missing: the questions stage writes the held-out "
                "questions there (it needs documents with split 'test')"
            )
        passages = {p.id: p for p in self.store.read_records("passages.jsonl", Passage)}
        tests = self.store.read_records("test_questions.jsonl", Question)
        if opts.test_limit is not None:
            tests = tests[: opts.test_limit]
        if not tests:
            raise StageError("test_questions.jsonl holds no question: nothing to evaluate")
        missing = sorted({q.passage_id for q in tests if q.passage_id not in passages})
        if missing:
            raise StageError(f"passages.jsonl lacks the passages of test questions: {missing[:10]}")
        test = [_item("test", q, passages[q.passage_id]) for q in tests]
        known, known_info = self._known(passages)
        return test, known, known_info

    def _known(self, passages: dict[str, Passage]) -> tuple[list[EvalItem], dict[str, Any]]:
        opts: EvaluateOptions = self.options
        if opts.known_items <= 0:
            return [], {"status": "off"}
        if not (self.store.exists("scores.jsonl") and self.store.exists("questions.jsonl")):
            return [], {"status": "no scores.jsonl or questions.jsonl"}
        questions = {q.id: q for q in self.store.read_records("questions.jsonl", Question)}
        pool = sorted(
            s.question_id
            for s in self.store.read_records("scores.jsonl", Scores)
            if s.s_k is not None and s.s_k <= opts.known_threshold
            and s.question_id in questions and questions[s.question_id].passage_id in passages
        )
        chosen = pool if len(pool) <= opts.known_items else sorted(
            random.Random(self.run_ctx.seed).sample(pool, opts.known_items)
        )
        items = [_item("known", questions[q], passages[questions[q].passage_id]) for q in chosen]
        return items, {"status": "ok", "pool": len(pool), "sampled": len(items),
                       "threshold": opts.known_threshold}

    # -- the run -------------------------------------------------------------------------
    def _prepare(self) -> tuple[list[EvalItem], list[EvalItem], dict[str, Any], list[EvalItem],
                                list[tuple[str, GenerationRequest]]]:
        """The models, the item sets (the stage's and the evaluators') and the evaluators'
        generation requests: everything the model calls depend on, known before any call."""
        candidate_ref, baseline_ref = self._models()
        ctx = self.context
        ctx.models = {"baseline": baseline_ref, "candidate": candidate_ref}
        test, known, known_info = self._items()
        ctx.sets = {"test": test, **({"known": known} if known else {})}
        for name, sets in self._call("items", {}):
            for set_name, items in sets.items():
                if set_name in ctx.sets:
                    raise StageError(f"evaluator {name!r} contributes the item set {set_name!r}, "
                                     "which another evaluator (or the stage) already has")
                ctx.sets[set_name] = list(items)
        everything = [x for items in ctx.sets.values() for x in items]
        requests = [(name, r) for name, rs in self._call("requests", []) for r in rs]
        return test, known, known_info, everything, requests

    def planned_calls(self) -> list[tuple[CachedBackend, list[tuple[list[Any], Any, int]]]]:
        """For the dry-run: per model (baseline, then candidate) its cached backend (the caller
        closes it) and the calls :meth:`run` makes with it -- every item's closed-book answer,
        then the evaluators' requests for that model."""
        _, _, _, everything, requests = self._prepare()
        ctx = self.context
        closed = [closed_book_messages(x.question) for x in everything]
        out = []
        for role in ("baseline", "candidate"):
            groups: list[tuple[list[Any], Any, int]] = [(list(closed), ctx.greedy_params(), 1)]
            groups += [(list(r.prompts), r.params, r.n) for _, r in requests if r.role == role]
            out.append((self._backend(ctx.models[role]), groups))
        return out

    def run(self) -> dict[str, Any]:
        ctx = self.context
        test, known, known_info, everything, requests = self._prepare()
        self.run_ctx.release("backend")  # this stage loads its own models, one at a time
        rows = {role: self._answer_with(role, everything, requests) for role in ("baseline", "candidate")}
        ctx.pairs = pair_answers(rows["baseline"], rows["candidate"])
        results = self._call("evaluate", None)
        self.results = results
        self.store.write_jsonl(f"{EVAL_DIR}/answers_baseline.jsonl", rows["baseline"])
        self.store.write_jsonl(f"{EVAL_DIR}/answers_candidate.jsonl", rows["candidate"])
        report = self._report(test, known, {"test": len(test), "known": known_info})
        summary: dict[str, Any] = {"test_questions": len(test), "known_items": known_info}
        for name, result in results:
            if not isinstance(result, EvaluationResult):
                raise StageError(f"evaluator {name!r} returned {type(result).__name__}, not an "
                                 "EvaluationResult")
            merge_report(report, result.report, name)
            merge_report(summary, result.summary, name)
        report["notes"] = evaluation_notes(report)
        if report["notes"]:
            summary["notes"] = report["notes"]
        self.store.write_json(f"{EVAL_DIR}/report.json", report)
        self._write_charts_and_markdown(report, [r for _, r in results])
        return summary

    def _answer_with(self, role: str, items: list[EvalItem],
                     requests: list[tuple[str, GenerationRequest]]) -> list[dict[str, Any]]:
        """Load the model of ``role``, answer every item closed-book and serve the evaluators'
        requests for that model, then close it; the answer rows, in item order."""
        ctx = self.context
        ref = ctx.models[role]
        task = self._task(ref)
        try:
            closed = [closed_book_messages(x.question) for x in items]
            answers = self._batched(task, closed, ctx.greedy_params(), 1, f"evaluate: {role} answers")
            for name, req in requests:
                if req.role not in ("baseline", "candidate"):
                    raise StageError(f"evaluator {name!r} asks for generations from {req.role!r}; "
                                     "the models are 'baseline' and 'candidate'")
                if req.role == role:
                    got = self._batched(task, req.prompts, req.params, req.n, req.desc or name)
                    ctx.set_generated(name, req.name, got)
        finally:
            self.run_ctx.engine.release("backend")  # this model leaves memory before the next
        return [answer_row(x, role, ref, a[0] if a else Completion(text=""))
                for x, a in zip(items, answers, strict=True)]

    def _report(self, test: list[EvalItem], known: list[EvalItem], items: dict[str, Any]) -> dict[str, Any]:
        """report.json before the evaluators' parts: models, decoding, items, set sizes."""
        opts: EvaluateOptions = self.options
        ctx = self.context
        report: dict[str, Any] = {
            "models": dict(ctx.models),
            "params": {"max_new_tokens": opts.max_new_tokens,
                       "repetition_penalty": opts.repetition_penalty, "greedy": True},
            "items": items,
        }
        for set_name, set_items in (("test", test), ("known", known)):
            if set_items:
                report[set_name] = {"n": len(ctx.pairs_of(set_name)),
                                    "categories": sorted({str(x.category) for x in set_items})}
        return report

    # -- reports -------------------------------------------------------------------------
    def _write_charts_and_markdown(self, report: dict[str, Any], results: list[EvaluationResult]) -> None:
        images: list[tuple[str, str]] = []
        for title, fname in (("S_L / S_K histogram", "scores_hist.png"),
                             ("Training loss", "train_loss.png")):
            if self.store.exists(fname):
                images.append((title, fname))
        panels = [p for r in results for p in r.panels]
        self.store.write_bytes(f"{EVAL_DIR}/before_after.png", plot_before_after(panels))
        images.append(("Before / after", f"{EVAL_DIR}/before_after.png"))
        images += [i for r in results for i in r.images]
        manifest = self.store.read_json("manifest.json") if self.store.exists("manifest.json") else None
        datasets = (self.store.read_json("datasets_summary.json")
                    if self.store.exists("datasets_summary.json") else None)
        md = render_report(report, rows=[row for r in results for row in r.rows],
                           sections=[r.markdown for r in results], manifest=manifest,
                           datasets_summary=datasets, images=images)
        self.store.write_text("report.md", md)


def _evaluator_name(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("use"), str):
        return str(value["use"])
    return type(value).__name__


def _item(set_name: str, q: Question, passage: Passage) -> EvalItem:
    category = q.metadata.get("category") or passage.metadata.get("category")
    return EvalItem(set_name, q.id, q.text, None if category is None else str(category), passage.text)


def answer_shard(backend: Any, payload: dict[str, Any]) -> list[list[dict[str, Any]]]:
    """Run on an engine's worker: one backend call for a shard of the evaluation's prompts."""
    out = backend.generate(payload["prompts"], payload["params"], n=payload["n"])
    return [[c.to_dict() for c in row] for row in out]
