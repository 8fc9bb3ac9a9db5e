"""Test instrumentation for the multi-process training test (on PYTHONPATH only there).

Every process of the launch appends ``RANK KIND PATH`` to ``$SELFLEARN_WRITE_TRACE`` for each
model folder, tokenizer, lineage file and run-directory file it writes, so the test can check
that only rank 0 wrote, and each thing once.
"""

from __future__ import annotations

import os
from typing import Any

TRACE = os.environ.get("SELFLEARN_WRITE_TRACE")


def _log(kind: str, path: Any) -> None:
    if TRACE:
        with open(TRACE, "a") as f:
            f.write(f"{os.environ.get('RANK', '0')} {kind} {path}\n")


def _wrap(owner: Any, name: str, kind: str, arg: int) -> None:
    original = getattr(owner, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _log(kind, args[arg] if len(args) > arg else kwargs.get("save_directory", "?"))
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


if TRACE:
    import transformers

    from selflearn.builtin.trainers import lineage
    from selflearn.core.store import ArtifactStore

    _wrap(transformers.PreTrainedModel, "save_pretrained", "model", 1)
    _wrap(transformers.PreTrainedTokenizerBase, "save_pretrained", "tokenizer", 1)
    _wrap(lineage, "write_lineage", "lineage", 0)
    _wrap(ArtifactStore, "write_bytes", "run-file", 1)
