"""Stage ``passages``: cut documents into passages with the configured chunker."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from ..errors import StageError
from ..options import bounded
from ..records import Document, Passage
from .base import Stage


@attrs.frozen
class PassagesOptions:
    #: most passages per training document (the paper: 8)
    max_per_document_train: int = bounded(8, ge=1)
    #: most passages per held-out document (the paper: 2)
    max_per_document_test: int = bounded(2, ge=0)


class PassagesStage(Stage):
    name = "passages"
    requires = ("documents",)
    slots = ("chunker",)
    options_class = PassagesOptions

    def run(self) -> dict[str, Any]:
        chunker = self.run_ctx.component("chunker")
        opts: PassagesOptions = self.options
        docs = self.store.read_records("documents.jsonl", Document)
        passages: list[Passage] = []
        no_passage = 0
        for doc in self.run_ctx.progress(docs, desc="passages", unit="doc"):
            cap = opts.max_per_document_test if doc.split == "test" else opts.max_per_document_train
            chunks = chunker.chunk(doc, max_passages=cap)
            if not chunks:
                no_passage += 1
            for p in chunks[:cap]:
                meta = {"split": doc.split, "category": doc.category, **p.metadata}
                passages.append(attrs.evolve(p, metadata=meta))
        if not passages:
            raise StageError(
                f"the chunker produced no passage from {len(docs)} documents; documents may be "
                "too short for the chunker's settings"
            )
        self.store.write_records("passages.jsonl", passages)
        summary: dict[str, Any] = {
            "passages": len(passages),
            "by_split": dict(Counter(str(p.metadata.get("split")) for p in passages)),
            "documents_without_passage": no_passage,
        }
        # what the chunker dropped or split, and why (tails under 3/4 L, long sentences, ...)
        chunker_stats = getattr(chunker, "stats", None)
        if isinstance(chunker_stats, dict) and chunker_stats:
            summary["chunker"] = dict(chunker_stats)
        return summary
