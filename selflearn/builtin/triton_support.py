"""Whether Triton can run here: one answer for every Triton kernel of the built-in plugins (the
``hf`` backend's decoder kernels and the NLI scorers' fused DeBERTa attention).

Why a module of its own: the backend and the scorers are separate plugins, and neither should
import the other to ask; the kernels themselves import Triton only when they run, since CPU
installs may lack it."""

from __future__ import annotations

import os


def importable() -> bool:
    """Whether Triton imports (what every Triton kernel and ``torch.compile``'s GPU code need;
    the kernels run on CUDA, or on the CPU in Triton's interpreter for the tests)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels (``TRITON_INTERPRET=1``: on the CPU, for the
    tests). It cannot run every construct a GPU compile can (a loop bound read at run time),
    so kernels that use one take a compile-time twin here."""
    return os.environ.get("TRITON_INTERPRET") == "1"
