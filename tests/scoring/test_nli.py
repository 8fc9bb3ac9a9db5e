"""``selfcheck-nli`` on tiny random DeBERTa classifiers, against SelfCheckGPT's SelfCheckNLI."""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.scorers import nli
from selflearn.builtin.scorers._nli import NLIEngine, label_indices
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import ConfigError
from selflearn.core.protocols import ScoreItem
from selflearn.core.text import split_sentences

REFERENCE = (
    "The Eiffel Tower is a wrought-iron lattice tower in Paris, France. It was designed by "
    "the engineer Gustave Eiffel and completed in 1889. Mont Blanc is in the Alps."
)
SAMPLES = [
    "The Eiffel Tower is in Paris and was completed in 1889.",
    "It is a tower in Rome, Italy, designed by Leonardo da Vinci.",
    "",
    "Nirvana was an American rock band formed in Aberdeen, Washington, in 1987.",
    "The Eiffel Tower is in Paris and was completed in 1889.",  # a duplicate sample
    " ".join(["Water boils at 100 degrees Celsius at sea level."] * 80),  # > 512 tokens: truncated
]


def make(model: str, tmp_path: Path | None = None, **kw: Any) -> nli.SelfCheckNLI:
    cache = JsonlCache(str(tmp_path / "nli.jsonl")) if tmp_path else None
    opts = nli.Options(model=model, device="cpu", **kw)
    engine = NLIEngine(
        model, device="cpu", dtype=opts.dtype, max_length=opts.max_length,
        batch_size=opts.batch_size, max_tokens_per_batch=opts.max_tokens_per_batch,
        entailment_label=opts.entailment_label, contradiction_label=opts.contradiction_label,
        cache=cache,
    )
    return nli.SelfCheckNLI(opts, engine)


def test_fixtures_vary(nli2_model: str) -> None:
    """The tiny classifier's probabilities depend on the input (else equality is vacuous)."""
    scorer = make(nli2_model)
    sents = split_sentences(REFERENCE)
    probs = scorer.engine.probabilities([(s, x) for s in sents for x in SAMPLES[:2] + SAMPLES[3:4]])
    contra = [p[1] for p in probs]
    assert max(contra) - min(contra) > 0.1, contra
    assert len({round(c, 4) for c in contra}) == len(contra)


def _import_reference(monkeypatch: pytest.MonkeyPatch) -> Any:
    """selfcheckgpt's SelfCheckNLI. The module imports spacy, bert_score and nltk at top level
    for its other classes; SelfCheckNLI uses none of them, so absent ones are replaced by empty
    modules for the duration of the test (only when missing; other libraries, such as datasets,
    probe sys.modules for spacy) and the real SelfCheckNLI code runs unchanged."""
    pytest.importorskip("selfcheckgpt", reason="pip install --no-deps selfcheckgpt==0.1.7")
    for name in ("spacy", "bert_score", "nltk", "nltk.util"):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            stub.ngrams = None  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, name, stub)
    from selfcheckgpt.modeling_selfcheck import SelfCheckNLI

    return SelfCheckNLI


def _batch_encode_plus(self: Any, batch_text_or_text_pairs: list[tuple[str, str]], **kw: Any) -> Any:
    """transformers 5 removed ``batch_encode_plus``; this is its documented equivalent for a
    batch of text pairs (``tokenizer(firsts, seconds, **kw)``), used only when it is missing."""
    firsts, seconds = zip(*batch_text_or_text_pairs, strict=True)
    return self(list(firsts), list(seconds), **kw)


