"""A run started by ``accelerate launch`` or ``torchrun``: which process this is.

Both launchers set ``RANK`` and ``WORLD_SIZE`` for every process they start; torch is not
imported to read them. In such a run the main process (rank 0) holds the run directory's lock,
runs every stage and writes every file; the other processes wait for the stages before
``train`` to be done, take part in training (DDP, FSDP or DeepSpeed through accelerate) and
stop after it.
"""

from __future__ import annotations

import os


def _int_env(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def world_size() -> int:
    """Processes in the launch (1 outside accelerate launch / torchrun)."""
    return max(1, _int_env("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank (0: the main process)."""
    return _int_env("RANK", 0)


def is_main_process() -> bool:
    """True in a single-process run and in the launch's rank 0."""
    return world_size() == 1 or rank() == 0
