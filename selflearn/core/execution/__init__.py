"""Where a stage's model calls run: in this process (``local``) or on Ray workers (``ray``).

A stage that calls a model splits the work it still has to do into *shards* (a few backend
calls' worth of items, fixed by the stage's options and never by the engine) and hands them
to the run's engine with a :class:`Task` naming the component slot and a ``"module:function"``
that maps ``(component, payload)`` to a JSON-able result. The local engine calls the function
in this process with the run's own component; the Ray engine sends each shard to a pool of
long-lived workers (Ray actors), each of which built the component once from the run's
configuration. Because both engines make the same calls on the same shards, the engine never
changes a result, and a stage's fingerprint does not depend on it: a run started locally can
be finished on Ray and the other way round.

Only this module's ``ray_engine`` imports Ray, and only when the ``ray`` engine is used.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import attrs

from ..errors import ConfigError
from ..hashing import content_hash
from ..options import bounded
from . import usage

if TYPE_CHECKING:
    from ..cache import JsonlCache
    from ..context import RunContext

#: what to install when the ray engine is asked for but Ray is missing
RAY_FIX = 'pip install "selflearn[ray]"'
#: what Ray sets in a submitted job's driver: the job's runtime_env (with its working_dir)
JOB_CONFIG_VAR = "RAY_JOB_CONFIG_JSON_ENV_VAR"


@attrs.frozen
class ExecutionOptions:
    """The ``execution`` section: which engine runs the stages' model calls."""

    #: local: this process (the default and the reference); ray: long-lived Ray workers
    engine: Literal["local", "ray"] = "local"
    #: the Ray cluster: null starts a local Ray (inside a Ray job: the job's cluster); "auto" joins the one on this machine; "ray://host:10001" (the Ray client, needs ray[client]); or the head's "host:6379"
    address: str | None = None
    #: Ray workers (each holds one loaded component); auto: one per GPU, else one per num_cpus CPUs
    workers: int | Literal["auto"] = bounded("auto", ge=1)
    #: CPUs reserved per Ray worker
    num_cpus: float = bounded(1.0, ge=0)
    #: GPUs per Ray worker (null: 1 when the cluster has GPUs, else 0)
    num_gpus: float | None = bounded(None, ge=0)
    #: generation records per shard in the scores stage, questions per shard in self-labelling (other stages shard by their own chunk_size / batch_size)
    shard_size: int = bounded(64, ge=1)
    #: times a shard whose worker died is run again on another worker before the stage fails
    max_retries: int = bounded(3, ge=0)


@attrs.frozen
class Task:
    """What a shard is run with: the component in ``slot`` and ``function(component, payload)``."""

    slot: str
    #: "module:function", importable on every worker; it returns a JSON-able value
    function: str
    #: the progress bar's label
    desc: str
    #: build this slot spec instead of the run's (e.g. the backend on the SFT model in flow: paper)
    spec: Any = None
    #: "module:function" reading the component's usage counters as a nested mapping of numbers
    #: (see :mod:`.usage`); the engine sums their change over the shards (None: no usage)
    usage: str | None = None

    @property
    def component_key(self) -> str:
        """Which component a worker keeps for this task: the slot, or the slot and its override."""
        return self.slot if self.spec is None else f"{self.slot}:{content_hash(self.spec.describe(), 16)}"


@attrs.frozen
class Shard:
    """One unit of work: a payload, its item count (for throughput) and an optional cache key."""

    payload: Any
    items: int
    #: where the shard's result is kept in the stage's shard cache (None: not kept)
    key: str | None = None


class Engine(Protocol):
    """Runs shards of a stage; yields ``(index, result)`` as shards finish, in any order."""

    name: str

    def map(self, task: Task, shards: Sequence[Shard], done: int = 0) -> Iterator[tuple[int, Any]]: ...

    def probe(self, task: Task) -> dict[str, Any]: ...

    def stats(self) -> dict[str, Any]: ...

    def release(self, slot: str) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


@attrs.define
class WorkerStats:
    """Per-worker counters for the stage summary (throughput = items / busy seconds)."""

    shards: int = 0
    items: int = 0
    seconds: float = 0.0

    def add(self, items: int, seconds: float) -> None:
        self.shards += 1
        self.items += items
        self.seconds += seconds

    def to_dict(self) -> dict[str, Any]:
        rate = self.items / self.seconds if self.seconds > 0 else None
        return {
            "shards": self.shards,
            "items": self.items,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(rate, 3) if rate is not None else None,
        }


