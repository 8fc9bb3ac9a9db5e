"""``hf``: local generation with transformers, K batch-invariant samples per prompt.

What it does with a call ``generate(prompts, params, n=K, sample_offset=s)``:

* decodes with the ``shared`` decoder on CUDA (:mod:`.shared_decoder`: one prompt KV cache for its
  K samples, the whole step in CUDA graphs, top-k candidate sampling) and the ``loop`` decoder
  (:mod:`.loop_decoder`) on the CPU or when asked for (option ``decoder``);
* renders each prompt once: chat-message prompts through the tokenizer's chat template
  (``add_generation_prompt=True``), raw strings as they are (with the tokenizer's special
  tokens, e.g. BOS); prompts longer than ``max_input_tokens`` keep their last tokens;
* sorts the prompts by length (longest first, so an out-of-memory error shows up on the first
  batch) and packs sample rows into batches of at most ``batch_size`` sequences; each batch
  prefills its distinct prompts once and shares that prefill with their samples
  (:mod:`.loop_decoder`); the results are put back in the caller's order;
* sample ``j`` of a prompt is a deterministic function of (seed, prompt, parameters, model,
  ``s + j``) whatever else is in its batch (:mod:`.sampling`), so a resumed run reproduces
  the rows of the batch it lost and samples 5..9 asked alone equal those of a K=10 call;
* greedy calls (temperature 0) decode once per prompt and repeat the answer ``n`` times;
* on ``torch.cuda.OutOfMemoryError`` the batch is halved and retried (and later batches use
  the smaller size) instead of failing the run.

Log-probabilities (``params.logprobs``) are those of the chosen tokens, one per generated
token including the final EOS token: under the model's raw next-token distribution
(``logprobs: model``, the default: what likelihood-based scorers such as semantic entropy
expect) or under the processed distribution the token was drawn from (``logprobs: sampling``:
repetition penalty, temperature and top-p applied).
"""

from __future__ import annotations

import collections
import hashlib
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from ....core.errors import BackendError, ConfigError
from ....core.options import bounded
from ....core.prompts import named_template
from ....core.protocols import BackendCapabilities, GenerationParams, Prompt
from ....core.records import Completion
from .loop_decoder import DecodeBatch, Decoder, RowOutput
from .row_plan import Part, Row, RowPlan, plan, unmixable
from .shared_decoder import SharedPrefixDecoder, unsupported_reason

log = logging.getLogger("selflearn.hf")


