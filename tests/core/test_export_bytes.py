"""The exported ``datasets/`` folders are the same bytes when the same records are exported
again (a resumed or repeated run): datasets draws a random fingerprint into ``state.json``
unless it is given one."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from selflearn.core.stages._export import save_dataset
from selflearn.core.store import ArtifactStore


def _export(root: Path, rows: list[dict[str, object]]) -> dict[str, bytes]:
    store = ArtifactStore(str(root))
    names = save_dataset(store, "datasets/dpo", pa.Table.from_pylist(rows))
    return {name: (root / name).read_bytes() for name in names}


def test_same_records_same_bytes_other_records_other_fingerprint(tmp_path: Path) -> None:
    rows = [{"prompt": "q1", "chosen": "a", "rejected": "b"}, {"prompt": "q2", "chosen": "c", "rejected": "d"}]
    first, again = _export(tmp_path / "a", rows), _export(tmp_path / "b", rows)
    assert "datasets/dpo/state.json" in first and first == again
    other = _export(tmp_path / "c", rows[:1])
    fingerprint = json.loads(first["datasets/dpo/state.json"])["_fingerprint"]
    assert fingerprint != json.loads(other["datasets/dpo/state.json"])["_fingerprint"]
    import datasets

    assert datasets.load_from_disk(str(tmp_path / "a" / "datasets" / "dpo"))["prompt"] == ["q1", "q2"]
