"""The ``sentences`` chunker: token budget, header prefix, 3/4 tail rule, cap, no lost tails."""

from __future__ import annotations

import logging

import pytest

from selflearn.builtin.chunking.sentences import ApproxTokenCounter, Options, SentenceChunker
from selflearn.core.models import load_tokenizer
from selflearn.core.records import Document
from selflearn.core.text import split_sentences

SENTENCES = [
    "Mont Blanc is the highest mountain in the Alps.",
    "It rises 4,805 metres above sea level on the border of France and Italy.",
    "The first recorded ascent was made in 1786 by Jacques Balmat and Michel Paccard.",
    "The Mont Blanc massif contains many glaciers, among them the Mer de Glace.",
    "A road tunnel under the mountain links Chamonix with Courmayeur.",
    "Climbers usually start the normal route from the Gouter hut.",
    "Weather on the summit can change within minutes.",
    "Several cable cars bring tourists to viewpoints such as the Aiguille du Midi.",
]


def _article(paragraphs: int = 6, heading: bool = True) -> str:
    lines = []
    for p in range(paragraphs):
        if heading and p and p % 2 == 0:
            lines.append(f"Section {p}")
        lines.append(" ".join(f"{s[:-1]} (paragraph {p}, item {k})." for k, s in enumerate(SENTENCES)))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tok(tiny_llama):
    return load_tokenizer(tiny_llama)


def _chunker(tok_path: str, **kw) -> SentenceChunker:
    return SentenceChunker(Options(tokenizer=tok_path, **kw), None)


