"""Stage ``documents``: read the knowledge source into ``documents.jsonl``."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs

from ..errors import StageError
from ..records import Document
from .base import Stage


@attrs.frozen
class DocumentsOptions:
    #: keep at most this many documents (None: all the source yields)
    limit: int | None = None
    #: documents whose text has fewer words are skipped and counted
    min_words: int = 1


class DocumentsStage(Stage):
    name = "documents"
    slots = ("source",)
    options_class = DocumentsOptions

    def run(self) -> dict[str, Any]:
        source = self.run_ctx.component("source")
        opts: DocumentsOptions = self.options
        docs: list[Document] = []
        seen: set[str] = set()
        skipped_short = 0
        duplicates = 0
        for doc in self.run_ctx.progress(source.documents(), desc="documents", unit="doc"):
            if not isinstance(doc, Document):
                raise StageError(
                    f"the knowledge source yielded {type(doc).__name__}, expected "
                    "selflearn.Document(id, title, text, metadata)"
                )
            if len(doc.text.split()) < opts.min_words:
                skipped_short += 1
                continue
            if doc.id in seen:
                duplicates += 1
                continue
            seen.add(doc.id)
            docs.append(doc)
            if opts.limit is not None and len(docs) >= opts.limit:
                break
        if not docs:
            raise StageError(
                "the knowledge source gave no usable document "
                f"({skipped_short} skipped as shorter than documents.min_words={opts.min_words}, "
                f"{duplicates} duplicate ids). Check the source's options."
            )
        self.store.write_records("documents.jsonl", docs)
        splits = Counter(d.split for d in docs)
        categories = Counter(d.category or "(none)" for d in docs)
        summary = {
            "documents": len(docs),
            "by_split": dict(splits),
            "by_category": dict(categories),
            "skipped_short": skipped_short,
            "skipped_duplicate_id": duplicates,
        }
        # what the source itself skipped and why (bad files, missing titles, ...), if it says
        source_stats = getattr(source, "stats", None)
        if isinstance(source_stats, dict) and source_stats:
            summary["source"] = source_stats
        return summary
