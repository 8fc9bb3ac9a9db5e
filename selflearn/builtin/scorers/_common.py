"""Helpers shared by the model-based scorers: devices, dtypes, model identities, batching,
cache look-ups.

torch is imported inside the functions only, so importing a scorer module stays cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ...core.errors import ConfigError
from ...core.models import content_fingerprint, package_file

if TYPE_CHECKING:
    from ...core.cache import JsonlCache

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")



def resolve_model_path(ref: str, path: str) -> str:
    """A local folder or hub id for ``ref`` (``pkg:`` references resolved, ``~`` expanded)."""
    if not isinstance(ref, str) or not ref.strip():
        raise ConfigError(f"expected a model folder or hub id, got {ref!r}", path)
    if ref.startswith("pkg:"):
        return package_file(ref)
    expanded = os.path.expanduser(ref)
    return expanded if os.path.exists(expanded) else ref


def model_fingerprint(path: str) -> str:
    """A cheap content fingerprint of a local model folder (part of every cache key, so two
    checkpoints saved at the same path never share cached scores); hub ids give ``"hub"``."""
    if not os.path.isdir(path):
        return "hub"
    return content_fingerprint(path) or "hub"


def resolve_device(device: str) -> str:
    """``auto`` is CUDA when available, else CPU; anything else is passed to torch as is."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """``auto`` is bfloat16 on CUDA (tensor cores) and float32 elsewhere (CPU bf16 is slow)."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def torch_dtype(name: str) -> Any:
    import torch

    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ConfigError(f"expected one of {sorted(table)}, got {name!r}", "dtype")
    return table[name]


def padded_width(length: int, quantum: int) -> int:
    """The width a row of ``length`` tokens is padded to: its length rounded up to ``quantum``."""
    n = max(int(length), 1)
    return -(-n // quantum) * quantum


def token_batches(
    lengths: Sequence[int], max_tokens: int, max_rows: int, quantum: int | None = None
) -> list[list[int]]:
    """Group indices, sorted longest first, into batches of at most ``max_tokens`` padded
    tokens (rows x longest row) and ``max_rows`` rows.

    Sorting by length keeps padding small; longest first makes an out-of-memory error show in
    the first batch instead of after minutes of work. With ``quantum``, a batch holds rows of
    one :func:`padded_width` only, to be padded to that width: a row's float32 result can
    depend on how far it is padded (seen on an AVX2 CPU: the last bits of an embedding change
    with the batch's longest row), and a width set by the row's own length gives it the same
    bits in any call -- whichever shard, worker, engine or resumed run computes it, and
    whether it is computed or read from a cache filled by another call.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    width = 0  # of the current batch: its first (longest) row's
    for i in order:
        own = padded_width(lengths[i], quantum) if quantum else max(int(lengths[i]), 1)
        if current and ((quantum and own != width) or len(current) >= max_rows or width * (len(current) + 1) > max_tokens):
            batches.append(current)
            current = []
        if not current:
            width = own
        current.append(i)
    if current:
        batches.append(current)
    return batches


def cached_lookup(
    items: Sequence[K],
    cache: JsonlCache | None,
    key: Callable[[K], str],
    decode: Callable[[Any], V],
    compute: Callable[[list[K], list[str]], list[V]],
) -> list[V]:
    """The value of every item, aligned with ``items``: each distinct item is looked up in
    ``cache`` (its hit passed through ``decode``) and the misses go to ``compute(missing,
    their keys)`` in one call, which stores what it computes. Without a cache no key is
    computed (the keys passed are empty strings)."""
    unique: dict[K, Any] = dict.fromkeys(items)
    missing: list[K] = []
    keys: list[str] = []
    for item in unique:
        k = key(item) if cache is not None else ""
        hit = cache.get(k) if cache is not None else None
        if hit is None:
            missing.append(item)
            keys.append(k)
        else:
            unique[item] = decode(hit)
    if missing:
        for item, value in zip(missing, compute(missing, keys), strict=True):
            unique[item] = value
    return [unique[i] for i in items]
