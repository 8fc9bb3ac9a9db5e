"""A small local Ray cluster (2 CPUs, no dashboard) shared by every Ray test of the session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.scoring.conftest import build_tiny_encoder


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    """Ray started once; its workers inherit this process's environment (PYTHONPATH, offline HF)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("encoder")))
