"""The pieces a self-training round is built from (see :mod:`.rounds`).

A round is an ordinary :class:`~selflearn.core.pipeline.Pipeline`; what makes it round *r* is
what its slots are given:

* :class:`DocumentSlice`, a knowledge source over the documents the run read once, so every
  round sees its own seeded, disjoint slice of the training documents and the same held-out
  documents;
* :class:`StoredQuestions`, a question generator that hands back questions written earlier
  (the held-out questions of round 1, or the previous round's unknown questions) and asks the
  configured generator only for the passages of fresh documents.

Both are plain objects satisfying the component protocols, so the stages, fingerprints and
resume logic see nothing special; their ``identity()`` names exactly what they hand out.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .config import SlotSpec
from .errors import ConfigError
from .hashing import content_hash, seed_from
from .options import build_options
from .records import Document, Passage, Question
from .store import ArtifactStore

if TYPE_CHECKING:
    from .context import RunContext

#: the passage policies of rounds 2 and later
Policy = Literal["fresh", "fresh+unknown"]


@attrs.frozen
class RoundsOptions:
    """The ``rounds:`` section (or ``rounds: N``, which sets ``count``)."""

    #: rounds to run; round r + 1 trains (and answers, scores and evaluates with) the model
    #: round r trained
    count: int = 1
    #: what rounds 2+ train on: "fresh" (their own seeded, disjoint slice of the source's
    #: training documents) or "fresh+unknown" (that slice plus the previous round's questions
    #: whose S_K was above tau_K, answered and scored again by the new model)
    passages: Policy = "fresh"
    #: training documents per round (None: the source's training documents split evenly over
    #: ``count``). With it, a larger ``count`` later keeps the earlier rounds' documents (as
    #: long as the source yields the same documents)
    documents_per_round: int | None = None
    #: a round whose filters keep fewer DPO pairs than this ends the run before training
    min_pairs: int = 1
    #: evaluate each round from the second on against the original model as well
    compare_with_base: bool = True
    #: S_K of the held-out questions under the original model and after each round
    heldout_scores: bool = True


def parse_rounds(value: Any, path: str = "rounds") -> RoundsOptions | None:
    """``rounds: N`` or ``rounds: {count: N, ...}`` into :class:`RoundsOptions` (None: off)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, dict)):
        raise ConfigError(
            f"expected a number of rounds or {{count: N, passages: fresh|fresh+unknown, "
            f"min_pairs: M}}, got {value!r}",
            path,
        )
    opts = RoundsOptions(count=value) if isinstance(value, int) else build_options(RoundsOptions, value, path)
    if opts.count < 1:
        raise ConfigError(f"expected at least 1 round, got {opts.count}", f"{path}.count")
    if opts.documents_per_round is not None and opts.documents_per_round < 1:
        raise ConfigError(f"expected at least 1 document, got {opts.documents_per_round}",
                          f"{path}.documents_per_round")
    if opts.min_pairs < 0:
        raise ConfigError(f"expected 0 or more pairs, got {opts.min_pairs}", f"{path}.min_pairs")
    return opts


def slice_documents(docs: Sequence[Document], count: int, seed: int,
                    per_round: int | None = None) -> tuple[list[list[str]], list[str]]:
    """The training documents' ids in ``count`` disjoint slices, and the held-out ids.

    The documents are put in a seeded order that does not depend on the source's: within each
    category by a hash of (seed, id), the categories interleaved, so any stretch of it holds
    every category in proportion. With ``per_round`` round r takes the r-th stretch of that
    many (so adding rounds keeps the earlier ones); without, the order is dealt out in turn.
    """
    train = [d for d in docs if d.split != "test"]
    need = count * (per_round or 1)
    if len(train) < need:
        what = f"{per_round} per round" if per_round else "at least one each"
        raise ConfigError(
            f"{count} rounds need {need} training documents ({what}: each round trains on its own "
            f"slice), but the source gave {len(train)}. Ask the source for more documents, run "
            "fewer rounds, or lower rounds.documents_per_round",
            "rounds.documents_per_round" if per_round else "rounds.count",
        )
    by_category: dict[str, list[str]] = {}
    for d in sorted(train, key=lambda d: seed_from("rounds", seed, d.id)):
        by_category.setdefault(d.category or "", []).append(d.id)
    columns = [by_category[c] for c in sorted(by_category)]
    order = [i for row in itertools.zip_longest(*columns) for i in row if i is not None]
    if per_round is None:
        slices = [order[r::count] for r in range(count)]
    else:
        slices = [order[r * per_round:(r + 1) * per_round] for r in range(count)]
    return slices, [d.id for d in docs if d.split == "test"]


