"""The Ray tests' shared small run (``history_run``) and backends: the deterministic ``echo``
backend, plus a fault on cue.

They are given to the Pipeline as objects, so Ray pickles them (by reference to this module)
into every worker; a file in the test's temporary folder is the cue, shared by all processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from selflearn.builtin.backends.echo import EchoBackend, Options
from selflearn.builtin.backends.hf.backend import HFBackend
from selflearn.builtin.backends.hf.backend import Options as HFOptions
from selflearn.core.errors import BackendError
from selflearn.core.protocols import GenerationParams, Prompt
from selflearn.core.records import Completion


def history_run(run_dir: Path, engine: str, **execution: Any) -> dict[str, Any]:
    """The small run the Ray tests share, without its components: 4 real Wikipedia History
    leads and 1 held out, a passage each, seed 7, questions in batches of 2, K = 2, one item a
    shard (so that the workers share several shards)."""
    return {
        "run_dir": str(run_dir),
        "seed": 7,
        "source": {"use": "wikipedia-offline", "options": {
            "categories": ["History"], "train_per_category": 4, "test_per_category": 1, "min_words": 40}},
        "passages": {"max_per_document_train": 1, "max_per_document_test": 1},
        "questions": {"batch_size": 2},
        "generations": {"k": 2, "chunk_size": 1},
        "execution": {"engine": engine, "shard_size": 1, **execution},
    }


#: how long StallOnceHFBackend holds its shard (far longer than taking a node away takes)
STALL_S = 120.0


def first_anywhere(marker: str, text: str = "") -> bool:
    """True in exactly one process: the marker is created atomically (two workers starting
    their first shards at once both saw no marker with an exists-then-write check). It holds
    ``text`` (by default the process id) and a newline, so a reader knows when it is whole."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{text or os.getpid()}\n")
    return True


def in_ray_actor() -> bool:
    """True inside a Ray actor (a worker), False in a driver or without Ray."""
    import ray

    return bool(ray.is_initialized() and ray.get_runtime_context().get_actor_id())


def stall_once(marker: str) -> None:
    """Inside a Ray worker, the first call anywhere writes its node's id to ``marker`` and
    stalls, so that its shard is in flight while a test takes that node away (finishing means
    it did not)."""
    if not in_ray_actor():
        return
    import ray

    if first_anywhere(marker, ray.get_runtime_context().get_node_id()):
        time.sleep(STALL_S)


class KillOnceBackend(EchoBackend):
    """Inside a Ray worker, the first call anywhere kills its own worker with ``ray.kill``."""

    def __init__(self, marker: str) -> None:
        super().__init__(Options())
        self.marker = marker

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        import ray

        if in_ray_actor() and first_anywhere(self.marker):
            ray.kill(ray.get_runtime_context().current_actor)  # mid-shard: nothing returned
            time.sleep(60)
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)


class StallOnce:
    """Put before a backend class: inside a Ray worker the first call anywhere writes
    ``marker`` and then stalls, so its shard is in flight for as long as the test needs to take
    the node away. In a driver (the local reference run) it is the plain backend: same identity,
    same bytes."""

    marker: str

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        stall_once(self.marker)
        return super().generate(prompts, params, n=n, sample_offset=sample_offset)  # type: ignore[misc]


class StallOnceHFBackend(StallOnce, HFBackend):
    """The ``hf`` backend, stalling once in a Ray worker."""

    def __init__(self, marker: str, model: str, seed: int, batch_size: int) -> None:
        super().__init__(HFOptions(batch_size=batch_size), model, seed)
        self.marker = marker


class StallOnceEchoBackend(StallOnce, EchoBackend):
    """The ``echo`` backend, stalling once in a Ray worker (no model to load)."""

    def __init__(self, marker: str) -> None:
        super().__init__(Options())
        self.marker = marker


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
