"""The ``ray`` engine: shards on a pool of long-lived Ray actors, one loaded component each.

Why plain actors and not Ray Data ``map_batches``: a stage's work is a short, ordered list of
shards whose results come back to one process that writes the run's files and caches; what
matters is that a shard lost with its worker is run again elsewhere exactly once and that a
shard's cache entries reach the run's cache as soon as it finishes. With actors the driver
sees each shard finish (ordered writes, one progress bar, per-worker throughput, a re-run
counted) and the dependency is Ray core alone; Ray Data would add pyarrow/pandas and its own
block scheduling for no gain at the sizes a stage hands out (see docs/scaling.md).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StageError
from . import RAY_FIX, ExecutionOptions, Shard, Task, WorkerStats
from .worker import ShardWorker, WorkerSpec

if TYPE_CHECKING:
    from ..context import RunContext

log = logging.getLogger("selflearn")

#: shards queued per worker (one running, one waiting, so a worker never idles between shards)
IN_FLIGHT = 2


def import_ray() -> Any:
    """Ray, or a clear error saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(
            f"engine 'ray' needs the ray package, which is not installed in this environment "
            f"({exc}). Install it with {RAY_FIX} (or pip install ray), or set execution.engine: "
            "local to run in this process",
            "execution.engine",
        ) from exc
    return ray