class DocumentSlice:
    """A knowledge source yielding chosen documents of a ``documents.jsonl`` another pipeline
    wrote, in the given order (``relabel`` overrides their split, e.g. to score held-out
    questions as if they were training questions)."""

    def __init__(self, store: ArtifactStore, ids: Sequence[str], *, label: str,
                 relabel: str | None = None) -> None:
        self.store = store
        self.ids = list(ids)
        self.label = label
        self.relabel = relabel

    def identity(self) -> dict[str, Any]:
        return {
            "rounds_slice": self.label,
            "documents": self.store.hash("documents.jsonl"),
            "ids": content_hash(self.ids),
            "relabel": self.relabel,
        }

    def fingerprint(self) -> dict[str, Any]:
        """Changes whenever the documents it yields would: the identity already hashes the
        shared ``documents.jsonl`` and the chosen ids."""
        return self.identity()

    def documents(self) -> Iterator[Document]:
        by_id = {d.id: d for d in self.store.read_records("documents.jsonl", Document)}
        for doc_id in self.ids:
            doc = by_id[doc_id]
            if self.relabel is not None:
                doc = attrs.evolve(doc, metadata={**doc.metadata, "split": self.relabel})
            yield doc


class StoredQuestions:
    """A question generator that returns stored questions for the documents they came from,
    and asks ``inner`` (the configured generator, built in the round's own context) for the
    passages of every other document; with no ``inner`` those passages get none."""

    def __init__(self, stored: Sequence[Question], *, label: str, inner: SlotSpec | None = None) -> None:
        self.stored = list(stored)
        self.label = label
        self.inner_spec = inner
        self._docs = {q.document_id for q in self.stored}
        self._by_passage: dict[str, list[Question]] = {}
        for q in self.stored:
            self._by_passage.setdefault(q.passage_id, []).append(q)
        self._ctx: RunContext | None = None
        self._inner: Any = None

    def bind_run(self, ctx: RunContext) -> None:
        """The round's context, where the configured generator is built (with the round's
        backend, i.e. the model under training of that round); a generator built in an earlier
        context (whose backend that context closed) is dropped."""
        self._ctx = ctx
        self._inner = None

    def __getstate__(self) -> dict[str, Any]:
        """Picklable for a worker of another engine: the round's context stays here."""
        return {**self.__dict__, "_ctx": None, "_inner": None}

    def identity(self) -> dict[str, Any]:
        return {
            "rounds_questions": self.label,
            "stored": content_hash([q.to_dict() for q in self.stored]),
            "inner": self.inner_spec.describe() if self.inner_spec is not None else None,
        }

    def _generator(self) -> Any:
        if self._inner is None:
            if self._ctx is None or self.inner_spec is None:
                raise ConfigError("internal: StoredQuestions needs bind_run() before fresh passages")
            self._inner = self._ctx.build("question_generator", self.inner_spec, "question_generator")
        return self._inner

    def generate(self, passages: Sequence[Passage], *, per_passage: int = 1,
                 split: str = "train") -> list[Question]:
        fresh = [p for p in passages if p.document_id not in self._docs]
        out: list[Question] = []
        if fresh and self.inner_spec is not None:
            out.extend(self._generator().generate(fresh, per_passage=per_passage, split=split))
        for p in passages:
            if p.document_id in self._docs:
                out.extend(self._by_passage.get(p.id, []))
        return out

    @property
    def usage(self) -> Any:
        return getattr(self._inner, "usage", None)

    @property
    def stats(self) -> Any:
        stats = getattr(self._inner, "stats", None)
        return {"stored_questions": len(self.stored), "generator": stats}
