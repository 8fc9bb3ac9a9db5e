"""Stage ``questions`` (being built; see its issue)."""

from __future__ import annotations

from typing import Any

import attrs

from .base import Stage


@attrs.frozen
class QuestionsOptions:
    pass


class QuestionsStage(Stage):
    name = "questions"
    requires = ("passages",)
    options_class = QuestionsOptions

    def run(self) -> dict[str, Any]:
        raise NotImplementedError("stage questions is not built yet")
