"""docs/scaling.md's "A Ray cluster", run: ``ray start --head`` in its own process session,
then ``selflearn run`` (another process) joins it by the head's GCS address and through the Ray
client (``ray://``), and writes what a local run writes.

The head runs with token authentication (a token of its own, as ``ray start`` does when the
head has one) on free ports and its own temporary folder, so it neither meets nor disturbs
another Ray on the machine; it is stopped by signalling the processes of its session only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
import yaml

import selflearn
from selflearn import Pipeline

from .helpers import history_run
from .test_ray import STAGE_FILES

ROOT = Path(selflearn.__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def session_pids(sid: int) -> list[int]:
    """The live (not zombie) processes of session ``sid``: the head's daemons outlive
    ``ray start``, and keep its session."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z" and int(fields[3]) == sid:
            pids.append(int(entry))
    return pids


def stop_session(sid: int) -> None:
    """SIGTERM, then SIGKILL after 2 s, to every process of the head's session, by PID."""
    for sig, wait in ((signal.SIGTERM, 2.0), (signal.SIGKILL, 5.0)):
        for pid in session_pids(sid):
            with contextlib.suppress(OSError):  # gone meanwhile
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while session_pids(sid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not session_pids(sid):
            return


@attrs.frozen
class Head:
    gcs: str  # HOST:PORT, for execution.address
    client: str | None  # ray://HOST:PORT (None: ray[client] is not installed)
    env: dict[str, str]  # what a driver needs: the token


@pytest.fixture(scope="module")
def head() -> Iterator[Head]:
    pytest.importorskip("ray")
    try:
        import grpc  # noqa: F401 - the Ray client's one dependency
        has_client = True
    except ImportError:
        has_client = False
    temp = tempfile.mkdtemp(prefix="slray-", dir="/tmp")  # short: Ray's socket paths live here
    gcs, client, *more = free_ports(8)
    token = uuid.uuid4().hex
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    # the workers import this checkout (CI installs it; here it may be a worktree)
    env = {**os.environ, **auth, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    flags = ["--node-manager-port", "--object-manager-port", "--metrics-export-port",
             "--dashboard-agent-listen-port", "--dashboard-agent-grpc-port", "--runtime-env-agent-port"]
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--num-cpus", "2",
           "--node-ip-address", "127.0.0.1", "--port", str(gcs), "--ray-client-server-port", str(client),
           "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", temp,
           *[x for flag, port in zip(flags, more, strict=True) for x in (flag, str(port))]]
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]
        yield Head(f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}" if has_client else None,
                   {**os.environ, **auth})
    finally:
        stop_session(proc.pid)
        shutil.rmtree(temp, ignore_errors=True)


def config(run_dir: Path, engine: str, **execution: Any) -> dict[str, Any]:
    """Real Wikipedia leads through components that load no model (the workers start in a
    second), so the test is about the cluster, not the models (tests/execution/test_ray.py
    runs real ones)."""
    return {**history_run(run_dir, engine, **execution),
            "question_generator": "template", "backend": "echo", "scorer": "lexical"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("cluster") / "local"
    Pipeline(config(run_dir, "local")).run(until="scores")
    return run_dir


def run_cli(cfg: dict[str, Any], path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``selflearn run`` in its own process (a driver, as a user starts one), to the scores."""
    path.write_text(yaml.safe_dump(cfg))
    return subprocess.run([sys.executable, "-m", "selflearn", "run", str(path), "--until", "scores"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("via", ["gcs", "client"])
def test_selflearn_run_joins_a_started_cluster_and_equals_a_local_run(head, via, reference, tmp_path):
    address = head.gcs if via == "gcs" else head.client
    if address is None:
        pytest.skip('the Ray client (ray://) needs pip install "ray[client]"')
    run_dir = tmp_path / "run"
    done = run_cli(config(run_dir, "ray", workers=2, address=address), tmp_path / "run.yaml", head.env)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in STAGE_FILES:
        assert (reference / name).read_bytes() == (run_dir / name).read_bytes(), name
    local, ray = (json.loads((d / "manifest.json").read_text()) for d in (reference, run_dir))
    assert ray["execution"] == {"engine": "ray", "workers": 2}
    for stage in ("questions", "generations", "scores"):
        assert local["stages"][stage]["fingerprint"] == ray["stages"][stage]["fingerprint"]
        per_worker = ray["stages"][stage]["summary"]["execution"]
        if stage == "questions":
            per_worker = per_worker["train"]
        assert all(k.startswith("pid-") for k in per_worker["per_worker"])  # the cluster's workers
    assert ray["stages"]["questions"]["summary"]["generator"] == local["stages"]["questions"]["summary"]["generator"]
