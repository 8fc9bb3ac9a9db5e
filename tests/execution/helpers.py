"""Backends for the fault tests: the deterministic ``echo`` backend, plus a fault on cue.

They are given to the Pipeline as objects, so Ray pickles them (by reference to this module)
into every worker; a file in the test's temporary folder is the cue, shared by all processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from selflearn.builtin.backends.echo import EchoBackend, Options
from selflearn.core.errors import BackendError
from selflearn.core.protocols import GenerationParams, Prompt
from selflearn.core.records import Completion


class KillOnceBackend(EchoBackend):
    """Inside a Ray worker, the first call anywhere kills its own worker with ``ray.kill``."""

    def __init__(self, marker: str) -> None:
        super().__init__(Options())
        self.marker = marker

    def _first(self) -> bool:
        """True in exactly one process: the marker is created atomically (two workers starting
        their first shards at once both saw no marker with an exists-then-write check)."""
        try:
            fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        import ray

        if ray.is_initialized() and ray.get_runtime_context().get_actor_id() and self._first():
            ray.kill(ray.get_runtime_context().current_actor)  # mid-shard: nothing returned
            time.sleep(60)
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)


class FailOnCueBackend(EchoBackend):
    """Fails (like a server gone for good) on prompts naming ``topic`` while ``cue`` exists."""

    def __init__(self, cue: str, topic: str) -> None:
        super().__init__(Options())
        self.cue = cue
        self.topic = topic

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        if os.path.exists(self.cue) and any(self.topic in str(p) for p in prompts):
            raise BackendError(f"interrupted on cue at {self.topic!r}")
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)


def count_lines(path: str) -> tuple[int, int]:
    """(lines, distinct keys) of a cache file: equal when nothing was written twice."""
    import json

    with open(path) as f:
        keys: list[Any] = [json.loads(line)["k"] for line in f]
    return len(keys), len(set(keys))
