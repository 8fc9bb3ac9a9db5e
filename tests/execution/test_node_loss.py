"""A whole Ray node taken away mid-stage (issue 16): the shards its worker held run again on
the worker of the other node and on one that a new node brings, and the run writes what a
local run writes, every row once; with no node left that can hold a worker, the stage fails
with a message instead of waiting forever.

The cluster is Ray's own ``ray.cluster_utils.Cluster`` on this machine: a head with no CPUs
(no worker can land there) and the worker nodes each test adds. This process only operates the
cluster; the run's driver is a separate process (``python -m`` this module) that joins it by
address, as a user's driver would, so the session's local Ray (conftest's ``ray_session``) is
neither used nor disturbed. Ray's temporary folder (with its ``ray_current_cluster`` file) is
the test's own, through ``RAY_TMPDIR``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import selflearn
from selflearn import Pipeline
from selflearn.core.errors import StageError
from selflearn.core.execution import ExecutionOptions, Task, ray_engine
from selflearn.core.execution.ray_engine import WorkerPool

from .helpers import StallOnceEchoBackend, StallOnceHFBackend, count_lines
from .test_faults import config as echo_config
from .test_ray import STAGE_FILES
from .test_ray import config as tiny_config

ROOT = Path(selflearn.__file__).resolve().parents[1]

#: the head declares a silent node dead after ~3 s instead of Ray's ~15 s (3 s x 5 checks);
#: until then Ray may place a replacement worker on the lost node (the engine handles that too)
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


def config(run_dir: Path, marker: Path, model: str, encoder: str, engine: str,
           **execution: Any) -> dict[str, Any]:
    """test_ray's tiny-model run (4 questions, a shard each), its ``hf`` backend stalling on
    the first shard a Ray worker runs: the moment the test takes the node away."""
    cfg = tiny_config(run_dir, model, encoder, engine, **execution)
    cfg["backend"] = StallOnceHFBackend(str(marker), model, seed=cfg["seed"], batch_size=4)
    return cfg


def stop(cluster: Any, temp: str) -> None:
    """Every node's processes, workers first, then any process still writing under ``temp``
    (the Ray workers of a node killed mid-test can outlive it by seconds). Not
    ``Cluster.shutdown``: that also resets this process's Ray client state, which the session's
    local Ray may still be using."""
    for node in [*cluster.worker_nodes, cluster.head_node]:
        if node is not None:
            with contextlib.suppress(Exception):  # stop the others even if one fails
                cluster.remove_node(node, allow_graceful=True)
    deadline = time.monotonic() + 10
    while (left := started_under(temp)) and time.monotonic() < deadline:
        for pid in left:
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


def started_under(temp: str) -> list[int]:
    """The live processes (not zombies) with a file open under ``temp``: this test's cluster's
    (every Ray process keeps its logs in its session's folder there)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z" and any(opened(entry, fd).startswith(temp + os.sep) for fd in fds):
            pids.append(int(entry))
    return pids


def opened(pid: str, fd: str) -> str:
    """What a process's file descriptor points at ("" when it closed meanwhile)."""
    try:
        return os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return ""


@pytest.fixture()
def cluster() -> Iterator[Any]:
    """A head with no CPUs; the nodes a test adds get this checkout on their workers' path.
    Every node is stopped even when the test fails."""
    pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="slnode-", dir="/tmp")  # short: Ray's socket paths live here
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_TMPDIR", temp)
        env.setenv("PYTHONPATH", str(ROOT))  # the nodes' workers import this checkout
        env.setenv("OMP_NUM_THREADS", "1")
        made = Cluster(initialize_head=False, shutdown_at_exit=True)
        try:
            made.add_node(num_cpus=0, include_dashboard=False, _system_config=dict(FAST_HEALTH_CHECKS))  # a copy: Ray adds keys
            yield made
        finally:
            stop(made, temp)
            shutil.rmtree(temp, ignore_errors=True)


