"""Content-keyed caches of expensive calls (generations, NLI pairs, judge verdicts).

A cache is an append-only JSONL file: each finished call is one line, flushed at once, so a
run killed at any moment loses at most the calls in flight. Opening a cache reads the file
back and ignores a torn last line.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterable
from typing import Any

from .hashing import content_hash


class JsonlCache:
    """A persistent key -> JSON value map."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._data: dict[str, Any] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            _truncate_torn_tail(path)
            self._data = read_entries(path)
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for appends

    @staticmethod
    def key(*parts: Any) -> str:
        return content_hash(list(parts), 40)

    def __contains__(self, key: str) -> bool:
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def peek(self, key: str) -> Any:
        """The value under ``key`` (None if absent) without counting a hit or a miss."""
        with self._lock:
            return self._data.get(key)

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            if key in self._data:
                self.hits += 1
                return self._data[key]
            self.misses += 1
            return default

    def put(self, key: str, value: Any) -> None:
        self.put_many([(key, value)])

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        with self._lock:
            lines = []
            for key, value in items:
                self._data[key] = value
                lines.append(json.dumps({"k": key, "v": value}, ensure_ascii=False) + "\n")
            if lines:
                self._file.write("".join(lines))
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()


def read_entries(path: str) -> dict[str, Any]:
    """The key -> value map a cache file holds (a torn line from a killed run is skipped)."""
    data: dict[str, Any] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(row, dict) and "k" in row:
                data[row["k"]] = row.get("v")
    return data


def _truncate_torn_tail(path: str) -> None:
    """Cut a last line that a killed writer left without its newline, so appends stay valid."""
    with open(path, "rb+") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        if size == 0:
            return
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return
        block = 1 << 16
        pos = size
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            idx = chunk.rfind(b"\n")
            if idx >= 0:
                f.truncate(start + idx + 1)
                return
            pos = start
        f.truncate(0)
