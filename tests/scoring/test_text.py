"""The offline sentence splitter shared by the chunker and the scorers."""

from __future__ import annotations

import re

import pytest

from selflearn.core.text import split_sentences


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Paris is big. It is old!  Is it? Yes.", ["Paris is big.", "It is old!", "Is it?", "Yes."]),
        ("Dr. Smith met Mr. Jones in St. Louis. They talked.", ["Dr. Smith met Mr. Jones in St. Louis.", "They talked."]),
        ("J. K. Rowling wrote it. The U.S. Army is large.", ["J. K. Rowling wrote it.", "The U.S. Army is large."]),
        ("Cities, e.g. Paris, i.e. big ones. See Fig. 2 here.", ["Cities, e.g. Paris, i.e. big ones.", "See Fig. 2 here."]),
        ("He was born c. 1452 in Vinci. He died in 1519.", ["He was born c. 1452 in Vinci.", "He died in 1519."]),
        ("1. First item.\n2. Second item.", ["1. First item.", "2. Second item."]),
        ('She said "Go home." Then she left.', ['She said "Go home."', "Then she left."]),
        ("It costs 3.5 dollars. Cheap.", ["It costs 3.5 dollars.", "Cheap."]),
        ("Wait... What happened?", ["Wait...", "What happened?"]),
        ("a lower-case start. after a period stays", ["a lower-case start. after a period stays"]),
        ("Line one\nLine two\n\n  \nLine three", ["Line one", "Line two", "Line three"]),
        ("No terminal punctuation", ["No terminal punctuation"]),
        ("", []),
        ("   \n ", []),
    ],
)
def test_split_sentences(text: str, expected: list[str]) -> None:
    assert split_sentences(text) == expected


def test_no_text_is_lost() -> None:
    text = "The Eiffel Tower (Fr. tour Eiffel) is in Paris. Built in 1889 by G. Eiffel's firm.\n- It is 330 m tall!"
    joined = " ".join(split_sentences(text))
    assert re.sub(r"\s+", "", joined) == re.sub(r"\s+", "", text)
