"""Helpers shared by the built-in knowledge sources: seeded per-category train/test splits.

Every source splits the same way, so a split can be reasoned about (and reproduced) without
reading each source: within a category, the candidate keys are sorted, shuffled with a
generator seeded by ``(seed, category)`` (so adding a category does not reshuffle the others),
the first ``test_per_category`` *eligible* keys become test documents and the next
``train_per_category`` eligible ones training documents (``None``: all the rest). A key is
assigned to one category only (the first that lists it), so no document can be a training
document in one category and a test document in another: the train/test leakage that the
research code's title list allowed (method.md, section 2).
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from ...core.cache import JsonlCache
from ...core.hashing import seed_from

T = TypeVar("T")

TRAIN = "train"
TEST = "test"


def seeded_order(keys: Iterable[str], seed: int, category: str) -> list[str]:
    """``keys`` sorted, then shuffled by a generator seeded by ``(seed, category)``."""
    ordered = sorted(set(keys))
    random.Random(seed_from("split", seed, category)).shuffle(ordered)
    return ordered


def dedupe_across(groups: Mapping[str, Sequence[str]]) -> tuple[dict[str, list[str]], int]:
    """Keep each key in the first category that lists it; return the groups and the number of
    repeats dropped (within or across categories)."""
    seen: set[str] = set()
    out: dict[str, list[str]] = {}
    dropped = 0
    for category, keys in groups.items():
        kept: list[str] = []
        for key in keys:
            if key in seen:
                dropped += 1
                continue
            seen.add(key)
            kept.append(key)
        out[category] = kept
    return out, dropped


def take_split(
    eligible_in_order: Sequence[str], train: int | None, test: int
) -> list[tuple[str, str]]:
    """``[(key, split)]``: the first ``test`` keys are test, the next ``train`` (all: None) train."""
    test_keys = eligible_in_order[:test]
    rest = eligible_in_order[test:]
    train_keys = rest if train is None else rest[:train]
    return [(k, TEST) for k in test_keys] + [(k, TRAIN) for k in train_keys]


def round_robin(groups: Sequence[Sequence[T]]) -> Iterator[T]:
    """Interleave the groups (first of each, then second of each, ...).

    Sources yield documents in this order so that ``documents.limit`` keeps a sample balanced
    over the categories instead of the first category only.
    """
    longest = max((len(g) for g in groups), default=0)
    for i in range(longest):
        for group in groups:
            if i < len(group):
                yield group[i]


def resolve_categories(
    requested: Sequence[str] | None, available: Sequence[str], path: str
) -> list[str]:
    """The requested categories (case-insensitive), in the requested order, or all of them."""
    from ...core.errors import ConfigError

    if requested is None:
        return list(available)
    by_lower = {c.lower(): c for c in available}
    out: list[str] = []
    unknown = []
    for name in requested:
        match = by_lower.get(str(name).lower())
        if match is None:
            unknown.append(name)
        elif match not in out:
            out.append(match)
    if unknown:
        raise ConfigError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; valid categories "
            f"are: {', '.join(available)}",
            path,
        )
    return out


def word_count(text: str) -> int:
    """Whitespace-separated words, the research code's length measure."""
    return len(text.split())


def normalize_text(text: str) -> str:
    """Collapse runs of spaces inside lines and drop blank lines; line breaks are kept (they
    separate paragraphs and headings, which the chunker uses)."""
    lines = (" ".join(line.split()) for line in text.splitlines())
    return "\n".join(line for line in lines if line)


_CHECKSUMS = ("ETag", "etag", "md5", "checksum", "crc32c", "sha256")


def _checksum(info: dict[str, Any]) -> str | None:
    """A content checksum the store itself keeps (s3's ETag, gcs's md5/crc32c, ...)."""
    for key in _CHECKSUMS:
        if info.get(key):
            return f"{key}:{str(info[key]).strip(chr(34))}"
    return None


def _stamp(info: dict[str, Any]) -> Any:
    """What changes when a file changes, from its fsspec ``info``: a checksum the store
    keeps, else the modification time (local files, memory://)."""
    checksum = _checksum(info)
    if checksum is not None:
        return checksum
    for key in ("mtime", "LastModified", "last_modified", "created"):
        if info.get(key) is not None:
            return str(info[key])
    return None


def file_digests(
    fs: Any, files: Sequence[str], cache: Any = None, *, content: bool = True,
    infos: dict[str, dict[str, Any]] | None = None,
) -> list[list[Any]]:
    """``[[path, size, digest]]`` of ``files``: a content digest of each file.

    Where the store keeps a checksum (an object store's ETag or MD5) that is the digest, and
    no byte is read. Otherwise the SHA-256 of the bytes, kept in ``cache`` (a
    :class:`~selflearn.core.cache.JsonlCache`) under the file's path, size and modification
    time, so a file is read again only when it changed (without a stamp, or with no cache, it
    is read every time). ``content=False`` records the stamp instead of reading the bytes (for
    dumps of many gigabytes whose files are replaced, never edited in place). ``infos``: the
    files' fsspec details when a listing already gave them (one request, not one per file).
    """
    out: list[list[Any]] = []
    for path in sorted(files):
        info = (infos or {}).get(path) or fs.info(path)
        size = info.get("size")
        stamp = _stamp(info)
        checksum = _checksum(info)
        if checksum is not None:
            out.append([path, size, checksum])
            continue
        if not content:
            out.append([path, size, stamp])
            continue
        key = JsonlCache.key("file-digest", fs.protocol, path, size, stamp) if stamp is not None else None
        digest = cache.get(key) if cache is not None and key is not None else None
        if digest is None:
            sha = hashlib.sha256()
            with fs.open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    sha.update(block)
            digest = sha.hexdigest()
            if cache is not None and key is not None:
                cache.put(key, digest)
        out.append([path, size, digest])
    return out
