"""Records round-trip through JSON; the store writes atomically; caches survive a torn line."""

from __future__ import annotations

import json

import pytest

from selflearn.core.cache import JsonlCache
from selflearn.core.records import (
    Completion,
    Document,
    Generations,
    PreferencePair,
    Scores,
    Verdict,
)
from selflearn.core.store import ArtifactStore


def test_round_trip_nested_records():
    g = Generations(
        question_id="q1",
        reference=Completion("ref", "stop", 3, 1, [-0.1], ["ref"]),
        with_passage=[Completion("a"), Completion("b", "length")],
        without_passage=[Completion("c")],
        provenance={"backend": {"name": "echo"}},
    )
    back = Generations.from_dict(json.loads(json.dumps(g.to_dict())))
    assert back == g and isinstance(back.with_passage[1], Completion)
    s = Scores("q1", 0.2, None, [0.1, None], [0.9], {"scorer": "x"})
    assert Scores.from_dict(s.to_dict()) == s
    d = Document("id", "T", "text", {"split": "test", "category": "art"})
    assert (d.split, d.category) == ("test", "art")
    with pytest.raises(ValueError, match="unknown field"):
        PreferencePair.from_dict({"id": "x", "bogus": 1})


def test_verdict_combine():
    assert Verdict.combine("candidate", "candidate") == "win"
    assert Verdict.combine("baseline", "baseline") == "lose"
    assert Verdict.combine("candidate", "baseline") == "tie"
    assert Verdict.combine(None, "baseline") == "unjudged"


@pytest.mark.parametrize("url_kind", ["local", "memory"])
def test_store_atomic_write_and_read(tmp_path, url_kind):
    url = str(tmp_path / "r") if url_kind == "local" else "memory://selflearn-test/run"
    store = ArtifactStore(url)
    store.ensure_writable()
    docs = [Document(f"d{i}", "T", "x") for i in range(3)]
    assert store.write_records("documents.jsonl", docs) == 3
    assert store.read_records("documents.jsonl", Document) == docs
    listing = store.fs.ls(store.root, detail=False)
    assert not [p for p in listing if ".tmp-" in p]
    h = store.hash("documents.jsonl")
    store.write_records("documents.jsonl", docs[:1])
    assert store.hash("documents.jsonl") != h


def test_store_reports_bad_jsonl_line(tmp_path):
    store = ArtifactStore(str(tmp_path))
    store.write_text("x.jsonl", '{"a": 1}\n{broken\n')
    with pytest.raises(Exception, match=r"x.jsonl:2: not valid JSON"):
        list(store.iter_jsonl("x.jsonl"))


def test_store_jsonl_keeps_unicode_line_separators(tmp_path):
    # str.splitlines() breaks at these; json.dumps(ensure_ascii=False) leaves them raw
    texts = ["a\u2028b", "c\u2029d", "e\x85f", "g\x1ch\x1di\x1ej", "k\x0bl\x0cm", "crlf\r\nline"]
    store = ArtifactStore(str(tmp_path))
    assert store.write_jsonl("u.jsonl", [{"t": t} for t in texts]) == len(texts)
    assert [r["t"] for r in store.iter_jsonl("u.jsonl")] == texts
    store.write_text("w.jsonl", '{"t": 1}\r\n{"t": 2}\r\n')  # Windows line ends still read
    assert [r["t"] for r in store.iter_jsonl("w.jsonl")] == [1, 2]


def test_cache_survives_torn_line(tmp_path):
    path = str(tmp_path / "c.jsonl")
    cache = JsonlCache(path)
    cache.put("a", {"v": 1})
    cache.put_many([("b", 2), ("c", [3])])
    cache.close()
    with open(path, "a") as f:
        f.write('{"k": "d", "v": ')  # a write cut short by SIGKILL
    again = JsonlCache(path)
    assert again.get("a") == {"v": 1} and again.get("c") == [3] and "d" not in again
    again.put("d", 4)
    again.close()
    assert JsonlCache(path).get("d") == 4
