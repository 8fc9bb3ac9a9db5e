"""Fixtures of the knowledge-source and chunker tests: small local copies of a Wikipedia dump."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

FILLER = (
    "The {t} is described here in plain words. It has a long history that many people have "
    "studied for years. Scholars disagree about some details of {t}, but the main facts are "
    "well known. "
)


def article(title: str, words: int, *, tail: str = "") -> str:
    """An article of about ``words`` words, with paragraphs, a heading and an optional tail."""
    body: list[str] = [f"{title} is the subject of this article."]
    n = len(body[0].split())
    para = 0
    while n < words:
        chunk = FILLER.format(t=title)
        body.append(chunk)
        n += len(chunk.split())
        para += 1
        if para % 3 == 0:
            body.append("\nHistory\n")
    return " ".join(body).replace(" \n", "\n").replace("\n ", "\n") + tail


def write_dump(root: Path, rows: list[dict[str, Any]], *, config: str = "20231101.en",
               shards: int = 2, row_group_size: int = 2) -> Path:
    """Parquet shards with small row groups, laid out like the hub dataset."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / config
    folder.mkdir(parents=True, exist_ok=True)
    per = (len(rows) + shards - 1) // shards
    for s in range(shards):
        part = rows[s * per : (s + 1) * per]
        table = pa.table({k: [r[k] for r in part] for k in ("id", "url", "title", "text")})
        pq.write_table(table, folder / f"train-{s:05d}-of-{shards:05d}.parquet",
                       row_group_size=row_group_size)
    return root


def write_jsonl_dump(root: Path, rows: list[dict[str, Any]], *, config: str = "20231101.en") -> Path:
    folder = root / config
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "train.jsonl", "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return root


@pytest.fixture()
def small_dump_rows() -> list[dict[str, Any]]:
    """Articles for two categories, filler pages, a short page, cut-off sections."""
    rows: list[dict[str, Any]] = []
    titles = [f"Alpha {i}" for i in range(6)] + [f"Beta {i}" for i in range(5)] + ["Short one"]
    titles += [f"Filler {i}" for i in range(9)]
    for i, t in enumerate(titles):
        words = 40 if t == "Short one" else 120 + 7 * i
        tail = "\nReferences\nSmith, J. (2001). A book.\nSee also\nOther page" if i % 2 == 0 else ""
        if i % 3 == 0:
            tail = "\n See Also \nAnother page\nExternal links\nhttp://example.org"
        rows.append({"id": str(1000 + i), "url": f"https://en.wikipedia.org/wiki/{t.replace(' ', '_')}",
                     "title": t, "text": article(t, words, tail=tail)})
    # interleave filler pages so that wanted titles sit in different row groups
    rows.sort(key=lambda r: (int(r["id"]) * 7) % 23)
    return rows


@pytest.fixture()
def small_titles(tmp_path: Path) -> str:
    path = tmp_path / "titles.json"
    path.write_text(json.dumps({
        "alpha": [f"Alpha {i}" for i in range(6)] + ["Missing page"],
        "beta": [f"Beta {i}" for i in range(5)] + ["Alpha 0", "Short one"],
    }))
    return str(path)
