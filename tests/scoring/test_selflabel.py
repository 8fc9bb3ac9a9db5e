"""The self-labelling prompt and the quality checks of method.md 6.1."""

from __future__ import annotations

from selflearn.core.records import Completion
from selflearn.core.stages._selflabel import EXAMPLES, check_answer, few_shot_prompt, is_repetitive


def test_few_shot_prompt_shape_and_determinism() -> None:
    p = few_shot_prompt("Who wrote Hamlet?", "q1", 42)
    assert p.count("### Instruction:") == 11 and p.count("### Answer:") == 11
    assert p.endswith("### Instruction: Who wrote Hamlet?\n### Answer:")
    assert p == few_shot_prompt("Who wrote Hamlet?", "q1", 42)
    assert p != few_shot_prompt("Who wrote Hamlet?", "q2", 42)  # shuffled per question
    assert all(q in p for q, _ in EXAMPLES)
    assert few_shot_prompt("Q?", "q", 1, EXAMPLES[:0]) == "### Instruction: Q?\n### Answer:"


def comp(text: str, finish: str = "stop", tokens: int = 20) -> Completion:
    return Completion(text=text, finish_reason=finish, completion_tokens=tokens)


def test_check_answer_cases() -> None:
    assert check_answer(comp(" Shakespeare wrote it.\n\n### Instruction: next"), 384) == ("Shakespeare wrote it.", "ok")
    assert check_answer(comp("Shakespeare wrote it and then", "length", 384), 384) == (None, "truncated")
    # cut at ### although the token budget ran out: the answer itself finished
    assert check_answer(comp("Shakespeare wrote it. ### Instr", "length", 384), 384)[1] == "ok"
    assert check_answer(comp("   "), 384) == (None, "empty")
    assert check_answer(comp("### Instruction: x"), 384) == (None, "empty")
    dup = "It was written in 1600. It is a tragedy. It was written in 1600. Many read it today."
    assert check_answer(comp(dup), 384)[1] in ("duplicate_sentences", "repetition")
    assert check_answer(comp("Hamlet is a play. It is set in Denmark. The prince seeks revenge."), 384)[1] == "ok"
    # a long answer with a dangling last sentence loses it
    long = "Hamlet is a tragedy by Shakespeare. It is set in Denmark. The prince"
    assert check_answer(comp(long, "stop", 350), 384) == ("Hamlet is a tragedy by Shakespeare. It is set in Denmark.", "ok")
    assert check_answer(comp(long, "stop", 40), 384)[0] == long  # short: kept as is


def test_repetition_rule() -> None:
    text = (
        "The play was written by William Shakespeare around 1600. It tells the story of Prince "
        "Hamlet of Denmark. The prince wants revenge for his father's murder. His uncle Claudius "
        "killed the king. The play was written by Shakespeare around the year 1600."
    )
    assert is_repetitive(text)  # the last sentence repeats the first (Jaccard >= 0.7)
    assert not is_repetitive(text.rsplit(" The play", 1)[0])
    assert is_repetitive("- red apples\n- green pears\n- red apples")  # lines when multi-line
    assert not is_repetitive("One sentence only.")
