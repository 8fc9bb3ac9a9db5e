"""The generated configuration reference in docs/ matches the code."""

from __future__ import annotations

from pathlib import Path

from selflearn.core.reference import BEGIN, END, generate, options_table

ROOT = Path(__file__).resolve().parents[2]


def test_configuration_reference_is_up_to_date():
    text = (ROOT / "docs" / "configuration.md").read_text()
    current = text[text.index(BEGIN) : text.index(END) + len(END)] + "\n"
    assert current == generate(), "run: .venv/bin/python -m selflearn.core.reference"


def test_options_table_reads_field_comments():
    from selflearn.builtin.backends.echo import Options

    table = options_table(Options)
    assert "| `sample_words` | `int` (>= 1 and <= 100000) | `12` | words per sampled answer |" in table


def test_hooks_reference_is_up_to_date():
    from selflearn.core import hookdocs

    text = (ROOT / "docs" / "hooks.md").read_text()
    current = text[text.index(hookdocs.BEGIN) : text.index(hookdocs.END) + len(hookdocs.END)] + "\n"
    assert current == hookdocs.generate(), "run: .venv/bin/python -m selflearn.core.hookdocs docs/hooks.md"


def test_hooks_reference_covers_every_hook_with_its_full_docstring():
    import inspect

    from selflearn.core.hookdocs import generate, hook_names
    from selflearn.core.hookspecs import Hooks

    text = generate()
    names = hook_names()
    assert "register_evaluators" in names and "resolve_secret" in names and len(names) == 12
    for name in names:
        assert f"### `{name}`" in text
        last_line = inspect.cleandoc(getattr(Hooks, name).__doc__).splitlines()[-1]
        assert last_line.strip() in text, name
    assert "register(name: str, factory: Any, *, options: Any = None" in text
