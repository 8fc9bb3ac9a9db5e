"""The ``execution`` section's checks and errors, and the worker's cache forwarding (no Ray needed)."""

from __future__ import annotations

import json
import sys

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
