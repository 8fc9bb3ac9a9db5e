"""Stage ``documents``: read the knowledge source into ``documents.jsonl``.

The stage's fingerprint holds the source's content fingerprint (``fingerprint()``, see
:class:`selflearn.plugins.FingerprintedSource`) besides its options, so an edited, added or
removed file re-runs this stage and, through the changed ``documents.jsonl``, every stage after
it; the per-call caches still answer every model call whose prompt did not change.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

import attrs

from ..errors import StageError
from ..options import bounded
from ..records import Document
from .base import Stage

log = logging.getLogger("selflearn")


_UNSET = object()


@attrs.frozen
class DocumentsOptions:
    #: keep at most this many documents (None: all the source yields)
    limit: int | None = bounded(None, ge=1)
    #: documents whose text has fewer words are skipped and counted
    min_words: int = bounded(1, ge=0)


class DocumentsStage(Stage):
    name = "documents"
    slots = ("source",)
    options_class = DocumentsOptions

    def fingerprint_config(self) -> dict[str, Any]:
        """The options and the source's configuration, plus its content fingerprint."""
        config = super().fingerprint_config()
        config["source_content"] = self.source_fingerprint()
        return config

    def source_fingerprint(self) -> Any:
        """The source's ``fingerprint()``, or None (with a warning naming the source, once
        per run) when it has none: then only ``--rerun documents`` notices a change."""
        cached = getattr(self, "_source_fp", _UNSET)
        if cached is not _UNSET:
            return cached
        source = self.run_ctx.component("source")
        method = getattr(source, "fingerprint", None)
        value = method() if callable(method) else None
        if not callable(method) and "source-fingerprint" not in self.run_ctx.warned:
            self.run_ctx.warned.add("source-fingerprint")
            log.warning(
                "the knowledge source %s has no fingerprint(), so changes to its documents "
                "cannot be detected and the documents stage will not re-run by itself; after "
                "changing its content run with --rerun documents (Pipeline.run(rerun='documents')), "
                "or give the source a fingerprint() method (see selflearn.plugins.FingerprintedSource)",
                self._source_name(source),
            )
        self._source_fp = value
        return value

    def _source_name(self, source: Any) -> str:
        spec = self.run_ctx.slots.get("source")
        if spec is not None and spec.name:
            return repr(spec.name)
        return f"{type(source).__module__}.{type(source).__qualname__}"

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
