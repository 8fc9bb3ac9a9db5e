"""The ``files`` source over local folders, globs and memory://."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import fsspec
import pytest

from selflearn import Pipeline
from selflearn.builtin.sources.files import FilesSource, Options
from selflearn.core.errors import ConfigError


def _corpus(root: Path) -> Path:
    (root / "notes").mkdir(parents=True)
    (root / "alpha.md").write_text("# The Alpha Story\n\nAlpha was founded in 1901.\n\nIt grew   fast.\n")
    (root / "notes" / "beta_notes.txt").write_text("Beta is a plain text note.\nSecond line.")
    (root / "front.md").write_text("---\ntitle: Front Title\ncategory: history\n---\n## Sub\nBody text here.\n")
    (root / "empty.md").write_text("# Only a heading\n\n")
    (root / "bad.txt").write_bytes(b"valid start\n\xff\xfe broken bytes")
    rows = [
        {"id": "r1", "title": "Row one", "text": "First row text.", "category": "science", "year": 1990},
        {"id": "r2", "title": "Row two", "text": "Second row text.", "split": "test"},
        {"title": "No id", "text": "Third row text."},
        {"id": "r4", "title": "No text"},
        {"id": "r5", "title": "Empty", "text": "   "},
    ]
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"id": "broken", "text": ')  # line 3 does not parse
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    (root / "list.json").write_text(json.dumps([{"id": "j1", "text": "From a JSON list."}]))
    (root / "notes" / "ignored.csv").write_text("a,b\n1,2\n")
    return root


def test_folder_of_md_txt_jsonl_json(tmp_path, caplog):
    root = _corpus(tmp_path / "corpus")
    src = FilesSource(Options(url=str(root)), 1)
    with caplog.at_level(logging.WARNING, logger="selflearn.sources"):
        docs = {d.id: d for d in src.documents()}
    assert set(docs) == {"alpha.md", "notes/beta_notes.txt", "front.md", "r1", "r2",
                         "data.jsonl:4", "j1"}
    alpha = docs["alpha.md"]
    assert alpha.title == "The Alpha Story"
    assert alpha.text == "Alpha was founded in 1901.\nIt grew fast."  # heading removed, spaces normalised
    assert docs["notes/beta_notes.txt"].title == "beta notes"
    assert docs["notes/beta_notes.txt"].text == "Beta is a plain text note.\nSecond line."
    front = docs["front.md"]
    assert front.title == "Front Title" and front.category == "history"
    assert front.text == "Sub\nBody text here."
    r1 = docs["r1"]
    assert (r1.title, r1.text, r1.category) == ("Row one", "First row text.", "science")
    assert r1.metadata["year"] == 1990 and r1.metadata["path"] == "data.jsonl"
    assert r1.split == "train" and docs["r2"].split == "test"
    assert docs["data.jsonl:4"].title == "No id" and docs["data.jsonl:4"].metadata["line"] == 4
    assert src.stats["invalid_utf8_files"] == 1
    assert src.stats["invalid_json_lines"] == 1
    assert src.stats["records_without_text"] == 1
    assert src.stats["empty_documents"] == 2  # empty.md and the blank JSONL text
    assert src.stats["documents"] == 7
    text = caplog.text
    assert "bad.txt:2: not valid UTF-8" in text
    assert "data.jsonl:3: not valid JSON" in text
    assert "data.jsonl:5: no 'text' field" in text


def test_field_names_and_metadata_fields(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps({"key": "k1", "name": "N", "body": "Hello there.",
                                                  "topic": "t", "x": 1, "y": 2}) + "\n")
    opts = Options(url=str(tmp_path / "a.jsonl"), id_field="key", title_field="name",
                   text_field="body", category_field="topic", metadata_fields=["x"])
    (doc,) = FilesSource(opts, 1).documents()
    assert (doc.id, doc.title, doc.text, doc.category) == ("k1", "N", "Hello there.", "t")
    assert doc.metadata == {"category": "t", "x": 1, "path": "a.jsonl", "line": 1}


def test_jsonl_text_with_unicode_line_separators(tmp_path):
    body = "First line\u2028second line\x85third."
    (tmp_path / "u.jsonl").write_text(json.dumps({"id": "u1", "text": body}, ensure_ascii=False) + "\n",
                                      encoding="utf-8")
    (doc,) = FilesSource(Options(url=str(tmp_path / "u.jsonl")), 1).documents()
    assert doc.id == "u1" and "second line" in doc.text and "third." in doc.text


def test_glob_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = _corpus(tmp_path / "c")
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": ["Row A.", "Row B."], "category": ["x", "y"]}),
                   root / "t.parquet")
    md = [d.id for d in FilesSource(Options(url=f"{root}/*.md"), 1).documents()]
    assert md == ["alpha.md", "front.md"]
    pqdocs = list(FilesSource(Options(url=f"{root}/*.parquet"), 1).documents())
    assert [(d.id, d.text, d.category) for d in pqdocs] == [("p1", "Row A.", "x"), ("p2", "Row B.", "y")]


def test_memory_filesystem():
    fs = fsspec.filesystem("memory")
    fs.pipe("/sl-corpus/a.md", b"# Mem A\n\nIn memory.\n")
    fs.pipe("/sl-corpus/sub/b.txt", b"Second file.")
    fs.pipe("/sl-corpus/c.jsonl", b'{"id": "m1", "text": "Row."}\n')
    try:
        docs = list(FilesSource(Options(url="memory://sl-corpus", category_from_folder=True), 1).documents())
        assert [(d.id, d.title) for d in docs] == [("a.md", "Mem A"), ("m1", "m1"), ("sub/b.txt", "b")]
        assert docs[2].category == "sub"
    finally:
        fs.rm("/sl-corpus", recursive=True)


def test_seeded_split_for_documents_without_one(tmp_path):
    for cat in ("a", "b"):
        (tmp_path / cat).mkdir()
        for i in range(5):
            (tmp_path / cat / f"{i}.txt").write_text(f"Document {cat}{i} has some text.")
    opts = Options(url=str(tmp_path), category_from_folder=True, test_per_category=2, train_per_category=2)
    docs = list(FilesSource(opts, 3).documents())
    assert len(docs) == 8
    for cat in ("a", "b"):
        assert sorted(d.split for d in docs if d.category == cat) == ["test", "test", "train", "train"]


def test_missing_url_and_no_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        list(FilesSource(Options(url=str(tmp_path / "nope")), 1).documents())
    (tmp_path / "x.csv").write_text("a")
    with pytest.raises(ConfigError, match="no file with extension"):
        list(FilesSource(Options(url=str(tmp_path)), 1).documents())


def test_documents_stage_records_skips(tmp_path, run_dir):
    root = _corpus(tmp_path / "corpus")
    pipe = Pipeline(run_dir=run_dir, source={"use": "files", "options": {"url": str(root)}})
    (outcome,) = pipe.run(until="documents")
    assert outcome.summary["documents"] == 7
    assert outcome.summary["source"]["invalid_utf8_files"] == 1
    assert outcome.summary["source"]["invalid_json_lines"] == 1
    manifest = json.loads(Path(run_dir, "manifest.json").read_text())
    assert manifest["stages"]["documents"]["summary"]["source"]["empty_documents"] == 2


def test_fingerprint_follows_names_sizes_and_content(tmp_path):
    from selflearn.core.cache import JsonlCache

    fs = fsspec.filesystem("memory")
    fs.pipe("/fp-corpus/a.md", b"# A\n\nAlpha text.")
    fs.pipe("/fp-corpus/sub/b.txt", b"Beta text.")
    cache = JsonlCache(str(tmp_path / "sources.jsonl"))
    src = FilesSource(Options(url="memory://fp-corpus"), seed=1, cache=cache)
    first = src.fingerprint()
    assert src.fingerprint() == first
    assert len(cache) == 2  # one digest per file, kept under (path, size, stamp)

    fs.pipe("/fp-corpus/a.md", b"# A\n\nAlpha text!")  # same size, other bytes
    edited = src.fingerprint()
    assert edited != first
    fs.pipe("/fp-corpus/c.md", b"Gamma.")
    added = src.fingerprint()
    assert added not in (first, edited)
    fs.rm("/fp-corpus/c.md")
    assert src.fingerprint() == edited
    fs.rm("/fp-corpus", recursive=True)


def test_fingerprint_does_not_reread_unchanged_files(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileSystem

    from selflearn.core.cache import JsonlCache

    corpus = tmp_path / "c"
    corpus.mkdir()
    for i in range(3):
        (corpus / f"f{i}.md").write_text(f"Text number {i}.")
    cache = JsonlCache(str(tmp_path / "sources.jsonl"))
    src = FilesSource(Options(url=str(corpus)), seed=1, cache=cache)
    first = src.fingerprint()
    reads: list[str] = []
    real = LocalFileSystem._open

    def counting_open(self, path, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads.append(path)
        return real(self, path, *args, **kwargs)

    monkeypatch.setattr(LocalFileSystem, "_open", counting_open)
    assert src.fingerprint() == first and reads == []
    stat = (corpus / "f1.md").stat()
    os.utime(corpus / "f1.md", (stat.st_atime, stat.st_mtime + 5))  # touched: hashed again, same digest
    assert src.fingerprint() == first and len(reads) == 1


def test_a_store_checksum_is_the_digest_and_no_byte_is_read():
    from selflearn.builtin.sources.common import file_digests

    class ObjectStore:  # what s3fs / gcsfs report: an ETag per object
        protocol = "s3"

        def info(self, path):  # type: ignore[no-untyped-def]
            return {"name": path, "size": 10, "ETag": '"9b2cf535f27731c974343645a3985328"'}

        def open(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            raise AssertionError("a file with a store checksum must not be read")

    assert file_digests(ObjectStore(), ["bucket/b.md", "bucket/a.md"]) == [
        ["bucket/a.md", 10, "ETag:9b2cf535f27731c974343645a3985328"],
        ["bucket/b.md", 10, "ETag:9b2cf535f27731c974343645a3985328"],
    ]
