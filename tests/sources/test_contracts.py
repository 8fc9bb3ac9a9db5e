"""The ``wikipedia`` source passes ``selflearn.plugins.testing.check_knowledge_source`` on a
small local copy of the dump, built from configuration as a pipeline builds it (files and
wikipedia-offline: tests/core/test_contracts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from selflearn.plugins.testing import build_component, check_knowledge_source

from .conftest import write_dump


def test_wikipedia_source(tmp_path: Path, small_dump_rows: list[dict[str, Any]], small_titles: str) -> None:
    dump = write_dump(tmp_path / "dump", small_dump_rows)
    options = {"dataset": str(dump), "titles_file": small_titles, "min_words": 100,
               "train_per_category": 2, "test_per_category": 1}
    source = build_component("knowledge_source", {"use": "wikipedia", "options": options},
                             run_dir=tmp_path / "run")
    docs = check_knowledge_source(source)
    assert {d.metadata["split"] for d in docs} == {"train", "test"}
