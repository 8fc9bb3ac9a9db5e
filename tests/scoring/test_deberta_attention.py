"""The fused DeBERTa attention kernel (``_deberta_attention``), run in Triton's interpreter on the
CPU in float32: the same logits as transformers' ``DisentangledSelfAttention`` for shared and
separate position projections, log buckets and clamped distances, right padding and a
one-token sequence; transformers' own forward where the kernel does not apply; and the NLI
engine's use of it: the ``attention`` option, the first-batch check, the fallback and what it
caches.

The kernel checks run in one subprocess with ``TRITON_INTERPRET=1`` (as the decoder's kernel
tests do): set in this process, the variable would reach every later test, and Triton reads
it when it imports."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from selflearn.builtin.scorers import _deberta_attention as fused
from selflearn.builtin.scorers._nli import NLIEngine
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import ConfigError

from .conftest import NLI_CORPUS

ROOT = Path(__file__).resolve().parents[2]
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")


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


CASES = {
    "log buckets beyond 8 positions, shared keys (deberta-v3's scheme)": (True, 16, -1, 70),
    "no buckets, distances beyond 24 clamped, separate projections": (False, -1, 24, 61),
    "one key block, shorter than a tile": (True, 16, -1, 9),
}
#: two batches of 4 for the engine: the first one checked against transformers, then a later one
PAIRS = [(NLI_CORPUS[i % len(NLI_CORPUS)], NLI_CORPUS[(3 * i + 1) % len(NLI_CORPUS)]) for i in range(8)]


# -- what the subprocess runs (Triton's interpreter on) ---------------------------------------------
def _logits_case(share: bool, buckets: int, max_relative: int, length: int) -> dict[str, Any]:
    import torch

    model = _model(share, buckets, max_relative)
    ids, mask = _inputs(length)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        fused.install(model)
        got = model(input_ids=ids, attention_mask=mask).logits
        fused.uninstall(model)
        again = model(input_ids=ids, attention_mask=mask).logits
    return {"diff": (got - reference).abs().max().item(), "scale": max(1.0, reference.abs().max().item()),
            "restored": bool(torch.equal(again, reference)), "std": reference.std().item()}


def _counted(calls: list[int]) -> Any:
    real = fused.fused_attention

    def count(*a: Any, **k: Any) -> Any:
        calls.append(1)
        return real(*a, **k)

    return count


def _dispatch() -> dict[str, Any]:
    """Which forward runs: the kernel once per layer when installed (twice installed: still
    once), transformers' after uninstall and for attention maps."""
    import torch

    model = _model(True, 16, -1)
    ids, mask = _inputs(20)
    real, calls = fused.fused_attention, []
    fused.fused_attention = _counted(calls)
    try:
        with torch.no_grad():
            plain = model(input_ids=ids, attention_mask=mask, output_attentions=True)
            fused.install(model)
            fused.install(model)
            model(input_ids=ids, attention_mask=mask)
            installed = len(calls)
            maps = model(input_ids=ids, attention_mask=mask, output_attentions=True)
            with_maps = len(calls) - installed
            fused.uninstall(model)
            model(input_ids=ids, attention_mask=mask)
    finally:
        fused.fused_attention = real
    return {"installed": installed, "with_maps": with_maps, "after_uninstall": len(calls) - installed - with_maps,
            "maps": len(maps.attentions or ()), "maps_logits_equal": bool(torch.equal(maps.logits, plain.logits)),
            "instance_forward_left": any("forward" in m.__dict__ for m in fused._attention_modules(model))}


def _engine(model: str, folder: str | None, attention: str) -> NLIEngine:
    cache = JsonlCache(os.path.join(folder, f"{attention}.jsonl")) if folder else None
    return NLIEngine(model, device="cpu", attention=attention, batch_size=4, cache=cache)


