"""Stage ``questions``: write questions for the training passages, and a held-out test set.

* training questions: ``per_passage`` questions for every passage of a training document,
  by the ``question_generator`` component, written to ``questions.jsonl``;
* test questions (the paper's Wiki-Test): ``test_per_passage`` questions for every passage of
  a held-out document (the passages stage keeps 2 per test document, so 1 question each gives
  the paper's 2 per document), by the ``test_question_generator`` component (default: the
  same as ``question_generator``; the paper used a stronger model), written to
  ``test_questions.jsonl``.

All passages of one document are given to the generator in the same call, so a question
repeated within a document is rejected and retried. Both generators are built before any
call, so a missing API key fails before any work; a spend cap reached mid-way stops the stage
(finished calls are cached, and the same command resumes). The summary records counts,
passages left without a question, rejection reasons, and each generator's usage (calls,
tokens, estimated cost), and goes into the manifest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import attrs

from ..errors import ConfigError, StageError
from ..execution import Shard, Task, run_shards
from ..execution.usage import attribute
from ..options import bounded
from ..records import Passage, Question
from .base import Stage

TRAIN_FILE = "questions.jsonl"
TEST_FILE = "test_questions.jsonl"


@attrs.frozen
class QuestionsOptions:
    #: questions per training passage (the paper: 1)
    per_passage: int = bounded(1, ge=1, le=100)
    #: questions per held-out passage (the paper: 1, with 2 passages per test document)
    test_per_passage: int = bounded(1, ge=1, le=100)
    #: write the held-out test questions (when there are test passages)
    test_questions: bool = True
    #: at most this many training passages (None: all), for small runs
    limit: int | None = bounded(None, ge=1)
    #: at most this many held-out passages (None: all)
    test_limit: int | None = bounded(None, ge=1)
    #: passages per generator call (whole documents are never split across calls)
    batch_size: int = bounded(64, ge=1)


def _split(p: Passage) -> str:
    return str(p.metadata.get("split", "train"))


def document_batches(passages: Sequence[Passage], size: int) -> Iterator[list[Passage]]:
    """Batches of about ``size`` passages that never split a document."""
    by_doc: dict[str, list[Passage]] = {}
    for p in passages:
        by_doc.setdefault(p.document_id, []).append(p)
    batch: list[Passage] = []
    for group in by_doc.values():
        if batch and len(batch) + len(group) > size:
            yield batch
            batch = []
        batch.extend(group)
    if batch:
        yield batch


def _read(generator: Any, attr: str) -> Any:
    """``generator.attr`` (called when a method), None when missing or failing: a description
    must not fail the stage."""
    try:
        value = attribute(generator, attr)
    except Exception:  # noqa: BLE001
        return None
    return dict(value) if isinstance(value, Mapping) else value


def generator_usage(generator: Any) -> dict[str, Any]:
    """The generator's counters (``usage``: calls, tokens, cost; ``stats``: outcomes by reason)
    read before and after each shard by the run's engine, on whichever process holds it."""
    out: dict[str, Any] = {}
    for attr in ("usage", "stats"):
        value = _read(generator, attr)
        if isinstance(value, dict):
            out[attr] = value
    return out