def _check_reachable(address: str) -> None:
    """Fail fast (seconds, not Ray's minute of retries) when host:port does not answer."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            return
    except OSError as exc:
        raise ConfigError(_unreachable(address, str(exc)), "execution.address") from exc


def _init_address(address: str | None) -> str | None:
    """What ``ray.init`` is given: null starts a new local Ray (never a cluster another
    process left on this machine), unless the driver runs inside a Ray job (RAY_ADDRESS)."""
    if address is None:
        return None if os.environ.get("RAY_ADDRESS") else "local"
    return address


def _unreachable(address: str, why: str) -> str:
    return (
        f"cannot reach the Ray cluster at {address!r} ({why}). Start one with `ray start --head` "
        "(its address is printed; use 'auto' on that machine or ray://HOST:10001 from elsewhere), "
        "check the host and port, or set execution.address: null to start a local Ray"
    )


class RayEngine:
    """Shards of a stage spread over Ray actors; a dead actor's shards run again elsewhere."""

    name = "ray"

    def __init__(self, options: ExecutionOptions, run: RunContext, spec: WorkerSpec) -> None:
        self.options = options
        self.run = run
        self.spec = spec
        self._ray: Any = None
        self._started_ray = False
        self._pools: dict[str, list[Any]] = {}
        self._probes: dict[str, dict[str, Any]] = {}
        self._workers = 0
        self._resources: dict[str, float] = {}
        self._stats: dict[str, WorkerStats] = {}
        self._reruns = 0
        self._lost = 0

    # -- start ---------------------------------------------------------------------------
    def check(self) -> None:
        """Fail before any stage runs when Ray is not installed."""
        import_ray()

    def _start(self) -> Any:
        if self._ray is not None:
            return self._ray
        ray = import_ray()
        address = self.options.address
        if not ray.is_initialized():
            if address not in (None, "auto"):
                _check_reachable(address)
            try:
                ray.init(address=_init_address(address), include_dashboard=False,
                         log_to_driver=True, configure_logging=False)
            except (ConnectionError, RuntimeError) as exc:
                raise ConfigError(_unreachable(address or "local", str(exc)), "execution.address") from exc
            self._started_ray = True
        self._ray = ray
        self._size(ray.cluster_resources())
        return ray

    def _size(self, cluster: dict[str, float]) -> None:
        """Workers and resources per worker from the options and what the cluster has."""
        o = self.options
        gpus = float(cluster.get("GPU", 0.0))
        num_gpus = o.num_gpus if o.num_gpus is not None else (1.0 if gpus >= 1 else 0.0)
        if o.workers != "auto":
            workers = int(o.workers)
        elif num_gpus > 0:
            workers = max(1, int(gpus // num_gpus))
        else:
            cpus = float(cluster.get("CPU", 1.0))
            workers = max(1, int(cpus // o.num_cpus) if o.num_cpus > 0 else 1)
        self._workers = workers
        self._resources = {"num_cpus": o.num_cpus, "num_gpus": num_gpus}

    def describe(self) -> dict[str, Any]:
        return {"engine": "ray", "workers": self._workers or self.options.workers}

    # -- the pool ------------------------------------------------------------------------
    def _new_actor(self) -> Any:
        ray = self._start()
        cls = ray.remote(ShardWorker).options(max_restarts=0, **self._resources)
        return cls.remote(self.spec)

    def _pool(self, task: Task) -> list[Any]:
        """The task's workers, started and with the component built (models load in parallel)."""
        key = task.component_key
        if key not in self._pools:
            self._start()
            for other in list(self._pools):  # one loaded component per worker: GPUs are not shared
                self._stop(other)
            pool = [self._new_actor() for _ in range(self._workers)]
            probes = self._get([a.probe.remote(task) for a in pool])
            self._pools[key] = pool
            self._probes[key] = probes[0]
        return self._pools[key]

    def _get(self, refs: Any) -> Any:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def probe(self, task: Task) -> dict[str, Any]:
        self._pool(task)
        return self._probes[task.component_key]

    # -- running shards ------------------------------------------------------------------
    def map(self, task: Task, shards: Sequence[Shard], done: int = 0) -> Iterator[tuple[int, Any]]:
        self._stats, self._reruns, self._lost = {}, 0, 0
        if not shards:
            return iter(())
        pool = self._pool(task)
        results = self._dispatch(task, shards, pool)
        return iter(self.run.progress(results, total=len(shards), desc=task.desc, unit="shard"))

    def _dispatch(self, task: Task, shards: Sequence[Shard], pool: list[Any]) -> Iterator[tuple[int, Any]]:
        """Keep every worker fed; yield each shard's result once, re-running a lost one."""
        ray = self._ray
        queue = collections.deque(range(len(shards)))
        tries = [0] * len(shards)
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (worker slot index, shard index)
        while queue or inflight:
            for w, actor in enumerate(pool):
                busy = sum(1 for a, _ in inflight.values() if a == w)
                while queue and busy < IN_FLIGHT:
                    i = queue.popleft()
                    inflight[actor.run.remote(task, shards[i].payload)] = (w, i)
                    busy += 1
            [ref], _ = ray.wait(list(inflight), num_returns=1)
            w, i = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._lost_worker(task, pool, w, inflight, queue, tries, i, exc)
                continue
            yield i, self._accept(out, shards[i].items)

    def _lost_worker(self, task: Task, pool: list[Any], w: int, inflight: dict[Any, tuple[int, int]],
                     queue: collections.deque[int], tries: list[int], i: int, exc: Exception) -> None:
        """A worker died: its shards go back to the queue, a fresh worker takes its place."""
        lost = [i]
        for ref, (a, j) in list(inflight.items()):
            if a == w:
                del inflight[ref]
                lost.append(j)
        for j in lost:
            tries[j] += 1
            if tries[j] > self.options.max_retries:
                raise StageError(
                    f"{task.desc}: shard {j} was lost with its worker {tries[j]} times (last: "
                    f"{type(exc).__name__}); raise execution.max_retries or check the workers' "
                    "memory and logs (ray logs)"
                ) from exc
        log.warning("%s: a Ray worker died (%s); re-running %d shard(s) on another worker",
                    task.desc, type(exc).__name__, len(lost))
        self._reruns += len(lost)
        self._lost += 1
        queue.extendleft(reversed(lost))
        pool[w] = self._new_actor()

    def _accept(self, out: dict[str, Any], items: int) -> Any:
        """Write a finished shard's cache entries here (one writer), then raise or return."""
        for namespace, entries in out["writes"].items():
            self.run.cache(namespace).put_many(entries)
        if out["error"] is not None:
            raise out["error"]
        self._stats.setdefault(f"pid-{out['pid']}", WorkerStats()).add(items, out["seconds"])
        return out["value"]

    def stats(self) -> dict[str, Any]:
        return {
            "per_worker": {k: v.to_dict() for k, v in sorted(self._stats.items())},
            "reruns": self._reruns,
            "lost_workers": self._lost,
        }

    # -- teardown ------------------------------------------------------------------------
    def release(self, slot: str) -> None:
        """Stop the slot's workers (their models leave the GPUs, e.g. before training)."""
        for key in [k for k in self._pools if k.split(":")[0] == slot]:
            self._stop(key)

    def _stop(self, key: str) -> None:
        for actor in self._pools.pop(key, []):
            self._ray.kill(actor)
        self._probes.pop(key, None)

    def close(self) -> None:
        for key in list(self._pools):
            self._stop(key)
        if self._started_ray and self._ray is not None:
            self._ray.shutdown()
        self._ray = None
        self._started_ray = False
