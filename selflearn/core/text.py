"""Offline, dependency-free text helpers shared by the chunker and the scorers.

:func:`split_sentences` replaces spaCy's ``en_core_web_sm`` sentence splitter of the research
code. spaCy cannot be installed offline with its model, and two splitters (one for chunking,
one for scoring) would make the same text split differently in two places. The rules are the
usual regex ones, tuned not to split inside abbreviations ("Dr. Smith", "e.g. Paris",
"c. 1500", "U.S. Army"), initials ("J. K. Rowling") or list markers ("1. First"):

- every line break ends a sentence (answers with bullet lists, Wikipedia paragraphs);
- ``.``, ``!``, ``?`` (and runs such as ``?!`` or ``...``), optionally followed by closing
  quotes or brackets, end a sentence when whitespace follows and the next word does not start
  with a lower-case letter;
- a ``.`` does not end a sentence after a known abbreviation, a single letter (an initial), a
  dotted acronym (``U.S.``, ``e.g.``), or when the sentence so far is only a list marker.

The signature ``split_sentences(text: str) -> list[str]`` is stable: other modules import it.
"""

from __future__ import annotations

import re

__all__ = ["split_sentences", "ABBREVIATIONS"]

#: lower-cased abbreviations (without the final dot) usually followed, mid-sentence, by a
#: capitalised word or a number. Words that often end a sentence ("etc", "Inc", "Jr") are left
#: out on purpose: mid-sentence they are followed by a lower-case word, which never splits.
ABBREVIATIONS: frozenset[str] = frozenset(
    (
        "mr", "mrs", "ms", "mx", "dr", "prof", "st", "mt", "ft", "vs", "cf", "al", "fig", "figs",
        "no", "nos", "vol", "vols", "pp", "ca", "approx", "gen", "col", "lt", "sgt", "capt",
        "cmdr", "adm", "gov", "sen", "rep", "rev", "hon", "pres", "supt", "det", "insp", "messrs",
        "mme", "mlle", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
        "nov", "dec", "e.g", "i.e", "viz", "op", "ed", "eds", "eq", "eqs", "ch", "sec", "art",
        "dept", "univ", "est", "ps",
    )
)

# a terminator run, optional closing quotes/brackets, then the whitespace after it
_BOUNDARY = re.compile(r"([.!?]+)([\"'\u201d\u2019)\]]*)(\s+)")
_ACRONYM = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]?$")
_LIST_MARKER = re.compile(r"^\(?(?:\d{1,3}|[A-Za-z]|[ivxIVX]{1,4})[.)]$")
_LEADING_PUNCT = "\"'([{\u201c\u2018"


def _is_protected_period(sentence_so_far: str, token: str) -> bool:
    """True if the ``.`` ending ``token`` belongs to an abbreviation, not a sentence end."""
    if _LIST_MARKER.match(sentence_so_far.strip()):
        return True
    word = token.lstrip(_LEADING_PUNCT)
    if not word.endswith("."):
        return False
    stem = word.rstrip(".")
    if not stem:
        return False
    if stem.lower() in ABBREVIATIONS:
        return True
    if len(stem) == 1 and stem.isalpha():  # an initial: "J. K. Rowling"
        return True
    return bool(_ACRONYM.match(word))  # "U.S.", "e.g.", "Ph.D."


def _split_line(line: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(line):
        end = match.end()
        if end >= len(line):
            break
        nxt = line[end]
        if nxt.islower():
            continue
        head = line[start : match.start(2)]  # the sentence so far, up to the terminator
        if match.group(1) == ".":
            token = head.rsplit(None, 1)[-1] if head.strip() else ""
            if _is_protected_period(head, token):
                continue
        sentence = line[start : match.start(3)].strip()
        if sentence:
            sentences.append(sentence)
        start = end
    tail = line[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into stripped, non-empty sentences, in order.

    Line breaks always separate sentences. No text is lost: joining the result with spaces
    gives back every non-whitespace character of the input, in order.
    """
    sentences: list[str] = []
    for line in text.splitlines():
        if line.strip():
            sentences.extend(_split_line(line.strip()))
    return sentences