def _engine_checks(model: str, folder: str) -> dict[str, Any]:
    """The engine with the kernel against transformers; with a wrong kernel under ``auto`` (as
    on CUDA) and with a failing one under ``triton``."""
    import torch

    expected = _engine(model, None, "transformers").probabilities(PAIRS)
    kernel = _engine(model, folder, "triton")
    got = kernel.probabilities(PAIRS)
    out: dict[str, Any] = {
        "diff": max(abs(a - b) for x, y in zip(got, expected, strict=True) for a, b in zip(x, y, strict=True)),
        "identity": kernel.identity().get("attention"), "checked": kernel._fused_checked,
        "cached": len(kernel.cache or []),
    }
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("selflearn.scorers.nli").addHandler(handler)
    real = fused.fused_attention
    fused.fused_attention = lambda q, *a, **k: torch.zeros_like(q)
    try:
        auto = _engine(model, os.path.join(folder, "auto"), "auto")
        auto._fused = True  # what auto resolves to on CUDA
        out["fallback_equal"] = auto.probabilities(PAIRS) == expected
        out["fallback_cached"] = len(auto.cache or [])
        out["fallback_identity"] = auto.identity().get("attention")
        # the same pairs through transformers' attention (a batch's rows can change the last
        # bits on some CPUs, so the reference is computed in the same batches)
        later = _engine(model, None, "transformers").probabilities(PAIRS[:3])
        out["fallback_later_equal"] = auto.probabilities(PAIRS[:3]) == later
        out["fallback_later_cached"] = len(auto.cache or [])
        out["warnings"] = records

        def broken(*a: Any, **k: Any) -> Any:
            raise fused.FusedAttentionFailed("CompilationError: no")

        fused.fused_attention = broken
        try:
            _engine(model, None, "triton").probabilities(PAIRS)
            out["failure"] = None
        except ConfigError as exc:
            out["failure"] = [exc.path, str(exc)]
    finally:
        fused.fused_attention = real
    return out


def run_all(model: str, folder: str) -> dict[str, Any]:
    """Every kernel check, in the subprocess."""
    return {"logits": {name: _logits_case(*case) for name, case in CASES.items()},
            "dispatch": _dispatch(), "engine": _engine_checks(model, folder)}


SCRIPT = """
import json, os, sys
os.environ["TRITON_INTERPRET"] = "1"  # Triton's interpreter: the kernel runs on the CPU
sys.path.insert(0, os.getcwd())
from tests.scoring import test_deberta_attention as t
print("RESULT " + json.dumps(t.run_all(sys.argv[1], sys.argv[2])))
"""


@pytest.fixture(scope="module")
def kernel_results(nli2_model: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "TRITON_INTERPRET": "1"}
        done = subprocess.run([sys.executable, "-c", SCRIPT, nli2_model, folder], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))
    return dict(json.loads(line[len("RESULT "):]))


# -- the tests ----------------------------------------------------------------------------------------
@needs_triton
@pytest.mark.parametrize("case", list(CASES))
def test_same_logits_as_transformers(kernel_results: dict[str, Any], case: str) -> None:
    got = kernel_results["logits"][case]
    assert got["diff"] < 1e-5 * got["scale"]  # float32 rounding grows with the logits
    assert got["restored"]  # uninstall gives transformers' forward back, bit for bit
    assert got["std"] > 0.05  # the logits vary: equality says something


@needs_triton
def test_the_kernel_runs_once_per_layer_and_only_where_it_applies(kernel_results: dict[str, Any]) -> None:
    got = kernel_results["dispatch"]
    assert got["installed"] == 2  # two layers, installed twice: still once each
    assert got["with_maps"] == 0 and got["maps"] == 2 and got["maps_logits_equal"]
    assert got["after_uninstall"] == 0 and not got["instance_forward_left"]


@needs_triton
def test_engine_with_the_kernel_equals_transformers(kernel_results: dict[str, Any]) -> None:
    got = kernel_results["engine"]
    assert got["diff"] < 1e-5
    assert got["identity"] == "triton-fused" and got["checked"] and got["cached"] == len(PAIRS)


