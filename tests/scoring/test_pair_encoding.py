"""The NLI engine's pair tokenisation (``_pairs``): every distinct text tokenised once, the pairs
built as the tokenizer's own ``tokenizer(premises, hypotheses, truncation=True, max_length=L)``
builds them (ids and token types, truncation included), for the DeBERTa unigram tokenizer of
the NLI fixtures, a BERT WordPiece one and a RoBERTa-style byte-level BPE one; the engine
keeps the tokenizer's own call when the two differ, and for pairs with an empty text."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.scorers import _nli
from selflearn.builtin.scorers._nli import NLIEngine
from selflearn.builtin.scorers._pairs import PairEncoder, longest_first

from .conftest import NLI_CORPUS

WORDS = " ".join(NLI_CORPUS).split() + ["Zürich", "1949", "000", "naïve", "—", "🙂", "[SEP]", "[CLS]"]


def _text(rng: random.Random, longest: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randrange(1, longest)))


def _roberta_style(path: Path) -> Any:
    """A byte-level BPE tokenizer with RoBERTa's pair template (<s> A </s></s> B </s>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.train_from_iterator(NLI_CORPUS * 3, trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>"]))
    raw.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   sep_token="</s>", cls_token="<s>")


@pytest.fixture(scope="module")
def tokenizers(nli2_model: str, tiny_encoder: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from transformers import AutoTokenizer

    return {"deberta": AutoTokenizer.from_pretrained(nli2_model), "wordpiece": AutoTokenizer.from_pretrained(tiny_encoder),
            "roberta": _roberta_style(tmp_path_factory.mktemp("bpe"))}


def test_longest_first_cuts_the_longer_text_first() -> None:
    assert longest_first(3, 4, 10) == (3, 4)  # both fit
    assert longest_first(30, 4, 10) == (6, 4) and longest_first(4, 30, 10) == (4, 6)
    assert longest_first(30, 20, 11) == (6, 5) and longest_first(20, 30, 11) == (5, 6)
    assert longest_first(30, 30, 11) == (5, 6)  # equal: the second keeps the odd token
    assert longest_first(0, 30, 10) == (0, 10)


@pytest.mark.parametrize("name", ["deberta", "wordpiece", "roberta"])
def test_pairs_equal_the_tokenizers_own_call(tokenizers: dict[str, Any], name: str) -> None:
    """Random pairs, many sharing texts, at limits from 12 tokens (almost every pair cut) to
    512 (few): the same ids and token types as the tokenizer's call, which runs between the
    encoder's calls (it sets truncation on the shared backend; the encoder must not care).
    (The texts stay short: at small limits the tokenizer's call also builds every overflowing
    window of both texts, pairwise, and a long text there takes gigabytes.)"""
    tok = tokenizers[name]
    rng = random.Random(7)
    texts = [_text(rng, rng.choice([6, 30, 150])) for _ in range(40)]
    for max_length in (12, 13, 33, 128, 512):
        encoder = PairEncoder.of(tok, max_length)
        assert encoder is not None, name
        pairs = [(rng.choice(texts), rng.choice(texts)) for _ in range(200)]
        ref = tok([p for p, _ in pairs], [h for _, h in pairs], truncation=True, max_length=max_length,
                  return_token_type_ids=True)
        ids, types = encoder.encode(pairs, with_types=True)
        assert ids == ref["input_ids"], (name, max_length)
        assert types == ref["token_type_ids"], (name, max_length)
        assert encoder.encode(pairs[:5], with_types=False) == (ref["input_ids"][:5], None)
        assert max(map(len, ids)) <= max_length


def test_engine_uses_the_fast_path_and_keeps_its_probabilities(nli2_model: str) -> None:
    rng = random.Random(3)
    texts = [_text(rng, 200) for _ in range(12)]
    pairs = [(a, b) for a in texts[:3] for b in texts]
    fast = NLIEngine(nli2_model, device="cpu", max_length=64)
    got = fast.probabilities(pairs)
    assert fast._pairs is not None  # checked against the tokenizer's call and kept
    slow = NLIEngine(nli2_model, device="cpu", max_length=64)
    slow._load()
    slow._pairs = None
    assert slow.probabilities(pairs) == got


def test_engine_keeps_the_tokenizers_call_when_they_differ(nli2_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tokenizer the encoder describes wrongly (here: an encoder that drops a token) is caught
    on the first pairs: the engine then uses the tokenizer's own call, for good."""
    rng = random.Random(4)
    pairs = [(_text(rng, 20), _text(rng, 20)) for _ in range(10)]
    reference = NLIEngine(nli2_model, device="cpu")
    reference._load()
    reference._pairs = None
    expected = reference.probabilities(pairs)
    real = PairEncoder.encode

    def off_by_one(self: PairEncoder, batch: Any, with_types: bool) -> Any:
        ids, types = real(self, batch, with_types)
        return [x[:-1] for x in ids], None if types is None else [t[:-1] for t in types]

    monkeypatch.setattr(PairEncoder, "encode", off_by_one)
    engine = NLIEngine(nli2_model, device="cpu")
    assert engine.probabilities(pairs) == expected
    assert engine._pairs is None


def test_pairs_with_an_empty_text_use_the_tokenizers_call(nli2_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = NLIEngine(nli2_model, device="cpu")
    engine._load()
    calls: list[int] = []
    real = PairEncoder.encode
    monkeypatch.setattr(PairEncoder, "encode", lambda self, b, t: calls.append(len(b)) or real(self, b, t))
    ids, _ = engine._encode([("a premise", ""), ("another premise", "a hypothesis")])
    assert calls == []
    assert ids == engine._encode_slow([("a premise", ""), ("another premise", "a hypothesis")])[0]
    engine._encode([("a premise", "a hypothesis")])
    assert calls == [1]


def test_no_backend_no_encoder() -> None:
    assert PairEncoder.of(object(), 512) is None
    assert _nli._CHECK > 0
