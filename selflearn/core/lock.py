"""A lock on the run directory, held by :meth:`selflearn.Pipeline.run` for the whole run.

Two processes running on one run directory would both redo every model call and race on the
manifest (a recorded hash could end up describing another process's artifact). The lock is a
small JSON file, ``.selflearn.lock``, created exclusively (``O_EXCL`` locally, fsspec's ``"xb"``
mode elsewhere, which memory://, local and recent object stores honour) and holding the
holder's process id, host, start time and a heartbeat that a thread refreshes every
``heartbeat`` seconds.

A second process stops at once with :class:`RunDirBusyError` naming the holder, or waits up to
``wait`` seconds for it to finish (``selflearn run --wait-for-lock SECONDS``). A lock left by a
process that died is stale and is taken over with a warning: on the same host when its process
no longer exists, on another host when its heartbeat is older than ``stale_after`` seconds.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import attrs

from .errors import ArtifactError, RunDirBusyError
from .store import ArtifactStore

log = logging.getLogger("selflearn.lock")

LOCK_NAME = ".selflearn.lock"
#: seconds between heartbeats of a held lock
HEARTBEAT_S = 30.0
#: a lock of another host whose heartbeat is older than this is stale
STALE_AFTER_S = 300.0


@attrs.frozen
class Holder:
    """What a lock file says about the process holding it."""

    pid: int
    host: str
    started: str
    heartbeat: float
    token: str

    def describe(self) -> str:
        """The holder in words, for the busy message and the take-over warning."""
        ago = max(0.0, time.time() - self.heartbeat)
        return (f"process {self.pid} on host {self.host!r}, running since {self.started} "
                f"(last heartbeat {ago:.0f}s ago)")

    def to_json(self) -> bytes:
        """The lock file's content."""
        return json.dumps(attrs.asdict(self), sort_keys=True).encode()


def _parse(data: bytes) -> Holder | None:
    """The holder a lock file names (None for a torn or foreign file)."""
    try:
        raw = json.loads(data)
        return Holder(int(raw["pid"]), str(raw["host"]), str(raw["started"]),
                      float(raw["heartbeat"]), str(raw["token"]))
    except (ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int, since: float | None = None) -> bool:
    """Whether the process with this id that took a lock at ``since`` (epoch seconds) still
    runs on this host. A zombie counts as dead, and so does a process that started after
    ``since``: its id was reused (after a reboot or a container restart)."""
    try:
        import psutil
    except ImportError:  # POSIX without psutil: signal 0 probes without signalling
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        proc = psutil.Process(pid)
        if since is not None and proc.create_time() > since + 1.0:
            return False
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _epoch(iso: str) -> float | None:
    """Epoch seconds of an ISO time (None when it does not parse)."""
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return None