@needs_triton
def test_engine_auto_falls_back_on_a_wrong_kernel(kernel_results: dict[str, Any]) -> None:
    got = kernel_results["engine"]
    assert got["fallback_equal"] and got["fallback_later_equal"]
    assert any("fused attention kernel is off" in w and "differ" in w for w in got["warnings"])
    assert got["fallback_cached"] == 0  # keys of that call named the kernel: nothing cached
    assert got["fallback_identity"] is None and got["fallback_later_cached"] == 3


@needs_triton
def test_engine_triton_failure_is_a_config_error(kernel_results: dict[str, Any]) -> None:
    path, message = kernel_results["engine"]["failure"]
    assert path.endswith(".attention") and "CompilationError" in message


def test_unsupported_says_why() -> None:
    from transformers import BertConfig, DebertaV2Config

    if importlib.util.find_spec("triton") is not None:
        assert fused.unsupported(_model(True, 16, -1).config) is None
    assert "not deberta-v2" in str(fused.unsupported(BertConfig()))
    base = dict(hidden_size=32, num_attention_heads=2, relative_attention=True)
    assert "relative_attention is off" in str(fused.unsupported(DebertaV2Config(**{**base, "relative_attention": False})))
    assert "pos_att_type" in str(fused.unsupported(DebertaV2Config(**base, pos_att_type=["c2p"])))
    assert "head size 12" in str(fused.unsupported(DebertaV2Config(**{**base, "hidden_size": 24}, pos_att_type=["c2p", "p2c"])))


def test_engine_options(nli2_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert NLIEngine(nli2_model, device="cpu").fused is False  # auto: the kernel on CUDA only
    assert "attention" not in NLIEngine(nli2_model, device="cpu").identity()
    with pytest.raises(ConfigError) as err:
        _engine(nli2_model, None, "triton").identity()
    assert err.value.path.endswith(".attention")
    assert "runs on CUDA" in str(err.value) or "Triton is not installed" in str(err.value)
    with pytest.raises(ConfigError, match="'auto', 'transformers' or 'triton'"):
        NLIEngine(nli2_model, attention="flash")


def test_engine_auto_falls_back_when_our_forward_raises(
    nli2_model: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Not the kernel but our forward failing (a later transformers calling the attention
    differently) turns the kernel off as well: no Triton needed, the kernel never starts."""

    def raises(*a: Any, **k: Any) -> Any:
        raise TypeError("forward() got an unexpected keyword argument 'cache_position'")

    monkeypatch.setattr(fused, "fused_attention", raises)
    expected = _engine(nli2_model, None, "transformers").probabilities(PAIRS)
    engine = _engine(nli2_model, None, "auto")
    engine._fused = True  # what auto resolves to on CUDA
    with caplog.at_level(logging.WARNING, logger="selflearn.scorers.nli"):
        assert engine.probabilities(PAIRS) == expected
    assert "TypeError: forward() got an unexpected keyword argument" in caplog.text and not engine.fused


def test_arguments_the_kernel_does_not_know_go_to_transformers_forward() -> None:
    import torch

    model = _model(True, 16, -1)
    fused.install(model)
    module = fused._attention_modules(model)[0]
    seen: list[dict[str, Any]] = []
    module._selflearn_original_forward = lambda *a, **k: seen.append(k) or (a[0], None)
    hidden = torch.zeros(1, 4, 32)
    mask = torch.ones(1, 1, 4, 4)
    module.forward(hidden, mask, relative_pos=torch.zeros(1, 4, 4, dtype=torch.long),
                   rel_embeddings=torch.zeros(32, 32), cache_position=3)
    assert seen == [{"cache_position": 3}]


def test_tables_and_masks_are_reused_only_for_the_same_tensor() -> None:
    import torch

    last = fused._LastOf()
    a, b = torch.zeros(3), torch.zeros(3)
    assert last.get(a, 5, lambda: "a") == "a"
    assert last.get(a, 5, lambda: "again") == "a"  # the same tensor: every layer of a forward
    assert last.get(a, 6, lambda: "other length") == "other length"
    assert last.get(b, 6, lambda: "b") == "b"  # equal values, another tensor: recomputed
    del a, b
    assert last.get(torch.zeros(3), 6, lambda: "new") == "new"  # not kept alive, never matched