def start_driver(*args: str) -> subprocess.Popen[str]:
    """This module's :func:`main` in its own process, from the repository root."""
    return subprocess.Popen([sys.executable, "-m", __name__, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def lose_node_mid_shard(cluster: Any, driver: subprocess.Popen[str], marker: Path,
                        replacement_cpus: int) -> str:
    """Once a shard stalls, the node it runs on goes (SIGKILL, its workers with it) and a node
    with ``replacement_cpus`` CPUs joins (0: none); the driver's stderr once it ended."""
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() or not marker.read_text().endswith("\n"):
            assert driver.poll() is None, f"the driver ended first:\n{driver.communicate()[1][-3000:]}"
            assert time.monotonic() < deadline, "no shard stalled within 120 s"
            time.sleep(0.1)
        [doomed] = [n for n in cluster.worker_nodes if n.node_id == marker.read_text().strip()]
        cluster.remove_node(doomed, allow_graceful=False)
        if replacement_cpus:
            cluster.add_node(num_cpus=replacement_cpus)
        return driver.communicate(timeout=180)[1]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.communicate()


@pytest.mark.slow
def test_a_node_lost_mid_stage_loses_nothing(cluster, tiny_llama, tiny_encoder, tmp_path):
    local, remote, marker = tmp_path / "local", tmp_path / "ray", tmp_path / "stalled"
    Pipeline(config(local, marker, tiny_llama, tiny_encoder, "local")).run(until="scores")
    assert not marker.exists()  # the hook is off outside a Ray worker
    for _ in range(2):
        cluster.add_node(num_cpus=1)  # one worker each
    driver = start_driver("tiny", cluster.address, str(remote), str(marker), tiny_llama, tiny_encoder)
    err = lose_node_mid_shard(cluster, driver, marker, replacement_cpus=1)
    assert driver.returncode == 0, err[-3000:]
    for name in STAGE_FILES:
        assert (local / name).read_bytes() == (remote / name).read_bytes(), name
    ids = [json.loads(line)["question_id"] for line in (remote / "generations.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 4  # every question once
    lines, keys = count_lines(str(remote / "cache" / "generations.jsonl"))
    assert lines == keys == 4 * 5  # nothing written twice: y*, 2 Y_c, 2 Y_r per question
    stages = json.loads((remote / "manifest.json").read_text())["stages"]
    execution = stages["generations"]["summary"]["execution"]
    # the stalled worker went with its two shards; a replacement Ray placed on the node before
    # it was known dead is lost too, and counted
    assert execution["lost_workers"] >= 1 and execution["reruns"] >= 2
    assert sum(w["items"] for w in execution["per_worker"].values()) == 4
    assert len(stages["scores"]["summary"]["execution"]["per_worker"]) == 2  # the new node's worker too


@pytest.mark.slow
def test_no_node_left_for_a_worker_fails_with_the_fix(cluster, tmp_path):
    marker, run_dir = tmp_path / "stalled", tmp_path / "run"
    cluster.add_node(num_cpus=2)  # both workers there: the node takes them all
    Pipeline(echo_config(run_dir, "echo", "local")).run(until="questions")  # the driver resumes there
    driver = start_driver("echo", cluster.address, str(run_dir), str(marker))
    err = lose_node_mid_shard(cluster, driver, marker, replacement_cpus=0)
    assert driver.returncode != 0
    last = err.strip().splitlines()[-1]
    assert last.startswith("selflearn.core.errors.StageError: generations: no Ray worker is running"), err[-3000:]
    assert "the live nodes have 0 CPU/0 GPU" in last and "and none joined in 3 s" in last
    assert "Add a node (ray start --address=<head>)" in last


class Ref:
    """A fake object ref: what ``FakeRay.get`` returns, or raises when it is an exception."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer


class FakeActor:
    def __init__(self, answer: Any) -> None:
        self.probe = SimpleNamespace(remote=lambda task: Ref(answer))


class FakeRay:
    """What WorkerPool and RayEngine._check_placeable call, with Ray's own exceptions."""

    def __init__(self, nodes: list[dict[str, Any]]) -> None:
        import ray

        self.exceptions = ray.exceptions
        self.killed: list[Any] = []
        self.live = nodes

    def get(self, ref: Ref) -> Any:
        if isinstance(ref.answer, BaseException):
            raise ref.answer
        return ref.answer

    def kill(self, actor: Any) -> None:
        self.killed.append(actor)

    def nodes(self) -> list[dict[str, Any]]:
        return self.live


TASK = Task("backend", "selflearn.core.stages.generations:generate_shard", "generations")


def test_a_worker_dying_while_it_starts_is_replaced_up_to_max_retries_times():
    ray = pytest.importorskip("ray")
    fake = FakeRay([])
    answers = iter([ray.exceptions.ActorDiedError(), {"identity": "x"}, ray.exceptions.ActorDiedError(),
                    ray.exceptions.ActorDiedError()])
    pool = WorkerPool(fake, lambda: FakeActor(next(answers)), TASK, workers=1, max_retries=1)
    first = pool.actors[0]
    assert pool.started(next(iter(pool.starting))) is True  # died: a fresh worker starts
    assert fake.killed == [first] and pool.actors[0] is not first and not pool.ready[0]
    assert pool.started(next(iter(pool.starting))) is False
    assert pool.ready[0] and pool.probed == {"identity": "x"} and not pool.starting
    pool.start(0)  # lost later: its deaths in a row count from 0 again
    assert pool.started(next(iter(pool.starting))) is True
    with pytest.raises(StageError, match="died before its component was built 2 times in a row"):
        pool.started(next(iter(pool.starting)))


def test_no_node_for_a_worker_fails_only_after_a_worker_was_lost(monkeypatch, caplog):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(ray_engine, "NODE_WAIT_S", 0.0)
    fake = FakeRay([{"Alive": True, "Resources": {"CPU": 0.0}}, {"Alive": False, "Resources": {"CPU": 2.0}}])
    engine = ray_engine.RayEngine(ExecutionOptions(engine="ray", num_cpus=1), None, None)  # type: ignore[arg-type]
    engine._ray, engine._resources = fake, {"num_cpus": 1.0, "num_gpus": 0.0}
    pool = WorkerPool(fake, lambda: FakeActor(ray.exceptions.ActorDiedError()), TASK, workers=1, max_retries=3)
    with caplog.at_level("WARNING", logger="selflearn"):
        engine._check_placeable(pool)  # never had a worker: it may be coming (a joined cluster)
    assert "waiting until one does" in caplog.text
    engine._started(pool, next(iter(pool.starting)))  # a worker died: the run lost one
    with pytest.raises(StageError, match=r"the live nodes have 0 CPU/0 GPU\), and none joined in 0 s"):
        engine._check_placeable(pool)
    fake.live.append({"Alive": True, "Resources": {"CPU": 1.0}})
    engine._check_placeable(pool)  # a node with room joined: Ray places the worker there


def main(kind: str, address: str, run_dir: str, marker: str, *models: str) -> None:
    """The driver, two workers on the cluster at ``address``. ``tiny``: the tiny-model run to
    the scores; ``echo``: the echo run to the generations, waiting 3 s (not 10 min) for a node."""
    execution = {"workers": 2, "address": address}
    if kind == "tiny":
        model, encoder = models
        Pipeline(config(Path(run_dir), Path(marker), model, encoder, "ray", **execution)).run(until="scores")
        return
    ray_engine.WAIT_S, ray_engine.NODE_WAIT_S = 1.0, 3.0
    cfg = echo_config(Path(run_dir), StallOnceEchoBackend(marker), "ray")
    cfg["execution"].update(execution)
    Pipeline(cfg).run(until="generations")


if __name__ == "__main__":
    main(*sys.argv[1:])
