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
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, StageError
from . import RAY_FIX, ExecutionOptions, Shard, Task, WorkerStats, usage
from .worker import ShardWorker, WorkerSpec

if TYPE_CHECKING:
    from ..context import RunContext

log = logging.getLogger("selflearn")

#: shards queued per worker (one running, one waiting, so a worker never idles between shards)
IN_FLIGHT = 2
#: tries of a ray:// connection whose session server died while starting: a race in Ray's
#: client server (ray-project/ray#63202; 1 in 20 connections on a busy 2-core machine)
CLIENT_TRIES = 3
CLIENT_RACE = "Starting Ray client server failed"
#: seconds of waiting for a shard or a starting worker before the engine looks at the cluster
WAIT_S = 30.0
#: seconds a stage waits with no worker running and no live node able to hold one (a lost
#: node an autoscaler or a person may still replace) before it fails instead of waiting forever
NODE_WAIT_S = 600.0


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


def _check_client(address: str) -> None:
    """A ``ray://`` address goes through the Ray client, which is not in Ray core."""
    try:
        import grpc  # noqa: F401 - what ray[client] adds; Ray itself says so only after a connect
    except ImportError as exc:
        raise ConfigError(
            f"{address!r} connects through the Ray client, which needs pip install "
            f'"ray[client]=={_ray_version()}" in this environment (the same Ray version as the '
            "cluster's); or run the driver on the head node with execution.address: auto, or "
            "submit it as a Ray job (ray job submit, docs/scaling.md)",
            "execution.address",
        ) from exc


def _ray_version() -> str:
    try:
        from importlib.metadata import version

        return version("ray")
    except Exception:  # noqa: BLE001 - only used in a message
        return "<the cluster's version>"


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


def _connect(ray: Any, address: str | None) -> None:
    """``ray.init``, trying a Ray client connection again when the cluster's client server
    failed to start this driver's session (Ray's race, not a configuration error)."""
    for attempt in range(1, CLIENT_TRIES + 1):
        try:
            ray.init(address=_init_address(address), include_dashboard=False,
                     log_to_driver=True, configure_logging=False)
            return
        except ConnectionError as exc:
            if attempt == CLIENT_TRIES or CLIENT_RACE not in str(exc):
                raise
            log.warning("the Ray client server at %s failed to start this session (try %d of %d, "
                        "ray-project/ray#63202); connecting again", address, attempt, CLIENT_TRIES)
            ray.shutdown()


def _refused(address: str, why: str) -> str:
    """The port answered but Ray did not connect: most often the cluster's token."""
    race = CLIENT_RACE in why
    why = " ".join(why.split())[:300]  # Ray's message may carry a server-side traceback
    if race:
        return (
            f"the Ray client server at {address!r} failed to start this driver's session "
            f"{CLIENT_TRIES} times ({why}): a race in Ray's client server "
            "(ray-project/ray#63202), more frequent on a busy head; the head's "
            "ray_client_server_*.err logs are empty when it happens. Run again, or run the driver "
            "on the head (execution.address: auto) or as a Ray job (ray job submit)"
        )
    token = os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
    hint = (
        "the token given (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) may not be "
        "the head's: `ray get-auth-token` on the head prints it"
        if token else
        "if the cluster uses token authentication (Ray turns it on when the head has "
        "~/.ray/auth_token), a driver connecting by address needs RAY_AUTH_MODE=token and the "
        "head's token (RAY_AUTH_TOKEN=<`ray get-auth-token` on the head>, or the same "
        "~/.ray/auth_token)"
    )
    return (
        f"the Ray cluster at {address!r} answers but did not accept this driver ({why}): {hint}. "
        "Check too that the port is the cluster's (GCS HOST:6379, or ray://HOST:10001 for the "
        "client server) and that this Ray is the cluster's version"
    )


