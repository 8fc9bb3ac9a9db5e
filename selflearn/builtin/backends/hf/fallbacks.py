"""Which optional piece of the shared decoder failed, as an exception type per piece.

Why: the shared decoder runs optional pieces (the Triton attention kernel, the Triton sampling
kernel, compiled token selection, compiled fused layers) that can fail on a machine where they
cannot build (no C compiler for Triton's launcher, an operation inductor cannot lower). Each
piece wraps its own errors in its own type, so the decoder turns off exactly the piece that
raised and goes on without it; an error of no piece (a bug, a bad input) is raised as it is.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class PieceFailed(Exception):
    """An optional piece raised; ``__cause__`` is the original error."""

    #: what the warning calls the piece
    piece = "an optional piece"

    @property
    def summary(self) -> str:
        """``Type: first line`` of the original error, for the warning."""
        cause = self.__cause__ or self
        text = str(cause).strip()
        first = text.splitlines()[0][:300] if text else ""
        return f"{type(cause).__name__}: {first}"


class AttentionKernelFailed(PieceFailed):
    piece = "the Triton attention kernel"


class SamplingKernelFailed(PieceFailed):
    piece = "the Triton sampling kernel"


class CompiledSelectionFailed(PieceFailed):
    piece = "compiling token selection"


class CompiledLayersFailed(PieceFailed):
    piece = "compiling the fused layers"


def _is_out_of_memory(exc: BaseException) -> bool:
    # out of memory is not a piece's failure: the backend retries with a smaller batch
    return type(exc).__name__ == "OutOfMemoryError"


@contextmanager
def piece(kind: type[PieceFailed], active: bool = True) -> Iterator[None]:
    """Inside: errors become ``kind`` (when ``active``); another piece's failure and running
    out of memory pass through unchanged."""
    try:
        yield
    except PieceFailed:
        raise
    except Exception as exc:
        if not active or _is_out_of_memory(exc):
            raise
        raise kind(str(exc)) from exc

