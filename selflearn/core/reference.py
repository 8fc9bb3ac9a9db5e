"""Generate the configuration reference from the options classes themselves.

docs/configuration.md embeds this output between markers, and a test regenerates it, so the
reference cannot drift from the code. Descriptions come from the ``#:`` comment lines above
each attrs field.
"""

from __future__ import annotations

import inspect
import re
import typing
from typing import Any

import attrs

from .docgen import replace_between
from .execution import ExecutionOptions
from .options import bounds_of, describe_bounds
from .plugins import PluginHost
from .registry import load_object
from .stages.base import STAGE_ORDER

BEGIN = "<!-- BEGIN GENERATED REFERENCE -->"
END = "<!-- END GENERATED REFERENCE -->"


def _field_docs(cls: type) -> dict[str, str]:
    """Map field name -> the ``#:`` comment lines right above its definition (inherited
    fields take the comment from the base class that defines them)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[1:]):
        if attrs.has(klass):
            docs.update(_own_field_docs(klass))
    docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    docs: dict[str, str] = {}
    pending: list[str] = []
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith("#:"):
            pending.append(stripped[2:].strip())
            continue
        match = re.match(r"([A-Za-z_]\w*)\s*:", stripped)
        if match and pending:
            docs[match.group(1)] = " ".join(pending)
        if not stripped.startswith("#"):
            pending = []
    return docs


def _type_name(tp: Any) -> str:
    text = str(tp) if not isinstance(tp, type) else tp.__name__
    text = re.sub(r"typing\.", "", text)
    text = text.replace("NoneType", "None")
    return re.sub(r"<class '([\w.]+)'>", lambda m: m.group(1).rsplit(".", 1)[-1], text)


def _default(field: attrs.Attribute) -> str:
    default: Any = field.default
    if default is attrs.NOTHING:
        return "**required**"
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type,unused-ignore]
        factory: Any = default.factory
        try:
            default = factory()
        except TypeError:
            return "(computed)"
    if attrs.has(type(default)):
        return "(see nested options)"
    return f"`{default!r}`"


def options_table(cls: type | None) -> str:
    if cls is None or not attrs.has(cls):
        return "_No options._\n"
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 - a forward reference we cannot resolve: show raw
        hints = {}
    docs: dict[str, str] = {}
    for base in reversed(cls.__mro__):  # inherited fields keep their comments (subclass wins)
        if attrs.has(base):
            docs.update(_field_docs(base))
    rows = ["| option | type | default | meaning |", "|---|---|---|---|"]
    for field in attrs.fields(cls):
        if not field.init:
            continue
        tp = _type_name(hints.get(field.name, field.type))
        desc = docs.get(field.name, "").replace("|", "\\|")
        limits = bounds_of(field)
        rng = f" ({describe_bounds(limits)})" if limits else ""
        rows.append(f"| `{field.name}` | `{tp}`{rng} | {_default(field)} | {desc} |")
    if len(rows) == 2:
        return "_No options._\n"
    return "\n".join(rows) + "\n"


def generate() -> str:
    """The Markdown reference of every stage section and built-in component's options."""
    out = [BEGIN, "", "## `execution:`", "",
           "Where the model-calling stages run ([scaling.md](scaling.md)).", "",
           options_table(ExecutionOptions), "", "## Stage sections", ""]
    for name, ref in STAGE_ORDER:
        cls = load_object(ref, f"stage {name}")
        out += [f"### `{name}:`", "", options_table(cls.options_class), ""]
    from .rounds_parts import RoundsOptions

    out += ["## Self-training in rounds", "",
            "`rounds: N` or the section below (docs/rounds.md).", "",
            "### `rounds:`", "", options_table(RoundsOptions), ""]
    out += ["## Built-in components", ""]
    host = PluginHost(load_entry_points=False)
    kind = None
    for spec in host.components():
        if spec.kind != kind:
            kind = spec.kind
            out += [f"### {kind.replace('_', ' ')}s", ""]
        out += [f"#### `{spec.name}`", "", spec.description + ".", ""]
        out += [options_table(spec.load_options_class()), ""]
    out.append(END)
    return "\n".join(out) + "\n"


def update_file(path: str) -> bool:
    """Rewrite the generated part of ``path``; return True if it changed."""
    return replace_between(path, BEGIN, END, generate())


if __name__ == "__main__":  # python -m selflearn.core.reference docs/configuration.md
    import sys

    for target in sys.argv[1:] or ["docs/configuration.md"]:
        print(f"{target}: {'updated' if update_file(target) else 'up to date'}")
