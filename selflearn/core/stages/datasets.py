"""Stage ``datasets`` (being built; see its issue)."""

from __future__ import annotations

from typing import Any

import attrs

from .base import Stage


@attrs.frozen
class DatasetsOptions:
    pass


class DatasetsStage(Stage):
    name = "datasets"
    requires = ("scores",)
    options_class = DatasetsOptions

    def run(self) -> dict[str, Any]:
        raise NotImplementedError("stage datasets is not built yet")
