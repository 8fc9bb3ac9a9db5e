"""The ``execution`` section's checks and errors, and the worker's cache forwarding (no Ray needed)."""

from __future__ import annotations

import json
import sys
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.cli import main
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import ConfigError
from selflearn.core.execution import Task
from selflearn.core.execution.worker import RecordingCache


@pytest.mark.parametrize(
    ("section", "path", "words"),
    [
        ({"engine": "spark"}, "execution.engine", "one of 'local', 'ray'"),
        ({"workers": 0}, "execution.workers", ">= 1"),
        ({"workers": "many"}, "execution.workers", "'auto'"),
        ({"shard_size": 0}, "execution.shard_size", ">= 1"),
        ({"nodes": 3}, "execution", "unknown option(s) nodes"),
        ("ray", "execution", "expected a mapping"),
    ],
)
def test_bad_execution_values_name_their_path(tmp_path, section, path, words):
    with pytest.raises(ConfigError) as info:
        Pipeline(run_dir=str(tmp_path / "run"), execution=section, load_entry_points=False)
    assert str(info.value).startswith(path + ":") and words in str(info.value)


def test_ray_not_installed_is_a_clear_error_with_the_fix(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({"run_dir": str(tmp_path / "run"), "source": "files",
                                  "execution": {"engine": "ray"}}))
    assert main(["run", str(config), "--until", "documents"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the CLI wraps its lines
    assert "execution.engine" in err and 'pip install "selflearn[ray]"' in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "manifest.json").exists()  # failed before any stage


def test_unreachable_cluster_is_a_clear_error(tmp_path, capsys):
    pytest.importorskip("ray")
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pipe = Pipeline(run_dir=str(tmp_path / "run"), load_entry_points=False,
                    execution={"engine": "ray", "address": f"ray://127.0.0.1:{port}"})
    with pytest.raises(ConfigError) as info:
        pipe.ctx.engine.probe(Task("backend", "selflearn.core.stages.generations:generate_shard", "x"))
    message = str(info.value)
    assert message.startswith("execution.address:") and f"127.0.0.1:{port}" in message
    assert "ray start --head" in message


def test_a_worker_cache_reads_the_run_cache_and_queues_new_entries(tmp_path):
    path = str(tmp_path / "generations.jsonl")
    run_cache = JsonlCache(path)
    run_cache.put("old", {"text": "cached"})
    worker = RecordingCache(path)
    assert worker.get("old") == {"text": "cached"}
    worker.put_many([("new", 1), ("newer", 2)])
    assert worker.get("new") == 1
    assert worker.drain() == [("new", 1), ("newer", 2)]
    assert worker.drain() == []
    # the worker never wrote the file: only the driver appends
    with open(path) as f:
        assert len(f.read().splitlines()) == 1


def _listening() -> Any:
    """A socket that accepts connections (the port "answers") but speaks no Ray."""
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def _probe_error(tmp_path: Any, address: str) -> str:
    pipe = Pipeline(run_dir=str(tmp_path / "run"), load_entry_points=False,
                    execution={"engine": "ray", "address": address})
    with pytest.raises(ConfigError) as info:
        pipe.ctx.engine.probe(Task("backend", "selflearn.core.stages.generations:generate_shard", "x"))
    return str(info.value)


def test_ray_client_address_without_the_client_extra_names_the_fix(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    monkeypatch.setitem(sys.modules, "grpc", None)  # `import grpc` now raises ImportError
    message = _probe_error(tmp_path, "ray://127.0.0.1:10001")
    assert message.startswith("execution.address:") and "'ray://127.0.0.1:10001'" in message
    assert 'pip install "ray[client]==' in message


@pytest.mark.parametrize("mode", ["", "token"])
def test_a_cluster_refusing_the_driver_points_at_the_token(tmp_path, monkeypatch, mode):
    ray = pytest.importorskip("ray")

    def refuse(**kwargs: Any) -> None:
        raise ConnectionError("Failed to connect to Ray cluster")

    monkeypatch.setattr(ray, "init", refuse)
    monkeypatch.setenv("RAY_AUTH_MODE", mode)
    with _listening() as server:
        address = f"127.0.0.1:{server.getsockname()[1]}"
        message = _probe_error(tmp_path, address)
    assert message.startswith(f"execution.address: the Ray cluster at '{address}' answers")
    assert "ray get-auth-token" in message
    assert ("RAY_AUTH_MODE=token" in message) == (mode != "token")


class FakeRay:
    """``ray.init`` failing ``fails`` times with ``error``, then connecting."""

    def __init__(self, fails: int, error: Exception) -> None:
        self.fails, self.error, self.inits, self.shutdowns = fails, error, 0, 0

    def init(self, **kwargs: Any) -> None:
        self.inits += 1
        if self.inits <= self.fails:
            raise self.error

    def shutdown(self) -> None:
        self.shutdowns += 1


RACE = ConnectionAbortedError("Initialization failure from server: Traceback ... RuntimeError: "
                              "Starting Ray client server failed. See ray_client_server_23000.err")


def test_the_ray_client_server_race_is_tried_again(monkeypatch):
    from selflearn.core.execution import ray_engine

    fake = FakeRay(fails=ray_engine.CLIENT_TRIES - 1, error=RACE)
    ray_engine._connect(fake, "ray://head:10001")
    assert fake.inits == ray_engine.CLIENT_TRIES and fake.shutdowns == ray_engine.CLIENT_TRIES - 1
    # every try lost: the error says what happened, not "check your token"
    fake = FakeRay(fails=ray_engine.CLIENT_TRIES, error=RACE)
    with pytest.raises(ConnectionError) as info:
        ray_engine._connect(fake, "ray://head:10001")
    message = ray_engine._refused("ray://head:10001", str(info.value))
    assert "ray-project/ray#63202" in message and "token" not in message
    # another connection error is not tried again
    fake = FakeRay(fails=1, error=ConnectionError("ray client connection timeout"))
    with pytest.raises(ConnectionError):
        ray_engine._connect(fake, "ray://head:10001")
    assert fake.inits == 1


def test_a_ray_job_with_a_working_dir_refuses_relative_run_paths(tmp_path, monkeypatch):
    from selflearn.core.execution.worker import WorkerSpec

    monkeypatch.chdir(tmp_path)
    job = {"runtime_env": {"working_dir": "gcs://_ray_pkg_0123.zip"}, "metadata": {}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(job))
    with pytest.raises(ConfigError) as info:
        Pipeline(run_dir="runs/x", load_entry_points=False)
    message = str(info.value)
    assert message.startswith("run_dir: 'runs/x' is relative") and str(tmp_path) in message
    with pytest.raises(ConfigError, match="^cache_dir:"):
        Pipeline(run_dir=str(tmp_path / "run"), cache_dir="cache", load_entry_points=False)
    # absolute paths and URLs are kept; a job without a working dir runs where it was started
    Pipeline(run_dir=str(tmp_path / "run"), load_entry_points=False)
    Pipeline(run_dir="memory://selflearn-job-test", load_entry_points=False)
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps({"runtime_env": {}}))
    Pipeline(run_dir="runs/x", load_entry_points=False)
    # a worker is given the driver's cache folder as an absolute path
    assert WorkerSpec(config={}, slots={}, cache_dir="runs/x/cache").cache_dir == str(tmp_path / "runs/x/cache")


def test_usage_sums_and_differences_leaf_by_leaf():
    from selflearn.core.execution import usage

    before = {"requests": 2, "cost_usd": 0.1, "model": "m", "generated": 3,
              "replicas": {"a": {"prompts": 1}}}
    after = {"requests": 5, "cost_usd": 0.3, "model": "m", "generated": None,
             "replicas": {"a": {"prompts": 4}, "b": {"prompts": 2}}}
    delta = usage.subtract(after, before)
    assert delta == {"requests": 3, "cost_usd": pytest.approx(0.2), "model": "m", "generated": None,
                     "replicas": {"a": {"prompts": 3}, "b": {"prompts": 2}}}
    total = usage.add(usage.add({}, delta), delta)
    assert total["requests"] == 6 and total["replicas"] == {"a": {"prompts": 6}, "b": {"prompts": 4}}
    assert total["generated"] is None  # a counter the component could not keep stays unknown
    assert usage.rounded({"x": 0.1 + 0.2}) == {"x": 0.3}
    assert usage.add_into(total, None) is total


def _ray_engine(**options: Any) -> Any:
    from selflearn.core.execution import ExecutionOptions
    from selflearn.core.execution.ray_engine import RayEngine

    return RayEngine(ExecutionOptions(engine="ray", **options), run=None, spec=None)  # type: ignore[arg-type]


@pytest.mark.parametrize(("options", "cluster", "path", "fix"), [
    ({"num_gpus": 0.5}, {"CPU": 2.0}, "execution.num_gpus", "set execution.num_gpus: 0"),
    ({"workers": 3, "num_gpus": 1}, {"CPU": 8.0, "GPU": 2.0}, "execution.num_gpus", "lower execution.workers"),
    ({"workers": 3}, {"CPU": 2.0}, "execution.num_cpus", "lower execution.workers"),
])
def test_workers_a_started_cluster_can_never_place_are_refused(options, cluster, path, fix):
    """Ray keeps an actor whose resources no node has pending without an error: the stage would
    wait forever. On the Ray this run started, that is a ConfigError naming the option."""
    engine = _ray_engine(**options)
    engine._started_ray = True
    with pytest.raises(ConfigError) as info:
        engine._size(cluster)
    message = str(info.value)
    assert message.startswith(f"{path}:") and "waiting forever" in message and fix in message


def test_workers_that_fit_or_a_joined_cluster_pass(caplog):
    engine = _ray_engine(workers=2, num_gpus=0.5)
    engine._started_ray = True
    engine._size({"CPU": 16.0, "GPU": 1.0})  # two workers sharing the one GPU fit
    assert engine._workers == 2 and engine._resources == {"num_cpus": 1.0, "num_gpus": 0.5}
    joined = _ray_engine(num_gpus=1)  # a cluster joined by address may add GPU nodes later
    with caplog.at_level("WARNING", logger="selflearn"):
        joined._size({"CPU": 2.0})
    assert "wait until the cluster has them" in caplog.text


def test_fractional_gpus_on_a_cpu_only_machine_exit_2_instead_of_hanging(tmp_path):
    """From the shell, on this machine without a GPU: the run stops with the fix, no hang."""
    pytest.importorskip("ray")
    import subprocess

    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "run_dir": str(tmp_path / "run"),
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History"], "train_per_category": 2, "test_per_category": 1, "min_words": 40}},
        "question_generator": "template", "backend": "echo",
        "execution": {"engine": "ray", "num_gpus": 0.5}}))
    done = subprocess.run([sys.executable, "-m", "selflearn", "run", str(config), "--until", "questions"],
                          capture_output=True, text=True, timeout=180)
    err = " ".join(done.stderr.split())
    assert done.returncode == 2, err[-2000:]
    assert "execution.num_gpus" in err and "set execution.num_gpus: 0" in err and "Traceback" not in err
