"""Stages that load their own models release the pipeline's backend first."""

from __future__ import annotations

from selflearn import Pipeline


class _Closing:
    def __init__(self) -> None:
        self.closed = 0

    def close(self) -> None:
        self.closed += 1


def test_release_closes_and_forgets_a_component(run_dir):
    pipeline = Pipeline(run_dir=run_dir, backend="echo")
    first = pipeline.ctx.component("backend")
    inner = _Closing()
    first.backend = inner  # the cached wrapper closes its inner backend
    pipeline.ctx.release("backend")
    assert inner.closed == 1
    assert pipeline.ctx.component("backend") is not first  # rebuilt on demand
    pipeline.ctx.release("judge")  # releasing an unbuilt slot is a no-op
