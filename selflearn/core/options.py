"""Validation of a component's options mapping into its options class.

A component declares its options as an attrs class (see :class:`Options`). The user's
mapping is converted field by field against the class's annotations by the one cattrs
converter of :mod:`selflearn.core.convert` (strict: scalars, Optional, Literal, lists, dicts,
nested options classes), so a mistake is reported with its config path:
``backend.options.max_new_tokens: expected an integer, got 'ten'``.

Every numeric option declares its range with :func:`bounded` (``k: int = bounded(10, ge=1,
le=10_000)``); :func:`check_bounds` checks a mapping of already-typed values against them, so a
value out of range is an error naming its path (``generations.k: must be >= 1, got 0``) when
the configuration is validated, before any work.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

import attrs

from .convert import structure
from .errors import ConfigError

T = TypeVar("T")


@attrs.frozen
class Options:
    """Base class for component options (an empty set of options)."""

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self, recurse=True)


#: the largest seed every consumer takes (numpy's, and so transformers' set_seed: 32 bits)
SEED_MAX = 2**32 - 1

#: the attrs field metadata key holding an option's declared range
BOUNDS = "bounds"
_RELATIONS = {
    "ge": (lambda v, b: v >= b, ">="),
    "gt": (lambda v, b: v > b, ">"),
    "le": (lambda v, b: v <= b, "<="),
    "lt": (lambda v, b: v < b, "<"),
}


def bounded(
    default: Any,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    **field_kwargs: Any,
) -> Any:
    """An attrs field with ``default`` whose numeric values must lie in the declared range
    (``ge``: >=, ``gt``: >, ``le``: <=, ``lt``: <). The range is checked by
    :func:`check_bounds` when a configuration is validated and shown in the generated reference;
    ``None`` (for ``int | None`` options) and non-numeric alternatives are not range-checked.
    Other ``attrs.field`` arguments (``validator``, ...) pass through."""
    limits = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)) if v is not None}
    if not limits:
        raise TypeError("bounded() needs at least one of ge, gt, le, lt")
    metadata = {**field_kwargs.pop("metadata", {}), BOUNDS: limits}
    return attrs.field(default=default, metadata=metadata, **field_kwargs)


def bounds_of(field: Any) -> dict[str, float]:
    """The declared range of an attrs field ({} when it declares none)."""
    return dict(field.metadata.get(BOUNDS, {}))


def describe_bounds(limits: Mapping[str, float]) -> str:
    """``>= 0 and <= 1`` for ``{"ge": 0, "le": 1}``."""
    return " and ".join(f"{_RELATIONS[k][1]} {_number(v)}" for k, v in limits.items())


def _number(value: float) -> str:
    """A bound as written in a config (``1``, ``0.5``, ``10000``)."""
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_bounds(cls: type, values: Mapping[str, Any], path: str) -> None:
    """Check typed option ``values`` (a subset of ``cls``'s fields, already coerced to their
    types) against the ranges the fields declare with :func:`bounded`; raise a
    :class:`ConfigError` naming ``path.field`` for the first value out of range. Kept apart
    from the type coercion so any converter can call it after converting."""
    for field in attrs.fields(cls):
        limits = bounds_of(field)
        if limits and field.name in values:
            _check_value(values[field.name], limits, f"{path}.{field.name}")


def _check_value(value: Any, limits: Mapping[str, float], path: str) -> None:
    """One value (each item of a list) against ``limits``."""
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_value(item, limits, f"{path}[{i}]")
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # None, "auto", ...: not a number to range-check
    if not math.isfinite(value):  # NaN compares false with everything, inf passes a ge
        raise ConfigError(f"must be a finite number {describe_bounds(limits)}, got {value!r}", path)
    for key, bound in limits.items():
        ok, _ = _RELATIONS[key]
        if not ok(value, bound):
            raise ConfigError(
                f"must be {describe_bounds(limits)}, got {value!r}; set it within that range "
                "(see docs/configuration.md)",
                path,
            )


#: prefixes of API keys and tokens (OpenAI, Anthropic, Hugging Face, GitHub, GitLab, Slack,
#: AWS, Google, Groq, Replicate, NVIDIA, Perplexity) and of an Authorization header value
#: (case-sensitive: HF_TOKEN is a name, hf_... a token)
_KEY_PREFIXES = re.compile(
    r"^(sk-|sk_|hf_|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abpr]-|AIza|gsk_|r8_|nvapi-|"
    r"pplx-|(?i:bearer)\s|(?:AKIA|ASIA)(?=[A-Z0-9]{16}$))"
)
#: what an environment variable's (or a secret plugin's) name is made of
_NAME_CHARS = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/-]*$")


def looks_like_secret(value: str) -> str | None:
    """Why ``value``, given where the NAME of an environment variable belongs, looks like a
    key itself (None when it looks like a name). The reason never quotes the value."""
    prefix = _KEY_PREFIXES.match(value)
    if prefix:
        return f"it starts with {prefix.group(1).strip()!r}, as API keys and tokens do"
    if not _NAME_CHARS.match(value):
        return "it is not shaped like an environment variable name (letters, digits and _)"
    classes = sum(bool(re.search(p, value)) for p in ("[a-z]", "[A-Z]", "[0-9]"))
    if len(value) >= 24 and "_" not in value and classes == 3:
        return "it is a long mix of upper- and lower-case letters and digits, like a key"
    if len(value) >= 32 and re.fullmatch(r"[0-9a-fA-F]+", value):
        return "it is a long hexadecimal string, like a key"
    return None


def check_secret_name(value: Any, path: str) -> None:
    """A :class:`ConfigError` when an option that takes the NAME of an environment variable
    (``api_key_env``) was given something that looks like the key itself; the message says what
    the option expects and never repeats the value, so the key reaches no log or file."""
    if not isinstance(value, str) or not value:
        return
    why = looks_like_secret(value)
    if why is not None:
        raise ConfigError(
            f"expects the NAME of an environment variable (or secret) that holds the key, e.g. "
            f"OPENAI_API_KEY, but the value given looks like a key itself ({why}; the value is "
            "not shown, used or stored). Put the key in an environment variable (export "
            "MY_KEY=...) and set this option to the variable's name (MY_KEY)",
            path,
        )


def secret_name(default: str | None) -> Any:
    """An attrs field holding the name of an environment variable (or secret) with a key:
    :func:`check_values` refuses a value that looks like the key itself."""
    return attrs.field(default=default, metadata={SECRET_NAME: True})


#: the attrs field metadata key marking an option that names an environment variable
SECRET_NAME = "secret_name"


def check_values(cls: type, values: Mapping[str, Any], path: str) -> None:
    """Every check of typed option ``values`` beyond their types: declared ranges
    (:func:`check_bounds`) and secret names (:func:`secret_name`); the converter calls it for
    every options class it builds, nested ones included."""
    check_bounds(cls, values, path)
    for field in attrs.fields(cls):
        if field.metadata.get(SECRET_NAME) and field.name in values:
            check_secret_name(values[field.name], f"{path}.{field.name}")


def build_options(cls: type[T], data: Mapping[str, Any] | None, path: str = "options") -> T:
    """Validate ``data`` into an instance of the attrs class ``cls`` (through the converter
    of :mod:`selflearn.core.convert`).

    Unknown keys, missing required options, wrong types and values out of their declared
    range are :class:`ConfigError`\\ s that name the dotted path and say what was expected.
    """
    if not attrs.has(cls):
        raise TypeError(f"{cls!r} is not an attrs options class")
    result: T = structure(dict(data or {}), cls, path)
    return result
