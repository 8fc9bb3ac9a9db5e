"""The one way generated reference pages are kept current.

docs/configuration.md and docs/hooks.md each hold a generated part between two marker comments;
the text around it is written by hand. Both generators replace only that part, so the tests that
check the pages are current and the commands that rewrite them agree on what "current" means.
"""

from __future__ import annotations


def replace_between(path: str, begin: str, end: str, generated: str) -> bool:
    """Put ``generated`` (which starts with ``begin`` and ends with ``end`` and a newline) in
    place of the marked part of the file at ``path``; return True if the file changed."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start, stop = text.find(begin), text.find(end)
    if start < 0 or stop < 0:
        raise ValueError(f"{path}: markers {begin!r} / {end!r} not found")
    new = text[:start] + generated + text[stop + len(end) + 1 :]
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return new != text