def _count(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def _bodies(passages):
    """The sentences of each passage, without the header prefix of passages after the first."""
    out = []
    for p in passages:
        sents = split_sentences(p.text)
        out.append(sents[1:] if p.index > 0 else sents)
    return out


def test_budget_header_and_no_lost_sentences(tiny_llama, tok):
    doc = Document("d1", "Mont Blanc", _article())
    chunker = _chunker(tiny_llama, max_tokens=256, min_tail_fraction=0.0)
    passages = chunker.chunk(doc)
    assert len(passages) > 5
    header = split_sentences(doc.text)[0]
    for p in passages:
        assert p.n_tokens == _count(tok, p.text) <= 256
        assert p.text.startswith(header)
        assert p.id == f"d1#p{p.index}" and p.document_id == "d1" and p.title == "Mont Blanc"
    # every sentence of the article appears once, in order: no section tail is lost
    assert [s for body in _bodies(passages) for s in body] == split_sentences(doc.text)
    # passages are packed: none but the last could have taken the next sentence
    for a, b in zip(passages, passages[1:], strict=False):
        nxt = split_sentences(b.text)[1]
        assert _count(tok, a.text + " " + nxt) > 256 - 2


def test_tail_rule_keeps_only_a_final_passage_over_three_quarters(tiny_llama):
    doc = Document("d", "Mont Blanc", _article(heading=False))
    everything = _chunker(tiny_llama, max_tokens=256, min_tail_fraction=0.0).chunk(doc)
    last = everything[-1].n_tokens
    chunker = _chunker(tiny_llama, max_tokens=256)
    kept = chunker.chunk(doc)
    if last > 0.75 * 256:
        assert len(kept) == len(everything)
    else:
        assert [p.text for p in kept] == [p.text for p in everything[:-1]]
        assert chunker.stats["dropped_tails"] == 1
    # force both cases through the threshold itself
    assert len(_chunker(tiny_llama, max_tokens=256, min_tail_fraction=(last - 1) / 256).chunk(doc)) == len(everything)
    assert len(_chunker(tiny_llama, max_tokens=256, min_tail_fraction=last / 256).chunk(doc)) == len(everything) - 1


def test_cap_and_short_documents(tiny_llama):
    doc = Document("d", "Mont Blanc", _article())
    chunker = _chunker(tiny_llama, max_tokens=256)
    capped = chunker.chunk(doc, max_passages=2)
    assert [p.index for p in capped] == [0, 1]
    assert chunker.stats["capped_documents"] == 1
    assert [p.text for p in capped] == [p.text for p in chunker.chunk(doc)[:2]]
    short = Document("s", "Short", "One sentence only. And a second one.")
    assert len(_chunker(tiny_llama, max_tokens=256).chunk(short)) == 1
    assert _chunker(tiny_llama, max_tokens=256, keep_short_document=False).chunk(short) == []


def test_long_sentence_is_split_at_word_boundaries(tiny_llama, tok):
    words = [f"word{i % 17}" for i in range(400)]
    doc = Document("d", "Long", "A short opening sentence. Then " + " ".join(words) + ". Closing sentence here.")
    chunker = _chunker(tiny_llama, max_tokens=128, min_tail_fraction=0.0)
    passages = chunker.chunk(doc)
    assert all(_count(tok, p.text) <= 128 for p in passages)
    assert chunker.stats["split_long_sentences"] == 1
    body_words = " ".join(" ".join(b) for b in _bodies(passages)).split()
    assert body_words == doc.text.split()  # every word kept, in order
    dropper = _chunker(tiny_llama, max_tokens=128, min_tail_fraction=0.0, long_sentences="drop")
    texts = " ".join(p.text for p in dropper.chunk(doc))
    assert "word3" not in texts and "Closing sentence here." in texts
    assert dropper.stats["dropped_long_sentences"] == 1


def test_headings_split_and_drop(tiny_llama):
    text = "\n".join([
        "Intro sentence of the article.",
        " ".join(SENTENCES),
        "Early history",
        " ".join(SENTENCES[:3]),
    ])
    doc = Document("d", "T", text)
    kept = _chunker(tiny_llama, max_tokens=1000).chunk(doc)
    assert len(kept) == 1 and "\nEarly history\n" in kept[0].text
    dropped = _chunker(tiny_llama, max_tokens=1000, headings="drop").chunk(doc)
    assert len(dropped) == 1 and "Early history" not in dropped[0].text
    # split: a heading ends the passage when it is full enough ...
    split = _chunker(tiny_llama, max_tokens=1000, headings="split", min_tail_fraction=0.1).chunk(doc)
    assert len(split) == 2 and all("Early history" not in p.text for p in split)
    assert split_sentences(split[1].text) == ["Intro sentence of the article.", *SENTENCES[:3]]
    # ... and a short section is merged forward instead of making a fragment
    merged = _chunker(tiny_llama, max_tokens=1000, headings="split", min_tail_fraction=0.9).chunk(doc)
    assert len(merged) == 1 and "Early history" not in merged[0].text
    assert split_sentences(merged[0].text)[-3:] == SENTENCES[:3]


def test_whitespace_and_lines_are_normalised(tiny_llama):
    doc = Document("d", "T", "First   sentence  here.\n\n\n   Second line   with  spaces.  Third one.")
    (p,) = _chunker(tiny_llama, max_tokens=200).chunk(doc)
    assert p.text == "First sentence here.\nSecond line with spaces. Third one."


def test_approximate_count_without_tokenizer(caplog):
    chunker = SentenceChunker(Options(max_tokens=40, min_tail_fraction=0.0), None)
    with caplog.at_level(logging.INFO, logger="selflearn.chunking"):
        passages = chunker.chunk(Document("d", "T", " ".join(SENTENCES * 3)))
    assert "approximately" in caplog.text
    counter = ApproxTokenCounter()
    assert all(p.n_tokens == counter.count([p.text])[0] <= 40 for p in passages)
    assert counter.count(["Hello, world!", "internationalisation 1986"]) == [4, 8]


def test_option_errors():
    from selflearn.core.errors import ConfigError

    with pytest.raises(ConfigError, match="max_tokens"):
        SentenceChunker(Options(max_tokens=2), None)
    with pytest.raises(ConfigError, match="min_tail_fraction"):
        SentenceChunker(Options(min_tail_fraction=1.5), None)


@pytest.mark.slow
def test_real_smollm2_tokenizer_on_real_wikipedia_text():
    """The offline SmolLM2 tokenizer on long documents made of real vital-article leads."""
    from selflearn.builtin.sources.wikipedia_offline import Options as WO
    from selflearn.builtin.sources.wikipedia_offline import WikipediaOffline
    from selflearn.core.models import OFFLINE_SMOLLM2

    tok = load_tokenizer(OFFLINE_SMOLLM2)
    leads = list(WikipediaOffline(WO(categories=["Geography"], train_per_category=120), 1).documents())
    docs = [Document(f"g{i}", "Geography", "\n".join(d.text for d in leads[i * 30 : (i + 1) * 30]))
            for i in range(4)]
    chunker = SentenceChunker(Options(tokenizer=OFFLINE_SMOLLM2, max_tokens=512), None)
    for doc in docs:
        passages = chunker.chunk(doc, max_passages=8)
        assert 3 <= len(passages) <= 8
        for p in passages:
            n = len(tok(p.text, add_special_tokens=False)["input_ids"])
            assert n == p.n_tokens <= 512
            assert p.n_tokens > 0.75 * 512 or p.index == len(passages) - 1
        header = split_sentences(doc.text)[0]
        assert all(p.text.startswith(header) for p in passages)
