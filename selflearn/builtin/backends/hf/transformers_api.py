"""The one place that knows how transformers names its key/value cache.

Why: transformers renamed the cache argument of every model and decoder layer from
``past_key_values`` to ``cache`` (5.2x; the old name warns "is deprecated and will be removed in
5.40") and the returned field with it. The decoders pass the cache under the name the installed
version declares, read it back the same way, and so run without deprecation warnings on every
version of the range pyproject declares (tested: 5.17, which knows only ``past_key_values``, and
5.25, which prefers ``cache``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

#: the names transformers has used for the cache argument, newest first
_NAMES = ("cache", "past_key_values", "past_key_value")


@functools.cache
def _argument_of(forward: Callable[..., Any]) -> str:
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):  # a builtin or an odd wrapper: the long-standing name
        return "past_key_values"
    return next((name for name in _NAMES if name in params), "past_key_values")


def cache_argument(module: Any) -> str:
    """The keyword under which ``module.forward`` (a model or a decoder layer) takes its cache."""
    return _argument_of(type(module).forward)


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for a call of ``module`` with the name its transformers version uses."""
    return {cache_argument(module): cache}


def returned_cache(output: Any) -> Any:
    """The cache a model's forward pass returned (``output.cache`` or, before the rename,
    ``output.past_key_values``)."""
    for name in ("cache", "past_key_values"):
        found = getattr(output, name, None)
        if found is not None:
            return found
    raise AttributeError(f"the model's output {type(output).__name__} holds no cache")
