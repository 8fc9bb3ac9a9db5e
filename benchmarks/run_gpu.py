"""Issue 9's benchmark: generation, NLI scoring and DPO steps, side by side, in one run.

    python benchmarks/run_gpu.py --out DIR            # on a GPU machine (see benchmarks/README.md)
    python benchmarks/run_gpu.py --smoke --out DIR    # tiny sizes on the CPU (tests/benchmarks)

Sections (``--sections``, default all):

* ``gen``: the K-sample workload (chat prompts of a Wikipedia passage plus a question, K = 10,
  128 and 384 new tokens, top-p 0.9, temperature 1.0, repetition penalty 1.1) on random-weight
  models of the SmolLM2-135M and TinyLlama-1.1B shapes (configs below), bfloat16:
  (a) the research code's approach, eager ``model.generate(do_sample=True,
  num_return_sequences=K)`` over batches of 64 prompts (640 sequences), with its default top-k
  of 50; (b) our ``hf`` backend end to end (tokenisation to detokenised completions), at 640
  sequences and at a larger batch, and with the previous default token selection (``sampler:
  candidates``; ``--older``: older configurations too). Tokens/s = generated tokens (up to and including EOS) per
  second of wall time; medians over ``--repeats``; the first call of each configuration (CUDA
  graph capture, compilation) is reported separately as warm-up.
* ``greedy``: our greedy tokens against ``generate(do_sample=False, repetition_penalty=1.1)``
  on the same model and prompts (batched, left padding), float32 and bfloat16 separately.
* ``nli``: pairs/s of a DeBERTa-v3-large-shaped classifier (random weights, bfloat16): the
  bare forward on ready tensors versus our ``selfcheck-nli`` scorer end to end on the same
  pairs, pairs of about 128 and 256 tokens; plus the bare rate at exactly 128/256 tokens.
* ``dpo``: median optimizer-step time of our ``trl-dpo`` trainer (TRL's DPOTrainer) on the
  135M-shaped model, batch 8, prompts 128 + answers up to 512 tokens.
* ``estimate``: the paper-scale data stage (5,780 questions x (1 greedy + 2 x 10 samples) x up
  to 384 tokens, plus NLI pairs) for the 1.1B-shaped model, from the measured rates.

Prints a table last and writes ``bench.json`` (every figure, the versions and the GPU) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from functools import partial
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

SMOLLM2_135M = dict(
    vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
    rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True,
)
TINYLLAMA_1B = dict(
    vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
    num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048,
    rope_theta=10000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
)
TINY = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
    num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
)
DEBERTA_V3_LARGE = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096)
DEBERTA_TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content']"
    " + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SAMPLING = dict(temperature=1.0, top_p=0.9, repetition_penalty=1.1)
RESULTS: dict[str, Any] = {}
START = time.perf_counter()
DEADLINE = [float("inf")]  # seconds since START after which long optional runs are skipped


def time_left() -> float:
    return DEADLINE[0] - (time.perf_counter() - START)


# -- helpers -----------------------------------------------------------------------------------
def log(*parts: Any) -> None:
    print(*parts, flush=True)


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    sync()
    t0 = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t0, out


def save(out_dir: str) -> None:
    with open(os.path.join(out_dir, "bench.json"), "w") as f:
        json.dump(RESULTS, f, indent=2, default=str)


def texts(args: argparse.Namespace) -> list[str]:
    """Passages: the carried Wikipedia paragraphs, or synthetic sentences (smoke, no assets)."""
    path = os.path.join(args.nli_assets, "texts.json")
    if os.path.exists(path) and not args.smoke:
        with open(path, encoding="utf-8") as f:
            return [t for t in json.load(f) if len(t.split()) > 40]
    rng = random.Random(0)
    words = ["the", "river", "city", "king", "war", "music", "star", "cell", "plant", "water", "north", "empire"]
    return [". ".join(" ".join(rng.choice(words) for _ in range(12)).capitalize() for _ in range(6)) + "." for _ in range(64)]


def tokenizer_dir(name: str, args: argparse.Namespace, work: str, corpus: list[str]) -> str:
    """A carried tokenizer folder (``--assets/<name>``), else a small BPE trained here."""
    path = os.path.join(args.assets, name)
    if os.path.isdir(path) and not args.smoke:
        return path
    return train_bpe(corpus, os.path.join(work, f"tok-{name}"), vocab_size=400)


def train_bpe(corpus: list[str], out: str, vocab_size: int) -> str:
    """A byte-level BPE of ``vocab_size`` ids (the three ChatML specials included) trained on
    ``corpus``, with the ChatML template and ``<|im_end|>`` as eos and pad, saved to ``out``:
    the 400-piece fallback above, and ``prepare_bench_assets.py``'s 32k ``tok32k``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tk.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    ))
    fast = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|im_end|>")
    fast.chat_template = CHATML
    fast.save_pretrained(out)
    return out


