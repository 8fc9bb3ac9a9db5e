"""The records that flow between stages.

Each arrow of the data flow is a frozen attrs record with a JSON round trip
(``record.to_dict()`` / ``Record.from_dict(d)``, the latter through the one converter of
:mod:`selflearn.core.convert`). Stages read and write these records, never
each other's internals, and every record keeps its provenance, so a training row can be traced
back to the passage, the model calls and the decision that produced it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, TypeVar

import attrs

from .convert import CONVERTER, Invalid

R = TypeVar("R", bound="Record")


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


@attrs.frozen
class Record:
    """Base class: a frozen record with a JSON round trip."""

    kind: ClassVar[str] = "record"
    #: what the converter of :mod:`selflearn.core.convert` recognises a record by
    __selflearn_record__: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict of the record's fields (nested records included)."""
        return {f.name: _plain(getattr(self, f.name)) for f in attrs.fields(type(self))}

    @classmethod
    def from_dict(cls: type[R], data: Mapping[str, Any]) -> R:
        """Build the record from :meth:`to_dict` output (nested records included) through the
        converter of :mod:`selflearn.core.convert`; an unknown key, a missing field or a value
        of the wrong type is a ValueError naming the record class and the field's path."""
        try:
            record: R = CONVERTER.structure(data, cls)
        except Invalid as exc:
            where = f"{cls.__name__}{exc.path}: " if exc.path else ""
            raise ValueError(f"{where}{exc.message}") from None
        return record


def _dict_field() -> Any:
    return attrs.field(factory=dict)


@attrs.frozen
class Document(Record):
    """One document of a knowledge source.

    ``metadata`` conventionally holds ``category`` and ``split`` (``"train"`` or ``"test"``);
    sources that know nothing of splits leave ``split`` out and every document is trained on.
    """

    kind: ClassVar[str] = "document"
    id: str
    title: str
    text: str
    metadata: dict[str, Any] = _dict_field()

    @property
    def split(self) -> str:
        return str(self.metadata.get("split", "train"))

    @property
    def category(self) -> str | None:
        cat = self.metadata.get("category")
        return None if cat is None else str(cat)


@attrs.frozen
class Passage(Record):
    """A chunk of a document that fits the target model's context budget."""

    kind: ClassVar[str] = "passage"
    id: str
    document_id: str
    index: int
    title: str
    text: str
    n_tokens: int = 0
    metadata: dict[str, Any] = _dict_field()


@attrs.frozen
class Question(Record):
    """A question written from one passage; ``provenance`` names the generator and its call."""

    kind: ClassVar[str] = "question"
    id: str
    passage_id: str
    document_id: str
    text: str
    split: str = "train"
    provenance: dict[str, Any] = _dict_field()
    metadata: dict[str, Any] = _dict_field()


@attrs.frozen
class Completion(Record):
    """One completion returned by an inference backend."""

    kind: ClassVar[str] = "completion"
    text: str
    finish_reason: str = "stop"  # "stop" (EOS or stop string) or "length" (hit max_new_tokens)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[float] | None = None  # one per generated token, when asked for
    tokens: list[str] | None = None


@attrs.frozen
class Generations(Record):
    """The answers the model under training gave to one question.

    ``reference`` is y* (greedy, passage in context), ``with_passage`` is Y_c and
    ``without_passage`` is Y_r (K samples each).
    """

    kind: ClassVar[str] = "generations"
    question_id: str
    reference: Completion
    with_passage: list[Completion] = attrs.field(factory=list)
    without_passage: list[Completion] = attrs.field(factory=list)
    provenance: dict[str, Any] = _dict_field()


@attrs.frozen
class Scores(Record):
    """Knowledge-detection scores of one question.

    ``s_l`` = consistency score(y*, Y_c), ``s_k`` = knowledge score(y*, Y_r); both are
    disagreement scores in [0, 1] (higher: the samples contradict the reference more).
    ``None`` means the score could not be computed (empty reference, no usable sample).
    """

    kind: ClassVar[str] = "scores"
    question_id: str
    s_l: float | None
    s_k: float | None
    consistency_samples: list[float | None] = attrs.field(factory=list)
    knowledge_samples: list[float | None] = attrs.field(factory=list)
    provenance: dict[str, Any] = _dict_field()


@attrs.frozen
class PreferencePair(Record):
    """One DPO pair: ``prompt`` is the question without the passage."""

    kind: ClassVar[str] = "preference_pair"
    id: str
    question_id: str
    prompt: str
    chosen: str
    rejected: str
    provenance: dict[str, Any] = _dict_field()


@attrs.frozen
class SFTExample(Record):
    """One supervised row: ``prompt`` (question, with the passage for reading-comprehension rows)
    and its ``completion``. ``origin`` is ``"rc"`` or ``"self"``."""

    kind: ClassVar[str] = "sft_example"
    id: str
    question_id: str
    prompt: str
    completion: str
    origin: str = "rc"
    provenance: dict[str, Any] = _dict_field()


@attrs.frozen
class Verdict(Record):
    """A pairwise judgement of a candidate answer against a baseline, in both orders.

    ``first`` is the judge's pick with the candidate shown as A, ``second`` with the candidate
    shown as B (each ``"candidate"``, ``"baseline"`` or ``None`` when unparseable). ``outcome``
    is ``"win"`` (candidate in both), ``"lose"`` (baseline in both), ``"tie"`` (the orders
    disagree) or ``"unjudged"``.
    """

    kind: ClassVar[str] = "verdict"
    question_id: str
    outcome: str
    first: str | None = None
    second: str | None = None
    provenance: dict[str, Any] = _dict_field()

    @staticmethod
    def combine(first: str | None, second: str | None) -> str:
        """The outcome of two orders, as the paper defines it."""
        if first is None or second is None:
            return "unjudged"
        if first == second == "candidate":
            return "win"
        if first == second == "baseline":
            return "lose"
        return "tie"


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls
    for cls in (
        Document,
        Passage,
        Question,
        Completion,
        Generations,
        Scores,
        PreferencePair,
        SFTExample,
        Verdict,
    )
}
