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
    assert "| `sample_words` | `int` (>= 1) | `12` | words per sampled answer |" in table
