"""A component's usage (calls, tokens, cost, model passes) measured per shard, under any engine.

A component counts its usage from the moment it is built (``usage``, ``stats``, ``computed``
attributes). Under the ``local`` engine the stage's component lives in the driver, but under
``ray`` each worker holds its own copy, so the driver cannot read the counters. Both engines
therefore measure the same thing the same way: a task names a ``"module:function"`` that reads
the component's counters as a nested mapping of numbers (a *snapshot*); the engine takes one
before and one after each shard and sums the differences over the stage's shards (on Ray the
difference travels back with the shard's result). The stage summary is built from that sum,
so a stage reports the same totals whichever engine ran it and however its shards were spread.
A shard lost with its worker is not counted; its re-run is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..registry import load_object

#: float totals are rounded to this many decimals (sums in another order differ in the last bits)
DECIMALS = 6
_MISSING = object()


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def subtract(after: Any, before: Any) -> Any:
    """``after - before`` leaf by leaf: numbers are subtracted, mappings recursed into, and any
    other value (a name, None for "not counted") is taken from ``after``."""
    if isinstance(after, Mapping):
        base = before if isinstance(before, Mapping) else {}
        return {str(k): subtract(v, base.get(k, _MISSING)) for k, v in after.items()}
    if _number(after) and _number(before):
        return after - before
    return after


def add(total: Any, delta: Any) -> Any:
    """``total + delta`` leaf by leaf: numbers are summed, mappings merged; None (a counter the
    component could not keep) stays None; any other value is the latest."""
    if total is _MISSING:
        return subtract(delta, _MISSING)  # a plain copy with mappings as dicts
    if isinstance(total, Mapping) and isinstance(delta, Mapping):
        out = dict(total)
        for k, v in delta.items():
            out[str(k)] = add(out.get(str(k), _MISSING), v)
        return out
    if total is None or delta is None:
        return None
    if _number(total) and _number(delta):
        return total + delta
    return delta


def rounded(value: Any) -> Any:
    """``value`` with its floats rounded (for the summary: equal totals print equal)."""
    if isinstance(value, Mapping):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, float):
        return round(value, DECIMALS)
    return value


def reader(ref: str | None) -> Callable[[Any], dict[str, Any]] | None:
    """The snapshot function a task names (None: the task's stage reports no usage)."""
    return None if ref is None else load_object(ref, "usage function")


def measure(read: Callable[[Any], dict[str, Any]] | None, component: Any,
            run: Callable[[], Any]) -> tuple[Any, dict[str, Any] | None]:
    """``run()``'s value and the component's usage during it (None when nothing is read)."""
    if read is None:
        return run(), None
    before = read(component)
    value = run()
    return value, subtract(read(component), before)


def zero(read: Callable[[Any], dict[str, Any]] | None, component: Any) -> dict[str, Any] | None:
    """The snapshot's shape with every number 0: the usage of a stage that sent out no shard."""
    if read is None:
        return None
    snap = read(component)
    return subtract(snap, snap)


def attribute(obj: Any, name: str) -> Any:
    """``obj.name``, called when it is a method (components expose usage either way)."""
    value = getattr(obj, name, None)
    return value() if callable(value) else value


def add_into(total: dict[str, Any], delta: dict[str, Any] | None) -> dict[str, Any]:
    """``total`` with ``delta`` added (a new dict; ``delta`` None adds nothing)."""
    return total if delta is None else add(total, delta)
