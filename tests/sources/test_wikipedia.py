"""The ``wikipedia`` source against small local copies of the dump (Parquet and JSONL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from selflearn.builtin.sources import wikipedia as wk
from selflearn.builtin.sources.wikipedia import Options, WikipediaSource, cut_article
from selflearn.builtin.sources.wikipedia_offline import package_path
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import ConfigError

from .conftest import write_dump, write_jsonl_dump


def _source(tmp_path: Path, dataset: Path, titles: str, cache: JsonlCache | None = None, **kw):
    opts = Options(dataset=str(dataset), titles_file=titles, min_words=100, seed=3, **kw)
    return WikipediaSource(opts, 42, cache if cache is not None else JsonlCache(str(tmp_path / "c.jsonl")))


def test_cut_article_at_references_or_see_also():
    text = "Intro line.\nBody.\n  See Also  \nX\nReferences\nY"
    assert cut_article(text, ["references", "see also"]) == "Intro line.\nBody."
    assert cut_article("A\nreferences and more\nB", ["references"]) == "A\nreferences and more\nB"


def test_parquet_split_cut_and_stats(tmp_path, small_dump_rows, small_titles):
    dump = write_dump(tmp_path / "dump", small_dump_rows)
    src = _source(tmp_path, dump, small_titles, train_per_category=2, test_per_category=1)
    docs = list(src.documents())
    by_cat: dict[str, dict[str, list[str]]] = {}
    for d in docs:
        by_cat.setdefault(d.category, {}).setdefault(d.split, []).append(d.title)
        assert d.id == f"wikipedia:{d.title}"
        assert "References" not in d.text and "See Also" not in d.text and "example.org" not in d.text
        assert len(d.text.split()) >= 100
        assert d.metadata["url"].endswith(d.title.replace(" ", "_"))
        assert d.metadata["source"] == f"{dump}/20231101.en"
    assert {c: {s: len(v) for s, v in x.items()} for c, x in by_cat.items()} == {
        "alpha": {"train": 2, "test": 1}, "beta": {"train": 2, "test": 1}}
    train = {d.title for d in docs if d.split == "train"}
    test = {d.title for d in docs if d.split == "test"}
    assert not train & test
    # "Alpha 0" is listed in both categories: it can only ever be an alpha document
    assert all(not (d.title == "Alpha 0" and d.category == "beta") for d in docs)
    assert src.stats["repeated_titles_dropped"] == 1
    assert src.stats["loader"] == "parquet"
    # a small split reads the text of a few row groups, not of the whole dump
    assert 0 < src.stats["row_groups_read"] < src.stats["row_groups_total"]


def test_all_titles_short_and_missing_ones_are_reported(tmp_path, small_dump_rows, small_titles):
    dump = write_dump(tmp_path / "dump", small_dump_rows)
    src = _source(tmp_path, dump, small_titles, train_per_category=None, test_per_category=2)
    docs = list(src.documents())
    assert src.stats["not_found_titles"] == ["Missing page"]
    assert src.stats["skipped_short"] == 1  # "Short one"
    assert {d.title for d in docs} == {f"Alpha {i}" for i in range(6)} | {f"Beta {i}" for i in range(5)}
    assert sum(d.split == "test" for d in docs) == 4


def test_datasets_streaming_loader_gives_the_same_documents(tmp_path, small_dump_rows, small_titles):
    parquet = write_dump(tmp_path / "pq", small_dump_rows)
    jsonl = write_jsonl_dump(tmp_path / "js", small_dump_rows)
    a = list(_source(tmp_path / "a", parquet, small_titles, train_per_category=3).documents())
    src = _source(tmp_path / "b", jsonl, small_titles, train_per_category=3)
    b = list(src.documents())
    assert src.stats["loader"] == "datasets"
    key = lambda d: (d.id, d.text, d.metadata["split"], d.metadata["category"])  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))
    assert [d.id for d in a] == [d.id for d in b]  # same order too


def test_second_run_reads_the_cache_not_the_dump(tmp_path, small_dump_rows, small_titles, monkeypatch):
    dump = write_dump(tmp_path / "dump", small_dump_rows)
    cache_path = str(tmp_path / "cache.jsonl")
    cache = JsonlCache(cache_path)
    first = list(_source(tmp_path, dump, small_titles, cache, train_per_category=2).documents())
    cache.close()

    def fail(*a, **k):
        raise AssertionError("the dump was read again")

    monkeypatch.setattr(wk._Locator, "__init__", fail)
    again = list(_source(tmp_path, dump, small_titles, JsonlCache(cache_path), train_per_category=2).documents())
    assert [(d.id, d.text, d.split) for d in again] == [(d.id, d.text, d.split) for d in first]


def test_seed_changes_the_split(tmp_path, small_dump_rows, small_titles):
    dump = write_dump(tmp_path / "dump", small_dump_rows)
    runs = []
    for seed in (1, 2, 3, 4):
        opts = Options(dataset=str(dump), titles_file=small_titles, min_words=100, seed=seed,
                       train_per_category=1, test_per_category=1)
        docs = list(WikipediaSource(opts, 0, None).documents())
        runs.append(tuple(sorted((d.title, d.split) for d in docs)))
    assert len(set(runs)) > 1


def test_unknown_category_and_bad_dataset(tmp_path, small_titles):
    src = WikipediaSource(Options(dataset=str(tmp_path), titles_file=small_titles, categories=["gamma"]), 1, None)
    with pytest.raises(ConfigError, match="gamma.*alpha, beta"):
        list(src.documents())
    with pytest.raises(ConfigError, match="train_per_category"):
        WikipediaSource(Options(train_per_category=-1), 1, None)


def test_shipped_title_list():
    titles = wk.shipped_titles()
    assert sorted(titles) == sorted(["geography", "art", "medical", "history", "biology", "science",
                                     "musician", "actor", "economics", "astronomy"])
    flat = [t for ts in titles.values() for t in ts]
    assert 1050 <= len(flat) <= 1150
    assert len(flat) == len(set(flat)), "titles must be unique across categories"
    assert all(100 <= len(ts) <= 120 for ts in titles.values())
    vital = json.loads(Path(package_path()).read_text("utf-8"))
    outside = [t for t in flat if t not in vital]
    assert len(outside) < 60  # all but some well-known actors are vital articles


def test_shipped_titles_against_the_offline_leads(tmp_path):
    """The real title list, looked up in a dump built from the real vital-article leads."""
    vital = json.loads(Path(package_path()).read_text("utf-8"))
    rows = [{"id": str(i), "url": "u", "title": t, "text": v["extract"]} for i, (t, v) in enumerate(vital.items())]
    dump = write_dump(tmp_path / "dump", rows, shards=3, row_group_size=500)
    opts = Options(dataset=str(dump), min_words=20, train_per_category=5, test_per_category=2, seed=7)
    src = WikipediaSource(opts, 0, None)
    docs = list(src.documents())
    assert len(docs) == 70
    assert {d.category for d in docs} == set(wk.shipped_titles())
    assert src.stats["row_groups_read"] < src.stats["row_groups_total"]


def test_unreachable_hub_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = WikipediaSource(Options(train_per_category=1), 1, None)
    with pytest.raises(Exception, match="cannot list the files of 'wikimedia/wikipedia'.*local copy"):
        list(src.documents())


def test_fingerprint_follows_the_dump_files_and_the_titles(tmp_path, small_dump_rows, small_titles):
    dump = write_dump(tmp_path / "dump", small_dump_rows)
    first = _source(tmp_path, dump, small_titles).fingerprint()
    assert _source(tmp_path, dump, small_titles).fingerprint() == first
    write_dump(tmp_path / "dump", small_dump_rows[:-3])  # the dump's files replaced
    replaced = _source(tmp_path, dump, small_titles).fingerprint()
    assert replaced["files"] != first["files"] and replaced["titles"] == first["titles"]
    Path(small_titles).write_text(json.dumps({"alpha": ["Alpha 1"]}))
    assert _source(tmp_path, dump, small_titles).fingerprint()["titles"] != first["titles"]
    hub = WikipediaSource(Options(dataset="wikimedia/wikipedia"), 42, None).fingerprint()
    assert hub["hub"] == {"dataset": "wikimedia/wikipedia", "config": "20231101.en"}  # no network call