@attrs.frozen
class Options:
    #: model reference: hub id, local folder, .gguf file or pkg: reference (None: the run's model)
    model: str | None = None
    #: hub revision (branch, tag or commit) when ``model`` is a hub id
    revision: str | None = None
    #: "auto" (cuda when available, else cpu), "cpu", "cuda", "cuda:1", "mps", ...
    device: str = "auto"
    #: "auto": bfloat16 on a GPU, float32 on the CPU
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    #: most sequences (sample rows) per forward pass; None: sized from free GPU memory (16 on CPU).
    #: Halved automatically after an out-of-memory error.
    batch_size: int | None = bounded(None, ge=1)
    #: longest prompt in tokens (longer prompts keep their end); None: the model's context
    #: length minus max_new_tokens
    max_input_tokens: int | None = bounded(None, ge=1)
    #: chat template for chat prompts when the tokenizer has none (or to override it): a Jinja
    #: string, or "zephyr" (the template the trainers give base models at SFT time)
    chat_template: str | None = None
    #: sampling seed (None: the run's seed); a call's params.seed wins when set
    seed: int | None = bounded(None, ge=0, le=2**63 - 1)
    #: "dynamic" KV cache (default) or "static" (fixed shapes; the compiled GPU path)
    cache: Literal["dynamic", "static"] = "dynamic"
    #: torch.compile the decode step (CUDA graphs); implies cache: static. GPU only in practice
    compile: bool = False
    #: the host checks for finished rows and stop strings every this many tokens
    sync_every: int = bounded(8, ge=1)
    #: which distribution log-probabilities are taken from: "model" (raw) or "sampling"
    logprobs: Literal["model", "sampling"] = "model"
    #: transformers attention implementation ("sdpa", "eager", "flash_attention_2"; None: default)
    attn_implementation: str | None = None
    #: "shared": one prompt KV cache for its K samples, fixed shapes, CUDA graphs (shared_decoder.py);
    #: "loop": the general decoder (cache/compile apply); "auto": shared on CUDA for supported
    #: architectures unless cache/compile are set, loop otherwise
    decoder: Literal["auto", "loop", "shared"] = "auto"
    #: shared decoder: how sampled tokens are chosen. "triton": exact top-p sampling in one
    #: Triton kernel per step (sampling_kernel.py: no sort, no candidate set, nothing truncated);
    #: "candidates": top-p over each row's top-k candidates (candidate_sampling.py; the options
    #: candidates and overflow_share apply); "auto": triton on CUDA where Triton runs, else
    #: candidates (also for logprobs: sampling, which the kernel does not compute)
    sampler: Literal["auto", "triton", "candidates"] = "auto"
    #: shared decoder, sampler candidates: top-p sampling over each row's top-k candidates
    #: (exact whenever the nucleus fits in them, see candidate_sampling.py); 0: the whole vocabulary
    candidates: int = bounded(1024, ge=1)
    #: shared decoder, sampler candidates: share of a batch's rows per step that may take the
    #: exact full-vocabulary path when their nucleus is larger than the candidates (the rest are
    #: truncated, and counted)
    overflow_share: float = bounded(0.125, ge=0, le=1)
    #: shared decoder on CUDA: capture the decode step in CUDA graphs
    cuda_graphs: bool = True
    #: shared decoder: decoder layers as fused tensor functions over packed weights
    #: (fused_layers.py). "compile": compiled with torch.compile (one compile per batch shape, a
    #: few seconds; falls back to "eager" if compilation fails); "eager": the same functions
    #: uncompiled; "off": the model's own modules; "auto": compile on CUDA with Triton, off on CPU
    fuse: Literal["auto", "compile", "eager", "off"] = "auto"
    #: shared decoder on CUDA in half precision: the kernel of the decode step's attention.
    #: "triton": attention_kernel.py's kernel for few queries per head (needs Triton and a head size
    #: that is a power of two); "sdpa": PyTorch's memory-efficient kernel; "auto": triton where
    #: it can run
    decode_attention: Literal["auto", "triton", "sdpa"] = "auto"
    #: shared decoder: when every sample of a prompt has ended (EOS, stop string), its slots
    #: take the next waiting prompt (continuous batching; the same tokens per sample). False:
    #: batches of batch_size rows, each decoded until its longest row ends
    refill: bool = True
    #: the generations stage's greedy y* decoded beside the samples of its prompt
    #: (``generate_mixed``: one prefill, one batch) instead of a pass of its own. "auto": with
    #: the loop decoder (measured on the CPU: 9-11% less time in the stage, the same records),
    #: not with the shared decoder until measured on a GPU; "on", "off": always, never
    mix_greedy: Literal["auto", "on", "off"] = "auto"


def weights_fingerprint(ref: str) -> str | None:
    """A short fingerprint of a local model (folder or file) so that retraining a model into
    the same folder never serves stale cached generations; None for hub ids."""
    from ....core.models import content_fingerprint, package_file

    path = package_file(ref) if ref.startswith("pkg:") else os.path.expanduser(ref)
    return content_fingerprint(path)


