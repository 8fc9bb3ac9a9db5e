"""Fixtures of the backend tests (helpers live in :mod:`tests.backends.helpers`)."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(scope="module")
def hf_backend(tiny_llama: str) -> Any:
    """An ``hf`` backend on the tiny random Llama (loaded once per test module)."""
    from selflearn.builtin.backends.hf import HFBackend, Options

    backend = HFBackend(Options(batch_size=16), tiny_llama, seed=42)
    yield backend
    backend.close()
