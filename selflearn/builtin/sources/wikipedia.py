"""``wikipedia``: articles of the HF dataset ``wikimedia/wikipedia``, chosen by category.

The paper's knowledge source (method.md, section 2): about 110 articles in each of 10
categories, kept when long enough (``min_words``, default 512) and cut at their References /
See also section, split per category into training and held-out test documents.

The titles come from ``selflearn/builtin/data/wiki_titles.json`` (our own list of 1,100
titles, 110 per category, unique across categories; ``titles_file`` replaces it).

Finding 1,100 titles must not mean reading the 6.4 million articles of the dump:

* ``parquet`` loader (default when the data files are Parquet, as on the hub): read only the
  ``title`` column of each row group (a few percent of the bytes), locate the wanted titles,
  then read the text of the row groups that hold the articles actually needed. Articles are
  fetched in rounds in the seeded order of the split, so a small run (``train_per_category:
  5``) reads the text of a few dozen row groups, not of every listed title.
* ``datasets`` loader (JSONL copies, or ``loader: datasets``): stream the rows with
  ``datasets.load_dataset(..., streaming=True)`` and stop as soon as every wanted title is
  found.

Fetched (cut) articles are cached in the run's ``wikipedia`` cache, so a re-run with another
split reads nothing again.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from importlib import resources
from typing import Any, Literal

import attrs

from ...core.cache import JsonlCache
from ...core.errors import ConfigError, SelflearnError
from ...core.hashing import content_hash
from ...core.options import bounded
from ...core.records import Document
from .common import (
    dedupe_across,
    file_digests,
    normalize_text,
    resolve_categories,
    round_robin,
    seeded_order,
    take_split,
    word_count,
)

log = logging.getLogger("selflearn.sources")

COLUMNS = ("id", "url", "title", "text")
_TEXT_EXT = (".jsonl", ".json", ".jsonl.gz", ".json.gz")


@attrs.frozen
class Options:
    #: hub dataset id, or a local folder / file / fsspec URL with the same columns
    #: (id, url, title, text) in Parquet or JSONL files
    dataset: str = "wikimedia/wikipedia"
    #: dump and language (the hub folder / subfolder holding the files)
    config: str = "20231101.en"
    #: categories of the title list to use (None: all)
    categories: list[str] | None = None
    #: a JSON file {category: [titles]} replacing the shipped list
    titles_file: str | None = None
    #: training documents per category (None: all eligible titles not taken for test)
    train_per_category: int | None = bounded(100, ge=0)
    #: held-out test documents per category
    test_per_category: int = bounded(10, ge=0)
    #: articles with fewer words (after cutting) are skipped
    min_words: int = bounded(512, ge=0)
    #: cut an article at the first line equal to one of these (stripped, lower-cased)
    cut_at: list[str] = attrs.field(factory=lambda: ["references", "see also"])
    #: seed of the split; None: the pipeline's seed
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: how to read the dump: auto (parquet when the files are Parquet), parquet, datasets
    loader: Literal["auto", "parquet", "datasets"] = "auto"


def shipped_titles() -> dict[str, list[str]]:
    text = resources.files("selflearn.builtin").joinpath("data/wiki_titles.json").read_text("utf-8")
    data: dict[str, list[str]] = json.loads(text)
    return data


def cut_article(text: str, markers: Sequence[str]) -> str:
    """Drop everything from the first line equal (stripped, lower-cased) to a marker."""
    wanted = {m.strip().lower() for m in markers}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.strip().lower() in wanted:
            lines = lines[:i]
            break
    return "\n".join(lines).strip()


class _Locator:
    """Where the dump's files are, and how to read titles from them."""

    def __init__(self, dataset: str, config: str, loader: str, path: str) -> None:
        import fsspec

        self.dataset, self.config, self.path = dataset, config, path
        local = os.path.exists(os.path.expanduser(dataset))
        try:
            if local or "://" in dataset:
                self.fs, root = fsspec.core.url_to_fs(os.path.expanduser(dataset) if local else dataset)
                if self.fs.isfile(root):
                    files = [root]
                else:
                    base = f"{root.rstrip('/')}/{config}"
                    base = base if self.fs.isdir(base) else root
                    files = [f for f in self.fs.find(base) if f.endswith((".parquet", *_TEXT_EXT))]
            else:
                self.fs, root = fsspec.core.url_to_fs(f"hf://datasets/{dataset}")
                files = self.fs.glob(f"{root}/{config}/*.parquet")
        except Exception as exc:  # noqa: BLE001 - any fsspec/hub failure gets the same advice
            if loader == "datasets":
                files = []
                self.fs = None
            else:
                raise SelflearnError(
                    f"wikipedia source: cannot list the files of {dataset!r} (config "
                    f"{config!r}): {type(exc).__name__}: {exc}. Check the network / hub access, "
                    f"or point {path}.options.dataset at a local copy (Parquet or JSONL files "
                    "with columns id, url, title, text)"
                ) from exc
        self.files = sorted(files)
        parquet = bool(self.files) and all(f.endswith(".parquet") for f in self.files)
        self.mode = "parquet" if (loader == "parquet" or (loader == "auto" and parquet)) else "datasets"
        if self.mode == "parquet" and not parquet:
            raise ConfigError(
                f"loader 'parquet' needs Parquet files, found {len(self.files)} file(s) under "
                f"{dataset!r} that are not all .parquet",
                f"{path}.options.loader",
            )
        self._index: dict[str, tuple[int, int]] | None = None
        self.row_groups_total = 0
        self.row_groups_read = 0

    # -- parquet: title index, then only the needed row groups --------------------------
    def _open(self, i: int) -> Any:
        import pyarrow.parquet as pq

        return pq.ParquetFile(self.fs.open(self.files[i], "rb"))

    def _build_index(self, titles: set[str]) -> dict[str, tuple[int, int]]:
        index: dict[str, tuple[int, int]] = {}
        for fi in range(len(self.files)):
            pf = self._open(fi)
            self.row_groups_total += pf.num_row_groups
            for rg in range(pf.num_row_groups):
                column = pf.read_row_group(rg, columns=["title"]).column(0).to_pylist()
                for t in column:
                    if t in titles and t not in index:
                        index[t] = (fi, rg)
            if len(index) == len(titles):
                break
        return index

    def _read_parquet(self, titles: set[str], missing: set[str]) -> dict[str, dict[str, Any]]:
        if self._index is None:
            self._index = self._build_index(missing)
        groups = sorted({self._index[t] for t in titles if t in self._index})
        out: dict[str, dict[str, Any]] = {}
        for fi, rg in groups:
            table = self._open(fi).read_row_group(rg, columns=list(COLUMNS))
            self.row_groups_read += 1
            for row in table.to_pylist():  # keep every wanted article the row group holds
                if row["title"] in missing and row["title"] not in out:
                    out[row["title"]] = row
        return out

    # -- datasets streaming: one pass, stop when everything is found ----------------------
    def _stream(self, titles: set[str]) -> dict[str, dict[str, Any]]:
        import datasets

        if self.files:
            fmt = "parquet" if self.files[0].endswith(".parquet") else "json"
            protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
            urls = [f if protocol in ("file", "local") else f"{protocol}://{f}" for f in self.files]
            rows = datasets.load_dataset(fmt, data_files=urls, split="train", streaming=True)
        else:
            rows = datasets.load_dataset(self.dataset, self.config, split="train", streaming=True)
        out: dict[str, dict[str, Any]] = {}
        for row in rows:
            title = row.get("title")
            if title in titles and title not in out:
                out[title] = {k: row.get(k) for k in COLUMNS}
                if len(out) == len(titles):
                    break
        return out

    def fetch(self, request: set[str], missing: set[str]) -> tuple[dict[str, dict[str, Any]], set[str]]:
        """Rows of (at least) ``request``, and the titles now known to be absent from the dump.

        ``missing`` are all the titles not looked up yet: the streaming loader resolves all
        of them in its one pass; the Parquet loader's title index tells which are absent.
        """
        if self.mode == "parquet":
            rows = self._read_parquet(request, missing)
            assert self._index is not None
            return rows, {t for t in missing if t not in self._index}
        rows = self._stream(missing)
        return rows, missing - set(rows)


