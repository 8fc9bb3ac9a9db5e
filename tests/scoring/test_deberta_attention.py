"""The fused DeBERTa attention kernel (``_deberta_attention``), run in Triton's interpreter on the
CPU in float32: the same logits as transformers' ``DisentangledSelfAttention`` for shared and
separate position projections, log buckets and clamped distances, right padding and a
one-token sequence; transformers' own forward where the kernel does not apply; and the NLI
engine's use of it: the ``attention`` option, the first-batch check, the fallback and what it
caches."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.scorers import _deberta_attention as fused
from selflearn.builtin.scorers._nli import NLIEngine
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import ConfigError

from .conftest import NLI_CORPUS

os.environ["TRITON_INTERPRET"] = "1"  # Triton's interpreter: the kernel runs on the CPU (set before Triton imports)
pytest.importorskip("triton")


def _model(share: bool, buckets: int, max_relative: int) -> Any:
    import torch
    from transformers import DebertaV2Config, DebertaV2ForSequenceClassification

    torch.manual_seed(7)
    config = DebertaV2Config(
        vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=512, relative_attention=True, position_buckets=buckets,
        max_relative_positions=max_relative, pos_att_type=["p2c", "c2p"], share_att_key=share,
        norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0, initializer_range=0.5,
        pad_token_id=0, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return DebertaV2ForSequenceClassification(config).eval()


def _inputs(length: int) -> tuple[Any, Any]:
    import torch

    torch.manual_seed(length)
    ids = torch.randint(5, 300, (3, length))
    mask = torch.ones_like(ids)
    mask[1, length * 2 // 3 :] = 0
    mask[2, 1:] = 0  # one token
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize(
    ("share", "buckets", "max_relative", "length"),
    [
        (True, 16, -1, 70),  # log buckets beyond 8 positions (deberta-v3's scheme, shared keys)
        (False, -1, 24, 61),  # no buckets; distances beyond 24 clamped; separate projections
        (True, 16, -1, 9),  # one key block, shorter than a tile
    ],
)
def test_same_logits_as_transformers(share: bool, buckets: int, max_relative: int, length: int) -> None:
    import torch

    model = _model(share, buckets, max_relative)
    ids, mask = _inputs(length)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        fused.install(model)
        got = model(input_ids=ids, attention_mask=mask).logits
        fused.uninstall(model)
        again = model(input_ids=ids, attention_mask=mask).logits
    scale = max(1.0, reference.abs().max().item())  # float32 rounding grows with the logits
    assert (got - reference).abs().max().item() < 1e-5 * scale
    assert torch.equal(again, reference)
    assert reference.std().item() > 0.05  # the logits vary: equality says something


def test_kernel_is_what_runs_and_uninstall_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = _model(True, 16, -1)
    calls = []
    real = fused.fused_attention
    monkeypatch.setattr(fused, "fused_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    ids, mask = _inputs(20)
    fused.install(model)
    fused.install(model)  # idempotent
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert len(calls) == 2  # one per layer
    fused.uninstall(model)
    assert all("forward" not in m.__dict__ for m in fused._attention_modules(model))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    assert len(calls) == 2


def test_attention_maps_use_transformers_forward(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    model = _model(True, 16, -1)
    ids, mask = _inputs(20)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask, output_attentions=True)
        fused.install(model)
        monkeypatch.setattr(fused, "fused_attention", lambda *a, **k: pytest.fail("kernel ran"))
        got = model(input_ids=ids, attention_mask=mask, output_attentions=True)
    assert got.attentions is not None and len(got.attentions) == 2
    assert torch.equal(got.logits, reference.logits)


def test_unsupported_says_why() -> None:
    from transformers import BertConfig, DebertaV2Config

    assert fused.unsupported(_model(True, 16, -1).config) is None
    assert "not deberta-v2" in str(fused.unsupported(BertConfig()))
    base = dict(hidden_size=32, num_attention_heads=2, relative_attention=True)
    assert "relative_attention is off" in str(fused.unsupported(DebertaV2Config(**{**base, "relative_attention": False})))
    assert "pos_att_type" in str(fused.unsupported(DebertaV2Config(**base, pos_att_type=["c2p"])))
    assert "head size 12" in str(fused.unsupported(DebertaV2Config(**{**base, "hidden_size": 24}, pos_att_type=["c2p", "p2c"])))


# -- the NLI engine --------------------------------------------------------------------------------
PAIRS = [(NLI_CORPUS[i % len(NLI_CORPUS)], NLI_CORPUS[(3 * i + 1) % len(NLI_CORPUS)]) for i in range(12)]


def _engine(model: str, tmp_path: Path | None, attention: str) -> NLIEngine:
    cache = JsonlCache(str(tmp_path / f"{attention}.jsonl")) if tmp_path else None
    return NLIEngine(model, device="cpu", attention=attention, batch_size=4, cache=cache)


def test_engine_triton_equals_transformers(nli2_model: str, tmp_path: Path) -> None:
    plain = _engine(nli2_model, None, "transformers")
    kernel = _engine(nli2_model, tmp_path, "triton")
    expected = plain.probabilities(PAIRS)
    got = kernel.probabilities(PAIRS)
    assert max(abs(a - b) for x, y in zip(got, expected, strict=True) for a, b in zip(x, y, strict=True)) < 1e-5
    assert kernel.identity()["attention"] == "triton-fused" and "attention" not in plain.identity()
    assert kernel.fused and kernel._fused_checked and len(kernel.cache or []) == len(PAIRS)
    assert NLIEngine(nli2_model, device="cpu").fused is False  # auto: the kernel on CUDA only


def test_engine_auto_falls_back_on_a_wrong_kernel(
    nli2_model: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import torch

    monkeypatch.setattr(fused, "fused_attention", lambda q, *a, **k: torch.zeros_like(q))
    expected = _engine(nli2_model, None, "transformers").probabilities(PAIRS)
    engine = _engine(nli2_model, tmp_path, "auto")
    engine._fused = True  # what auto resolves to on CUDA
    with caplog.at_level(logging.WARNING, logger="selflearn.scorers.nli"):
        got = engine.probabilities(PAIRS)
    assert got == expected
    assert "fused attention kernel is off" in caplog.text and "differ" in caplog.text
    assert len(engine.cache or []) == 0  # keys of this call named the kernel: nothing cached
    assert "attention" not in engine.identity() and not engine.fused
    assert engine.probabilities(PAIRS[:3]) == expected[:3]
    assert len(engine.cache or []) == 3


def test_engine_triton_failure_is_a_config_error(nli2_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*a: Any, **k: Any) -> Any:
        raise fused.FusedAttentionFailed("CompilationError: no")

    monkeypatch.setattr(fused, "fused_attention", broken)
    with pytest.raises(ConfigError) as err:
        _engine(nli2_model, None, "triton").probabilities(PAIRS)
    assert err.value.path.endswith(".attention") and "CompilationError" in str(err.value)


def test_engine_triton_needs_cuda_or_the_interpreter(nli2_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ConfigError) as err:
        _engine(nli2_model, None, "triton").identity()
    assert "runs on CUDA" in str(err.value) and err.value.path.endswith(".attention")
    with pytest.raises(ConfigError, match="'auto', 'transformers' or 'triton'"):
        NLIEngine(nli2_model, attention="flash")