def test_equals_selfcheckgpt_reference(nli2_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import numpy as np

    SelfCheckNLI = _import_reference(monkeypatch)
    ref = SelfCheckNLI(nli_model=nli2_model, device="cpu")
    if not hasattr(ref.tokenizer, "batch_encode_plus"):
        monkeypatch.setattr(type(ref.tokenizer), "batch_encode_plus", _batch_encode_plus, raising=False)
    ours = make(nli2_model)
    sentences = split_sentences(REFERENCE)
    assert len(sentences) == 3
    result = ours.score([ScoreItem(REFERENCE, SAMPLES)])[0]
    nonempty = [s for s in SAMPLES if s.strip()]
    # item level: SelfCheckGPT's per-sentence scores (mean over samples), then their mean
    per_sentence = ref.predict(sentences=sentences, sampled_passages=nonempty)
    assert result.score == pytest.approx(float(np.mean(per_sentence)), abs=1e-5)
    # sample level: each sample alone
    for sample, ours_k in zip(SAMPLES, result.sample_scores, strict=True):
        if not sample.strip():
            assert ours_k is None
            continue
        theirs = ref.predict(sentences=sentences, sampled_passages=[sample])
        assert ours_k == pytest.approx(float(np.mean(theirs)), abs=1e-5)
    spread = [s for s in result.sample_scores if s is not None]
    assert max(spread) - min(spread) > 0.02  # the comparison is not between constants


def test_three_class_and_label_lookup(nli3_model: str, nli_generic_model: str) -> None:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    scorer = make(nli3_model)
    assert scorer.engine.labels == {"contradiction": 0, "neutral": 1, "entailment": 2}
    sents = split_sentences(REFERENCE)
    result = scorer.score([ScoreItem(REFERENCE, SAMPLES[:2])])[0]
    tok = AutoTokenizer.from_pretrained(nli3_model)
    model = AutoModelForSequenceClassification.from_pretrained(nli3_model).eval()
    for sample, got in zip(SAMPLES[:2], result.sample_scores, strict=True):
        enc = tok(sents, [sample] * len(sents), padding=True, truncation=True, return_tensors="pt")
        with torch.no_grad():
            probs = model(**enc).logits.softmax(-1)[:, 0]  # softmax over all 3 logits
        assert got == pytest.approx(float(probs.mean()), abs=1e-5)
    # generic LABEL_0/LABEL_1 names: SelfCheckGPT's convention (1 = contradiction)
    assert make(nli_generic_model).engine.labels == {"entailment": 0, "contradiction": 1}


def test_label_indices_errors() -> None:
    assert label_indices({0: "Entailment", 1: "Neutral", 2: "Contradiction"})["contradiction"] == 2
    with pytest.raises(ConfigError, match=r"LABEL_2.*_label: INDEX"):
        label_indices({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"})
    assert label_indices({0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, entailment=0, contradiction=2)
    with pytest.raises(ConfigError, match="out of range"):
        label_indices({0: "a", 1: "b"}, entailment=0, contradiction=5)


def test_batching_dedupe_cache_and_empty(
    nli2_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from selflearn.builtin.scorers import _nli

    monkeypatch.setattr(_nli, "_CHUNK", 4)  # several tokenisation chunks, prefetched
    scorer = make(nli2_model, tmp_path, batch_size=2, max_tokens_per_batch=512)
    items = [
        ScoreItem(REFERENCE, SAMPLES[:2]),
        ScoreItem(REFERENCE, [SAMPLES[1], SAMPLES[0]]),  # the same pairs again
        ScoreItem("", ["anything"]),  # empty reference: no score
        ScoreItem("Paris is in France.", ["", "  "]),  # no usable sample
    ]
    results = scorer.score(items)
    assert scorer.engine.computed == 3 * 2  # 3 sentences x 2 distinct samples, once each
    assert results[0].sample_scores == pytest.approx(results[1].sample_scores[::-1])
    assert results[2].score is None and results[2].sample_scores == [None]
    assert results[3].score is None and results[3].sample_scores == [None, None]
    # unbatched, uncached computation gives the same numbers
    plain = make(nli2_model, batch_size=256).score(items[:1])[0]
    assert plain.sample_scores == pytest.approx(results[0].sample_scores, abs=1e-6)
    # a second scorer on the same cache computes nothing and never loads the model
    again = make(nli2_model, tmp_path)
    assert again.score(items)[0].sample_scores == results[0].sample_scores
    assert again.engine.computed == 0 and again.engine._model is None


def test_unknown_model_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the NLI model"):
        make(str(tmp_path / "nowhere")).score([ScoreItem("A sentence.", ["a sample"])])


def test_tokenisation_chunks_start_small_and_cover_every_pair(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first chunk, which the GPU waits for, is _FIRST_CHUNK pairs; the rest _CHUNK each, in
    order, every pair once."""
    from selflearn.builtin.scorers import _nli

    monkeypatch.setattr(_nli, "_FIRST_CHUNK", 3)
    monkeypatch.setattr(_nli, "_CHUNK", 5)
    order = list(range(14, 0, -1))
    chunks = _nli._chunks(order)
    assert [len(c) for c in chunks] == [3, 5, 5, 1]
    assert [i for c in chunks for i in c] == order
    assert _nli._chunks([]) == [] and _nli._chunks([7, 8]) == [[7, 8]]
    monkeypatch.setattr(_nli, "_CHUNK", 2)  # never a first chunk larger than the others
    assert [len(c) for c in _nli._chunks(order)] == [2] * 7