class WikipediaSource:
    """See the module docstring. ``stats`` is filled while :meth:`documents` runs."""

    def __init__(self, options: Options, seed: int, cache: Any, path: str = "source") -> None:
        for name in ("train_per_category", "test_per_category", "min_words"):
            value = getattr(options, name)
            if value is not None and value < 0:
                raise ConfigError(f"expected a number >= 0, got {value}", f"{path}.options.{name}")
        self.options = options
        self.seed = options.seed if options.seed is not None else seed
        self.cache = cache
        self.config_path = path
        self.stats: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        return {"source": "wikipedia", **attrs.asdict(self.options), "seed": self.seed}

    def fingerprint(self) -> dict[str, Any]:
        """The title list's content, and for a local or fsspec copy of the dump its files'
        names, sizes and modification stamps (dumps are gigabytes, replaced rather than
        edited, so their bytes are not hashed). A hub dump is named by its dated ``config``
        (``20231101.en``), a snapshot that does not change, so no network call is made."""
        o = self.options
        out: dict[str, Any] = {"titles": content_hash(self._titles())}
        local = os.path.exists(os.path.expanduser(o.dataset))
        if not (local or "://" in o.dataset):
            out["hub"] = {"dataset": o.dataset, "config": o.config}
            return out
        import fsspec

        try:
            fs, root = fsspec.core.url_to_fs(os.path.expanduser(o.dataset) if local else o.dataset)
            files = [root] if fs.isfile(root) else [
                f for f in fs.find(root) if f.endswith((".parquet", *_TEXT_EXT))
            ]
            out["files"] = file_digests(fs, files, content=False)
        except (OSError, ValueError, ImportError) as exc:
            raise ConfigError(
                f"cannot list the files of {o.dataset!r}: {exc}", f"{self.config_path}.options.dataset"
            ) from exc
        return out

    def size_hint(self) -> dict[str, int]:
        """At most this many documents by split, from the title list and the split options
        (titles missing from the dump or too short are only known once it is read)."""
        o = self.options
        groups, _ = dedupe_across(self._titles())
        cats = resolve_categories(o.categories, list(groups), f"{self.config_path}.options.categories")
        test = sum(min(len(groups[c]), o.test_per_category) for c in cats)
        train = sum(
            max(0, len(groups[c]) - o.test_per_category) if o.train_per_category is None
            else min(max(0, len(groups[c]) - o.test_per_category), o.train_per_category)
            for c in cats
        )
        return {"train": train, "test": test}

    def _titles(self) -> dict[str, list[str]]:
        o = self.options
        if o.titles_file:
            try:
                with open(os.path.expanduser(o.titles_file), encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as exc:
                raise ConfigError(
                    f"cannot read {o.titles_file!r}: {exc}", f"{self.config_path}.options.titles_file"
                ) from exc
            if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
                raise ConfigError(
                    "expected a JSON object {category: [titles]}",
                    f"{self.config_path}.options.titles_file",
                )
        else:
            data = shipped_titles()
        return {str(k): [str(t) for t in v] for k, v in data.items()}

    def _key(self, title: str) -> str:
        o = self.options
        return JsonlCache.key("wikipedia-article", o.dataset, o.config, o.cut_at, title)

    def documents(self) -> Iterator[Document]:
        o = self.options
        groups, repeats = dedupe_across(self._titles())
        cats = resolve_categories(o.categories, list(groups), f"{self.config_path}.options.categories")
        orders = {c: seeded_order(groups[c], self.seed, c) for c in cats}
        all_titles = {t for c in cats for t in orders[c]}
        articles: dict[str, dict[str, Any] | None] = {}  # title -> cut article, None: missing
        for t in all_titles:
            hit = self.cache.get(self._key(t)) if self.cache is not None else None
            if hit is not None:
                articles[t] = hit if hit.get("found") else None
        locator: _Locator | None = None
        pos = dict.fromkeys(cats, 0)
        while True:
            # Per category, consider as many more titles (in split order) as it still lacks
            # eligible articles; those not looked up yet are fetched in one round.
            request: set[str] = set()
            for c in cats:
                order = orders[c]
                target = o.test_per_category + (
                    o.train_per_category if o.train_per_category is not None else len(order)
                )
                need = target - sum(1 for t in order[: pos[c]] if self._eligible(articles.get(t)))
                while need > 0 and pos[c] < len(order):
                    t = order[pos[c]]
                    pos[c] += 1
                    if t not in articles:
                        request.add(t)
                        need -= 1
                    elif self._eligible(articles[t]):
                        need -= 1
            if not request:
                break
            if locator is None:
                locator = _Locator(o.dataset, o.config, o.loader, self.config_path)
            missing = all_titles - set(articles)
            rows, absent = locator.fetch(request, missing)
            writes: list[tuple[str, Any]] = []
            for t in sorted((set(rows) | absent | request) & missing):
                row = rows.get(t)
                value = self._article(row) if row is not None else {"found": False}
                articles[t] = value if value["found"] else None
                if self.cache is not None:
                    writes.append((self._key(t), value))
            if self.cache is not None:
                self.cache.put_many(writes)
        yield from self._emit(cats, orders, articles, repeats, locator)

    def _eligible(self, article: dict[str, Any] | None) -> bool:
        return article is not None and int(article.get("words", 0)) >= self.options.min_words

    def _article(self, row: dict[str, Any]) -> dict[str, Any]:
        text = normalize_text(cut_article(str(row.get("text") or ""), self.options.cut_at))
        return {
            "found": True,
            "id": str(row.get("id") or ""),
            "url": str(row.get("url") or ""),
            "text": text,
            "words": word_count(text),
        }

    def _emit(
        self,
        cats: list[str],
        orders: dict[str, list[str]],
        articles: dict[str, dict[str, Any] | None],
        repeats: int,
        locator: _Locator | None,
    ) -> Iterator[Document]:
        """The chosen documents of every category, interleaved (round robin) so a consumer that
        stops early still sees every category; ``stats`` is filled before the first one."""
        groups: list[list[Document]] = []
        by_cat: dict[str, dict[str, int]] = {}
        for c in cats:
            docs = self._category_documents(c, orders[c], articles)
            by_cat[c] = {s: sum(1 for d in docs if d.metadata["split"] == s) for s in ("train", "test")}
            groups.append(docs)
        self.stats = self._stats(cats, orders, articles, repeats, by_cat, locator)
        yield from round_robin(groups)

    def _category_documents(
        self, category: str, order: list[str], articles: dict[str, dict[str, Any] | None]
    ) -> list[Document]:
        """One category's documents: its eligible articles in the seeded ``order``, split into
        train and test; a category short of articles is warned about, not an error (the dump
        decides what exists)."""
        o = self.options
        eligible = [t for t in order if t in articles and self._eligible(articles[t])]
        chosen = take_split(eligible, o.train_per_category, o.test_per_category)
        wanted = o.test_per_category + (o.train_per_category or 0)
        if len(chosen) < wanted:
            log.warning(
                "wikipedia: category %r gave %d usable articles of the %d asked for "
                "(missing from the dump or under %d words)", category, len(chosen), wanted, o.min_words,
            )
        docs = []
        for title, split in chosen:
            art = articles[title]
            assert art is not None
            docs.append(
                Document(
                    id=f"wikipedia:{title}",
                    title=title,
                    text=art["text"],
                    metadata={
                        "category": category,
                        "split": split,
                        "url": art["url"],
                        "wiki_id": art["id"],
                        "words": art["words"],
                        "source": f"{o.dataset}/{o.config}",
                    },
                )
            )
        return docs

    def _stats(
        self,
        cats: list[str],
        orders: dict[str, list[str]],
        articles: dict[str, dict[str, Any] | None],
        repeats: int,
        by_cat: dict[str, dict[str, int]],
        locator: _Locator | None,
    ) -> dict[str, Any]:
        """What the source did, for the stage summary: titles looked up, not found (the first
        50 named, to fix a titles file), too short, per-category splits, and what the loader
        read (row groups show how little of the dump a run needed)."""
        looked = [[t for t in orders[c] if t in articles] for c in cats]
        not_found = [t for titles in looked for t in titles if articles[t] is None]
        stats: dict[str, Any] = {
            "titles": sum(len(orders[c]) for c in cats),
            "repeated_titles_dropped": repeats,
            "looked_up": sum(len(titles) for titles in looked),
            "not_found": len(not_found),
            "not_found_titles": sorted(not_found)[:50],
            "skipped_short": sum(
                1 for titles in looked for t in titles
                if articles[t] is not None and not self._eligible(articles[t])
            ),
            "by_category": by_cat,
        }
        if locator is not None:
            stats["loader"] = locator.mode
            if locator.mode == "parquet":
                stats["row_groups_read"] = locator.row_groups_read
                stats["row_groups_total"] = locator.row_groups_total
        return stats


def create(options: Options, context: Any) -> WikipediaSource:
    return WikipediaSource(
        options, context.seed, context.cache("wikipedia"), getattr(context, "path", "source")
    )
