"""The ``hf`` backend on a tiny random Llama: reproducibility, batch invariance, sample
offsets, greedy parity with transformers' generate, log-probabilities, stops, chat templates."""

from __future__ import annotations

import math
import shutil
from typing import Any

import pytest

from selflearn.builtin.backends.hf import HFBackend, Options, create
from selflearn.builtin.backends.hf.sampling import uniform_noise, uniform_reference
from selflearn.core.errors import BackendError, ConfigError
from selflearn.core.protocols import GenerationParams

PROMPTS = [
    "The Eiffel Tower is",
    "Who wrote the novel? What is the capital of France and when was the tower built",
    "Mont",
    [{"role": "user", "content": "What is a white dwarf?"}],
]
SAMPLED = GenerationParams(max_new_tokens=12, temperature=0.9, top_p=0.9, repetition_penalty=1.1, logprobs=True)
GREEDY = GenerationParams(max_new_tokens=16, repetition_penalty=1.1, logprobs=True)


def texts(rows: list[list[Any]]) -> list[list[str]]:
    return [[c.text for c in row] for row in rows]


def tokens(rows: list[list[Any]]) -> list[list[list[str]]]:
    return [[c.tokens for c in row] for row in rows]


def test_noise_matches_the_pure_python_hash() -> None:
    import torch

    keys = [3, 2**62 + 12345, 987654321987654321]
    u = uniform_noise(torch.tensor(keys, dtype=torch.int64), 7, 50)
    for r, key in enumerate(keys):
        for v in (0, 13, 49):
            assert u[r, v].item() == pytest.approx(uniform_reference(key, 7, v), abs=0)
    assert float(u.min()) > 0 and float(u.max()) < 1
    assert len(set(u.flatten().tolist())) > 140  # not constant


def test_k_samples_per_prompt_are_seeded_and_reproducible(hf_backend: HFBackend, tiny_llama: str) -> None:
    out = hf_backend.generate(PROMPTS, SAMPLED, n=4)
    assert [len(r) for r in out] == [4] * len(PROMPTS)
    assert all(len(set(row)) > 1 for row in texts(out))  # samples differ from each other
    again = HFBackend(Options(batch_size=16), tiny_llama, seed=42).generate(PROMPTS, SAMPLED, n=4)
    assert tokens(again) == tokens(out)
    other_seed = HFBackend(Options(batch_size=16), tiny_llama, seed=7).generate(PROMPTS, SAMPLED, n=4)
    assert tokens(other_seed) != tokens(out)
    per_call_seed = hf_backend.generate(PROMPTS, GenerationParams(**{**SAMPLED.to_dict(), "stop": (), "seed": 7}), n=4)
    assert tokens(per_call_seed) == tokens(other_seed)


def test_batch_invariance_and_sample_offset(hf_backend: HFBackend, tiny_llama: str) -> None:
    batched = hf_backend.generate(PROMPTS, SAMPLED, n=4)
    for i, prompt in enumerate(PROMPTS):
        alone = hf_backend.generate([prompt], SAMPLED, n=4)
        assert tokens(alone)[0] == tokens(batched)[i]
    small = HFBackend(Options(batch_size=3), tiny_llama, seed=42)  # samples split over batches
    assert tokens(small.generate(list(reversed(PROMPTS)), SAMPLED, n=4)) == list(reversed(tokens(batched)))
    tail = hf_backend.generate(PROMPTS, SAMPLED, n=2, sample_offset=2)
    assert tokens(tail) == [row[2:] for row in tokens(batched)]


def test_static_cache_path_gives_the_same_rows(hf_backend: HFBackend, tiny_llama: str) -> None:
    static = HFBackend(Options(batch_size=16, cache="static"), tiny_llama, seed=42)
    assert tokens(static.generate(PROMPTS, SAMPLED, n=3)) == tokens(hf_backend.generate(PROMPTS, SAMPLED, n=3))
    assert tokens(static.generate(PROMPTS, GREEDY)) == tokens(hf_backend.generate(PROMPTS, GREEDY))


def _hf_generate_ids(backend: HFBackend, prompt: Any, max_new: int, penalty: float) -> list[int]:
    import torch

    tok, model = backend._tokenizer, backend._model
    if isinstance(prompt, str):
        ids = tok(prompt, return_tensors="pt")["input_ids"]
    else:
        text = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
            repetition_penalty=penalty, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
        )
    return out[0, ids.shape[1]:].tolist()


