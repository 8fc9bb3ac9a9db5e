"""Generate the hooks reference (docs/hooks.md) from the hook specifications themselves.

The generated part (between markers) lists every hook of :class:`~.hookspecs.Hooks` with its
typed signature, whether it is ``firstresult``, and its full docstring, plus the ``register``
callable and :class:`~.hookspecs.RunInfo`; ``tests/core/test_docs.py`` fails when the file is
out of date, so the reference cannot drift from the specs.
"""

from __future__ import annotations

import inspect
import re

import attrs

from .docgen import replace_between
from .hookspecs import PROJECT, REGISTRATION_HOOKS, Hooks, Register, RunInfo
from .reference import _field_docs

BEGIN = "<!-- BEGIN GENERATED HOOKS -->"
END = "<!-- END GENERATED HOOKS -->"


def hook_names() -> list[str]:
    """The hook specs, in the order they are defined."""
    return [name for name, fn in vars(Hooks).items()
            if callable(fn) and hasattr(fn, f"{PROJECT}_spec")]


def _signature(fn: object, name: str) -> str:
    """``name(arg: type, *, kw: type = default) -> return`` with the annotations as written."""
    sig = inspect.signature(fn)  # type: ignore[arg-type]
    args: list[str] = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        if p.kind is p.KEYWORD_ONLY and "*" not in args:
            args.append("*")
        default = "" if p.default is p.empty else f" = {p.default!r}"
        args.append(f"{p.name}: {p.annotation}{default}")
    return f"{name}({', '.join(args)}) -> {sig.return_annotation}"


def _doc(obj: object) -> str:
    """The docstring, with Sphinx roles (``:class:`X```) turned into Markdown code."""
    return re.sub(r":\w+:`~?([^`]+)`", r"`\1`", inspect.cleandoc(inspect.getdoc(obj) or ""))


def _summary(name: str) -> str:
    """The first sentence of what the component must do (the docstring's second paragraph)."""
    paragraphs = _doc(getattr(Hooks, name)).split("\n\n")
    text = (paragraphs[1] if len(paragraphs) > 1 else paragraphs[0]).replace("\n", " ")
    first = text.split(". ")[0].rstrip(".") + "."
    return first.replace("|", "\\|")


def _hook_section(name: str) -> list[str]:
    fn = getattr(Hooks, name)
    opts = getattr(fn, f"{PROJECT}_spec")
    kind = next((k for k, h in REGISTRATION_HOOKS.items() if h == name), None)
    lines = [f"### `{name}`", "", "```python", f"@hookimpl\ndef {_signature(fn, name)}", "```", ""]
    facts = []
    if kind:
        facts.append(f"kind `{kind}`")
    if opts.get("firstresult"):
        facts.append("`firstresult`: the first non-None answer wins")
    if facts:
        lines += ["(" + "; ".join(facts) + ")", ""]
    return [*lines, _doc(fn), ""]


def _run_info() -> list[str]:
    docs = _field_docs(RunInfo)
    rows = [f"| `{f.name}` | `{f.type}` | {docs.get(f.name, '')} |" for f in attrs.fields(RunInfo)]
    return ["### `RunInfo`", "", _doc(RunInfo), "", "| field | type | meaning |", "|---|---|---|",
            *rows, ""]


def generate() -> str:
    """The Markdown reference of every hook spec."""
    out = [BEGIN, "", "## Registration hooks", ""]
    out += ["| hook | kind | summary |", "|---|---|---|"]
    for kind, name in REGISTRATION_HOOKS.items():
        out.append(f"| [`{name}`](#{name}) | `{kind}` | {_summary(name)} |")
    call = _signature(Register.__call__, "register")
    out += ["", "Each receives the `register` callable:", "", "```python", call, "```", "",
            _doc(Register.__call__), ""]
    for name in REGISTRATION_HOOKS.values():
        out += _hook_section(name)
    out += ["## Lifecycle and other hooks", ""]
    for name in hook_names():
        if name not in REGISTRATION_HOOKS.values():
            out += _hook_section(name)
    out += [*_run_info(), END]
    return "\n".join(out) + "\n"


def update_file(path: str) -> bool:
    """Rewrite the generated part of ``path``; return True if it changed."""
    return replace_between(path, BEGIN, END, generate())


if __name__ == "__main__":  # python -m selflearn.core.hookdocs docs/hooks.md
    import sys

    for target in sys.argv[1:] or ["docs/hooks.md"]:
        print(f"{target}: {'updated' if update_file(target) else 'up to date'}")