class WorkerPool:
    """One task's workers, a slot each. A slot gets shards only once its worker answered its
    probe (its component built): a worker replacing a lost one may wait for a node to join,
    and meanwhile the live workers take the lost shards instead of queueing them behind it."""

    def __init__(self, ray: Any, new_actor: Callable[[], Any], task: Task, workers: int,
                 max_retries: int) -> None:
        self.ray = ray
        self.new_actor = new_actor
        self.task = task
        self.max_retries = max_retries
        self.actors: list[Any] = [None] * workers
        self.ready = [False] * workers
        self.starting: dict[Any, int] = {}  # probe ref -> slot
        self.deaths = [0] * workers  # the slot's workers that died in a row before answering
        self.probed: dict[str, Any] | None = None  # the first answer (all workers answer alike)
        self.unplaceable_since: float | None = None  # no worker running, no node could hold one
        for w in range(workers):
            self.start(w)

    def start(self, w: int) -> None:
        """A fresh worker in slot ``w``. The old one is killed first: a worker that is only
        unreachable (ActorUnavailableError) would otherwise keep its CPUs or GPU."""
        if self.actors[w] is not None:
            with contextlib.suppress(Exception):  # gone already, with its node
                self.ray.kill(self.actors[w])
        self.actors[w] = self.new_actor()
        self.ready[w] = False
        self.starting[self.actors[w].probe.remote(self.task)] = w

    def started(self, ref: Any) -> bool:
        """A probe's answer: its slot takes shards from now on. True when the worker died
        first instead (e.g. placed on a node that was lost meanwhile): a fresh one starts."""
        w = self.starting.pop(ref)
        try:
            answer = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:  # the component failed to build
            raise exc.as_instanceof_cause() from None
        except self.ray.exceptions.RayActorError as exc:
            self.deaths[w] += 1
            if self.deaths[w] > self.max_retries:
                raise StageError(
                    f"{self.task.desc}: a Ray worker died before its component was built "
                    f"{self.deaths[w]} times in a row (last: {type(exc).__name__}); check the "
                    "workers' memory and logs (ray logs), or raise execution.max_retries"
                ) from exc
            log.warning("%s: a starting Ray worker died (%s); starting another",
                        self.task.desc, type(exc).__name__)
            self.start(w)
            return True
        self.deaths[w] = 0
        self.ready[w] = True
        if self.probed is None:
            self.probed = answer
        return False

    def first_ready(self) -> Any:
        return self.actors[self.ready.index(True)]

    def kill(self) -> None:
        for actor in self.actors:
            with contextlib.suppress(Exception):  # gone already, with its node
                self.ray.kill(actor)