def test_greedy_equals_transformers_generate(hf_backend: HFBackend) -> None:
    ours = hf_backend.generate(PROMPTS, GREEDY, n=3)
    for prompt, row in zip(PROMPTS, ours, strict=True):
        assert len(row) == 3 and len({c.text for c in row}) == 1  # greedy: n copies
        ref = _hf_generate_ids(hf_backend, prompt, GREEDY.max_new_tokens, GREEDY.repetition_penalty)
        assert row[0].tokens == hf_backend._tokenizer.convert_ids_to_tokens(ref)
        assert row[0].text == hf_backend._tokenizer.decode(ref, skip_special_tokens=True)


def test_logprobs_are_finite_and_aligned_with_tokens(hf_backend: HFBackend) -> None:
    import torch

    tok, model = hf_backend._tokenizer, hf_backend._model
    for params in (GREEDY, SAMPLED):
        row = hf_backend.generate([PROMPTS[0]], params, n=2)[0]
        for comp in row:
            assert comp.logprobs is not None and comp.tokens is not None
            assert len(comp.logprobs) == len(comp.tokens) == comp.completion_tokens > 0
            assert all(math.isfinite(x) and x <= 0 for x in comp.logprobs)
            # "model" log-probabilities: the raw next-token distribution at each position
            prompt_ids = tok(PROMPTS[0])["input_ids"]
            gen_ids = tok.convert_tokens_to_ids(comp.tokens)
            with torch.no_grad():
                logits = model(torch.tensor([prompt_ids + gen_ids])).logits[0].float()
            lp = logits.log_softmax(-1)
            expected = [lp[len(prompt_ids) - 1 + k, t].item() for k, t in enumerate(gen_ids)]
            assert comp.logprobs == pytest.approx(expected, abs=1e-4)
    without = hf_backend.generate([PROMPTS[0]], GenerationParams(max_new_tokens=4))[0][0]
    assert without.logprobs is None and without.tokens is None


def test_sampling_logprobs_use_the_processed_distribution(tiny_llama: str) -> None:
    raw = HFBackend(Options(), tiny_llama, seed=1).generate([PROMPTS[0]], SAMPLED)[0][0]
    proc = HFBackend(Options(logprobs="sampling"), tiny_llama, seed=1).generate([PROMPTS[0]], SAMPLED)[0][0]
    assert raw.tokens == proc.tokens  # the same draw, another distribution
    assert all(math.isfinite(x) for x in proc.logprobs or [])
    assert proc.logprobs != raw.logprobs


def test_length_and_eos_finish_reasons(hf_backend: HFBackend, tiny_llama: str) -> None:
    import torch

    short = hf_backend.generate(PROMPTS, GenerationParams(max_new_tokens=5), n=1)
    for row in short:
        assert row[0].finish_reason == "length" and row[0].completion_tokens == 5
    # make EOS likely: samples must end with it, keep it in tokens and leave it out of the text
    backend = HFBackend(Options(), tiny_llama, seed=3)
    backend._load()
    eos = backend._tokenizer.eos_token_id
    bias = torch.zeros(backend._model.config.vocab_size)
    bias[eos] = 4.0
    backend._model.lm_head.register_forward_hook(lambda m, i, o: o + bias)
    rows = backend.generate([PROMPTS[0]], GenerationParams(max_new_tokens=40, temperature=1.0, logprobs=True), n=6)[0]
    stopped = [c for c in rows if c.finish_reason == "stop"]
    assert stopped, "EOS was made likely; some samples must end with it"
    for c in stopped:
        assert c.tokens[-1] == "<|im_end|>" and "<|im_end|>" not in c.text
        assert c.completion_tokens == len(c.tokens) < 40
    # greedy parity holds with EOS in play too
    greedy = backend.generate([PROMPTS[1]], GenerationParams(max_new_tokens=30, repetition_penalty=1.1, logprobs=True))[0][0]
    ref = _hf_generate_ids(backend, PROMPTS[1], 30, 1.1)
    assert greedy.tokens == backend._tokenizer.convert_ids_to_tokens(ref)


