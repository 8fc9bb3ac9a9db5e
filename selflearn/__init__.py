"""selflearn: self-training of language models through knowledge detection.

``import selflearn`` stays fast: it imports neither torch nor any built-in component.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    "Pipeline": "selflearn.core.pipeline",
    "component": "selflearn.core.standalone",
    "Document": "selflearn.core.records",
    "Passage": "selflearn.core.records",
    "Question": "selflearn.core.records",
    "Completion": "selflearn.core.records",
    "Generations": "selflearn.core.records",
    "Scores": "selflearn.core.records",
    "PreferencePair": "selflearn.core.records",
    "SFTExample": "selflearn.core.records",
    "Verdict": "selflearn.core.records",
    "hookimpl": "selflearn.core.hookspecs",
    "SelflearnError": "selflearn.core.errors",
    "ConfigError": "selflearn.core.errors",
    "PluginError": "selflearn.core.errors",
}

__all__ = [
    "Completion",
    "ConfigError",
    "Document",
    "Generations",
    "Passage",
    "Pipeline",
    "PluginError",
    "PreferencePair",
    "Question",
    "SFTExample",
    "Scores",
    "SelflearnError",
    "Verdict",
    "__version__",
    "component",
    "hookimpl",
]

if TYPE_CHECKING:
    from .core.errors import ConfigError, PluginError, SelflearnError
    from .core.hookspecs import hookimpl
    from .core.pipeline import Pipeline
    from .core.records import (
        Completion,
        Document,
        Generations,
        Passage,
        PreferencePair,
        Question,
        Scores,
        SFTExample,
        Verdict,
    )
    from .core.standalone import component


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'selflearn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
