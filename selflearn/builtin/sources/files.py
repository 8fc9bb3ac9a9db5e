"""``files``: documents from files at any fsspec URL (local folders, ``memory://``, s3, http).

Where users of their own corpora start. ``url`` is a file, a folder (searched recursively) or
a glob (``docs/**/*.md``, ``s3://bucket/corpus/*.jsonl``). By extension:

* ``.txt`` / ``.md``: one document per file. The title is the first Markdown heading
  (``# Title``; the heading line is removed from the text) or else the file name; a YAML
  front matter block (``---`` ... ``---``) is read into the metadata (its ``title`` wins).
* ``.jsonl``: one document per line; ``.json``: a list of objects, an object of objects
  (keys become default ids) or one object; ``.parquet``: one document per row. Field names
  are options (``id_field``, ``title_field``, ``text_field``, ``category_field``,
  ``split_field``, ``metadata_fields``).

Bad input never stops the run and is never silent: a file that is not valid UTF-8, a JSONL
line that does not parse, a row without text are logged (path and line) and counted in
``stats``, which the documents stage records in the manifest. Empty documents are counted too.

Documents without a split in their data are split per category like the other sources when
``test_per_category`` or ``train_per_category`` is set; otherwise they are all training
documents.
"""

from __future__ import annotations

import json
import logging
import posixpath
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any

import attrs

from ...core.errors import ConfigError, StageError
from ...core.hashing import content_hash
from ...core.options import bounded
from ...core.records import Document
from .common import file_digests, normalize_text, round_robin, seeded_order, take_split

log = logging.getLogger("selflearn.sources")

_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$")
_GLOB = re.compile(r"[*?\[]")


@attrs.frozen
class Options:
    #: a file, a folder (searched recursively) or a glob, as a path or fsspec URL
    url: str = "."
    #: extensions read when ``url`` is a folder or a glob
    extensions: list[str] = attrs.field(
        factory=lambda: [".txt", ".md", ".jsonl", ".json", ".parquet"]
    )
    #: record field of the document id (.jsonl / .json / .parquet); a missing id becomes
    #: "PATH:LINE" (or the key of a JSON object of objects)
    id_field: str = "id"
    #: record field of the title (missing: the id)
    title_field: str = "title"
    #: record field of the text (a record without it is reported and skipped)
    text_field: str = "text"
    #: field holding the category (for .txt/.md: see ``category_from_folder``)
    category_field: str | None = "category"
    #: field holding "train"/"test" (when absent, see ``test_per_category``)
    split_field: str | None = "split"
    #: other fields copied into the metadata; None: every other field
    metadata_fields: list[str] | None = None
    #: .txt/.md: the name of the folder holding a file is its category
    category_from_folder: bool = False
    #: category of documents that have none
    default_category: str | None = None
    #: seeded split of documents without a split field: per category, this many test docs
    test_per_category: int = bounded(0, ge=0)
    #: ... and this many training docs (None: all the rest)
    train_per_category: int | None = bounded(None, ge=0)
    #: seed of the split; None: the pipeline's seed
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: fsspec storage options (credentials stay in the environment where possible)
    storage_options: dict[str, Any] = attrs.field(factory=dict)