def run_shards(
    engine: Engine, task: Task, shards: Sequence[Shard], cache: JsonlCache | None = None
) -> tuple[list[Any], dict[str, Any]]:
    """Run ``shards`` on ``engine``; results in shard order, and the execution summary.

    A shard with a key already in ``cache`` is not sent out; every finished shard is written
    to ``cache`` at once (by this process only), so a killed driver resumes at the shards in
    flight, under either engine. With ``task.usage`` the summary's ``usage`` is the
    component's usage summed over the shards sent out (see :mod:`.usage`); the stage moves it
    into its own summary fields.
    """
    results: list[Any] = [None] * len(shards)
    pending: list[int] = []
    for i, shard in enumerate(shards):
        if cache is not None and shard.key is not None and shard.key in cache:
            results[i] = cache.get(shard.key)
        else:
            pending.append(i)
    t0 = time.perf_counter()
    for j, value in engine.map(task, [shards[i] for i in pending], done=len(shards) - len(pending)):
        i = pending[j]
        results[i] = value
        key = shards[i].key
        if cache is not None and key is not None:
            cache.put(key, value)
    stats = engine.stats()
    used = stats.pop("usage", None)
    summary = {
        **engine.describe(),
        "shards": len(shards),
        "cached_shards": len(shards) - len(pending),
        "seconds": round(time.perf_counter() - t0, 3),
        **stats,
    }
    if task.usage is not None:  # the counters' shape at 0 (no shard sent: 0), plus the shards'
        summary["usage"] = usage.rounded(usage.add_into(engine.probe(task).get("usage") or {}, used))
    return results, summary


def probe(component: Any, usage_ref: str | None = None) -> dict[str, Any]:
    """What the driver must know of a component it may not hold: its identity (provenance,
    cache keys), whether it returns or needs per-token log-probabilities, and (with a task's
    ``usage`` function) the shape of its usage counters, every number 0."""
    caps = getattr(component, "capabilities", None)
    out = {
        "identity": component.identity(),
        "logprobs": bool(getattr(caps, "logprobs", False)),
        "raw": bool(getattr(caps, "raw", False)),
        "needs_logprobs": bool(getattr(component, "needs_logprobs", False)),
    }
    if usage_ref is not None:
        out["usage"] = usage.zero(usage.reader(usage_ref), component)
    return out


def build_component(run: RunContext, task: Task) -> Any:
    """The component a task runs with: the run's slot, or the task's own spec built (a backend
    wrapped in the run's generation cache, like the slot's)."""
    if task.spec is None:
        return run.component(task.slot)
    from ..config import SLOTS
    from ..generation import CachedBackend

    comp = run.build(SLOTS[task.slot], task.spec, f"{task.desc}.{task.slot}")
    if SLOTS[task.slot] == "inference_backend" and not isinstance(comp, CachedBackend):
        comp = CachedBackend(comp, run.cache("generations"))
    return comp


def make_engine(options: ExecutionOptions, run: RunContext, spec: Any) -> Engine:
    """The engine the ``execution`` section asks for (Ray is imported only for ``ray``)."""
    if options.engine == "local":
        from .local import LocalEngine

        return LocalEngine(run)
    from .ray_engine import RayEngine

    return RayEngine(options, run, spec)


def job_working_copy() -> str | None:
    """This process's working directory when it is the driver of a Ray job submitted with a
    working directory (``ray job submit --working-dir``): Ray's unpacked copy of the upload,
    under the head's session folder. None otherwise."""
    raw = os.environ.get(JOB_CONFIG_VAR)
    if not raw:
        return None
    try:
        runtime_env = json.loads(raw).get("runtime_env") or {}
    except (ValueError, AttributeError):
        return None
    return os.getcwd() if runtime_env.get("working_dir") else None


def check_job_paths(paths: dict[str, Any]) -> None:
    """Refuse relative local paths (``run_dir``, ``cache_dir``) in a Ray job with a working
    directory: they would land in Ray's temporary copy of the upload, out of sight of the user
    and deleted with Ray's package cache, and a changed upload would not resume the run."""
    copy = job_working_copy()
    if copy is None:
        return
    for key, given in paths.items():
        value = str(given or "")
        if not value or "://" in value or os.path.isabs(os.path.expanduser(value)):
            continue
        raise ConfigError(
            f"{value!r} is relative, and this run is a Ray job submitted with --working-dir: "
            f"its working directory is Ray's temporary copy of the upload ({copy}), so the "
            "run would be written there, hard to find and removed with Ray's package cache. "
            "Give an absolute path on a filesystem that the node running the job keeps (shared "
            f"by the nodes on a cluster), e.g. {key}: /shared/selflearn/{value.lstrip('./')}, "
            "or an fsspec URL (docs/scaling.md, 'A Ray cluster')",
            key,
        )
