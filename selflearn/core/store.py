"""The artifact store: a run directory on any fsspec filesystem.

Every file is written atomically (to a temporary name, then renamed), so a killed run never
leaves a half-written stage output that a resumed run would trust.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import fsspec

from .errors import ArtifactError
from .hashing import bytes_hash
from .records import Record

R = TypeVar("R", bound=Record)


class ArtifactStore:
    """Files of one run, addressed by names relative to the run directory."""

    def __init__(self, url: str) -> None:
        self.url = str(url)
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ValueError, ImportError) as exc:
            raise ArtifactError(
                f"run_dir {self.url!r}: cannot open this location ({exc}). Use a local path or an "
                "fsspec URL whose filesystem package is installed (e.g. s3fs for s3://)."
            ) from exc
        self.root = self.root.rstrip("/") or "/"

    @property
    def is_local(self) -> bool:
        protocol = self.fs.protocol
        protocols = (protocol,) if isinstance(protocol, str) else tuple(protocol)
        return "file" in protocols or "local" in protocols

    def path(self, name: str) -> str:
        return f"{self.root}/{name}" if name else self.root

    def local_path(self, name: str = "") -> str:
        """A local filesystem path (only for local run directories)."""
        if not self.is_local:
            raise ArtifactError(f"run_dir {self.url!r} is not on the local filesystem")
        return self.path(name)

    def ensure_writable(self) -> None:
        """Fail early, with a clear message, when the run directory cannot be written."""
        probe = f".write-probe-{uuid.uuid4().hex}"
        try:
            self.fs.makedirs(self.root, exist_ok=True)
            with self.fs.open(self.path(probe), "wb") as f:
                f.write(b"ok")
            self.fs.rm(self.path(probe))
        except (OSError, PermissionError, NotImplementedError) as exc:
            raise ArtifactError(
                f"run_dir {self.url!r} is not writable ({type(exc).__name__}: {exc}). Choose "
                "another directory with --run-dir or run_dir in the config, or fix its permissions."
            ) from exc

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(self.path(name)))

    def write_bytes(self, name: str, data: bytes) -> None:
        target = self.path(name)
        parent = target.rsplit("/", 1)[0]
        tmp = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            self.fs.makedirs(parent, exist_ok=True)
            with self.fs.open(tmp, "wb") as f:
                f.write(data)
                if self.is_local:
                    f.flush()
                    os.fsync(f.fileno())
            self.fs.mv(tmp, target)
        except OSError as exc:
            raise ArtifactError(f"cannot write {target!r}: {exc}") from exc

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def read_bytes(self, name: str) -> bytes:
        try:
            with self.fs.open(self.path(name), "rb") as f:
                data: bytes = f.read()
                return data
        except FileNotFoundError as exc:
            raise ArtifactError(f"{self.path(name)!r} does not exist") from exc

    def read_text(self, name: str) -> str:
        return self.read_bytes(name).decode("utf-8")

    def write_json(self, name: str, obj: Any) -> None:
        self.write_text(name, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")

    def read_json(self, name: str) -> Any:
        return json.loads(self.read_text(name))

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> int:
        lines = [json.dumps(r, ensure_ascii=False, default=str) for r in rows]
        self.write_text(name, "".join(line + "\n" for line in lines))
        return len(lines)

    def iter_jsonl(self, name: str) -> Iterator[dict[str, Any]]:
        # split on "\n" only: str.splitlines() also breaks at U+2028, U+0085, U+001C..., which
        # json.dumps(ensure_ascii=False) leaves raw inside strings (models do generate them)
        for lineno, line in enumerate(self.read_text(name).split("\n"), 1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ArtifactError(f"{self.path(name)}:{lineno}: not valid JSON ({exc})") from exc

    def write_records(self, name: str, records: Iterable[Record]) -> int:
        return self.write_jsonl(name, (r.to_dict() for r in records))

    def read_records(self, name: str, cls: type[R]) -> list[R]:
        return [cls.from_dict(row) for row in self.iter_jsonl(name)]

    def hash(self, name: str) -> str:
        return bytes_hash(self.read_bytes(name))
