"""The evaluator extension point: what the ``evaluate`` stage hands each measure, and what a
measure hands back.

The stage orchestrates: it picks the questions both models answer (the held-out test
questions and the known training items, plus item sets evaluators contribute), loads each
model once and asks it everything every evaluator needs (closed-book answers and each
evaluator's :class:`GenerationRequest`), pairs the answers, then calls each evaluator in turn
and writes ``evaluation/report.json`` and ``report.md`` from their :class:`EvaluationResult`.
Measures (agreement, QA accuracy, pairwise judging, forgetting, knowledge detection, or a third
party's own) are evaluators registered through ``register_evaluators``.

An evaluator needs only ``evaluate(ctx) -> EvaluationResult``; these are optional, called in
this order when present (:class:`BaseEvaluator` has them all as no-ops):

- ``validate(ctx)``: raise :class:`~selflearn.core.errors.ConfigError` before any model runs;
- ``outputs(ctx) -> list[str]``: the files it writes, relative to ``evaluation/``;
- ``items(ctx) -> dict[str, list[EvalItem]]``: extra item sets both models answer closed-book;
- ``requests(ctx) -> list[GenerationRequest]``: other generations it needs from either model.

An answer file (``evaluation/answers_baseline.jsonl``, ``evaluation/answers_candidate.jsonl``)
has one JSON object per (set, question): ``set`` ("test", "known", or a contributed set such as
"qa:<name>"), ``question_id``, ``question``, ``category``, ``role`` ("baseline"/"candidate"),
``model``, ``answer``, ``finish_reason``, ``completion_tokens``, ``disagreement`` (None unless an
evaluator fills it), ``gold`` for items with gold answers, and whatever per-answer fields the
evaluators add to the rows of :attr:`EvaluationContext.pairs` (``qa``: the QA scores).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import attrs

from .errors import StageError
from .protocols import GenerationParams, Prompt, ScoreItem
from .records import Completion, Record

if TYPE_CHECKING:
    from .cache import JsonlCache
    from .context import RunContext

T = TypeVar("T")
Pair = tuple[dict[str, Any], dict[str, Any]]
#: one bar group of the before/after chart: (label, baseline mean_ci, candidate mean_ci)
PanelRow = tuple[str, dict[str, Any], dict[str, Any]]

EVAL_DIR = "evaluation"
ROLES = ("baseline", "candidate")


@attrs.frozen
class EvalItem:
    """One question both models answer: a held-out or known training question (with its
    passage) or a contributed question (e.g. a QA question with its gold answers)."""

    set: str
    id: str
    question: str
    category: str | None = None
    passage: str | None = None
    gold: list[str] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.set, self.id)


@attrs.frozen
class GenerationRequest:
    """Generations an evaluator needs from one of the two models, asked while it is loaded."""

    #: the name under which :meth:`EvaluationContext.generated` returns the completions
    name: str
    #: "baseline" or "candidate"
    role: str
    prompts: Sequence[Prompt]
    params: GenerationParams
    #: completions per prompt
    n: int = 1
    #: the progress bar's label
    desc: str = ""


@attrs.frozen
class MeasureRow:
    """One row of report.md's before/after table; each figure is a ``mean_ci``-style mapping
    (``mean``, ``ci_low``, ``ci_high``)."""

    measure: str
    n: int
    baseline: dict[str, Any]
    candidate: dict[str, Any]
    difference: dict[str, Any]
    #: show the figures as percentages
    percent: bool = False


@attrs.frozen
class EvaluationResult:
    """What one evaluator contributes to the report.

    ``report`` is merged into ``evaluation/report.json`` at the top level (mappings merge
    key by key; use your evaluator's name as the key of anything new); ``rows`` go into
    report.md's before/after table and ``panels`` into ``before_after.png``; ``markdown`` is a
    section of report.md (start it with a ``## `` heading); ``images`` are (title, path
    relative to the run directory) shown under Figures; ``summary`` is merged into the stage
    summary kept in ``manifest.json``.
    """

    report: dict[str, Any] = attrs.field(factory=dict)
    rows: list[MeasureRow] = attrs.field(factory=list)
    panels: list[tuple[str, list[PanelRow]]] = attrs.field(factory=list)
    markdown: str = ""
    images: list[tuple[str, str]] = attrs.field(factory=list)
    summary: dict[str, Any] = attrs.field(factory=dict)


@runtime_checkable
class Evaluator(Protocol):
    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        """Measure the candidate against the baseline from ``ctx.pairs`` (and anything
        requested), write any files through ``ctx``, and return the report's contribution."""
        ...


class BaseEvaluator:
    """Optional base class: every optional evaluator method as a no-op."""

    def validate(self, ctx: EvaluationContext) -> None:
        """Check the configuration; raise ConfigError (with its dotted path) when wrong."""

    def outputs(self, ctx: EvaluationContext) -> list[str]:
        """The files this evaluator writes, relative to ``evaluation/``."""
        return []

    def items(self, ctx: EvaluationContext) -> dict[str, list[EvalItem]]:
        """Extra item sets (set name -> items) that both models answer closed-book."""
        return {}

    def requests(self, ctx: EvaluationContext) -> list[GenerationRequest]:
        """Other generations needed from either model (fetched by ``ctx.generated``)."""
        return []

    def evaluate(self, ctx: EvaluationContext) -> EvaluationResult:
        raise NotImplementedError(f"{type(self).__name__} must implement evaluate(ctx)")


class EvaluationContext:
    """What an evaluator sees: the evaluate section, both models, the items and the answers,
    plus the run's components, caches, progress and files under ``evaluation/``."""

    def __init__(self, run: RunContext, options: Any, models: dict[str, str]) -> None:
        self.run = run
        #: the validated ``evaluate`` section (``EvaluateOptions``)
        self.options = options
        #: role ("baseline", "candidate") -> model reference
        self.models = models
        #: set name -> items, in the order they are answered ("test", "known", then contributed)
        self.sets: dict[str, list[EvalItem]] = {}
        #: report.json's ``items`` section as the stage and evaluators filled it
        self.item_info: dict[str, Any] = {}
        #: (baseline row, candidate row) per item, in answer order; filled before evaluate()
        self.pairs: list[Pair] = []
        #: the evaluator whose method the stage is calling (requests are kept per evaluator)
        self.current = ""
        self._generated: dict[tuple[str, str], list[list[Completion]]] = {}

    # -- configuration -------------------------------------------------------------------
    @property
    def seed(self) -> int:
        return self.run.seed

    @property
    def resamples(self) -> int:
        """Bootstrap resamples for 95% intervals (``evaluate.bootstrap_resamples``)."""
        return int(self.options.bootstrap_resamples)

    def greedy_params(self) -> GenerationParams:
        """The decoding of every answer the stage asks: greedy, with the section's
        ``max_new_tokens`` and ``repetition_penalty``, seeded by the run's seed."""
        return GenerationParams(
            max_new_tokens=self.options.max_new_tokens,
            temperature=0.0,
            repetition_penalty=self.options.repetition_penalty,
            seed=self.seed,
        )

    def sample(self, items: Sequence[T], k: int | None) -> list[T]:
        """At most ``k`` of ``items`` (None: all), a sample seeded by the run's seed."""
        if k is None or len(items) <= k:
            return list(items)
        return random.Random(self.seed).sample(list(items), k)

    # -- components ----------------------------------------------------------------------
    def has(self, slot: str) -> bool:
        return self.run.has(slot)

    def component(self, slot: str) -> Any:
        """The run's component in ``slot`` (``scorer``, ``judge``...), built once per run."""
        return self.run.component(slot)

    def build(self, kind: str, value: Any, path: str) -> Any:
        """Build a component of ``kind`` from a name or ``{use, options}`` (errors at ``path``)."""
        return self.run.build(kind, value, path)

    def cache(self, namespace: str) -> JsonlCache:
        return self.run.cache(namespace)

    def secret(self, name: str) -> str | None:
        return self.run.secret(name)

    def progress(self, iterable: Iterable[T], *, total: int | None = None, desc: str = "",
                 unit: str = "it") -> Iterator[T]:
        return self.run.progress(iterable, total=total, desc=desc, unit=unit)

    # -- answers -------------------------------------------------------------------------
    def generated(self, name: str) -> list[list[Completion]]:
        """The completions of this evaluator's request ``name``, aligned with its prompts."""
        try:
            return self._generated[(self.current, name)]
        except KeyError:
            raise StageError(
                f"evaluator {self.current!r} asks for generations {name!r}, but none of its "
                "requests() had that name"
            ) from None

    def set_generated(self, evaluator: str, name: str, completions: list[list[Completion]]) -> None:
        """Store what the stage generated for ``evaluator``'s request ``name``."""
        self._generated[(evaluator, name)] = completions

    def pairs_of(self, set_name: str) -> list[Pair]:
        return [(b, c) for b, c in self.pairs if b["set"] == set_name]

    def cached_scores(self, scorer: Any, cache: JsonlCache, keyed: Sequence[tuple[str, ScoreItem]],
                      desc: str, who: str = "") -> list[float | None]:
        """The score of each (cache key, item): from the cache where present, the rest scored in
        steps of 4 x batch_size (with progress) and cached as they come."""
        scores: list[float | None] = [None] * len(keyed)
        todo: list[int] = []
        for i, (key, _) in enumerate(keyed):
            hit = cache.get(key)
            if hit is None:
                todo.append(i)
            else:
                scores[i] = hit.get("score")
        step = max(1, self.options.batch_size * 4)
        starts = range(0, len(todo), step)
        for start in self.progress(starts, total=len(starts), desc=desc, unit="batch"):
            idx = todo[start : start + step]
            results = scorer.score([keyed[i][1] for i in idx])
            if len(results) != len(idx):
                raise StageError(f"the scorer{who} returned {len(results)} results for {len(idx)} items")
            for i, res in zip(idx, results, strict=True):
                scores[i] = res.score
            cache.put_many([(keyed[i][0], {"score": scores[i]}) for i in idx])
        return scores

    # -- files ---------------------------------------------------------------------------
    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Write ``evaluation/<name>`` atomically."""
        self.run.store.write_jsonl(f"{EVAL_DIR}/{name}", rows)

    def write_records(self, name: str, records: Iterable[Record]) -> None:
        self.run.store.write_records(f"{EVAL_DIR}/{name}", records)

    def write_bytes(self, name: str, data: bytes) -> None:
        self.run.store.write_bytes(f"{EVAL_DIR}/{name}", data)


def answer_row(item: EvalItem, role: str, model: str, completion: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "set": item.set,
        "question_id": item.id,
        "question": item.question,
        "category": item.category,
        "role": role,
        "model": model,
        "answer": completion.text,
        "finish_reason": completion.finish_reason,
        "completion_tokens": completion.completion_tokens,
        "disagreement": None,
    }
    if item.gold is not None:
        row["gold"] = list(item.gold)
    return row


def pair_answers(baseline: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]]) -> list[Pair]:
    """Baseline and candidate rows matched by (set, question_id), in the baseline's order.

    Two answer files must cover the same questions: comparing different question sets would
    silently bias every rate. A mismatch is a :class:`StageError` naming the missing ids.
    """

    def index(rows: Iterable[dict[str, Any]], name: str) -> dict[tuple[str, str], dict[str, Any]]:
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for row in rows:
            key = (str(row.get("set", "test")), str(row["question_id"]))
            if key in out:
                raise StageError(f"the {name} answers hold question {key[1]!r} ({key[0]}) twice")
            out[key] = row
        return out

    b, c = index(baseline, "baseline"), index(candidate, "candidate")
    only_b = sorted(f"{s}:{q}" for s, q in set(b) - set(c))
    only_c = sorted(f"{s}:{q}" for s, q in set(c) - set(b))
    if only_b or only_c:
        parts = []
        if only_b:
            parts.append(f"missing from the candidate's answers: {_ids(only_b)}")
        if only_c:
            parts.append(f"missing from the baseline's answers: {_ids(only_c)}")
        raise StageError(
            "the baseline and candidate answered different question sets ("
            + "; ".join(parts)
            + "). Answer the same held-out questions with both models (delete the stale answer "
            "file and run the evaluate stage again)."
        )
    return [(row, c[key]) for key, row in b.items()]


def _ids(ids: list[str], most: int = 10) -> str:
    shown = ", ".join(ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def merge_report(into: dict[str, Any], new: dict[str, Any], who: str, path: str = "") -> None:
    """Merge an evaluator's contribution into the report (or the stage summary): mappings
    merge key by key, a None placeholder is filled; anything else already there is an error,
    so two evaluators cannot silently overwrite each other's figures."""
    for key, value in new.items():
        if into.get(key) is None:
            into[key] = value
        elif isinstance(into[key], dict) and isinstance(value, dict):
            merge_report(into[key], value, who, f"{path}{key}.")
        else:
            raise StageError(
                f"evaluator {who!r} reports {path}{key!s}, which another evaluator (or the stage) "
                "already reported; use the evaluator's own name as the key of what it adds"
            )
