"""The one converter from plain values (YAML, JSON) to typed objects: options and records.

A :class:`cattrs.Converter` dispatches on the annotation; the hooks registered here are strict
where a configuration must be (``3.7`` is no integer, ``"abc"`` is no list of strings, an
unknown key is an error), and every failure is an :class:`Invalid` that grows its dotted path
as it travels up through lists and nested classes, so the user reads
``backend.options.stop[1]: expected a string, got 3``. Options classes are validated further
after conversion (declared ranges and secret names: :func:`selflearn.core.options.check_values`);
records (:class:`selflearn.core.records.Record`, marked ``__selflearn_record__``) report unknown
fields with their class name.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, Literal

import attrs
import cattrs

Hook = Callable[[Any, Any], Any]


class Invalid(Exception):
    """A value that does not fit its annotation; ``path`` is relative (``.name``, ``[2]``)."""

    def __init__(self, message: str, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def under(self, segment: str) -> Invalid:
        """The same error one level up: ``segment`` (``.field`` or ``[i]``) before the path."""
        return Invalid(self.message, segment + self.path)


_TYPE_WORDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def describe(tp: Any) -> str:
    """What an annotation expects, in words (``a list of strings``, ``one of 'a', 'b'``)."""
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(tp) or (Any,)
        if isinstance(inner, type) and attrs.has(inner):
            return "a list of mappings of options"
        return f"a list of {describe(inner).removeprefix('a ').removeprefix('an ')}s"
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        return "a mapping"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(tp) if a is not type(None))
    if isinstance(tp, type) and attrs.has(tp):
        return "a mapping of options"
    return getattr(tp, "__name__", str(tp))


def _expected(tp: Any, value: Any) -> Invalid:
    return Invalid(f"expected {describe(tp)}, got {value!r}")


# -- scalars ---------------------------------------------------------------------------------
def _bool(value: Any, tp: Any) -> bool:
    if isinstance(value, bool):
        return value
    raise _expected(bool, value)


def _int(value: Any, tp: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _expected(int, value)


def _float(value: Any, tp: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML 1.1 reads "1e-6" as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise _expected(float, value)


def _str(value: Any, tp: Any) -> str:
    if isinstance(value, str):
        return value
    raise _expected(str, value)


def _any(value: Any, tp: Any) -> Any:
    return value


# -- generic annotations -----------------------------------------------------------------------
def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _union_hook(tp: Any) -> Hook:
    arms = [a for a in typing.get_args(tp) if a is not type(None)]
    optional = len(arms) < len(typing.get_args(tp))

    def structure(value: Any, _: Any) -> Any:
        if value is None and optional:
            return None
        errors: list[Invalid] = []
        for arm in arms:
            try:
                return CONVERTER.structure(value, arm)
            except Invalid as exc:
                errors.append(exc)
        deeper = [e for e in errors if e.path]
        if deeper:  # the value had the right kind (a mapping of options) but a bad entry
            raise deeper[0]
        raise _expected(tp, value)

    return structure


def _literal_hook(tp: Any) -> Hook:
    allowed = typing.get_args(tp)

    def structure(value: Any, _: Any) -> Any:
        if value in allowed:
            return value
        raise _expected(tp, value)

    return structure


def _is_sequence(tp: Any) -> bool:
    return typing.get_origin(tp) in (list, tuple) or tp in (list, tuple)


def _sequence_hook(tp: Any) -> Hook:
    args = typing.get_args(tp)
    inner = args[0] if args else Any
    as_tuple = typing.get_origin(tp) is tuple or tp is tuple

    def structure(value: Any, _: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise _expected(tp, value)
        items = []
        for i, item in enumerate(value):
            try:
                items.append(CONVERTER.structure(item, inner))
            except Invalid as exc:
                raise exc.under(f"[{i}]") from None
        return tuple(items) if as_tuple else items

    return structure


def _is_mapping(tp: Any) -> bool:
    return typing.get_origin(tp) in (dict, Mapping) or tp in (dict, Mapping)


def _mapping(value: Any, tp: Any) -> dict[Any, Any]:
    if isinstance(value, Mapping):
        return dict(value)
    raise Invalid(f"expected a mapping, got {value!r}")


# -- attrs classes: options and records ---------------------------------------------------------
def _is_record(tp: Any) -> bool:
    return isinstance(tp, type) and bool(getattr(tp, "__selflearn_record__", False))


def _is_options(tp: Any) -> bool:
    return isinstance(tp, type) and attrs.has(tp) and not _is_record(tp)


def _fields(cls: type) -> tuple[dict[str, Any], dict[str, Any]]:
    """(init fields by name, resolved annotations) of an attrs class."""
    return {f.name: f for f in attrs.fields(cls) if f.init}, typing.get_type_hints(cls)


def _structure_fields(data: Mapping[str, Any], fields: dict[str, Any], hints: dict[str, Any],
                      missing: str) -> dict[str, Any]:
    """Each given field structured by its annotation; a required one absent is ``missing``."""
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name in data:
            try:
                kwargs[name] = CONVERTER.structure(data[name], hints.get(name, Any))
            except Invalid as exc:
                raise exc.under(f".{name}") from None
        elif field.default is attrs.NOTHING:
            raise Invalid(missing.format(what=describe(hints.get(name, Any))), f".{name}")
    return kwargs


def _options_hook(cls: type) -> Hook:
    fields, hints = _fields(cls)

    def structure(value: Any, _: Any) -> Any:
        from .errors import ConfigError
        from .options import check_values

        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a mapping of options, got {value!r}")
        unknown = sorted(set(value) - set(fields))
        if unknown:
            raise Invalid(f"unknown option(s) {', '.join(map(str, unknown))}; valid options are: "
                          + (", ".join(sorted(fields)) or "(none)"))
        kwargs = _structure_fields(value, fields, hints, "required option missing ({what})")
        try:
            check_values(cls, kwargs, "")
            return cls(**kwargs)
        except ConfigError as exc:  # a declared range or secret name: path relative to cls
            raise Invalid(str(exc)[len(exc.path) + 2 :], exc.path) from None
        except (ValueError, TypeError) as exc:  # an attrs validator
            raise Invalid(str(exc)) from None

    return structure


def _record_hook(cls: type) -> Hook:
    fields, hints = _fields(cls)

    def structure(value: Any, _: Any) -> Any:
        if isinstance(value, cls):
            return value
        if not isinstance(value, Mapping):
            raise Invalid(f"expected a {cls.__name__} record (a mapping), got {value!r:.80}")
        unknown = set(value) - set(fields)
        if unknown:
            raise Invalid(f"{cls.__name__}: unknown field(s) {sorted(unknown)}; expected a subset of "
                          f"{sorted(fields)}")
        return cls(**_structure_fields(value, fields, hints, "required field missing ({what})"))

    return structure


CONVERTER = cattrs.Converter()
for _tp, _hook in ((bool, _bool), (int, _int), (float, _float), (str, _str), (Any, _any)):
    CONVERTER.register_structure_hook(_tp, _hook)
CONVERTER.register_structure_hook_factory(_is_union, _union_hook)
CONVERTER.register_structure_hook_factory(lambda t: typing.get_origin(t) is Literal,
                                          _literal_hook)
CONVERTER.register_structure_hook_factory(_is_sequence, _sequence_hook)
CONVERTER.register_structure_hook_func(_is_mapping, _mapping)
CONVERTER.register_structure_hook_factory(_is_options, _options_hook)
CONVERTER.register_structure_hook_factory(_is_record, _record_hook)


def structure(value: Any, tp: Any, path: str) -> Any:
    """``value`` converted to ``tp``; a :class:`~.errors.ConfigError` at ``path`` if it does
    not fit (the dotted path of the offending entry)."""
    from .errors import ConfigError

    try:
        return CONVERTER.structure(value, tp)
    except Invalid as exc:
        raise ConfigError(exc.message, path + exc.path) from None