class QuestionsStage(Stage):
    name = "questions"
    requires = ("passages",)
    slots = ("question_generator", "test_question_generator")
    options_class = QuestionsOptions

    def outputs(self) -> list[str]:
        return [TRAIN_FILE, TEST_FILE]

    def validate(self) -> None:
        super().validate()
        o: QuestionsOptions = self.options
        for name in ("per_passage", "test_per_passage", "batch_size"):
            if getattr(o, name) < 1:
                raise ConfigError(f"expected at least 1, got {getattr(o, name)}", f"questions.{name}")

    def _passages(self) -> tuple[list[Passage], list[Passage]]:
        o: QuestionsOptions = self.options
        passages = self.store.read_records("passages.jsonl", Passage)
        train = [p for p in passages if _split(p) != "test"]
        test = [p for p in passages if _split(p) == "test"] if o.test_questions else []
        if o.limit is not None:
            train = train[: o.limit]
        if o.test_limit is not None:
            test = test[: o.test_limit]
        return train, test

    def _generate(self, slot: str, passages: list[Passage], per_passage: int, split: str) -> list[Question]:
        """The questions of ``passages``, one document batch per shard on the run's engine (the
        generator's own per-call cache answers a batch that an earlier run finished)."""
        shards = [
            Shard({"passages": batch, "per_passage": per_passage, "split": split}, items=len(batch))
            for batch in document_batches(passages, self.options.batch_size)
        ]
        task = _task(slot, split)
        values, self.execution[split] = run_shards(self.run_ctx.engine, task, shards)
        questions = [Question.from_dict(q) for value in values for q in value]
        self.generators[split] = {"identity": self._identity(task, questions),
                                  **self.execution[split].pop("usage")}
        return questions

    def _identity(self, task: Task, questions: list[Question]) -> Any:
        """The generator's identity after its calls (a local generator names its backend only
        once built): as its questions record it, the same under either engine; else as the
        component (local) or its workers (Ray, before their calls) give it."""
        for q in questions:
            if isinstance(q.provenance.get("generator"), dict):
                return q.provenance["generator"]
        if self.run_ctx.engine.name == "local":
            return _read(self.run_ctx.component(task.slot), "identity")
        return self.run_ctx.engine.probe(task)["identity"]

    def run(self) -> dict[str, Any]:
        o: QuestionsOptions = self.options
        train, test = self._passages()
        if not train:
            raise StageError(
                "passages.jsonl has no training passage (split 'train'); check the source's "
                "train_per_category and the passages stage"
            )
        # build every generator first: a missing API key fails before any call
        if self.run_ctx.engine.name == "local":
            self.run_ctx.component("question_generator")
            if test:
                self.run_ctx.component("test_question_generator")
        self.execution: dict[str, Any] = {}
        #: per split: the generator's identity, and its usage and outcome counts summed over
        #: the split's shards (the same totals under either engine)
        self.generators: dict[str, dict[str, Any]] = {}
        questions = self._generate("question_generator", train, o.per_passage, "train")
        if not questions:
            raise StageError(
                f"no question was accepted for {len(train)} training passages; generator "
                f"report: {self.generators['train'].get('stats')}. Check the "
                "generator's model and prompt options."
            )
        test_questions = (
            self._generate("test_question_generator", test, o.test_per_passage, "test") if test else []
        )
        self.store.write_records(TRAIN_FILE, questions)
        self.store.write_records(TEST_FILE, test_questions)

        def without(qs: list[Question], ps: list[Passage]) -> int:
            asked = {q.passage_id for q in qs}
            return sum(1 for p in ps if p.id not in asked)

        summary: dict[str, Any] = {
            "questions": len(questions),
            "test_questions": len(test_questions),
            "passages": {"train": len(train), "test": len(test)},
            "passages_without_question": {
                "train": without(questions, train),
                "test": without(test_questions, test),
            },
            "generator": self.generators["train"],
            "execution": self.execution,
        }
        if test:
            summary["test_generator"] = self.generators["test"]
        return summary

    def estimate(self) -> dict[str, Any]:
        o: QuestionsOptions = self.options
        if not self.store.exists("passages.jsonl"):
            return {"question_calls": "known once the passages exist"}
        train, test = self._passages()

        def attempts(slot: str) -> int:
            spec = self.run_ctx.slots.get(slot)
            value = spec.options.get("attempts", 3) if spec is not None and not spec.is_object else 3
            return int(value) if isinstance(value, int) else 3

        calls = len(train) * o.per_passage * attempts("question_generator")
        test_calls = len(test) * o.test_per_passage * attempts("test_question_generator")
        return {
            "train_passages": len(train),
            "test_passages": len(test),
            "question_calls_at_most": calls + test_calls,
            "question_calls_at_least": len(train) * o.per_passage + len(test) * o.test_per_passage,
        }


def _task(slot: str, split: str) -> Task:
    return Task(slot, "selflearn.core.stages.questions:questions_shard", f"{split} questions",
                usage="selflearn.core.stages.questions:generator_usage")


def questions_shard(generator: Any, payload: dict[str, Any]) -> list[dict[str, Any]]:
    """Run on an engine's worker: one generator call for a batch of whole documents."""
    questions = generator.generate(payload["passages"], per_passage=payload["per_passage"],
                                   split=payload["split"])
    for q in questions:
        if not isinstance(q, Question):
            raise StageError(
                f"the question generator returned {type(q).__name__}, expected "
                "selflearn.Question records"
            )
    return [q.to_dict() for q in questions]