class RayEngine:
    """Shards of a stage spread over Ray actors; a dead actor's shards run again elsewhere."""

    name = "ray"

    def __init__(self, options: ExecutionOptions, run: RunContext, spec: WorkerSpec) -> None:
        self.options = options
        self.run = run
        self.spec = spec
        self._ray: Any = None
        self._started_ray = False
        self._pools: dict[str, WorkerPool] = {}
        self._probes: dict[tuple[str, str | None], dict[str, Any]] = {}  # (component key, usage)
        self._workers = 0
        self._resources: dict[str, float] = {}
        self._stats: dict[str, WorkerStats] = {}
        self._usage: dict[str, Any] = {}
        self._reruns = 0
        self._lost = 0
        self._lost_any = False  # a worker died during this run (with its node, maybe)

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
            explicit = address not in (None, "auto")
            if explicit and str(address).startswith("ray://"):
                _check_client(str(address))
            if explicit:
                _check_reachable(str(address))
            try:
                _connect(ray, address)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                message = _refused if explicit else _unreachable
                raise ConfigError(message(address or "local", str(exc)), "execution.address") from exc
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
        self._check_fits(cluster)

    def _check_fits(self, cluster: dict[str, float]) -> None:
        """Refuse workers the Ray this run started can never place: Ray keeps such an actor
        pending without an error, so the stage would wait forever. On a cluster joined by
        address (which may autoscale) only a warning: nodes with the resource may still come."""
        for name, key in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            need = self._workers * float(self._resources[name] or 0.0)
            have = float(cluster.get(key, 0.0))
            if need > have + 1e-9:
                break
        else:
            return
        what = (f"{self._workers} worker(s) at {name}: {self._resources[name]:g} need {need:g} {key}s, "
                f"and the Ray cluster has {have:g}")
        if not self._started_ray:
            log.warning("execution: %s; the workers that do not fit wait until the cluster has "
                        "them (an autoscaling cluster adds nodes)", what)
            return
        fix = ("set execution.num_gpus: 0 to run on the CPU" if key == "GPU" and have == 0
               else f"lower execution.workers or execution.{name}")
        raise ConfigError(f"{what}: Ray would keep the workers that do not fit waiting forever; {fix}",
                          f"execution.{name}")

    def describe(self) -> dict[str, Any]:
        return {"engine": "ray", "workers": self._workers or self.options.workers}

    # -- the pool ------------------------------------------------------------------------
    def _new_actor(self) -> Any:
        ray = self._start()
        cls = ray.remote(ShardWorker).options(max_restarts=0, **self._resources)
        return cls.remote(self.spec)

    def _pool(self, task: Task) -> WorkerPool:
        """The task's workers, started and with the component built (models load in parallel)."""
        key = task.component_key
        if key not in self._pools:
            self._start()
            for other in list(self._pools):  # one loaded component per worker: GPUs are not shared
                self._stop(other)
            pool = WorkerPool(self._ray, self._new_actor, task, self._workers, self.options.max_retries)
            self._pools[key] = pool
            self._settle(pool)
            assert pool.probed is not None  # _settle returns once a worker answered
            self._probes[(key, task.usage)] = pool.probed
        return self._pools[key]

    def _settle(self, pool: WorkerPool) -> None:
        """Until every worker answered its probe, or some did and the others still wait for
        room on the cluster after WAIT_S (they get shards once they answer)."""
        while pool.starting:
            ref = self._wait(pool, [])
            if ref is not None:
                self._started(pool, ref)
            elif any(pool.ready):
                return

    def _started(self, pool: WorkerPool, ref: Any) -> None:
        if pool.started(ref):
            self._lost += 1
            self._lost_any = True

    def _wait(self, pool: WorkerPool, refs: list[Any]) -> Any:
        """The first of ``refs`` and the pool's probes to finish; None after WAIT_S without
        one, once the cluster was checked for room (see :meth:`_check_placeable`)."""
        done, _ = self._ray.wait([*refs, *pool.starting], num_returns=1, timeout=WAIT_S)
        if done:
            return done[0]
        self._check_placeable(pool)
        return None

    def _check_placeable(self, pool: WorkerPool) -> None:
        """With no worker running and no live node able to hold one: once a worker died in
        this run (a lost node that nothing replaced), fail after NODE_WAIT_S, as Ray would keep
        the workers waiting without a word; before that only a warning, as in _check_fits."""
        if any(pool.ready):  # work goes on; a slow shard is no reason to look
            pool.unplaceable_since = None
            return
        need = {"CPU": float(self._resources["num_cpus"] or 0.0), "GPU": float(self._resources["num_gpus"] or 0.0)}
        nodes = [n.get("Resources") or {} for n in self._ray.nodes() if n.get("Alive")]
        if any(all(float(r.get(k, 0.0)) + 1e-9 >= v for k, v in need.items()) for r in nodes):
            pool.unplaceable_since = None  # Ray places the worker once the node has room
            return
        have = ", ".join(f"{r.get('CPU', 0.0):g} CPU/{r.get('GPU', 0.0):g} GPU" for r in nodes) or "none"
        what = (f"{pool.task.desc}: no Ray worker is running and no live node of the cluster can hold one "
                f"(a worker needs {need['CPU']:g} CPU and {need['GPU']:g} GPU; the live nodes have {have})")
        now = time.monotonic()
        if pool.unplaceable_since is None:
            pool.unplaceable_since = now
            wait = f"up to {NODE_WAIT_S:g} s" if self._lost_any else "until one does (an autoscaler may add it)"
            log.warning("%s; waiting %s for a node to join", what, wait)
        if self._lost_any and now - pool.unplaceable_since >= NODE_WAIT_S:
            raise StageError(
                f"{what}, and none joined in {NODE_WAIT_S:g} s: the node the workers ran on was lost "
                "and nothing replaced it. Add a node (ray start --address=<head>) and run the same "
                "command again (it resumes from the cache), or lower execution.num_cpus / "
                "execution.num_gpus to what the live nodes have"
            )

    def _get(self, refs: Any) -> Any:
        try:
            return self._ray.get(refs)
        except self._ray.exceptions.RayTaskError as exc:
            raise exc.as_instanceof_cause() from None

    def probe(self, task: Task) -> dict[str, Any]:
        pool = self._pool(task)
        key = (task.component_key, task.usage)
        if key not in self._probes:  # another task on the same workers: its own usage shape
            if not any(pool.ready):
                self._settle(pool)
            self._probes[key] = self._get(pool.first_ready().probe.remote(task))
        return self._probes[key]

    # -- running shards ------------------------------------------------------------------
    def map(self, task: Task, shards: Sequence[Shard], done: int = 0) -> Iterator[tuple[int, Any]]:
        self._stats, self._usage, self._reruns, self._lost = {}, {}, 0, 0
        if not shards:
            return iter(())
        pool = self._pool(task)
        results = self._dispatch(task, shards, pool)
        return iter(self.run.progress(results, total=len(shards), desc=task.desc, unit="shard"))

    def _dispatch(self, task: Task, shards: Sequence[Shard], pool: WorkerPool) -> Iterator[tuple[int, Any]]:
        """Keep every ready worker fed; yield each shard's result once, re-running a lost one."""
        ray = self._ray
        queue = collections.deque(range(len(shards)))
        tries = [0] * len(shards)
        inflight: dict[Any, tuple[int, int]] = {}  # ref -> (worker slot index, shard index)
        while queue or inflight:
            self._feed(task, shards, pool, queue, inflight)
            ref = self._wait(pool, list(inflight))
            if ref is None:
                continue
            if ref in pool.starting:  # a replacement worker answered (or died starting)
                self._started(pool, ref)
                continue
            w, i = inflight.pop(ref)
            try:
                out = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._lost_worker(task, pool, w, inflight, queue, tries, i, exc)
                continue
            yield i, self._accept(out, shards[i].items)

    @staticmethod
    def _feed(task: Task, shards: Sequence[Shard], pool: WorkerPool, queue: collections.deque[int],
              inflight: dict[Any, tuple[int, int]]) -> None:
        """Up to IN_FLIGHT shards on every worker that answered its probe."""
        for w, actor in enumerate(pool.actors):
            busy = sum(1 for a, _ in inflight.values() if a == w)
            while pool.ready[w] and queue and busy < IN_FLIGHT:
                i = queue.popleft()
                inflight[actor.run.remote(task, shards[i].payload)] = (w, i)
                busy += 1

    def _lost_worker(self, task: Task, pool: WorkerPool, w: int, inflight: dict[Any, tuple[int, int]],
                     queue: collections.deque[int], tries: list[int], i: int, exc: Exception) -> None:
        """A worker died (``ray.kill``, its process, its node): its shards go back to the
        front of the queue for the live workers, and a fresh worker starts in its slot."""
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
        self._lost_any = True
        queue.extendleft(reversed(lost))
        pool.start(w)

    def _accept(self, out: dict[str, Any], items: int) -> Any:
        """Write a finished shard's cache entries here (one writer), then raise or return."""
        for namespace, entries in out["writes"].items():
            self.run.cache(namespace).put_many(entries)
        if out["error"] is not None:
            raise out["error"]
        self._stats.setdefault(f"pid-{out['pid']}", WorkerStats()).add(items, out["seconds"])
        self._usage = usage.add_into(self._usage, out.get("usage"))
        return out["value"]

    def stats(self) -> dict[str, Any]:
        return {
            "per_worker": {k: v.to_dict() for k, v in sorted(self._stats.items())},
            "reruns": self._reruns,
            "lost_workers": self._lost,
            "usage": self._usage,
        }

    # -- teardown ------------------------------------------------------------------------
    def release(self, slot: str) -> None:
        """Stop the slot's workers (their models leave the GPUs, e.g. before training)."""
        for key in [k for k in self._pools if k.split(":")[0] == slot]:
            self._stop(key)

    def _stop(self, key: str) -> None:
        pool = self._pools.pop(key, None)
        if pool is not None:
            pool.kill()
        for probed in [p for p in self._probes if p[0] == key]:
            del self._probes[probed]

    def close(self) -> None:
        for key in list(self._pools):
            self._stop(key)
        if self._started_ray and self._ray is not None:
            self._ray.shutdown()
        self._ray = None
        self._started_ray = False
