"""What runs inside a Ray worker: the run's components, built once, and caches that report back.

This module does not import Ray (the Ray engine wraps :class:`ShardWorker` in ``ray.remote``),
so it is also what a test or another engine can drive directly.

A worker reads the run's per-call caches when it starts (from the run's ``cache_dir``, when
that path is reachable from its node) but never writes them: each new entry is sent back with
the shard's result and the driver appends it. One writer per cache file means no torn or
interleaved lines however many workers run, and a shard lost with its worker leaves nothing
behind.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import attrs

from ..cache import JsonlCache, read_entries
from ..config import SlotSpec
from ..context import RunContext
from ..plugins import PluginHost
from ..registry import load_object
from ..store import ArtifactStore
from . import Task, build_component, probe, usage

T = TypeVar("T")


class RecordingCache(JsonlCache):
    """A :class:`JsonlCache` preloaded read-only from the run's file; new entries are queued."""

    def __init__(self, path: str) -> None:  # noqa: D107 - no file is opened for writing
        self.path = path
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self._data = read_entries(path) if os.path.exists(path) else {}
        self._queued: list[tuple[str, Any]] = []

    def put_many(self, items: Iterable[tuple[str, Any]]) -> None:
        with self._lock:
            for key, value in items:
                self._data[key] = value
                self._queued.append((key, value))

    def drain(self) -> list[tuple[str, Any]]:
        """The entries written since the last drain (they go to the driver)."""
        with self._lock:
            out, self._queued = self._queued, []
            return out

    def close(self) -> None:
        """Nothing to close: this cache never opened its file for writing."""


class WorkerContext(RunContext):
    """A run context on a worker: recording caches, no progress bars of its own."""

    def cache(self, namespace: str) -> JsonlCache:
        if namespace not in self._caches:
            self._caches[namespace] = RecordingCache(os.path.join(self.cache_dir, f"{namespace}.jsonl"))
        return self._caches[namespace]

    def drain(self) -> dict[str, list[tuple[str, Any]]]:
        """Every cache's new entries, by namespace."""
        out: dict[str, list[tuple[str, Any]]] = {}
        for namespace, cache in self._caches.items():
            if isinstance(cache, RecordingCache):
                entries = cache.drain()
                if entries:
                    out[namespace] = entries
        return out

    def progress(
        self, iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterator[T]:
        """No bar on a worker: the driver draws one bar per stage over all workers."""
        return iter(iterable)


def _absolute(path: str) -> str:
    return os.path.abspath(path)


@attrs.frozen
class WorkerSpec:
    """Everything a worker needs to rebuild the run's components (sent once per worker)."""

    config: dict[str, Any]
    slots: dict[str, SlotSpec | None]
    #: made absolute on the driver: a worker's working directory is not the driver's
    cache_dir: str = attrs.field(converter=_absolute)
    disable: tuple[str, ...] = ()
    strict: bool | None = None
    extra_plugins: tuple[Any, ...] = ()
    load_entry_points: bool = True

    def context(self) -> WorkerContext:
        host = PluginHost(
            disable=self.disable,
            strict=self.strict,
            extra_plugins=self.extra_plugins,
            load_entry_points=self.load_entry_points,
        )
        config = {**self.config, "cache_dir": self.cache_dir}
        return WorkerContext(config, dict(self.slots), host, ArtifactStore(config["run_dir"]))


class ShardWorker:
    """A long-lived worker: builds a slot's component on first use and keeps it loaded."""

    def __init__(self, spec: WorkerSpec) -> None:
        os.environ.setdefault("SELFLEARN_NO_PROGRESS", "1")
        self.ctx = spec.context()
        self._components: dict[str, Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def _component(self, task: Task) -> Any:
        if task.component_key not in self._components:
            self._components[task.component_key] = build_component(self.ctx, task)
        return self._components[task.component_key]

    def probe(self, task: Task) -> dict[str, Any]:
        """The component's identity and capabilities (building it: the model loads here)."""
        return probe(self._component(task), task.usage)

    def run(self, task: Task, payload: Any) -> dict[str, Any]:
        """Run one shard; the result, the new cache entries, the busy seconds and the
        component's usage during the shard (the driver sums it: see :mod:`.usage`).

        An error is returned, not raised, together with the entries written before it, so a
        backend that failed part-way still leaves its finished calls in the run's cache.
        """
        t0 = time.perf_counter()
        value: Any = None
        used: dict[str, Any] | None = None
        error: BaseException | None = None
        try:
            fn = load_object(task.function, "shard function")
            component = self._component(task)
            value, used = usage.measure(usage.reader(task.usage), component,
                                        functools.partial(fn, component, payload))
        except Exception as exc:  # noqa: BLE001 - sent to the driver, which raises it
            error = exc
        return {
            "value": value,
            "writes": self.ctx.drain(),
            "error": error,
            "usage": used,
            "seconds": time.perf_counter() - t0,
            "pid": os.getpid(),
        }

    def close(self) -> None:
        """Close what this worker built (the engine usually just ends the worker's process)."""
        for key, comp in self._components.items():
            close = getattr(comp, "close", None)
            if ":" in key and callable(close):  # built from a task's own spec: not the context's
                close()
        self.ctx.close()
