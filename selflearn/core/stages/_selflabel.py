"""Self-labelled SFT rows (method.md 6.1, D_SFT): the base model answers without the passage.

The prompt is a plain few-shot text, "### Instruction: q" / "### Answer: a" blocks separated
by blank lines, the shots shuffled per question (seeded by the question id, so a re-run builds
the same prompt and hits the generation cache). An answer must pass the research code's
quality checks, else it is sampled again (up to ``retries`` attempts):

1. it is cut at the first ``###`` (the model starting the next instruction);
2. it is rejected if it hit ``max_new_tokens`` (finish_reason "length");
3. it is rejected if it repeats itself: among the last 20% of its sentences (lines, when it
   has several lines), one whose word set without stop words has a Jaccard similarity >= 0.7
   with another sentence (>= 0.5 when both sets have at most 5 words);
4. a dangling last sentence (not ending in . or a quote) is dropped when the answer is long
   (more than ``max_new_tokens - 50`` tokens) and has more than one sentence;
5. it is rejected if two or more of its sentences are exact duplicates;
6. it is rejected if empty.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from ..hashing import seed_from
from ..records import Completion
from ..text import split_sentences

#: the few-shot pool: 10 hand-written question/answer pairs on the research code's topics
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("What does RNA editing do to an RNA molecule?",
     "RNA editing changes the nucleotide sequence of an RNA molecule after it has been "
     "transcribed from DNA, for example by converting adenosine to inosine. It lets one gene "
     "give rise to several different protein products."),
    ("Who painted The Last Supper, and where can it be seen?",
     "The Last Supper was painted by Leonardo da Vinci in the 1490s. It is a mural on a wall "
     "of the refectory of the convent of Santa Maria delle Grazie in Milan."),
    ("How high is Mont Blanc and where is it located?",
     "Mont Blanc rises about 4,805 metres above sea level, which makes it the highest "
     "mountain in the Alps. It lies on the border between France and Italy."),
    ("What is the difference between type 1 and type 2 diabetes?",
     "In type 1 diabetes the immune system destroys the insulin-producing cells of the "
     "pancreas, so the body makes little or no insulin. In type 2 diabetes the body still "
     "makes insulin but does not respond to it properly."),
    ("In which year is the Western Roman Empire traditionally said to have fallen?",
     "The fall of the Western Roman Empire is traditionally dated to 476 AD, when Odoacer "
     "deposed the last emperor, Romulus Augustulus."),
    ("What does the Big Bang theory describe?",
     "The Big Bang theory describes how the universe expanded from an extremely hot and dense "
     "early state about 13.8 billion years ago. It explains the cosmic microwave background "
     "and the abundance of light elements."),
    ("Who was the lead singer of the band Nirvana?",
     "Kurt Cobain was the lead singer and guitarist of Nirvana, the rock band he formed in "
     "Aberdeen, Washington, in 1987."),
    ("For which film did Nicolas Cage win an Academy Award?",
     "Nicolas Cage won the Academy Award for Best Actor for his role in Leaving Las Vegas, "
     "released in 1995."),
    ("What is the main idea of Keynesian economics?",
     "Keynesian economics holds that total demand drives output and employment in the short "
     "run, so governments can use spending and taxation to smooth recessions."),
    ("What is a white dwarf?",
     "A white dwarf is the dense remnant core of a low- or medium-mass star that has shed its "
     "outer layers. It no longer fuses hydrogen and slowly cools over billions of years."),
)

_STOP_WORDS_TEXT = (
    "a an the and or but if then of to in on at by for with from as is are was were be been "
    "being it its this that these those he she they them his her their there here which who "
    "whom what when where why how not no so than too very can will would should could may "
    "might must do does did has have had i you we our your my me us also into about over "
    "after before such"
)
STOP_WORDS = frozenset(_STOP_WORDS_TEXT.split())
_WORD = re.compile(r"\w+")


def few_shot_prompt(
    question: str, question_id: str, seed: int, examples: Sequence[tuple[str, str]] = EXAMPLES
) -> str:
    """The 10-shot base-model prompt for ``question`` (shots shuffled per question)."""
    shots = list(examples)
    random.Random(seed_from(seed, question_id)).shuffle(shots)
    blocks = [f"### Instruction: {q.strip()}\n### Answer: {a.strip()}" for q, a in shots]
    blocks.append(f"### Instruction: {question.strip()}\n### Answer:")
    return "\n\n".join(blocks)


def _content_words(sentence: str) -> set[str]:
    return {w for w in _WORD.findall(sentence.lower()) if w not in STOP_WORDS}


def is_repetitive(text: str) -> bool:
    """Check 3 of the module docstring."""
    units = [u.strip() for u in text.splitlines() if u.strip()] if "\n" in text.strip() else split_sentences(text)
    if len(units) < 2:
        return False
    tail_start = len(units) - max(1, round(len(units) * 0.2))
    sets = [_content_words(u) for u in units]
    for i in range(tail_start, len(units)):
        for j in range(len(units)):
            if i == j or not sets[i] or not sets[j]:
                continue
            jaccard = len(sets[i] & sets[j]) / len(sets[i] | sets[j])
            limit = 0.5 if len(sets[i]) <= 5 and len(sets[j]) <= 5 else 0.7
            if jaccard >= limit:
                return True
    return False


def check_answer(comp: Completion, max_new_tokens: int) -> tuple[str | None, str]:
    """(the cleaned answer, "ok") or (None, the reason it was rejected)."""
    text = comp.text
    cut = "###" in text
    text = text.split("###", 1)[0].strip()
    if comp.finish_reason == "length" and not cut:
        return None, "truncated"
    if not text:
        return None, "empty"
    if is_repetitive(text):
        return None, "repetition"
    sentences = split_sentences(text)
    if (
        comp.completion_tokens > max_new_tokens - 50
        and len(sentences) > 1
        and not sentences[-1].rstrip().endswith((".", '"', "\u201d"))
    ):
        sentences = sentences[:-1]
        text = text[: text.rfind(sentences[-1]) + len(sentences[-1])].strip()
    normalised = [s.strip().lower() for s in sentences]
    if len(normalised) != len(set(normalised)):
        return None, "duplicate_sentences"
    return text, "ok"