def first_stop(text: str, stops: Sequence[str]) -> int | None:
    """Index of the earliest occurrence of any stop string in ``text`` (None: none)."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else None


class HFBackend:
    """See the module docstring."""

    BASE_CAPABILITIES = BackendCapabilities(chat=True, raw=True, logprobs=True, seed=True, max_n=None)

    def __init__(self, options: Options, model: str, seed: int) -> None:
        if options.sync_every < 1:
            raise ConfigError(f"expected a positive integer, got {options.sync_every}", "sync_every")
        if options.batch_size is not None and options.batch_size < 1:
            raise ConfigError(f"expected a positive integer, got {options.batch_size}", "batch_size")
        if options.candidates < 0:
            raise ConfigError(f"expected 0 (off) or a positive integer, got {options.candidates}", "candidates")
        if not 0.0 <= options.overflow_share <= 1.0:
            raise ConfigError(f"expected a share in [0, 1], got {options.overflow_share}", "overflow_share")
        self.options = options
        self.model_ref = model
        self.seed = seed
        self._capabilities: BackendCapabilities | None = None
        self._fingerprint = weights_fingerprint(model)
        self._model: Any = None
        self._tokenizer: Any = None
        self._decoder: Decoder | SharedPrefixDecoder | None = None
        self._oom_cap: int | None = None  # batch size after an out-of-memory back-off
        self._device: str | None = None

    @property
    def capabilities(self) -> BackendCapabilities:
        """What this backend can do; ``mixed`` per the option ``mix_greedy`` (resolved on first
        use: "auto" needs the device, which imports torch)."""
        if self._capabilities is None:
            mode = self.options.mix_greedy
            mixed = mode == "on" or (mode == "auto" and self._loop_decoder())
            self._capabilities = attrs.evolve(self.BASE_CAPABILITIES, mixed=mixed)
        return self._capabilities

    def _loop_decoder(self) -> bool:
        """Whether :meth:`_make_decoder` will choose the loop decoder (before the model loads;
        an architecture the shared decoder does not support falls back to it later)."""
        opts = self.options
        if opts.decoder != "auto":
            return opts.decoder == "loop"
        return not self._resolved_device().startswith("cuda") or opts.cache != "dynamic" or opts.compile

    # -- identity and loading ------------------------------------------------------------
    def _resolved_device(self) -> str:
        if self._device is None:
            import torch

            dev = self.options.device
            self._device = ("cuda" if torch.cuda.is_available() else "cpu") if dev == "auto" else dev
        return self._device

    def _dtype_name(self) -> str:
        if self.options.dtype != "auto":
            return self.options.dtype
        return "float32" if self._resolved_device() == "cpu" else "bfloat16"

    def identity(self) -> dict[str, Any]:
        ident: dict[str, Any] = {
            "backend": "hf",
            "model": self.model_ref,
            "dtype": self._dtype_name(),
            "seed": self.seed,
            "logprobs": self.options.logprobs,
        }
        if self._fingerprint:
            ident["weights"] = self._fingerprint
        if self.options.revision:
            ident["revision"] = self.options.revision
        if self.options.chat_template:
            ident["chat_template"] = hashlib.sha256(self.options.chat_template.encode()).hexdigest()[:16]
        return ident

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch

        from ....core.models import load_causal_lm, load_tokenizer

        kwargs: dict[str, Any] = {}
        if self.options.revision:
            kwargs["revision"] = self.options.revision
        self._tokenizer = load_tokenizer(self.model_ref, **kwargs)
        if self.options.attn_implementation:
            kwargs["attn_implementation"] = self.options.attn_implementation
        device = self._resolved_device()
        dtype = getattr(torch, self._dtype_name())
        log.info("hf: loading %s on %s (%s)", self.model_ref, device, self._dtype_name())
        self._model = load_causal_lm(self.model_ref, dtype=dtype, device=device, **kwargs)
        eos = self._model.generation_config.eos_token_id
        if eos is None:
            eos = self._tokenizer.eos_token_id
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else ((eos,) if eos is not None else ())
        pad = self._tokenizer.pad_token_id
        pad = pad if pad is not None else (eos_ids[0] if eos_ids else 0)
        self._decoder = self._make_decoder(tuple(int(e) for e in eos_ids), int(pad))

    def _make_decoder(self, eos_ids: tuple[int, ...], pad: int) -> Decoder | SharedPrefixDecoder:
        opts = self.options
        if not self._loop_decoder():
            reason = unsupported_reason(self._model)
            if reason is None:
                return SharedPrefixDecoder(
                    self._model, eos_ids=eos_ids, pad_id=pad, sync_every=opts.sync_every,
                    candidates=opts.candidates, overflow_share=opts.overflow_share,
                    graphs=opts.cuda_graphs, fuse=opts.fuse, kernel=opts.decode_attention,
                    sampler=opts.sampler,
                )
            log.warning("hf: the shared decoder does not support this model (%s); using the loop decoder", reason)
        return Decoder(
            self._model,
            eos_ids=eos_ids,
            pad_id=pad,
            cache="static" if opts.compile else opts.cache,
            compile=opts.compile,
            sync_every=opts.sync_every,
        )

    # -- prompts ---------------------------------------------------------------------------
    def _encode_all(self, prompts: Sequence[Prompt], max_input: int | None) -> list[list[int]]:
        """Token ids of every prompt: chat prompts rendered with the chat template, then one
        tokenizer call per kind (raw, chat) for all of them (the fast tokenizer encodes a list
        in parallel; one call per prompt cost ~0.6 ms each on the GPU machine's CPU)."""
        tok = self._tokenizer
        texts = [p if isinstance(p, str) else self._render(p) for p in prompts]
        encoded: list[list[int]] = [[] for _ in prompts]
        for raw in (True, False):
            idx = [i for i, p in enumerate(prompts) if isinstance(p, str) == raw]
            if idx:
                ids = tok([texts[i] for i in idx], add_special_tokens=raw)["input_ids"]
                for i, row in zip(idx, ids, strict=True):
                    encoded[i] = list(row)
        return [self._fit(ids, max_input) for ids in encoded]

    def _render(self, prompt: Sequence[Mapping[str, str]]) -> str:
        tok = self._tokenizer
        template = named_template(self.options.chat_template) or tok.chat_template
        if not template:
            raise BackendError(
                f"hf: the tokenizer of {self.model_ref!r} has no chat template, so chat "
                "prompts cannot be rendered. Set backend.options.chat_template to a Jinja "
                "template or to \"zephyr\" (what the trainers give base models), or use a "
                "chat-tuned model"
            )
        text: str = tok.apply_chat_template(
            [dict(m) for m in prompt], chat_template=template,
            add_generation_prompt=True, tokenize=False,
        )
        return text

    def _fit(self, ids: list[int], max_input: int | None) -> list[int]:
        if not ids:
            ids = [self._decoder.pad_id if self._decoder else 0]
        if max_input is not None and len(ids) > max_input:
            log.warning("hf: a prompt of %d tokens was cut to its last %d", len(ids), max_input)
            ids = ids[-max_input:]
        return ids

    def _decode_all(self, bodies: list[list[int]]) -> list[str]:
        """Texts of many completions. A fast tokenizer whose decoding needs no clean-up step
        decodes them in one parallel call of its Rust backend: transformers' ``batch_decode``
        decodes one by one after a per-token type check (0.38 s for 2,560 x 128 tokens on the
        GPU machine); the result is the same string."""
        tok = self._tokenizer
        backend = getattr(tok, "backend_tokenizer", None)
        if backend is not None and hasattr(backend, "decode_batch") and not getattr(tok, "clean_up_tokenization_spaces", True):
            return list(backend.decode_batch(bodies, skip_special_tokens=True))
        return list(tok.batch_decode(bodies, skip_special_tokens=True))

    def _max_input(self, params: GenerationParams) -> int | None:
        if self.options.max_input_tokens is not None:
            return self.options.max_input_tokens
        ctx = getattr(self._model.config, "max_position_embeddings", None)
        return max(1, int(ctx) - params.max_new_tokens) if ctx else None

    # -- batching ----------------------------------------------------------------------------
    def _batch_size(self, longest: int, params: GenerationParams) -> int:
        if self._oom_cap is not None:
            return self._oom_cap
        if self.options.batch_size is not None:
            return self.options.batch_size
        if not self._resolved_device().startswith("cuda"):
            return 16
        import torch

        cfg: Any = self._model.config
        layers = int(getattr(cfg, "num_hidden_layers", 24))
        heads: Any = getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 16)
        heads = int(heads)
        head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
        elt = 2 if self._dtype_name() != "float32" else 4
        free, _ = torch.cuda.mem_get_info(torch.device(self._resolved_device()))
        if isinstance(self._decoder, SharedPrefixDecoder):
            # per row: its generated tokens' KV buffer and float32 logits work space; the
            # prompt's KV is shared by its samples (counted once per row here, to be safe)
            per_row = 2 * layers * heads * head_dim * elt * (longest + params.max_new_tokens + 128)
            per_row += int(cfg.vocab_size) * 16
            return max(1, min(4096, int(0.5 * free / per_row)))
        per_row = 2 * layers * heads * head_dim * elt * (longest + params.max_new_tokens)
        per_row += int(cfg.vocab_size) * 48  # float32 logits, int64 noise hashes, masks
        return max(1, min(1024, int(0.6 * free / per_row)))

    def _run_rows(
        self,
        rows: list[Row],
        encoded: list[list[int]],
        rp: RowPlan,
        params: GenerationParams,
        slots: int | None = None,
    ) -> dict[Row, RowOutput]:
        """Decode ``rows`` ((prompt, sample) pairs), halving the batch on out-of-memory.
        ``slots``: the shared decoder's rows at a time when it refills (None: all of ``rows``)."""
        import torch

        assert self._decoder is not None
        prompt_ids = list(dict.fromkeys(p for p, _ in rows))
        local = {p: i for i, p in enumerate(prompt_ids)}
        cfg = rp.cfg
        batch = DecodeBatch(
            prompts=[encoded[p] for p in prompt_ids],
            rows=[local[p] for p, _ in rows],
            keys=[rp.keys[r] for r in rows],
            greedy=[rp.greedy[r] for r in rows] if rp.greedy is not None else None,
            max_new=[rp.max_new[r] for r in rows] if rp.max_new is not None else None,
        )
        stop_check = None
        if params.stop:
            tok, stops = self._tokenizer, [s for s in params.stop if s]
            stop_check = lambda ids: any(  # noqa: E731
                s in tok.decode(ids, skip_special_tokens=True) for s in stops
            )
        try:
            if isinstance(self._decoder, SharedPrefixDecoder):
                outs = self._decoder.run(batch, cfg, params.max_new_tokens, stop_check, slots=slots)
            else:
                outs = self._decoder.run(batch, cfg, params.max_new_tokens, stop_check)
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            per_prompt = max(collections.Counter(batch.rows).values())
            if slots is not None and slots > per_prompt:  # fewer rows at a time, same run
                self._oom_cap = max(per_prompt, slots // 2 - (slots // 2) % per_prompt)
                log.warning("hf: out of memory at %d sequences at a time; retrying with %d",
                            slots, self._oom_cap)
                return self._run_rows(rows, encoded, rp, params, slots=self._oom_cap)
            if len(rows) <= 1:
                raise BackendError(
                    f"hf: out of GPU memory generating one sequence with {self.model_ref!r} "
                    f"({len(encoded[rows[0][0]])} prompt tokens + {params.max_new_tokens} new). "
                    "Use a smaller max_new_tokens or max_input_tokens, dtype bfloat16, or a "
                    "larger GPU"
                ) from None
            self._oom_cap = max(1, min(self._oom_cap or len(rows), len(rows)) // 2)
            log.warning("hf: out of memory at %d sequences; retrying with batches of %d",
                        len(rows), self._oom_cap)
            done: dict[tuple[int, int], RowOutput] = {}
            rest = rows
            while rest:  # the cap may shrink again inside
                part, rest = rest[: self._oom_cap], rest[self._oom_cap:]
                done.update(self._run_rows(part, encoded, rp, params))
            return done
        return dict(zip(rows, outs, strict=True))

    # -- the protocol ------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams,
        *,
        n: int = 1,
        sample_offset: int = 0,
    ) -> list[list[Completion]]:
        _check_params(params)
        if not prompts or n <= 0:
            return [[] for _ in prompts]
        out = self._generate_parts(prompts, [Part(params, n, sample_offset)])
        assert out is not None  # one part: one cut
        return out[0]

    def generate_mixed(
        self, prompts: Sequence[Prompt], parts: Sequence[tuple[GenerationParams, int]]
    ) -> list[list[list[Completion]]]:
        """``[generate(prompts, params, n=n) for params, n in parts]``, in one decoder run where
        the decoder can hold them together (greedy rows beside the samples of their prompt:
        one prefill, one batch; :mod:`.row_plan`); otherwise one call per part. The
        samples are the same either way (their keys are); a greedy answer may differ in
        bfloat16 by the rounding of a larger batch, as with any change of batch."""
        for params, _ in parts:
            _check_params(params)
        todo = [Part(params, n) for params, n in parts if n > 0]
        if prompts and len(todo) == len(parts) and unmixable(todo) is None:
            out = self._generate_parts(prompts, todo)
            if out is not None:
                return out
        return [self.generate(prompts, params, n=n) for params, n in parts]

    def _generate_parts(self, prompts: Sequence[Prompt], parts: list[Part]) -> list[list[list[Completion]]] | None:
        """The completions of each part (one part, or parts :func:`.row_plan.unmixable` accepts);
        None when the parts cannot share a run after all: the decoder cannot pick greedy rows
        beside these samples, or a prompt would be cut to fit the model's context for one part
        and not another (separate calls keep each part's own cut)."""
        self._load()
        assert self._decoder is not None
        rp = plan(prompts, parts, self.seed, self.options.logprobs, _prompt_key)
        if rp.cfg.mixed and not self._decoder.can_mix(rp.cfg):
            return None
        cuts = {self._max_input(p.params) for p in parts}
        if len(cuts) == 1:
            encoded = self._encode_all(prompts, cuts.pop())
        else:  # lengths differ: no prompt may need a cut (they would differ)
            encoded = self._encode_all(prompts, None)
            if any(len(ids) > min(c for c in cuts if c is not None) for ids in encoded):
                return None
        results = self._decode_rows(rp, encoded, rp.longest)
        # one batched (Rust-parallel) detokenisation of every row instead of one call per row
        keys_order = [(p, j) for p in range(len(prompts)) for j in range(rp.per_prompt)]
        bodies = [results[r].tokens[:-1] if results[r].eos else results[r].tokens for r in keys_order]
        texts = dict(zip(keys_order, self._decode_all(bodies), strict=True))

        def make(p: int, row: Row, params: GenerationParams) -> Completion:
            return self._completion(len(encoded[p]), results[row], params, texts[row])

        return [rp.completions_of(len(prompts), i, make) for i in range(len(parts))]

    def _decode_rows(self, rp: RowPlan, encoded: list[list[int]], params: GenerationParams) -> dict[Row, RowOutput]:
        """Every row of ``rp``, longest prompts first (an out-of-memory error shows up on the
        first batch), in batches of whole prompts (their rows share one prefix)."""
        per_prompt = rp.per_prompt
        order = sorted(range(len(encoded)), key=lambda p: (-len(encoded[p]), p))
        results: dict[Row, RowOutput] = {}
        pending = [(p, j) for p in order for j in range(per_prompt)]
        while pending:
            size = self._batch_size(len(encoded[pending[0][0]]), params)
            if isinstance(self._decoder, SharedPrefixDecoder) and size >= per_prompt:
                size -= size % per_prompt  # whole prompts: their samples share one prefix
                if self.options.refill:  # all rows in one run, ``size`` of them at a time
                    results.update(self._run_rows(pending, encoded, rp, params, slots=size))
                    break
            chunk, pending = pending[:size], pending[size:]
            results.update(self._run_rows(chunk, encoded, rp, params))
        return results

    def _completion(self, prompt_len: int, row: RowOutput, params: GenerationParams, text: str) -> Completion:
        tok = self._tokenizer
        ids, lps = row.tokens, row.logprobs
        body = ids[:-1] if row.eos else ids
        finish = "stop" if row.eos else "length"
        cut = first_stop(text, params.stop)
        if cut is not None:
            text, finish = text[:cut], "stop"
            ids = ids[: self._stop_prefix(body, params.stop)]
            lps = lps[: len(ids)] if lps is not None else None
        return Completion(
            text=text,
            finish_reason=finish,
            prompt_tokens=prompt_len,
            completion_tokens=len(ids),
            logprobs=[float(x) for x in lps] if params.logprobs and lps is not None else None,
            tokens=list(tok.convert_ids_to_tokens(ids)) if params.logprobs else None,
        )

    def _stop_prefix(self, ids: list[int], stops: Sequence[str]) -> int:
        """The fewest leading tokens whose text contains a stop string (binary search)."""
        tok = self._tokenizer
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if first_stop(tok.decode(ids[:mid], skip_special_tokens=True), stops) is not None:
                hi = mid
            else:
                lo = mid + 1
        return hi

    def close(self) -> None:
        if self._model is not None:
            self._model = self._decoder = None
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass


def _prompt_key(prompt: Prompt) -> Any:
    return prompt if isinstance(prompt, str) else [dict(m) for m in prompt]


def _check_params(params: GenerationParams) -> None:
    problems = []
    if params.temperature < 0:
        problems.append(f"temperature must be >= 0 (0 = greedy), got {params.temperature}")
    if not 0 < params.top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {params.top_p}")
    if params.repetition_penalty <= 0:
        problems.append(f"repetition_penalty must be > 0, got {params.repetition_penalty}")
    if params.max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {params.max_new_tokens}")
    if problems:
        raise BackendError("hf: invalid generation parameters: " + "; ".join(problems))


def create(options: Options, context: Any) -> HFBackend:
    model = options.model or getattr(context, "model", None)
    if not model:
        raise ConfigError(
            "no model: set backend.options.model or the top-level model (a hub id, local "
            "folder, .gguf file or pkg: reference)",
            "backend.options.model",
        )
    seed = options.seed if options.seed is not None else int(getattr(context, "seed", 42))
    return HFBackend(options, model, seed)