def test_stop_strings_cut_text_and_tokens(hf_backend: HFBackend) -> None:
    full = hf_backend.generate([PROMPTS[1]], GenerationParams(max_new_tokens=24, logprobs=True))[0][0]
    stop = full.text[8:10]
    assert stop.strip(), full.text
    cut = hf_backend.generate([PROMPTS[1]], GenerationParams(max_new_tokens=24, logprobs=True, stop=(stop,)))[0][0]
    assert cut.text == full.text[: full.text.index(stop)]
    assert cut.finish_reason == "stop"
    assert cut.tokens == full.tokens[: len(cut.tokens)] and len(cut.tokens) < len(full.tokens)
    tok = hf_backend._tokenizer
    ids = tok.convert_tokens_to_ids(cut.tokens)
    assert stop in tok.decode(ids) and stop not in tok.decode(ids[:-1])
    assert len(cut.logprobs or []) == len(cut.tokens) == cut.completion_tokens


def test_chat_template_is_applied(hf_backend: HFBackend) -> None:
    messages = PROMPTS[3]
    hf_backend._load()
    rendered = hf_backend._tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert rendered.endswith("<|im_start|>assistant\n")
    chat = hf_backend.generate([messages], GREEDY)[0][0]
    raw = hf_backend.generate([rendered], GREEDY)[0][0]
    assert chat.tokens == raw.tokens
    n_prompt = len(hf_backend._tokenizer(rendered, add_special_tokens=False)["input_ids"])
    assert chat.prompt_tokens == n_prompt


def test_missing_chat_template_is_a_clear_error(tiny_llama: str, tmp_path: Any) -> None:
    import json

    folder = tmp_path / "no-template"
    shutil.copytree(tiny_llama, folder)
    cfg = folder / "tokenizer_config.json"
    data = json.loads(cfg.read_text())
    data.pop("chat_template", None)
    cfg.write_text(json.dumps(data))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    backend = HFBackend(Options(), str(folder), seed=1)
    with pytest.raises(BackendError, match="chat_template"):
        backend.generate([PROMPTS[3]], GREEDY)
    assert backend.generate(["raw text works"], GenerationParams(max_new_tokens=2))[0][0].completion_tokens == 2
    template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    fixed = HFBackend(Options(chat_template=template), str(folder), seed=1)
    assert fixed.generate([PROMPTS[3]], GenerationParams(max_new_tokens=2))[0][0].completion_tokens == 2
    assert "chat_template" in fixed.identity()
    # "zephyr": the template the trainers give base models, so prompts agree before and after SFT
    zephyr = HFBackend(Options(chat_template="zephyr"), str(folder), seed=1)
    zephyr._load()
    from selflearn.core.prompts import ZEPHYR_TEMPLATE

    expected = zephyr._tokenizer.apply_chat_template(
        [dict(m) for m in PROMPTS[3]], chat_template=ZEPHYR_TEMPLATE, add_generation_prompt=True, tokenize=False
    )
    assert expected.endswith("<|assistant|>\n")
    assert zephyr.generate([PROMPTS[3]], GREEDY)[0][0].tokens == zephyr.generate([expected], GREEDY)[0][0].tokens


def test_long_prompts_keep_their_end(tiny_llama: str) -> None:
    backend = HFBackend(Options(max_input_tokens=5), tiny_llama, seed=1)
    comp = backend.generate([PROMPTS[1]], GenerationParams(max_new_tokens=2))[0][0]
    assert comp.prompt_tokens == 5


