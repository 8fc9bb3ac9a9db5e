"""Fixtures of the scoring tests: tiny random NLI classifiers and a tiny sentence encoder.

The DeBERTa-v2 tokenizer is built from the pieces of a small sentencepiece unigram model trained
on the fly (``DebertaV2Tokenizer(vocab=[(piece, score), ...])``): loading a raw sentencepiece
file maps every word to the unknown token in transformers 5.x. The models use a large
``initializer_range`` so that their outputs really depend on the input (with the default 0.02 a
tiny classifier gives nearly the same probabilities for every pair, which would make equality
tests vacuous); ``test_fixtures_vary`` checks this.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import FACTS

NLI_CORPUS = [
    FACTS[0],
    "It was designed by the engineer Gustave Eiffel and completed in 1889.",
    *FACTS[1:],
    "Pride and Prejudice is a novel written by Jane Austen and published in 1813.",
    "The capital of France is Paris; the capital of Italy is Rome.",
    "Charles Dickens wrote Oliver Twist. Mark Twain wrote Tom Sawyer.",
    "No, that is not correct. Yes, the answer is right. I am not sure about it.",
    "Water boils at 100 degrees Celsius at sea level and freezes at zero degrees.",
    "The mountain was first climbed in 1786 by two men from Chamonix.",
]

LABELS_2 = {0: "entailment", 1: "contradiction"}
LABELS_3 = {0: "CONTRADICTION", 1: "NEUTRAL", 2: "ENTAILMENT"}  # microsoft/deberta-large-mnli order
LABELS_GENERIC = {0: "LABEL_0", 1: "LABEL_1"}  # what potsawee/deberta-v3-large-mnli's config says


def build_deberta_tokenizer(path: Path, vocab_size: int = 400) -> object:
    """A DeBERTa-v2 tokenizer whose vocabulary comes from a freshly trained unigram model."""
    import sentencepiece as spm
    from transformers import DebertaV2Tokenizer

    path.mkdir(parents=True, exist_ok=True)
    corpus = path / "corpus.txt"
    corpus.write_text("\n".join(NLI_CORPUS * 3) + "\n", encoding="utf-8")
    prefix = str(path / "spm")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=prefix,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    special = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
    vocab = [(tok, 0.0) for tok in special]
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i) or sp.is_control(i):
            continue
        vocab.append((sp.id_to_piece(i), float(sp.get_score(i))))
    tok = DebertaV2Tokenizer(vocab=vocab, unk_token="[UNK]", model_max_length=512)
    corpus.unlink()
    for f in (prefix + ".model", prefix + ".vocab"):
        Path(f).unlink()
    return tok


def build_tiny_deberta(path: Path, id2label: dict[int, str], seed: int = 0) -> Path:
    """A 2-layer random DebertaV2ForSequenceClassification with its tokenizer, saved to ``path``."""
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    tok = build_deberta_tokenizer(path)
    torch.manual_seed(seed)
    config = DebertaV2Config(
        vocab_size=len(tok),  # type: ignore[arg-type]
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        relative_attention=True,
        position_buckets=64,
        pos_att_type=["p2c", "c2p"],
        position_biased_input=False,
        type_vocab_size=0,
        initializer_range=0.5,
        pad_token_id=tok.pad_token_id,  # type: ignore[attr-defined]
        num_labels=len(id2label),
        id2label=dict(id2label),
        label2id={v: k for k, v in id2label.items()},
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    model = DebertaV2ForSequenceClassification(config).eval()
    with torch.no_grad():  # logits of order 1: probabilities spread over (0, 1), not saturated
        model.classifier.weight.mul_(0.15)
        model.classifier.bias.zero_()
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))  # type: ignore[attr-defined]
    return path


def wordpiece_vocab(texts: list[str], special: list[str], size: int) -> dict[str, int]:
    """A fixed WordPiece vocabulary (special tokens, characters, then the most frequent whole
    words): tokenizers' WordPieceTrainer breaks ties differently from run to run, so a trained
    vocabulary made the encoder fixture, and the similarities tests read from it, change between
    sessions (a CI run once saw three cosines within 0.02 of each other)."""
    import collections
    import re

    words = collections.Counter(w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower()))
    chars = sorted({c for w in words for c in w})
    pieces = [*special, *chars, *(f"##{c}" for c in chars)]
    ranked = [w for w, _ in sorted(words.items(), key=lambda kv: (-kv[1], kv[0])) if w not in pieces]
    pieces += ranked[: max(0, size - len(pieces))]
    return {p: i for i, p in enumerate(pieces)}


def build_tiny_encoder(path: Path, seed: int = 0) -> Path:
    """A tiny random BERT saved as a sentence-transformers folder (mean pooling, normalised)."""
    import json

    import torch
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    raw = Tokenizer(models.WordPiece(wordpiece_vocab(NLI_CORPUS, special, 300), unk_token="[UNK]"))
    raw.normalizer = normalizers.BertNormalizer(lowercase=True)
    raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    from tokenizers import processors

    raw.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", raw.token_to_id("[CLS]")), ("[SEP]", raw.token_to_id("[SEP]"))],
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tok),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.5,
        pad_token_id=tok.pad_token_id,
    )
    model = BertModel(config).eval()
    with torch.no_grad():  # no shared offset from positions/types: cosines vary with the words
        model.embeddings.token_type_embeddings.weight.zero_()
        model.embeddings.position_embeddings.weight.mul_(0.05)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    (path / "modules.json").write_text(
        json.dumps(
            [
                {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            ]
        )
    )
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True})
    )
    (path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
    return path


@pytest.fixture(scope="session")
def nli2_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny 2-class NLI head: 0 = entailment, 1 = contradiction (names in id2label)."""
    return str(build_tiny_deberta(tmp_path_factory.mktemp("nli2"), LABELS_2, seed=1))


@pytest.fixture(scope="session")
def nli3_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny 3-class NLI head in the microsoft/deberta-large-mnli label order."""
    return str(build_tiny_deberta(tmp_path_factory.mktemp("nli3"), LABELS_3, seed=2))


@pytest.fixture(scope="session")
def nli_generic_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Tiny 2-class head with LABEL_0/LABEL_1 names, like potsawee/deberta-v3-large-mnli."""
    return str(build_tiny_deberta(tmp_path_factory.mktemp("nli-generic"), LABELS_GENERIC, seed=3))


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build_tiny_encoder(tmp_path_factory.mktemp("encoder")))
