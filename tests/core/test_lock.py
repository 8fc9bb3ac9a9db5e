"""The run-directory lock: two real processes on one run directory (the second stops at once
naming the holder, or waits), a lock left by a SIGKILLed process taken over with a warning, a
silent lock of another host taken over after the heartbeat timeout, on local and memory://
(fsspec) run directories."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import RunDirBusyError
from selflearn.core.lock import LOCK_NAME, RunLock
from selflearn.core.store import ArtifactStore
from tests.questions.conftest import Script, good
from tests.servers import FakeServer, openai_handler

ROOT = Path(__file__).resolve().parents[2]


def gated_handler(gate: threading.Event) -> Any:
    """An OpenAI-style question writer that answers only once ``gate`` is set, so the run
    using it holds its lock until the test lets it go on (no timing assumptions)."""
    script = Script(good)

    def respond(body: dict[str, Any], i: int) -> str:
        assert gate.wait(120), "the test never opened the gate"
        return script(body, i)

    return openai_handler(respond)


def write_config(tmp_path: Path, url: str) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir(exist_ok=True)
    for title in ("Alpha", "Beta"):
        (docs / f"{title}.txt").write_text(
            " ".join(f"{title} has property number {k} which is described here." for k in range(6)))
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        f"source: {{use: files, options: {{url: {docs}}}}}\n"
        "chunker: {use: sentences, options: {max_tokens: 40, min_tail_fraction: 0.0}}\n"
        f"question_generator: {{use: openai, options: {{base_url: '{url}/v1', model: test-model, "
        "backoff: 0.01, concurrency: 1}}\n"
    )
    return cfg


def start(cfg: Path, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "selflearn.cli", "run", str(cfg), "--until", "questions", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def wait_for_lock(path: Path, proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            try:
                return dict(json.loads(path.read_text()))
            except ValueError:
                pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("the first process never took the lock")


def test_a_second_process_stops_at_once_naming_the_holder(tmp_path: Path) -> None:
    gate = threading.Event()
    with FakeServer(gated_handler(gate)) as server:
        cfg = write_config(tmp_path, server.url)
        first = start(cfg)
        held = wait_for_lock(tmp_path / "run" / LOCK_NAME, first)
        assert held["pid"] == first.pid and held["host"] == socket.gethostname()
        t0 = time.monotonic()
        second = start(cfg)
        out, err = second.communicate(timeout=120)
        assert second.returncode == 2, err
        assert time.monotonic() - t0 < 30  # stopped, did not wait for the first run
        err = " ".join(err.split())
        assert f"is in use by process {first.pid} on host '{socket.gethostname()}'" in err
        assert f"running since {held['started']}" in err and "Traceback" not in err
        assert first.poll() is None  # the holder is still running, undisturbed
        gate.set()
        first_out, first_err = first.communicate(timeout=120)
        assert first.returncode == 0, first_err
        calls = len(server.requests)
        assert calls > 0 and not (tmp_path / "run" / LOCK_NAME).exists()  # released at the end
        # the same command again skips every stage and makes no call
        again = start(cfg)
        assert again.communicate(timeout=120) and again.returncode == 0
        assert len(server.requests) == calls


def test_a_second_process_can_wait_for_the_first(tmp_path: Path) -> None:
    gate = threading.Event()
    with FakeServer(gated_handler(gate)) as server:
        cfg = write_config(tmp_path, server.url)
        first = start(cfg)
        wait_for_lock(tmp_path / "run" / LOCK_NAME, first)
        second = start(cfg, "--wait-for-lock", "120")
        assert second.stderr is not None
        for line in second.stderr:  # the second run says it waits, while the first holds on
            if "waiting up to 120s" in line:
                assert f"in use by process {first.pid}" in line
                break
        else:
            raise AssertionError(f"the second run did not wait: {second.communicate()}")
        gate.set()
        out2, err2 = second.communicate(timeout=180)
        _, err1 = first.communicate(timeout=180)
        assert first.returncode == 0, err1
        assert second.returncode == 0, err2
        calls = len(server.requests)
        # the waiting process found every stage done: one run's worth of calls, not two
        manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
        assert calls == manifest["stages"]["questions"]["summary"]["generator"]["usage"]["requests"]
        assert re.search(r"questions\s+skipped", out2), out2


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gate = threading.Event()
    with FakeServer(gated_handler(gate)) as server:
        cfg = write_config(tmp_path, server.url)
        first = start(cfg)
        held = wait_for_lock(tmp_path / "run" / LOCK_NAME, first)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        gate.set()
        assert (tmp_path / "run" / LOCK_NAME).exists()  # a killed process cannot clean up
        from selflearn.core.config import load_yaml

        with caplog.at_level(logging.WARNING, logger="selflearn.lock"):
            Pipeline(load_yaml(cfg)).run(until="questions")
        assert f"taking over a stale lock left by process {held['pid']}" in caplog.text
        assert "no longer runs" in caplog.text
    assert not (tmp_path / "run" / LOCK_NAME).exists()
    assert (tmp_path / "run" / "questions.jsonl").exists()


def _foreign_lock(store: ArtifactStore, heartbeat_age: float) -> None:
    store.write_json(LOCK_NAME, {"pid": 1, "host": "gpu-node-7", "started": "2026-01-01T00:00:00+00:00",
                                 "heartbeat": time.time() - heartbeat_age, "token": "theirs"})


def test_fsspec_run_dir_locks_and_another_hosts_silent_lock(caplog: pytest.LogCaptureFixture) -> None:
    store = ArtifactStore("memory://lock-test/run")
    with RunLock(store) as held:
        assert held.holder is not None and store.exists(LOCK_NAME)
        with pytest.raises(RunDirBusyError, match=f"in use by process {os.getpid()}"):
            RunLock(store).acquire()
    assert not store.exists(LOCK_NAME)
    _foreign_lock(store, heartbeat_age=10)  # alive elsewhere: busy, named
    with pytest.raises(RunDirBusyError, match="process 1 on host 'gpu-node-7', running since 2026-01-01"):
        RunLock(store, stale_after=300).acquire()
    t0 = time.monotonic()
    with pytest.raises(RunDirBusyError, match="after waiting 1s"):
        RunLock(store, wait=1.0, poll=0.1).acquire()
    assert time.monotonic() - t0 >= 1.0
    _foreign_lock(store, heartbeat_age=600)  # silent for 10 minutes: stale
    with caplog.at_level(logging.WARNING, logger="selflearn.lock"), RunLock(store, stale_after=300) as lock:
        assert lock.holder is not None and lock.holder.token != "theirs"
    assert "no heartbeat for over 300s" in caplog.text


def test_heartbeat_refreshes_and_a_pipeline_run_holds_the_lock(tmp_path: Path) -> None:
    store = ArtifactStore(str(tmp_path / "hb"))
    with RunLock(store, heartbeat=0.05) as lock:
        first = json.loads(store.read_text(LOCK_NAME))["heartbeat"]
        time.sleep(0.3)
        assert json.loads(store.read_text(LOCK_NAME))["heartbeat"] > first
        assert lock.holder is not None
    # Pipeline.run takes the lock: a held lock makes it stop before any stage
    run_dir = tmp_path / "run"
    pipe = Pipeline({"run_dir": str(run_dir), "source": {"use": "files", "options": {"url": str(tmp_path)}}})
    with RunLock(ArtifactStore(str(run_dir))), pytest.raises(RunDirBusyError):
        pipe.run(until="documents")
    assert not (run_dir / "documents.jsonl").exists()


def test_a_reused_process_id_does_not_keep_a_dead_runs_lock(tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    """A lock whose pid now belongs to a process started later (a reboot, a container
    restart) is stale; the same pid with a start time after the process's own is live."""
    store = ArtifactStore(str(tmp_path / "run"))
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": time.time(), "token": "old"}
    store.write_json(LOCK_NAME, {**lock, "started": "2000-01-01T00:00:00+00:00"})
    with caplog.at_level(logging.WARNING, logger="selflearn.lock"), RunLock(store) as taken:
        assert taken.holder is not None and taken.holder.token != "old"
    assert f"stale lock left by process {os.getpid()}" in caplog.text
    store.write_json(LOCK_NAME, {**lock, "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())})
    with pytest.raises(RunDirBusyError):
        RunLock(store).acquire()