class FilesSource:
    """See the module docstring. ``stats`` is filled while :meth:`documents` runs."""

    #: makes no model call: the dry-run may run it (in memory) to count exactly what follows
    dry_run_safe = True

    def __init__(self, options: Options, seed: int, path: str = "source", cache: Any = None) -> None:
        self.options = options
        self.seed = options.seed if options.seed is not None else seed
        self.config_path = path
        self.cache = cache
        self.stats: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        return {"source": "files", **attrs.asdict(self.options), "seed": self.seed}

    def fingerprint(self) -> str:
        """The names, sizes and SHA-256 digests of the files read, so that an edited, added
        or removed file re-runs the documents stage. A digest is recomputed only for files
        whose size or modification time changed (the digests are kept in the run's cache)."""
        fs, base, files = self._list()
        infos = self._details(fs, base, files)
        rows = file_digests(fs, files, self.cache, infos=infos)
        for row in rows:
            row[0] = row[0][len(base) + 1 :] if base and row[0].startswith(base + "/") else posixpath.basename(row[0])
        return content_hash(rows)


    def size_hint(self) -> dict[str, int]:
        """Documents by split, for the dry-run's forecast: the documents themselves are
        read (the files are parsed, no model is called), without the documents stage's filters."""
        counts = {"train": 0, "test": 0}
        for doc in self.documents():
            counts["test" if doc.split == "test" else "train"] += 1
        return counts

    @staticmethod
    def _details(fs: Any, base: str, files: list[str]) -> dict[str, dict[str, Any]]:
        """The files' fsspec details from one recursive listing (an object store answers one
        request instead of one per file); empty where the listing fails."""
        if len(files) < 2:
            return {}
        try:
            found = fs.find(base, detail=True)
        except (OSError, ValueError):
            return {}
        return dict(found) if isinstance(found, dict) else {}

    # -- listing -------------------------------------------------------------------------
    def _list(self) -> tuple[Any, str, list[str]]:
        import fsspec

        o = self.options
        exts = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in o.extensions)
        try:
            fs, path = fsspec.core.url_to_fs(o.url, **o.storage_options)
            if _GLOB.search(path):
                base = _GLOB.split(path, 1)[0].rsplit("/", 1)[0]
                files = [f for f in fs.glob(path) if f.lower().endswith(exts) and fs.isfile(f)]
            elif fs.isdir(path):
                base = path
                files = [f for f in fs.find(path) if f.lower().endswith(exts)]
            elif fs.exists(path):
                base = posixpath.dirname(path)
                files = [path]
            else:
                raise ConfigError(f"{o.url!r} does not exist", f"{self.config_path}.options.url")
        except (ValueError, ImportError, OSError) as exc:
            raise ConfigError(
                f"cannot open {o.url!r}: {exc}. Give a local path or an fsspec URL whose "
                "filesystem package is installed (e.g. s3fs for s3://)",
                f"{self.config_path}.options.url",
            ) from exc
        if not files:
            raise ConfigError(
                f"no file with extension {', '.join(exts)} under {o.url!r}",
                f"{self.config_path}.options.url",
            )
        return fs, base.rstrip("/"), sorted(files)

    # -- reading -------------------------------------------------------------------------
    def documents(self) -> Iterator[Document]:
        fs, base, files = self._list()
        counts: Counter[str] = Counter()
        counts["files"] = len(files)
        docs: list[Document] = []
        for file in files:
            rel = file[len(base) + 1 :] if base and file.startswith(base + "/") else posixpath.basename(file)
            try:
                docs.extend(self._read(fs, file, rel, counts))
            except OSError as exc:
                log.warning("%s: cannot read (%s); skipped", file, exc)
                counts["unreadable_files"] += 1
        seen: set[str] = set()
        unique = []
        for doc in docs:
            if doc.id in seen:
                log.warning("%s: duplicate document id %r; skipped", doc.metadata.get("path"), doc.id)
                counts["duplicate_ids"] += 1
                continue
            seen.add(doc.id)
            unique.append(doc)
        out = self._split(unique)
        counts["documents"] = len(out)
        self.stats = dict(sorted(counts.items()))
        if not out:
            raise StageError(
                f"the files source found no usable document in {len(files)} file(s) under "
                f"{self.options.url!r} (stats: {self.stats}); check text_field and the files"
            )
        yield from out

    def _read(self, fs: Any, file: str, rel: str, counts: Counter[str]) -> list[Document]:
        lower = file.lower()
        if lower.endswith(".parquet"):
            return self._records(self._parquet_rows(fs, file), file, rel, counts)
        with fs.open(file, "rb") as f:
            raw: bytes = f.read()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            log.warning("%s:%d: not valid UTF-8 (%s); file skipped", file, line, exc.reason)
            counts["invalid_utf8_files"] += 1
            return []
        if lower.endswith(".jsonl"):
            return self._records(self._jsonl_rows(text, file, counts), file, rel, counts)
        if lower.endswith(".json"):
            try:
                data = json.loads(text)
            except json.JSONDecodeError as exc:
                log.warning("%s:%d: not valid JSON (%s); file skipped", file, exc.lineno, exc.msg)
                counts["invalid_json_files"] += 1
                return []
            return self._records(self._json_rows(data), file, rel, counts)
        doc = self._text_document(text, rel, lower.endswith(".md"))
        if doc is None:
            counts["empty_documents"] += 1
            return []
        return [doc]

    @staticmethod
    def _jsonl_rows(text: str, file: str, counts: Counter[str]) -> Iterator[tuple[int, Any, str | None]]:
        # "\n" only: splitlines() would also cut at U+2028 and friends inside JSON strings
        for lineno, line in enumerate(text.split("\n"), 1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line), None
            except json.JSONDecodeError as exc:
                log.warning("%s:%d: not valid JSON (%s); line skipped", file, lineno, exc.msg)
                counts["invalid_json_lines"] += 1

    @staticmethod
    def _json_rows(data: Any) -> Iterator[tuple[int, Any, str | None]]:
        if isinstance(data, list):
            for i, row in enumerate(data, 1):
                yield i, row, None
        elif isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
            for i, (key, row) in enumerate(data.items(), 1):
                yield i, row, str(key)
        else:
            yield 1, data, None

    @staticmethod
    def _parquet_rows(fs: Any, file: str) -> Iterator[tuple[int, Any, str | None]]:
        import pyarrow.parquet as pq

        with fs.open(file, "rb") as f:
            table = pq.read_table(f)
        for i, row in enumerate(table.to_pylist(), 1):
            yield i, row, None

    def _records(
        self,
        rows: Iterator[tuple[int, Any, str | None]],
        file: str,
        rel: str,
        counts: Counter[str],
    ) -> list[Document]:
        o = self.options
        special = {o.id_field, o.title_field, o.text_field, o.category_field, o.split_field}
        out = []
        for line, row, key in rows:
            if not isinstance(row, dict):
                log.warning("%s:%d: expected a JSON object, got %s; skipped", file, line, type(row).__name__)
                counts["invalid_records"] += 1
                continue
            text = row.get(o.text_field)
            if text is None:
                log.warning("%s:%d: no %r field; skipped", file, line, o.text_field)
                counts["records_without_text"] += 1
                continue
            text = normalize_text(str(text))
            if not text:
                counts["empty_documents"] += 1
                continue
            doc_id = row.get(o.id_field)
            doc_id = str(doc_id) if doc_id not in (None, "") else (key or f"{rel}:{line}")
            title = str(row.get(o.title_field) or key or doc_id)
            if o.metadata_fields is None:
                meta = {k: v for k, v in row.items() if k not in special}
            else:
                meta = {k: row[k] for k in o.metadata_fields if k in row}
            category = row.get(o.category_field) if o.category_field else None
            category = category if category not in (None, "") else o.default_category
            if category is not None:
                meta["category"] = str(category)
            split = row.get(o.split_field) if o.split_field else None
            if split not in (None, ""):
                meta["split"] = str(split)
            meta.update(path=rel, line=line)
            out.append(Document(id=doc_id, title=title, text=text, metadata=meta))
        return out

    def _text_document(self, text: str, rel: str, markdown: bool) -> Document | None:
        meta: dict[str, Any] = {}
        title = None
        if text.startswith("---\n") and "\n---" in text[4:]:
            import yaml

            head, _, body = text[4:].partition("\n---")
            try:
                front = yaml.safe_load(head)
            except yaml.YAMLError:
                front = None
            if isinstance(front, dict):
                meta.update({str(k): v for k, v in front.items()})
                text = body.split("\n", 1)[1] if "\n" in body else ""
                title = str(front["title"]) if front.get("title") else None
        if markdown:
            lines = text.splitlines()
            first = next((i for i, x in enumerate(lines) if x.strip()), None)
            heading = _HEADING.match(lines[first]) if first is not None else None
            if first is not None and heading is not None and (title is None or heading.group(1).strip() == title):
                title = heading.group(1).strip()
                lines = lines[:first] + lines[first + 1 :]  # the title heading is not body text
            elif title is None:
                found = next((m for m in map(_HEADING.match, lines) if m), None)
                title = found.group(1).strip() if found else None
            # other headings stay as short lines of their own, without the # markers
            text = "\n".join(_HEADING.sub(r"\1", line) for line in lines)
        text = normalize_text(text)
        if not text:
            return None
        stem = posixpath.splitext(posixpath.basename(rel))[0]
        title = title or stem.replace("_", " ")
        if self.options.category_from_folder and "/" in rel:
            meta.setdefault("category", rel.rsplit("/", 2)[-2])
        elif self.options.default_category is not None:
            meta.setdefault("category", self.options.default_category)
        meta["path"] = rel
        return Document(id=rel, title=title, text=text, metadata=meta)

    # -- split ---------------------------------------------------------------------------
    def _split(self, docs: list[Document]) -> list[Document]:
        o = self.options
        if o.test_per_category == 0 and o.train_per_category is None:
            return docs
        fixed = [d for d in docs if "split" in d.metadata]
        free: dict[str, list[Document]] = {}
        for d in docs:
            if "split" not in d.metadata:
                free.setdefault(str(d.metadata.get("category", "")), []).append(d)
        groups = [fixed]
        for category, members in sorted(free.items()):
            by_id = {d.id: d for d in members}
            chosen = take_split(seeded_order(by_id, self.seed, category), o.train_per_category, o.test_per_category)
            groups.append(
                [attrs.evolve(by_id[i], metadata={**by_id[i].metadata, "split": s}) for i, s in chosen]
            )
        return list(round_robin(groups))


def create(options: Options, context: Any) -> FilesSource:
    cache = context.cache("sources") if hasattr(context, "cache") else None
    return FilesSource(options, context.seed, getattr(context, "path", "source"), cache)
