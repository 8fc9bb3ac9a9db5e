"""Stage ``train`` (being built; see its issue)."""

from __future__ import annotations

from typing import Any

import attrs

from .base import Stage


@attrs.frozen
class TrainOptions:
    pass


class TrainStage(Stage):
    name = "train"
    requires = ("datasets",)
    options_class = TrainOptions

    def run(self) -> dict[str, Any]:
        raise NotImplementedError("stage train is not built yet")