class RunLock:
    """The lock of one run directory (see the module docstring). Use as a context manager."""

    def __init__(self, store: ArtifactStore, *, wait: float = 0.0, heartbeat: float = HEARTBEAT_S,
                 stale_after: float = STALE_AFTER_S, poll: float = 0.5) -> None:
        self.store = store
        self.path = store.path(LOCK_NAME)
        self.wait, self.heartbeat, self.stale_after, self.poll = wait, heartbeat, stale_after, poll
        self.holder: Holder | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    # -- acquiring ---------------------------------------------------------------------------
    def acquire(self) -> RunLock:
        """Take the lock, taking over a stale one; wait up to ``wait`` seconds for a live
        holder, then raise :class:`RunDirBusyError`."""
        deadline = time.monotonic() + self.wait
        me = Holder(os.getpid(), socket.gethostname(),
                    datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    time.time(), uuid.uuid4().hex)
        waiting = False
        while True:
            if self._create(me):
                self.holder = me
                self._start_heartbeat()
                return self
            data = self._read()
            if data is None:
                continue  # released between our attempt and the read: try again
            other = _parse(data)
            if self._stale(other):
                self._take_over(other, data)
                continue
            if time.monotonic() >= deadline:
                raise self._busy(other)
            if not waiting:
                waiting = True
                log.warning("run directory %s is in use by %s; waiting up to %.0fs for it",
                            self.store.url, other.describe() if other else "another process",
                            self.wait)
            time.sleep(self.poll)

    def _create(self, me: Holder) -> bool:
        """Create the lock file exclusively; False when it exists."""
        fs = self.store.fs
        try:
            fs.makedirs(self.store.root, exist_ok=True)
            if self.store.is_local:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
                with os.fdopen(fd, "wb") as f:
                    f.write(me.to_json())
                return True
            try:
                with fs.open(self.path, "xb") as f:
                    f.write(me.to_json())
                return True
            except (ValueError, NotImplementedError, TypeError):  # no exclusive mode here
                return self._create_checked(me)
        except FileExistsError:
            return False
        except OSError as exc:
            raise ArtifactError(
                f"cannot create the run lock {self.path!r} ({type(exc).__name__}: {exc}); check "
                "that the run directory is writable"
            ) from exc

    def _create_checked(self, me: Holder) -> bool:
        """Create without an exclusive mode: write when absent, then read back our token (a
        writer that raced us and won is seen on the read-back)."""
        if self.store.fs.exists(self.path):
            return False
        with self.store.fs.open(self.path, "wb") as f:
            f.write(me.to_json())
        mine = _parse(self._read() or b"")
        return mine is not None and mine.token == me.token

    def _read(self) -> bytes | None:
        """The lock file's bytes (None when there is none)."""
        try:
            with self.store.fs.open(self.path, "rb") as f:
                return bytes(f.read())
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ArtifactError(
                f"cannot read the run lock {self.path!r} ({type(exc).__name__}: {exc}); check "
                "the run directory's permissions"
            ) from exc

    def _stale(self, other: Holder | None) -> bool:
        """A dead holder on this host, a silent one elsewhere, or a torn file that is old."""
        if other is None:
            return self._age() > max(self.poll * 4, 5.0)  # a creator may be mid-write
        if other.host == socket.gethostname():
            return not pid_alive(other.pid, _epoch(other.started))
        return time.time() - other.heartbeat > self.stale_after

    def _age(self) -> float:
        """Seconds since the lock file was last modified (inf when unknown)."""
        try:
            modified = self.store.fs.modified(self.path)
        except (NotImplementedError, FileNotFoundError, OSError):
            return float("inf")
        return time.time() - modified.timestamp()

    def _take_over(self, other: Holder | None, seen: bytes) -> None:
        """Remove a stale lock, unless it changed since we read it."""
        if self._read() != seen:
            return
        log.warning(
            "run directory %s: taking over a stale lock left by %s", self.store.url,
            other.describe() + (" (that process no longer runs)" if other.host == socket.gethostname()
                                else f" (no heartbeat for over {self.stale_after:.0f}s)")
            if other else "an unreadable lock file",
        )
        try:
            self.store.fs.rm(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ArtifactError(
                f"cannot remove the stale run lock {self.path!r} ({type(exc).__name__}: {exc}); "
                "delete it by hand if its process is gone"
            ) from exc

    def _busy(self, other: Holder | None) -> RunDirBusyError:
        """The error for a live holder: who holds the directory and what to do."""
        who = other.describe() if other else "another process (its lock file is unreadable)"
        waited = f" after waiting {self.wait:.0f}s" if self.wait > 0 else ""
        return RunDirBusyError(
            f"run directory {self.store.url!r} is in use by {who}{waited}. Two runs on one "
            "directory would redo each other's model calls; wait for it to finish (or pass "
            "--wait-for-lock SECONDS), use another run_dir, or, if that process is gone, delete "
            f"{self.path}"
        )

    # -- holding and releasing ---------------------------------------------------------------
    def _start_heartbeat(self) -> None:
        """Refresh the heartbeat in a daemon thread while the lock is held."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name="selflearn-run-lock", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        """Refresh the heartbeat until released; stop if another process took the lock."""
        while not self._stop.wait(self.heartbeat):
            assert self.holder is not None
            current = _parse(self._read() or b"")
            if current is None or current.token != self.holder.token:
                log.error("run directory %s: the run lock was taken over by %s", self.store.url,
                          current.describe() if current else "nobody (it was deleted)")
                return
            self.holder = attrs.evolve(self.holder, heartbeat=time.time())
            try:
                self.store.write_bytes(LOCK_NAME, self.holder.to_json())
            except (OSError, ArtifactError) as exc:
                log.warning("run directory %s: cannot refresh the run lock (%s)", self.store.url, exc)

    def release(self) -> None:
        """Stop the heartbeat and delete the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self.holder is None:
            return
        current = _parse(self._read() or b"")
        if current is not None and current.token == self.holder.token:
            with contextlib.suppress(FileNotFoundError):
                self.store.fs.rm(self.path)
        self.holder = None