def test_out_of_memory_halves_the_batch(tiny_llama: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    reference = HFBackend(Options(batch_size=16), tiny_llama, seed=42).generate(PROMPTS, SAMPLED, n=3)
    backend = HFBackend(Options(batch_size=16), tiny_llama, seed=42)
    backend._load()
    assert backend._decoder is not None
    real_run = backend._decoder.run
    sizes: list[int] = []

    def fake_run(batch: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(batch.rows))
        if len(batch.rows) > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(batch, *args, **kwargs)

    monkeypatch.setattr(backend._decoder, "run", fake_run)
    assert tokens(backend.generate(PROMPTS, SAMPLED, n=3)) == tokens(reference)
    assert sizes == [12, 6, 3, 3, 3, 3]  # 12 fails, 6 fails, then batches of 3
    assert backend._oom_cap == 3


def test_identity_fingerprints_the_weights(tiny_llama: str, tmp_path: Any) -> None:
    copy = tmp_path / "model"
    shutil.copytree(tiny_llama, copy)
    a = HFBackend(Options(), str(copy), seed=1).identity()
    assert a["backend"] == "hf" and a["dtype"] == "float32" and a["weights"]
    # the model card and lineage (training times, paths) describe the model: the same weights
    # trained again, after a kill or in another run directory, keep their fingerprint
    (copy / "README.md").write_text("| train_runtime | 25.7 |\n")
    (copy / "selflearn-lineage.json").write_text('{"finished": "2026-12-07T03:41:13+00:00"}')
    assert HFBackend(Options(), str(copy), seed=1).identity()["weights"] == a["weights"]
    with open(copy / "model.safetensors", "ab") as f:  # "retrained" in place
        f.write(b"\0")
    assert HFBackend(Options(), str(copy), seed=1).identity()["weights"] != a["weights"]
    b = HFBackend(Options(), str(copy), seed=1).identity()["weights"]
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("{", '{"x": 1, ', 1))
    assert HFBackend(Options(), str(copy), seed=1).identity()["weights"] != b  # the config counts


def test_factory_takes_the_run_model_and_seed(tiny_llama: str) -> None:
    class Ctx:
        model = tiny_llama
        seed = 5

    backend = create(Options(), Ctx())
    assert backend.model_ref == tiny_llama and backend.seed == 5
    Ctx.model = None  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="model"):
        create(Options(), Ctx())


def test_invalid_parameters_are_rejected(hf_backend: HFBackend) -> None:
    with pytest.raises(BackendError, match="top_p"):
        hf_backend.generate(["x"], GenerationParams(temperature=1.0, top_p=0.0))
    assert hf_backend.generate([], SAMPLED, n=3) == []
    assert hf_backend.generate(["x"], SAMPLED, n=0) == [[]]


@pytest.mark.slow
def test_real_smollm2_from_the_offline_gguf() -> None:
    from selflearn.core.models import OFFLINE_SMOLLM2
    from selflearn.core.prompts import rc_messages

    backend = HFBackend(Options(batch_size=8), OFFLINE_SMOLLM2, seed=42)
    prompt = rc_messages("Mont Blanc is the highest mountain in the Alps, rising 4,805 metres.",
                         "How high is Mont Blanc?")
    greedy = backend.generate([prompt], GenerationParams(max_new_tokens=24, repetition_penalty=1.1, logprobs=True))[0][0]
    assert "mountain" in greedy.text.lower() or "mont blanc" in greedy.text.lower(), greedy.text
    ref = _hf_generate_ids(backend, prompt, 24, 1.1)
    assert greedy.tokens == backend._tokenizer.convert_ids_to_tokens(ref)
    samples = backend.generate([prompt], SAMPLED, n=3)[0]
    assert len(samples) == 3 and all(c.text.strip() for c in samples)


def test_batched_encoding_and_decoding_equal_one_by_one(hf_backend: Any) -> None:
    """Prompts are tokenized in one call and completions decoded in one call of the Rust
    backend: the same ids and texts as transformers' one-by-one calls."""
    b = hf_backend
    b._load()
    tok = b._tokenizer
    mixed = [*PROMPTS, "a raw prompt, with <s> special tokens", [{"role": "user", "content": "héllo ∑ 世界"}]]
    got = b._encode_all(mixed, None)
    for prompt, ids in zip(mixed, got, strict=True):
        if isinstance(prompt, str):
            assert ids == list(tok(prompt, add_special_tokens=True)["input_ids"])
        else:
            text = tok.apply_chat_template([dict(m) for m in prompt], add_generation_prompt=True, tokenize=False)
            assert ids == list(tok(text, add_special_tokens=False)["input_ids"])
    assert b._encode_all(["x" * 400], 5) == [got_tail(tok, "x" * 400, 5)]
    assert tok.backend_tokenizer is not None and not tok.clean_up_tokenization_spaces  # the fast path runs
    bodies = [ids[3:40] for ids in got] + [[], [tok.eos_token_id, 5, 6]]
    assert b._decode_all(bodies) == tok.batch_decode(bodies, skip_special_tokens=True)


def got_tail(tok: Any, text: str, n: int) -> list[int]:
    return list(tok(text, add_special_tokens=True)["input_ids"])[-n:]
