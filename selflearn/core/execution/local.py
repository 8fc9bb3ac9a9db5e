"""The ``local`` engine: every shard runs in this process with the run's own component."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..registry import load_object
from . import Shard, Task, WorkerStats, build_component, probe, usage

if TYPE_CHECKING:
    from ..context import RunContext


class LocalEngine:
    """Today's behaviour: shards one after the other, one progress bar over them."""

    name = "local"

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self._stats = WorkerStats()
        self._usage: dict[str, Any] = {}
        self._own: dict[str, Any] = {}  # components built from a task's own spec

    def component(self, task: Task) -> Any:
        """The component a task runs with here (the run's slot, or one built from its spec)."""
        if task.spec is None:
            return self.run.component(task.slot)
        if task.component_key not in self._own:
            self._own[task.component_key] = build_component(self.run, task)
        return self._own[task.component_key]

    def describe(self) -> dict[str, Any]:
        return {"engine": "local", "workers": 1}

    def probe(self, task: Task) -> dict[str, Any]:
        return probe(self.component(task), task.usage)

    def map(self, task: Task, shards: Sequence[Shard], done: int = 0) -> Iterator[tuple[int, Any]]:
        self._stats, self._usage = WorkerStats(), {}
        fn = load_object(task.function, f"task of {task.desc}")
        read = usage.reader(task.usage)
        component = self.component(task)
        bar = self.run.progress(range(len(shards)), total=len(shards), desc=task.desc, unit="shard")
        for i in bar:
            t0 = time.perf_counter()
            payload = shards[i].payload
            value, used = usage.measure(read, component, functools.partial(fn, component, payload))
            self._stats.add(shards[i].items, time.perf_counter() - t0)
            self._usage = usage.add_into(self._usage, used)
            yield i, value

    def stats(self) -> dict[str, Any]:
        return {"per_worker": {"local": self._stats.to_dict()}, "usage": self._usage}

    def release(self, slot: str) -> None:
        """Close the components built from a task's own spec for ``slot`` (the run context
        owns and closes the slots' own components)."""
        for key in [k for k in self._own if k.split(":")[0] == slot]:
            close = getattr(self._own.pop(key), "close", None)
            if callable(close):
                close()

    def close(self) -> None:
        for slot in {k.split(":")[0] for k in self._own}:
            self.release(slot)
