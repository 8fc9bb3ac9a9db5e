"""Our few-shot pool and the validity checks of a generated question."""

from __future__ import annotations

import pytest

from selflearn.builtin.questions.prompts import (
    DEFAULT_BANNED_WORDS,
    POOL,
    banned_pattern,
    build_messages,
    check_question,
    extract_question,
    normalize_question,
)

BANNED = banned_pattern(DEFAULT_BANNED_WORDS)


def test_pool_is_ours_and_well_formed():
    assert len(POOL) >= 10
    assert len({ex.topic for ex in POOL}) == len(POOL)
    research_topics = {"RNA editing", "The Last Supper", "Mont Blanc", "Diabetes", "Big Bang",
                       "Fall of the Western Roman Empire", "Nirvana", "Nicolas Cage",
                       "Keynesian economics", "White dwarf"}
    assert not {ex.topic for ex in POOL} & research_topics
    for ex in POOL:
        assert 150 <= len(ex.passage.split()) <= 300, ex.topic
        question, reason = check_question(ex.question, banned=BANNED)
        assert question == ex.question, (ex.topic, reason)
        topic_words = {w.strip("()").lower() for w in ex.topic.split() if len(w) > 3}
        assert topic_words & set(normalize_question(ex.question).split()), ex.topic


@pytest.mark.parametrize("q", [
    "What does the passage say about Mont Blanc?",
    "According to the text, who built it?",
    "Which DOCUMENT describes the treaty?",
    "What information is given about Paris?",
    "In which article was the law published?",
    "What do the texts say about Rome?",
])
def test_questions_mentioning_the_source_are_rejected(q):
    assert check_question(q, banned=BANNED) == (None, "mentions_source")


@pytest.mark.parametrize("q", [
    "Which textile was produced in Lyon?",
    "In what context did the treaty fail?",
    "What pretext did Rome use for the war?",
    "Who wrote the Articles of Confederation?",  # "articles" is banned only as a whole word
])
def test_word_boundaries_not_substrings(q):
    result, reason = check_question(q, banned=BANNED)
    if "Articles" in q:
        assert reason == "mentions_source"  # plural of a banned word
    else:
        assert result == q and reason == "ok"


def test_extraction_from_small_model_output():
    raw = "Sure! Here is a question:\nQuestion: What is the capital of France? The answer is Paris.\nAnswer: Paris"
    assert extract_question(raw) == "What is the capital of France?"
    assert extract_question('**Q:** "Who painted the Mona Lisa?"') == "Who painted the Mona Lisa?"
    assert extract_question("1. When did the war end?") == "When did the war end?"
    assert extract_question("Proposed question: Where is Lake Baikal?") == "Where is Lake Baikal?"
    assert extract_question("   \n  ") == ""


def test_question_form_rule():
    assert check_question("Who founded the city of Rome", banned=BANNED) == ("Who founded the city of Rome?", "ok")
    assert check_question("In which year did the war end.", banned=BANNED) == ("In which year did the war end?", "ok")
    assert check_question("The war ended in 1945.", banned=BANNED) == (None, "not_a_question")
    assert check_question("What was the name of the", finish_reason="length") == (None, "truncated")
    assert check_question("", banned=BANNED) == (None, "empty")
    assert check_question("Why?", banned=BANNED) == (None, "too_short")


def test_duplicates_after_normalisation():
    seen = {normalize_question("Who painted the Mona Lisa?")}
    assert check_question("who painted  the Mona Lisa ?", seen=seen) == (None, "duplicate")
    assert check_question("Who painted The Night Watch?", seen=seen)[1] == "ok"


def test_messages_structure():
    msgs = build_messages("Paris", "Paris is the capital of France.", POOL[:3])
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert msgs[2]["content"] == POOL[0].question
    assert "Paris is the capital of France." in msgs[-1]["content"] and "Topic: Paris" in msgs[-1]["content"]
    assert [m["role"] for m in build_messages("P", "T.", [], system="")] == ["user"]