def build_lm(shape: dict[str, Any], tok_dir: str, out: str, device: str) -> str:
    """A random-weight Llama of ``shape`` saved (in bfloat16 on a GPU) with the tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tok_dir)
    shape = {**shape, "vocab_size": shape.get("vocab_size", len(tok))}
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlamaConfig(**shape, bos_token_id=None, eos_token_id=eos, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out


def prompts(corpus: list[str], n: int, offset: int = 0) -> list[Any]:
    from selflearn.core.prompts import rc_messages

    out = []
    for i in range(n):
        passage = corpus[(i + offset) % len(corpus)]
        subject = " ".join(passage.split()[:3]).strip(",.;:")
        out.append(rc_messages(passage, f"What does the text say about {subject}?"))
    return out


# -- (a) the research code's approach and (b) our backend ---------------------------------------
def eager_generate(model: Any, tok: Any, batch: list[Any], k: int, max_new: int, batch_prompts: int) -> int:
    """The research code's loop: generate(do_sample, num_return_sequences=K) over prompt
    batches, completions decoded; returns the generated tokens (up to and including EOS)."""
    import torch

    tok.padding_side = "left"
    eos = model.generation_config.eos_token_id
    rendered = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
    total = 0
    for i in range(0, len(rendered), batch_prompts):
        enc = tok(rendered[i:i + batch_prompts], return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=True, num_return_sequences=k, max_new_tokens=max_new,
                pad_token_id=tok.pad_token_id, **SAMPLING,
            )
        gen = out[:, enc["input_ids"].shape[1]:]
        is_eos = gen == eos
        ends = torch.where(is_eos.any(1), is_eos.int().argmax(1) + 1, gen.shape[1])
        total += int(ends.sum())
        tok.batch_decode(gen, skip_special_tokens=True)
    return total


def ours_generate(backend: Any, batch: list[Any], k: int, max_new: int, offset: int) -> int:
    from selflearn.core.protocols import GenerationParams

    params = GenerationParams(max_new_tokens=max_new, **SAMPLING)
    out = backend.generate(batch, params, n=k, sample_offset=offset)
    return sum(c.completion_tokens for row in out for c in row)


def measure(fn: Callable[[int], int], repeats: int) -> dict[str, Any]:
    first_s, first_tokens = timed(lambda: fn(0))
    runs = []
    for r in range(repeats):
        dt, n = timed(lambda r=r: fn(r + 1))
        runs.append((dt, n))
    rate = statistics.median(n / dt for dt, n in runs)
    return {
        "tokens_per_s": round(rate, 1),
        "runs": [{"s": round(dt, 3), "tokens": n, "tokens_per_s": round(n / dt, 1)} for dt, n in runs],
        "first_call_s": round(first_s, 3),
        "first_call_tokens_per_s": round(first_tokens / first_s, 1),
    }


def _ours(backend: Any, batch: list[Any], k: int, max_new: int, r: int) -> int:
    return ours_generate(backend, batch, k, max_new, r * k)


def _eager(model: Any, tok: Any, batch: list[Any], k: int, max_new: int, per_batch: int, r: int) -> int:
    return eager_generate(model, tok, batch, k, max_new, per_batch)


def _greedy_tokens(backend: Any, batch: list[Any], params: Any, r: int) -> int:
    return sum(c.completion_tokens for row in backend.generate(batch, params) for c in row)


def _variant(row: dict[str, Any], key: str, fn: Callable[[int], int], repeats: int) -> None:
    """Measure one configuration into ``row[key]``; an error is recorded, not raised."""
    try:
        row[key] = measure(fn, repeats)
    except Exception as exc:  # keep going: the other figures still count
        row[key] = {"error": repr(exc), "trace": traceback.format_exc()[-2000:]}
    log(key, json.dumps(row[key])[:400])


def _twin(backend: Any, options: Any) -> Any:
    """Another HFBackend with other options on the same loaded model (and, where the decoder
    options are the same, the same decoder and its captured graphs)."""
    from selflearn.builtin.backends.hf import HFBackend

    twin = HFBackend(options, backend.model_ref, seed=backend.seed)
    twin._model, twin._tokenizer = backend._model, backend._tokenizer
    decoder_options = ("candidates", "decoder", "fuse", "decode_attention", "sampler")
    same = all(getattr(options, f) == getattr(backend.options, f) for f in decoder_options)
    dec = backend._decoder
    twin._decoder = dec if same else twin._make_decoder(dec.eos_ids, dec.pad_id)
    return twin


def gen_model(args: argparse.Namespace, work: str, corpus: list[str], name: str, shape: dict[str, Any], tok_name: str) -> None:
    """One model's generation figures: every length and configuration on the one loaded model
    (twins share its weights and, where they can, its decoder), so loading is paid once."""
    backend, base = _gen_backend(args, work, corpus, name, shape, tok_name)
    model, tok = backend._model, backend._tokenizer
    res: dict[str, Any] = RESULTS.setdefault("generation", {}).setdefault(name, {})
    res["decoder"] = type(backend._decoder).__name__
    res["fuse"] = getattr(backend._decoder, "fuse", None)
    for max_new in args.tokens:
        row, batch, ours_key = _gen_ours(args, corpus, backend, base, res, max_new)
        _gen_variants(args, corpus, name, backend, base, row, batch, max_new)
        _gen_eager(args, name, model, tok, row, batch, max_new, ours_key)
    if name == "tinyllama-1.1b" and 384 in args.tokens and args.big_rows > 0:
        _gen_greedy_384(args, corpus, backend, base, res)
    backend.close()


def _gen_backend(args: argparse.Namespace, work: str, corpus: list[str], name: str, shape: dict[str, Any], tok_name: str) -> tuple[Any, Any]:
    """Our backend loaded on the model (``--real-model``, or a random-weight one of ``shape``
    built here), and the options every other configuration of this model is evolved from."""
    from selflearn.builtin.backends.hf import HFBackend, Options

    if name == "real":
        model_dir = args.real_model
    else:
        model_dir = build_lm(shape, tokenizer_dir(tok_name, args, work, corpus), os.path.join(work, name), args.device)
    base = Options(batch_size=args.rows, device=args.device, decoder="shared",
                   dtype="bfloat16" if args.device == "cuda" else "float32")
    backend = HFBackend(base, model_dir, seed=1)
    backend._load()
    return backend, base


def _gen_ours(args: argparse.Namespace, corpus: list[str], backend: Any, base: Any, res: dict[str, Any], max_new: int) -> tuple[dict[str, Any], list[Any], str]:
    """Our backend at ``--rows`` sequences (the eager baseline's concurrency) and, while time is
    left, at ``--big-rows``; returns the length's row, its prompts and the key eager is set
    against. Saved after each, so that a run cut short keeps them."""
    import attrs

    k, n_prompts = args.k, args.rows // args.k
    batch = prompts(corpus, n_prompts)
    row: dict[str, Any] = res.setdefault(f"{max_new} tokens", {"prompts": n_prompts, "k": k})
    reps = args.repeats if max_new <= 128 else max(1, args.repeats - 1)
    ours_key = f"hf shared, {args.rows} seqs"
    _variant(row, ours_key, partial(_ours, backend, batch, k, max_new), reps)
    row["hf stats"] = dict(getattr(backend._decoder, "last_stats", {}))
    save(args.out)
    if args.big_rows // k > n_prompts and time_left() > 120:
        big = _twin(backend, attrs.evolve(base, batch_size=args.big_rows))
        _variant(row, f"hf shared, {args.big_rows} seqs",
                 partial(_ours, big, prompts(corpus, args.big_rows // k), k, max_new), 1)
        save(args.out)
    return row, batch, ours_key


def _gen_variants(args: argparse.Namespace, corpus: list[str], name: str, backend: Any, base: Any, row: dict[str, Any], batch: list[Any], max_new: int) -> None:
    """The other configurations, at the shortest length only (one repeat each): the previous
    default sampler, the older decoders (``--older``) and, on a real model, refill's effect."""
    import attrs

    k = args.k
    if max_new == min(args.tokens) and getattr(backend._decoder, "nucleus", False):
        cands = _twin(backend, attrs.evolve(base, sampler="candidates"))
        _variant(row, f"hf shared, previous default (sampler: candidates), {args.rows} seqs",
                 partial(_ours, cands, batch, k, max_new), 1)
        row["hf stats, sampler: candidates"] = dict(cands._decoder.last_stats)
    if args.older and max_new == min(args.tokens) and getattr(backend._decoder, "fuse", "off") != "off":
        plain = _twin(backend, attrs.evolve(base, fuse="off", decode_attention="sdpa", sampler="candidates"))
        _variant(row, f"hf shared, fuse: off, decode_attention: sdpa, sampler: candidates, {args.rows} seqs",
                 partial(_ours, plain, batch, k, max_new), 1)
    if args.older and name != "tinyllama-1.1b" and max_new == min(args.tokens):
        full = _twin(backend, attrs.evolve(base, sampler="candidates", candidates=0))
        _variant(row, f"hf shared, full-vocabulary sampling, {args.rows} seqs",
                 partial(_ours, full, batch, k, max_new), 1)
    if name == "real" and max_new == min(args.tokens):
        # rows of a real model end (EOS) at different steps: what refilling their slots gives
        whole = _twin(backend, attrs.evolve(base, refill=False))
        _variant(row, f"hf shared, refill: false, {args.rows} seqs", partial(_ours, whole, batch, k, max_new), 1)
        _variant(row, f"hf shared, {args.rows} seqs at a time, {args.big_rows} seqs (refill)",
                 partial(_ours, backend, prompts(corpus, args.big_rows // k), k, max_new), 1)
        save(args.out)


def _gen_eager(args: argparse.Namespace, name: str, model: Any, tok: Any, row: dict[str, Any], batch: list[Any], max_new: int, ours_key: str) -> None:
    """The research code's eager generate on the same prompts and concurrency, and our speed-up
    over it; the slowest configuration, so it is the one skipped near ``--deadline-s``."""
    if time_left() < (150 if max_new > 128 else 40):
        row["eager generate"] = {"skipped": "time budget of the run"}
        log(name, max_new, "eager skipped: time budget")
        return
    k, n_prompts = args.k, args.rows // args.k
    eager_reps = 1 if max_new > 128 or args.smoke else 2
    row["eager generate"] = measure(partial(_eager, model, tok, batch, k, max_new, n_prompts), eager_reps)
    ours = row[ours_key].get("tokens_per_s")
    if ours:
        row["speedup at the same concurrency"] = round(ours / row["eager generate"]["tokens_per_s"], 2)
    log(name, max_new, json.dumps({key: v for key, v in row.items() if key != "hf stats"})[:1500])
    save(args.out)


def _gen_greedy_384(args: argparse.Namespace, corpus: list[str], backend: Any, base: Any, res: dict[str, Any]) -> None:
    """Greedy decoding's rate at 384 tokens and half of ``--big-rows``: the estimate section's
    rate for the paper's reference answers (one greedy answer per question)."""
    import attrs

    from selflearn.core.protocols import GenerationParams

    greedy = _twin(backend, attrs.evolve(base, batch_size=args.big_rows // 2))
    params = GenerationParams(max_new_tokens=384, temperature=0.0, repetition_penalty=1.1)
    res["greedy 384 tokens"] = measure(
        partial(_greedy_tokens, greedy, prompts(corpus, args.big_rows // 2, offset=7), params), 1)
    save(args.out)


def gen_section(args: argparse.Namespace, work: str, corpus: list[str]) -> None:
    import torch

    models = {"smollm2-135m": (SMOLLM2_135M, "smollm2_tok"), "tinyllama-1.1b": (TINYLLAMA_1B, "tok32k")}
    if args.smoke:
        models = {"tiny": (TINY, "tiny_tok")}
    if args.real_model:
        models = {"real": ({}, ""), **models}
    for name, (shape, tok_name) in models.items():
        if name in args.models.split(",") or args.smoke:
            gen_model(args, work, corpus, name, shape, tok_name)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


# -- greedy equality ------------------------------------------------------------------------------
def greedy_section(args: argparse.Namespace, work: str, corpus: list[str]) -> None:
    import torch

    from selflearn.builtin.backends.hf import HFBackend, Options
    from selflearn.core.protocols import GenerationParams

    shapes = {"smollm2-135m": (SMOLLM2_135M, "smollm2_tok"), "tinyllama-1.1b": (TINYLLAMA_1B, "tok32k")}
    if args.smoke:
        shapes = {"tiny": (TINY, "tiny_tok")}
    if args.real_model:
        shapes = {"real": ({}, ""), **shapes}
    n, max_new = (4, 12) if args.smoke else (16, 64)
    batch = prompts(corpus, n, offset=3)
    for name, (shape, tok_name) in shapes.items():
        if name not in args.models.split(",") and not args.smoke:
            continue
        model_dir = args.real_model if name == "real" else os.path.join(work, name)
        if name != "real" and not os.path.isdir(model_dir):
            model_dir = build_lm(shape, tokenizer_dir(tok_name, args, work, corpus), model_dir, args.device)
        for dtype in ("float32", "bfloat16"):
            backend = HFBackend(Options(device=args.device, dtype=dtype, batch_size=64, decoder="shared"), model_dir, seed=1)  # type: ignore[arg-type]
            params = GenerationParams(max_new_tokens=max_new, temperature=0.0, repetition_penalty=1.1, logprobs=True)
            ours = backend.generate(batch, params)
            model, tok = backend._model, backend._tokenizer
            tok.padding_side = "left"
            rendered = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in batch]
            enc = tok(rendered, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            with torch.no_grad():
                ref = model.generate(**enc, do_sample=False, max_new_tokens=max_new, repetition_penalty=1.1,
                                     pad_token_id=tok.pad_token_id)[:, enc["input_ids"].shape[1]:].tolist()
            eos = model.generation_config.eos_token_id
            eos_ids = set(eos) if isinstance(eos, list) else {eos}
            ref = [_until_eos(r, eos_ids) for r in ref]
            equal, prefix = _agreement([tok.convert_tokens_to_ids(row[0].tokens) for row in ours], ref)
            key = f"{name} {dtype}"
            RESULTS.setdefault("greedy_equality", {})[key] = {
                "prompts": n, "new_tokens": max_new, "identical": equal,
                "mean_shared_prefix": round(statistics.mean(prefix), 3),
                "decoder": type(backend._decoder).__name__, "fuse": getattr(backend._decoder, "fuse", None),
            }
            if name == "real":
                # the floor: generate batched against generate on one prompt at a time
                alone = []
                for i in range(n):
                    one = tok(rendered[i], return_tensors="pt", add_special_tokens=False).to(model.device)
                    with torch.no_grad():
                        out = model.generate(**one, do_sample=False, max_new_tokens=max_new, repetition_penalty=1.1,
                                             pad_token_id=tok.pad_token_id)[0, one["input_ids"].shape[1]:].tolist()
                    alone.append(_until_eos(out, eos_ids))
                same_alone, prefix_alone = _agreement(alone, ref)
                RESULTS["greedy_equality"][key]["generate batched vs one by one"] = {
                    "identical": same_alone, "mean_shared_prefix": round(statistics.mean(prefix_alone), 3)}
            log("greedy", key, RESULTS["greedy_equality"][key])
            backend.close()
            del model, backend
        save(args.out)


def _until_eos(ids: list[int], eos: set[int]) -> list[int]:
    cut = next((i for i, t in enumerate(ids) if t in eos), None)
    return ids if cut is None else ids[: cut + 1]


def _agreement(mine: list[list[int]], ref: list[list[int]]) -> tuple[int, list[float]]:
    """Rows identical token for token, and each row's shared prefix as a share of the reference."""
    equal, prefix = 0, []
    for a, r in zip(mine, ref, strict=True):
        equal += a == r
        same = next((i for i, (x, y) in enumerate(zip(a, r, strict=False)) if x != y), min(len(a), len(r)))
        prefix.append(same / max(len(r), 1))
    return equal, prefix


# -- NLI ------------------------------------------------------------------------------------------
def build_nli(size: dict[str, Any], tok_dir: str, out: str, device: str) -> str:
    """A random-weight DeBERTa-v2/v3 two-class NLI classifier of ``size`` saved (in bfloat16 on a
    GPU) with the tokenizer: the scorer's cost depends on the shape, not on the weights."""
    import torch
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2ForSequenceClassification

    tok = AutoTokenizer.from_pretrained(tok_dir)
    big = size is DEBERTA_V3_LARGE
    config = DebertaV2Config(
        vocab_size=max(128100 if big else 0, len(tok)), max_position_embeddings=512,
        relative_attention=True, position_buckets=256, pos_att_type=["p2c", "c2p"],
        norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False, type_vocab_size=0,
        pad_token_id=tok.pad_token_id, num_labels=2, id2label={0: "entailment", 1: "contradiction"},
        label2id={"entailment": 0, "contradiction": 1}, max_relative_positions=-1, **size,
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = DebertaV2ForSequenceClassification(config)
    model.to(torch.bfloat16 if device == "cuda" else torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out


def nli_section(args: argparse.Namespace, work: str, corpus: list[str]) -> None:
    """The NLI scorer end to end against the bare forward on the same pairs, at two pair lengths,
    then the bare forward at exact lengths (the ceiling the scorer's overhead is read against)."""
    tok_path = os.path.join(args.nli_assets, "tokenizer")
    tok_dir = tok_path if os.path.isdir(tok_path) and not args.smoke else tokenizer_dir("nli_tok", args, work, corpus)
    folder = build_nli(DEBERTA_TINY if args.smoke else DEBERTA_V3_LARGE, tok_dir, os.path.join(work, "nli-model"), args.device)
    rng = random.Random(5)
    res = RESULTS.setdefault("nli", {})
    n_items = 8 if args.smoke else args.nli_items
    for label, words in (("~128-token pairs", 75), ("~256-token pairs", 170)):
        items = _nli_items(args, corpus, rng, n_items, words)
        _nli_pairs(args, work, corpus, folder, items, words, res, label)
    _nli_bare_lengths(args, folder, res)
    save(args.out)


def _nli_items(args: argparse.Namespace, corpus: list[str], rng: random.Random, n_items: int, words: int) -> list[Any]:
    """Score items of a passage and K samples of ``words`` words each (their length sets the pair
    length), built as tests/scoring/bench_nli.py builds its workload; ``rng`` runs on across
    both lengths, as it did when this was one loop."""
    from tests.scoring.bench_nli import workload

    return workload(corpus, n_items, args.k, words, rng)


def _nli_pairs(args: argparse.Namespace, work: str, corpus: list[str], folder: str, items: list[Any], words: int,
               res: dict[str, Any], label: str) -> None:
    """Our ``selfcheck-nli`` scorer on ``items`` (after a warm-up on other pairs), then the bare
    forward on the same pairs batched as the engine batches them, into ``res[label]``."""
    from selflearn.builtin.scorers import nli
    from selflearn.builtin.scorers._nli import NLIEngine
    from selflearn.core.cache import JsonlCache
    from selflearn.core.protocols import ScoreItem

    engine = NLIEngine(folder, device=args.device, cache=JsonlCache(os.path.join(work, f"nli-{words}.jsonl")))
    scorer = nli.SelfCheckNLI(nli.Options(model=folder), engine)
    engine._load()
    warm = [ScoreItem(reference=corpus[-1 - i], samples=[corpus[i]] * 2) for i in range(4)]
    scorer.score(warm)  # warm-up (kernels, allocator), on other pairs than the measured ones
    engine.computed = 0
    dt, _ = timed(partial(scorer.score, items))
    computed = engine.computed
    pairs, ids, ready = _nli_ready(args, engine, items)

    bare = partial(_bare, engine._model, ready)
    bare()
    bare_s, _ = timed(bare)
    res[label] = {
        "pairs": len(pairs), "computed": computed,
        "mean_tokens": round(sum(len(x) for x in ids) / len(ids), 1),
        "scorer_pairs_per_s": round(len(pairs) / dt, 1), "bare_pairs_per_s": round(len(pairs) / bare_s, 1),
        "scorer_over_bare": round(bare_s / dt, 3),
    }
    log("nli", label, res[label])
    engine.close()


def _nli_ready(args: argparse.Namespace, engine: Any, items: list[Any]) -> tuple[list[tuple[str, str]], list[list[int]], list[Any]]:
    """The scorer's distinct (sentence, sample) pairs, their token ids and padded device tensors
    in the engine's token batches: the bare forward's input, tokenised outside the timing."""
    from selflearn.builtin.scorers import nli
    from tests.scoring.bench_nli import padded_batches

    pairs = list(dict.fromkeys((s, x) for it in items for x in it.samples for s in nli.split_sentences(it.reference)))
    ids, ready = padded_batches(engine, pairs, args.device)
    return pairs, ids, ready


def _nli_bare_lengths(args: argparse.Namespace, folder: str, res: dict[str, Any]) -> None:
    """The bare forward on 64 pairs of exactly each of ``--nli-lengths`` tokens (16 and 32 in
    smoke; 32 pairs at 512), after three warm-up passes: the rate with no padding and no scorer
    around it, with the scorer's default attention (the fused kernel on CUDA); with
    ``--nli-compile`` also the classifier with transformers' attention under ``torch.compile`` on
    the same tensors (a fixed shape each; compilation in the warm-up), the other lever run 21
    named for the paper-scale scores (``profile_step.py --parts nli`` compares all three)."""
    import torch

    from selflearn.builtin.scorers._nli import NLIEngine

    x_len = (16, 32) if args.smoke else tuple(int(n) for n in args.nli_lengths.split(","))
    for length in x_len:
        engine = NLIEngine(folder, device=args.device)
        engine._load()
        rows = 32 if length > 256 else 64
        x = torch.randint(10, min(30000, len(engine._tokenizer) - 1), (rows, length), device=args.device)
        m = torch.ones_like(x)
        arms = [("bare", engine._model)]
        if args.nli_compile:
            plain = NLIEngine(folder, device=args.device, attention="transformers")
            plain._load()
            arms.append(("bare compiled", torch.compile(plain._model, dynamic=False)))
        for name, model in arms:
            with torch.inference_mode():
                for _ in range(3):
                    model(input_ids=x, attention_mask=m)
                steps = 2 if args.smoke else 20
                dt, _ = timed(partial(_forward_n, model, x, m, steps))
            res[f"{name}, every pair {length} tokens"] = round(rows * steps / dt, 1)
        engine.close()


def _bare(model: Any, ready: list[Any]) -> None:
    import torch

    with torch.inference_mode():
        for x, m in ready:
            model(input_ids=x, attention_mask=m).logits.float().softmax(-1)


def _forward_n(model: Any, x: Any, m: Any, steps: int) -> None:
    for _ in range(steps):
        model(input_ids=x, attention_mask=m).logits.float().softmax(-1)


# -- DPO ------------------------------------------------------------------------------------------
def dpo_section(args: argparse.Namespace, work: str, corpus: list[str]) -> None:
    from transformers.trainer_callback import CallbackHandler

    from selflearn.builtin.trainers import dpo
    from selflearn.core.protocols import TrainRequest

    name = "tiny" if args.smoke else "smollm2-135m"
    model_dir = os.path.join(work, name)
    if not os.path.isdir(model_dir):
        shape, tok_name = (TINY, "tiny_tok") if args.smoke else (SMOLLM2_135M, "smollm2_tok")
        model_dir = build_lm(shape, tokenizer_dir(tok_name, args, work, corpus), model_dir, args.device)
    rng = random.Random(3)
    words = lambda n: " ".join(rng.choice(corpus).split()[:n])  # noqa: E731
    rows = [
        {
            "prompt": [{"role": "user", "content": f"What do you know about {words(4)}?"}],
            "chosen": [{"role": "assistant", "content": words(60)}],
            "rejected": [{"role": "assistant", "content": words(60)}],
        }
        for _ in range(64)
    ]
    steps = 3 if args.smoke else 12
    stamps: list[float] = []
    original = CallbackHandler.on_step_end

    def on_step_end(self: Any, *a: Any, **kw: Any) -> Any:
        sync()
        stamps.append(time.perf_counter())
        return original(self, *a, **kw)

    CallbackHandler.on_step_end = on_step_end  # type: ignore[method-assign]
    try:
        opts = dpo.Options(max_steps=steps, per_device_train_batch_size=2 if args.smoke else 8,
                           eval_fraction=0.0, save_steps=0, logging_steps=1)
        t0 = time.perf_counter()
        dpo.DPOTrainer(opts).train(TrainRequest(rows=rows, model=model_dir, output_dir=os.path.join(work, "dpo")))
        total = time.perf_counter() - t0
    finally:
        CallbackHandler.on_step_end = original  # type: ignore[method-assign]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    RESULTS["dpo"] = {
        "model": name, "steps": steps, "batch": opts.per_device_train_batch_size,
        "median_step_s": round(statistics.median(gaps), 4) if gaps else None,
        "step_s": [round(g, 4) for g in gaps], "total_s_with_loading_and_saving": round(total, 1),
        "gradient_checkpointing": opts.gradient_checkpointing,
    }
    log("dpo", RESULTS["dpo"])
    save(args.out)


# -- paper-scale estimate -----------------------------------------------------------------------------
def estimate_section(args: argparse.Namespace) -> None:
    gen = RESULTS.get("generation", {}).get("tinyllama-1.1b", {}).get("384 tokens", {})
    rates = [v.get("tokens_per_s") for k, v in gen.items() if k.startswith("hf shared") and isinstance(v, dict)]
    rates = [r for r in rates if r]
    nli_res = RESULTS.get("nli", {})
    if not rates or not nli_res:
        return
    questions, k, new = 5780, 10, 384
    sampled_tokens = questions * 2 * k * new
    greedy_tokens = questions * new
    greedy_rate = RESULTS["generation"]["tinyllama-1.1b"].get("greedy 384 tokens", {}).get("tokens_per_s")
    gen_s = sampled_tokens / max(rates) + greedy_tokens / (greedy_rate or max(rates))
    eager = gen.get("eager generate", {}).get("tokens_per_s")
    out: dict[str, Any] = {
        "assumptions": "every generation runs the full 384 tokens (random weights never stop); NLI pairs = "
                       "questions x 2 sample sets x K x 3 reference sentences",
        "generated_tokens": sampled_tokens + greedy_tokens, "generation_s": round(gen_s, 1),
        "eager_generation_s": round((sampled_tokens + greedy_tokens) / eager, 1) if eager else None,
    }
    pairs = questions * 2 * k * 3
    for label, v in nli_res.items():
        if isinstance(v, dict) and "scorer_pairs_per_s" in v:
            nli_s = pairs / v["scorer_pairs_per_s"]
            out[f"total_minutes, NLI {label}"] = round((gen_s + nli_s) / 60, 1)
            out[f"nli_s, {label}"] = round(nli_s, 1)
    out["nli_pairs"] = pairs
    RESULTS["estimate_paper_scale_1.1b"] = out
    save(args.out)


# -- table ----------------------------------------------------------------------------------------------
def table() -> str:
    lines = ["| what | figure |", "|---|---|"]
    for name, per_len in RESULTS.get("generation", {}).items():
        for length, row in per_len.items():
            if not isinstance(row, dict):
                continue
            for key, v in row.items():
                if isinstance(v, dict) and "tokens_per_s" in v:
                    lines.append(f"| {name}, {length}, {key} | {v['tokens_per_s']:,.0f} tok/s (first call {v['first_call_s']} s) |")
                elif isinstance(v, dict) and "error" in v:
                    lines.append(f"| {name}, {length}, {key} | ERROR {v['error'][:80]} |")
            if "speedup at the same concurrency" in row:
                lines.append(f"| {name}, {length}, speed-up vs eager | {row['speedup at the same concurrency']}x |")
    for key, v in RESULTS.get("greedy_equality", {}).items():
        lines.append(f"| greedy == generate, {key} | {v['identical']}/{v['prompts']} identical, shared prefix {v['mean_shared_prefix']} |")
    for key, v in RESULTS.get("nli", {}).items():
        if isinstance(v, dict):
            lines.append(f"| NLI {key} | scorer {v['scorer_pairs_per_s']:,.0f} vs bare {v['bare_pairs_per_s']:,.0f} pairs/s ({v['scorer_over_bare']:.0%}) |")
        else:
            lines.append(f"| NLI {key} | {v:,.0f} pairs/s |")
    if "dpo" in RESULTS:
        lines.append(f"| DPO step ({RESULTS['dpo']['model']}, batch {RESULTS['dpo']['batch']}) | {RESULTS['dpo']['median_step_s']} s |")
    est = RESULTS.get("estimate_paper_scale_1.1b")
    if est:
        for key, v in est.items():
            if key.startswith("total_minutes"):
                lines.append(f"| paper-scale data stage, 1.1B, {key[15:]} | {v} min |")
    return "\n".join(lines)


def versions() -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def _parser() -> argparse.ArgumentParser:
    """The command line; the GPU sessions' scripts and benchmarks/README.md spell these flags."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--smoke", action="store_true", help="tiny models and sizes, on the CPU")
    ap.add_argument("--sections", default="nli,dpo,greedy,gen")
    ap.add_argument("--models", default="smollm2-135m,tinyllama-1.1b")
    ap.add_argument("--tokens", default="128,384")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--rows", type=int, default=640, help="concurrent sequences (prompts x K)")
    ap.add_argument("--big-rows", type=int, default=2560, help="a larger batch for our backend")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nli-items", type=int, default=400)
    ap.add_argument("--nli-lengths", default="128,256", help="the bare forward's exact pair lengths")
    ap.add_argument("--nli-compile", action="store_true", help="also the bare forward under torch.compile")
    ap.add_argument("--assets", default=os.path.join(ROOT, ".assets", "perf"))
    ap.add_argument("--nli-assets", default=os.path.join(ROOT, ".assets", "bench_nli"))
    ap.add_argument("--real-model", default="", help="also measure this model (a path, hub id or pkg: "
                    "reference; add 'real' to --models)")
    ap.add_argument("--older", action="store_true", help="also the older decoder configurations (fuse: off with "
                    "PyTorch's attention; full-vocabulary sampling) at 640 sequences")
    ap.add_argument("--merge", nargs="*", default=[], help="bench.json files of earlier runs whose generation and "
                    "NLI figures join this run's (for the estimate: e.g. --sections '' --merge gen.json nli.json)")
    ap.add_argument("--deadline-s", type=float, default=0, help="skip long runs past this many seconds (0: never)")
    return ap


def _merge(paths: list[str]) -> None:
    """Earlier runs' generation and NLI figures into this run's, named under ``merged``: the
    estimate can then combine sections that were measured in separate GPU sessions."""
    for path in paths:
        with open(path) as f:
            earlier = json.load(f)
        for key in ("generation", "nli"):
            RESULTS.setdefault(key, {}).update(earlier.get(key, {}))
        RESULTS.setdefault("merged", []).append(os.path.basename(path))


def _run_sections(args: argparse.Namespace, work: str, corpus: list[str]) -> list[str]:
    """Each requested section in turn, timed and saved after it; a section that raises is
    recorded under ``errors`` and the next one still runs. Returns the failed sections."""
    sections = {"gen": gen_section, "greedy": greedy_section, "nli": nli_section, "dpo": dpo_section}
    failed = []
    for name in filter(None, args.sections.split(",")):
        t0 = time.perf_counter()
        if time_left() < 20:
            RESULTS.setdefault("skipped", []).append(name)
            continue
        log(f"[{name}] starting at {t0 - START:.0f} s")
        try:
            sections[name](args, work, corpus)
        except Exception as exc:  # one broken section must not lose the others' figures
            failed.append(name)
            RESULTS.setdefault("errors", {})[name] = traceback.format_exc()[-3000:]
            log(f"[{name}] FAILED: {exc!r}")
        RESULTS.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
        save(args.out)
    return failed


def main(argv: list[str] | None = None) -> int:
    """Parse, run the sections, estimate, print the table; exit 1 when a section failed (its
    trace is in bench.json), so that a GPU session notices without reading the figures."""
    args = _parser().parse_args(argv)
    if args.deadline_s > 0:
        DEADLINE[0] = args.deadline_s
    import torch

    args.device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    args.tokens = [int(t) for t in args.tokens.split(",")]
    if args.smoke:
        args.tokens, args.k, args.rows, args.big_rows, args.repeats = [8], 2, 4, 8, 1
    os.makedirs(args.out, exist_ok=True)
    RESULTS["versions"] = versions()
    RESULTS["args"] = {k: v for k, v in vars(args).items()}
    work = tempfile.mkdtemp(prefix="selflearn-bench-")
    corpus = texts(args)
    _merge(args.merge)
    failed = _run_sections(args, work, corpus)
    estimate_section(args)
    text = table()
    with open(os.path.join(args.out, "table.md"), "w") as f:
        f.write(text + "\n")
    log(json.dumps(RESULTS["versions"]))
    log(text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
