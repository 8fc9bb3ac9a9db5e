"""Stable content hashes for cache keys, fingerprints and lineage."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace: equal content gives equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def content_hash(obj: Any, length: int = 32) -> str:
    """A hex SHA-256 of the canonical JSON of ``obj`` (truncated to ``length`` characters)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


def bytes_hash(data: bytes, length: int = 32) -> str:
    return hashlib.sha256(data).hexdigest()[:length]


def seed_from(*parts: Any) -> int:
    """A deterministic 63-bit seed derived from content (for per-item seeding)."""
    return int(content_hash(list(parts), 16), 16) & ((1 << 63) - 1)
