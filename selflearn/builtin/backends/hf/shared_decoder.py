"""The ``shared`` decoder of the ``hf`` backend: one prompt KV cache for its K samples, fixed
shapes, and the whole decode step (forward pass + token selection) replayed as a CUDA graph.

Why: the K-sample workload is launch-bound and memory-bound, not compute-bound. The ``loop``
decoder (:mod:`.loop_decoder`) copies each prompt's KV cache K times and, per step, launches a
few thousand small kernels from Python. Here:

* **Shared prompt prefix (cascade attention).** The batch is laid out as G prompts x M sample
  slots (M = the most samples of one prompt in the batch). The prompt's keys/values stay once
  per prompt, (G, kv_heads, W, head_dim); each row has its own buffer for the tokens it
  generates, (G*M, kv_heads, T, head_dim). Attention of a decode step scores the M*q_heads
  queries of a prompt against its prefix in one matrix product, scores each row against its
  own generated tokens, and takes one softmax over both parts. Per step the prefix is read once
  per prompt instead of once per sample, and nothing is copied K times.
* **Fused layers** (:mod:`.fused_layers`, option ``fuse``; compiled by default on CUDA): the
  decoder layers as a few fused kernels each over packed weights, instead of the ~60 kernels of
  transformers' layer. With ``fuse: off`` the step calls the model's own modules, with a small
  cache object whose ``update`` writes the new key/value into the row's buffer and an attention
  function registered in transformers' ``AttentionInterface`` (active only inside the step).
* **Attention kernel** (:mod:`.attention_kernel`, option ``decode_attention``): a Triton kernel sized
  for the few queries per head of both parts, or PyTorch's memory-efficient kernel.
* **CUDA graphs.** On CUDA the step is captured once per shape and replayed: one launch per
  token instead of thousands. Attention reads the generated-token buffer up to a bucket of 64
  positions past the current step (one graph per bucket), so early steps read little. Shapes are
  bucketed (prompt groups to a multiple of 8, prompt width to a multiple of 64, generation
  length to a multiple of 64) so a run captures a handful of graphs; every bucket runs once
  before capture (compilation and autotuning happen there, seconds for a new batch shape), and
  the graphs are kept for the next batches of the same shape.
* **Token selection** (option ``sampler``): exact top-p sampling in one Triton kernel
  (:mod:`.sampling_kernel`, the default on CUDA), or on top-k candidates (:mod:`.candidate_sampling`);
  the repetition penalty is applied from a list of seen ids rather than a vocabulary-wide mask.

Rows are independent of each other (the prefix of another prompt is masked out; padding slots
start finished), and sampling noise is the same counter-based hash as the ``loop`` decoder, so
a row's sample is the same whatever else is in its batch (exactly in float32; in bfloat16 up to
the rounding of batched kernels, as with any decoder). Architectures: decoder-only models whose
layers use full attention through ``AttentionInterface`` and the cache's ``update`` (Llama,
Mistral without a sliding window, Qwen2, Qwen3); others fall back to the ``loop`` decoder.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from ... import triton_support
from .attention import ATTN_NAME, Shared, fused_parts, plain_attention, register
from .attention_kernel import available as triton_available
from .buffers import DecodeState, RowCache, head_dim
from .candidate_sampling import full_rows_uncompiled, select_candidates
from .fallbacks import (
    AttentionKernelFailed,
    CompiledLayersFailed,
    CompiledSelectionFailed,
    PieceFailed,
    SamplingKernelFailed,
    piece,
)
from .fused_layers import FusedLayers, FuseMode, resolve
from .loop_decoder import DecodeBatch, RowOutput, StopCheck, _round_up
from .sampling import SamplingConfig, can_mix
from .sampling_kernel import select_nucleus
from .schedule import Schedule
from .transformers_api import cache_kwargs

if TYPE_CHECKING:
    import torch

log = logging.getLogger("selflearn.hf")

SUPPORTED = ("llama", "mistral", "qwen2", "qwen3")
#: the fused attention parts: "triton" (attention_kernel.py), "sdpa" (PyTorch's memory-efficient
#: kernel), "auto" (triton where it can run)
AttentionKernel = Literal["auto", "triton", "sdpa"]
#: how sampled tokens are chosen: "triton" (sampling_kernel.py), "candidates" (candidate_sampling.py),
#: "auto" (triton on CUDA where Triton runs)
Sampler = Literal["auto", "triton", "candidates"]


def unsupported_reason(model: Any) -> str | None:
    """Why the shared decoder cannot run ``model`` (None: it can)."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED:
        return f"model type {cfg.model_type!r} (supported: {', '.join(SUPPORTED)})"
    if getattr(cfg, "sliding_window", None) and getattr(cfg, "use_sliding_window", True):
        return "sliding-window attention"
    inner = getattr(model, "model", None)
    for name in ("embed_tokens", "layers", "norm", "rotary_emb"):
        if not hasattr(inner, name):
            return f"no model.{name}"
    if not hasattr(model, "lm_head"):
        return "no lm_head"
    return None


#: a prompt to load into a group: (group, prompt ids, its rows' keys, which rows are greedy,
#: the most tokens each row generates)
Loaded = tuple[int, list[int], list[int], list[bool], list[int]]


def _host_rows(pairs: list[Loaded], width: int, m: int, pad_id: int) -> tuple[torch.Tensor, ...]:
    """:meth:`SharedPrefixDecoder._load`'s host tensors: left-padded ids (n, width), their
    mask, and per group slot (n, m) the keys, whether the slot starts finished (no sample),
    whether it decodes greedily, the most tokens it generates."""
    import torch

    ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), width), dtype=torch.long)
    keys = torch.zeros(len(pairs), m, dtype=torch.int64)
    done = torch.ones(len(pairs), m, dtype=torch.bool)
    greedy = torch.zeros(len(pairs), m, dtype=torch.bool)
    limit = torch.zeros(len(pairs), m, dtype=torch.int64)
    for i, (_, p, k, g, n) in enumerate(pairs):
        ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
        keys[i, : len(k)] = torch.tensor(k, dtype=torch.int64)
        greedy[i, : len(g)] = torch.tensor(g, dtype=torch.bool)
        limit[i, : len(n)] = torch.tensor(n, dtype=torch.int64)
        done[i, : len(k)] = False
    return ids, mask, keys, done, greedy, limit


class SharedPrefixDecoder:
    """Runs :class:`.loop_decoder.DecodeBatch` es with the shared-prefix step (see the module doc)."""

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: tuple[int, ...],
        pad_id: int,
        sync_every: int = 8,
        candidates: int = 1024,
        overflow_share: float = 0.125,
        graphs: bool = True,
        bucket: int = 64,
        group_bucket: int = 8,
        fuse: FuseMode = "auto",
        kernel: AttentionKernel = "auto",
        sampler: Sampler = "auto",
    ) -> None:
        register()
        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.sync_every = max(1, sync_every)
        self.candidates = candidates
        self.overflow_share = overflow_share
        self.graphs = graphs and str(model.device).startswith("cuda")
        #: attention with PyTorch's fused memory-efficient kernels (CUDA, half precision);
        #: False: plain matrix products (CPU, float32, and the reference)
        self.fused = str(model.device).startswith("cuda") and str(model.dtype) in ("torch.bfloat16", "torch.float16")
        #: the fused attention parts with the Triton kernel of attention_kernel.py (else PyTorch's)
        self.triton = self.fused and kernel != "sdpa" and triton_available(head_dim(model.config))
        if kernel == "triton" and self.fused and not self.triton:
            log.warning("hf: the Triton attention kernel needs Triton and a head size that is a power "
                        "of two from 16 to 256; using PyTorch's memory-efficient kernel")
        #: sampled tokens with sampling_kernel's kernel (else on top-k candidates)
        self.nucleus = self._nucleus(sampler)
        self.bucket = bucket
        self.group_bucket = group_bucket if self.graphs else 1
        self._states: dict[tuple[Any, ...], DecodeState] = {}
        self._pool: Any = None
        #: counters of the last batch: overflow rows, truncated rows, graphs captured
        self.last_stats: dict[str, int] = {}
        #: row-steps sampled from their candidates only, over this decoder's life
        self.truncated_total = 0
        self.captured = 0
        #: "compile", "eager" or "off" (see :mod:`.fused_layers`)
        self.fuse = resolve(fuse, model)
        self.layers: FusedLayers | None = None
        self._select: Any = select_candidates
        if self.fuse != "off":
            self.layers = FusedLayers(model, compile=self.fuse == "compile", fused_attention=self.fused)
        if self.fuse == "compile":
            import torch

            # not fullgraph: the full-vocabulary overflow path stays a PyTorch call (graph break)
            full_rows_uncompiled()  # made outside the traced code
            self._select = torch.compile(select_candidates)

    def _nucleus(self, sampler: Sampler) -> bool:
        """Whether sampled tokens come from sampling_kernel's kernel: on CUDA with Triton (or in
        Triton's interpreter, which the tests use on the CPU)."""
        if sampler == "candidates":
            return False
        runs = str(self.model.device).startswith("cuda") or triton_support.interpreting()
        if runs and triton_support.importable():
            return True
        if sampler == "triton":
            log.warning("hf: the Triton sampling kernel needs CUDA and Triton; sampling on top-k candidates")
        return False

    #: whether a run of a SamplingConfig can also hold greedy rows (DecodeBatch.greedy): both
    #: token selections pick them (the kernel's per-row flag, the candidates' argmax)
    can_mix = staticmethod(can_mix)

    # -- the step -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _attention(self) -> Iterator[None]:
        cfg = self.model.config
        before = cfg._attn_implementation
        cfg._attn_implementation = ATTN_NAME
        try:
            yield
        finally:
            cfg._attn_implementation = before

    def _step(self, st: DecodeState, t_eff: int, cfg: SamplingConfig, eos: torch.Tensor) -> None:
        """Select each row's token of its own step from ``st.logits``, record it, run the
        forward pass on it and leave the next logits in ``st.logits``; all on the device, fixed
        shapes. ``t_eff``: the generated positions attention reads (past every row's step)."""
        import torch

        inner = self.model.model
        live = ~st.done
        tok = self._select_tokens(st, cfg, live)
        st.length.add_(live.long())
        st.done.logical_or_(torch.isin(tok, eos))
        # the forward pass of the chosen tokens, each row at its own step
        st.t_index.copy_(st.step.clamp(max=st.gen_len - 1))
        st.gen_bias.copy_(torch.where(st.positions[None, :] <= st.step[:, None], 0.0, float("-inf")))
        if self.fused:
            st.gen_bias_h.copy_(st.gen_bias)
        pos = (st.plen + st.step)[:, None]
        hidden = inner.embed_tokens(tok[:, None])
        rotary = inner.rotary_emb(hidden, pos)
        shared = Shared(st.prefix_k, st.prefix_v, st.prefix_bias, st.prefix_bias_h,
                        st.gen_bias[:, :t_eff], st.gen_bias_h[:, :t_eff], self.fused, self.triton,
                        prefix_first=st.prefix_first, gen_last=st.t_index)
        if self.layers is not None:
            self._fused_forward(st, hidden[:, 0], rotary, shared, t_eff)
        else:
            cache = RowCache(st, t_eff)
            for layer in inner.layers[: self.model.config.num_hidden_layers]:
                hidden = layer(
                    hidden, attention_mask=None, position_ids=pos, use_cache=True,
                    position_embeddings=rotary, selflearn_shared=shared, **cache_kwargs(layer, cache),
                )
                if isinstance(hidden, tuple):  # older layers return (hidden, ...)
                    hidden = hidden[0]
            st.logits.copy_(self.model.lm_head(inner.norm(hidden)[:, -1, :]))
        st.step.add_(live.long())
        st.done.logical_or_(st.step >= st.max_new)

    def _select_tokens(self, st: DecodeState, cfg: SamplingConfig, live: torch.Tensor) -> torch.Tensor:
        """The rows' tokens (padding for finished rows), recorded at each live row's own step
        (finished rows write to the spare last column)."""
        import torch

        step = st.step
        greedy = st.greedy if cfg.mixed else None
        if self.nucleus and not cfg.greedy and cfg.logprobs != "sampling":
            tok, lp = select_nucleus(st.logits, st.seen, st.keys, step, cfg, greedy)
        else:
            with piece(CompiledSelectionFailed, active=self._select is not select_candidates):
                if self.candidates > 0 and not cfg.greedy:
                    slots = int(round(self.overflow_share * st.rows))
                    tok, lp = self._select(
                        st.logits, st.seen, st.keys, step, cfg, self.candidates, slots, st.stats, st.vocab, live,
                        greedy,
                    )
                else:
                    tok, lp = self._select(st.logits, st.seen, st.keys, step, cfg, 1 << 30, 0, st.stats, st.vocab,
                                          None, greedy)
        tok = torch.where(live, tok, self.pad_id)
        at = torch.where(live, step, st.gen_len)[:, None]
        st.out_tok.scatter_(1, at, tok[:, None])
        if lp is not None:
            st.out_lp.scatter_(1, at, lp[:, None])
        st.seen.scatter_(1, at + st.width, tok[:, None])
        return tok

    def _fused_forward(self, st: DecodeState, hidden: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor],
                       shared: Shared, t_eff: int) -> None:
        """The forward pass with :class:`.fused_layers.FusedLayers` (same attention, same cache);
        the logits go to ``st.logits``."""
        layers = self.layers
        assert layers is not None
        scale = layers.dims.scale

        def attend(i: int, q: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
            key, value = st.gen_k[i][:, :, :t_eff], st.gen_v[i][:, :, :t_eff]
            pk, pv = st.prefix_k[i], st.prefix_v[i]
            if self.fused:
                return fused_parts(q[0], q[1], key, value, pk, pv, shared, scale)
            return (plain_attention(q[0], key, value, pk, pv, shared, scale),)

        cos, sin = rotary
        # the attention kernel raises its own failure type, which passes through unchanged
        with piece(CompiledLayersFailed, active=self.fuse == "compile"):
            layers.forward(hidden, cos, sin, st.m, st.gen_kv, st.t_index, attend, st.logits)

    def _warm_up(self, st: DecodeState, t_eff: int, cfg: SamplingConfig, eos: torch.Tensor) -> None:
        """One step on the new state (compiles what is compiled). Should an optional piece fail
        (no C compiler or Triton for this GPU, an operation inductor cannot lower), the decoder
        goes on without that piece and says so; each piece raises its own type
        (:mod:`.fallbacks`), so the one turned off is the one that failed."""
        while True:
            try:
                self._step(st, t_eff, cfg, eos)
                return
            except PieceFailed as exc:
                self._give_up(exc)

    def _give_up(self, exc: PieceFailed) -> None:
        """Turn off the piece that raised ``exc`` (re-raise its cause if it is off already)."""
        cause = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
        if isinstance(exc, AttentionKernelFailed) and self.triton:
            self.triton = False
            then = "using PyTorch's memory-efficient kernel"
        elif isinstance(exc, SamplingKernelFailed) and self.nucleus:
            self.nucleus = False
            then = "sampling on top-k candidates"
        elif isinstance(exc, CompiledSelectionFailed) and self._select is not select_candidates:
            self._select = select_candidates
            then = "running it uncompiled"
        elif isinstance(exc, CompiledLayersFailed) and self.fuse == "compile":
            self.fuse = "eager"
            self.layers = FusedLayers(self.model, compile=False, fused_attention=self.fused)
            then = "running them uncompiled"
        else:
            raise cause
        log.warning("hf: %s failed (%s); %s", exc.piece, exc.summary, then)

    # -- shapes, prefill, graphs ----------------------------------------------------------------
    def _state(self, groups: int, m: int, width: int, gen_len: int, cfg: SamplingConfig) -> tuple[DecodeState, bool]:
        key = (groups, m, width, gen_len, cfg)
        st = self._states.get(key)
        if st is not None:
            return st, False
        if len(self._states) >= 2:  # keep memory bounded: the last two shapes
            self._states.pop(next(iter(self._states)))
            if self.graphs:
                import torch

                torch.cuda.empty_cache()
        st = DecodeState(self.model, groups, m, width, gen_len, self.pad_id)
        self._states[key] = st
        return st, True

    def _load(self, st: DecodeState, pairs: list[Loaded], width: int) -> None:
        """Prefill prompts into groups and (re)start their rows: ``pairs`` holds (group,
        prompt ids, the keys of its samples, which of them decode greedily). The prompt
        (left-padded to ``width``) is prefilled in chunks into the group's prefix buffers; its
        last logits go to every sample row; slots beyond its samples start finished."""
        import torch

        dev, m = self.model.device, st.m
        slot = torch.tensor([pair[0] for pair in pairs], dtype=torch.long)
        ids, mask, keys, done, greedy, limit = _host_rows(pairs, width, m, self.pad_id)
        ids, mask, slot = ids.to(dev), mask.to(dev), slot.to(dev)
        last = self._prefill(st, ids, mask, slot)
        rows = (slot[:, None] * m + torch.arange(m, device=dev)).reshape(-1)
        st.prefix_bias.index_copy_(0, slot, torch.where(mask.bool(), 0.0, float("-inf")))
        st.prefix_bias_h.index_copy_(0, slot, st.prefix_bias.index_select(0, slot).to(st.prefix_bias_h.dtype))
        st.prefix_first.index_copy_(0, slot, (width - mask.sum(-1)).to(torch.int32))
        st.logits.index_copy_(0, rows, last.repeat_interleave(m, 0))
        st.plen.index_copy_(0, rows, mask.sum(-1).repeat_interleave(m, 0))
        # seen ids: the prompt (padding repeats its last token), then the generated slots
        seen = torch.cat([ids.masked_fill(mask == 0, 0) + (mask == 0) * ids[:, -1:],
                          ids[:, -1:].expand(-1, st.gen_len + 1)], 1)
        st.seen.index_copy_(0, rows, seen.repeat_interleave(m, 0))
        st.keys.index_copy_(0, rows, keys.reshape(-1).to(dev))
        st.greedy.index_copy_(0, rows, greedy.reshape(-1).to(dev))
        st.max_new.index_copy_(0, rows, limit.reshape(-1).to(dev))
        st.done.index_copy_(0, rows, done.reshape(-1).to(dev))
        for buf, value in ((st.length, 0), (st.step, 0), (st.out_tok, self.pad_id), (st.out_lp, 0.0)):
            buf.index_fill_(0, rows, value)

    def _prefill(self, st: DecodeState, ids: torch.Tensor, mask: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """The prompts' keys and values into the prefix buffers of groups ``slot``, in chunks;
        float32 logits of their last position (n, V)."""
        import torch
        from transformers import DynamicCache

        n, width = ids.shape
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        chunk = max(1, 32768 // width)
        last = torch.empty(n, st.logits.shape[1], dtype=torch.float32, device=ids.device)
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            kv: Any = DynamicCache(config=self.model.config)
            out = self.model(
                input_ids=ids[lo:hi], attention_mask=mask[lo:hi], position_ids=positions[lo:hi],
                use_cache=True, logits_to_keep=1, **cache_kwargs(self.model, kv),
            )
            last[lo:hi] = out.logits[:, -1, :].float()
            for layer, (pk, pv) in enumerate(zip(st.prefix_k, st.prefix_v, strict=True)):
                pk.index_copy_(0, slot[lo:hi], kv.layers[layer].keys)
                pv.index_copy_(0, slot[lo:hi], kv.layers[layer].values)
        return last

    def _capture(self, st: DecodeState, cfg: SamplingConfig, eos: torch.Tensor) -> None:
        """Capture one graph per attention bucket (warm-up runs first, on a side stream)."""
        import torch

        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        buckets = list(range(self.bucket, st.gen_len + 1, self.bucket))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), self._attention():
            # every bucket once: whatever compiles or autotunes for a shape must do so before
            # capture (a synchronising benchmark inside a capture invalidates it)
            for t_eff in buckets:
                self._warm_up(st, t_eff, cfg, eos)
        torch.cuda.current_stream().wait_stream(stream)
        with self._attention():
            for t_eff in buckets:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self._pool):
                    self._step(st, t_eff, cfg, eos)
                st.graphs[t_eff] = graph
                self.captured += 1

    # -- the loop -------------------------------------------------------------------------------
    def run(
        self, batch: DecodeBatch, cfg: SamplingConfig, max_new_tokens: int, stop_check: StopCheck | None = None,
        slots: int | None = None,
    ) -> list[RowOutput]:
        """Decode ``batch``. ``slots``: the most rows decoded at once (None: all); when the batch
        has more, finished prompts' groups take the waiting prompts (:mod:`.schedule`).
        ``cfg.mixed``: the rows ``batch.greedy`` marks decode greedily (see :meth:`can_mix`)."""
        import torch

        if cfg.mixed and not self.can_mix(cfg):
            raise ValueError(f"greedy rows cannot join a run of {cfg} (see sampling.can_mix)")
        n_rows = len(batch.rows)
        if n_rows == 0 or max_new_tokens <= 0:
            return [RowOutput([], [] if cfg.logprobs else None, False) for _ in batch.rows]
        with torch.inference_mode():
            return self._run(batch, cfg, max_new_tokens, stop_check, slots)

    def _prepare(self, groups: int, m: int, width: int, gen_len: int, cfg: SamplingConfig,
                 eos: torch.Tensor) -> DecodeState:
        """The buffers of this shape, with graphs captured (or compiled pieces warmed up) when new."""
        import torch

        st, new = self._state(groups, m, width, gen_len, cfg)
        if new and self.graphs:
            try:
                self._capture(st, cfg, eos)
            except torch.cuda.OutOfMemoryError:
                self._states.pop((groups, m, width, gen_len, cfg), None)  # half-built: retried smaller
                raise
            except RuntimeError as exc:  # an operation of this model that cannot be captured
                log.warning("hf: CUDA graph capture failed (%s); decoding without graphs", exc)
                self.graphs = False
                st.graphs.clear()
        elif new and self.fuse == "compile":
            with self._attention():
                self._warm_up(st, self.bucket, cfg, eos)
        return st

    def _run(
        self, batch: DecodeBatch, cfg: SamplingConfig, max_new_tokens: int, stop_check: StopCheck | None,
        slots: int | None,
    ) -> list[RowOutput]:
        import torch

        samples: list[list[int]] = [[] for _ in batch.prompts]  # batch rows of each prompt
        for i, p in enumerate(batch.rows):
            samples[p].append(i)
        m = max(len(s) for s in samples)
        g = len(batch.prompts)
        held = g if slots is None else max(1, min(g, slots // m))
        groups = _round_up(held, self.group_bucket)
        width = _round_up(max(len(p) for p in batch.prompts), self.bucket if self.graphs or self.fused else 1)
        eos = torch.tensor(self.eos_ids or (-1,), dtype=torch.long, device=self.model.device)
        st = self._prepare(groups, m, width, _round_up(max_new_tokens, self.bucket), cfg, eos)
        st.done.fill_(True)  # groups that hold no prompt: their rows stay finished
        for buf in (st.stats, st.step, st.length):
            buf.zero_()
        st.max_new.fill_(max_new_tokens)
        schedule = Schedule.of(g, held, max_new_tokens)
        results: list[RowOutput | None] = [None] * len(batch.rows)
        t = 0
        self._refill(st, schedule, batch, samples, width, t)
        while schedule.active():
            t_eff = min(_round_up(schedule.own_steps(t) + 1, self.bucket), st.gen_len)
            if self.graphs:
                st.graphs[t_eff].replay()
            else:
                with self._attention():  # the prefill of a refill uses the model's own attention
                    self._step(st, t_eff, cfg, eos)
            t += 1
            if t % self.sync_every == 0 or t >= schedule.horizon():
                if stop_check is not None:
                    self._check_stops(st, stop_check)
                self._harvest(st, schedule, samples, results, cfg.logprobs is not None)
                self._refill(st, schedule, batch, samples, width, t)
        self._report(st)
        assert all(r is not None for r in results)
        return [r for r in results if r is not None]

    def _refill(self, st: DecodeState, schedule: Schedule, batch: DecodeBatch, samples: list[list[int]],
                width: int, t: int) -> None:
        """Prefill waiting prompts into free groups, once a quarter of the groups is free (or
        none is active): a prefill is an eager forward pass, so refills are batched."""
        free = schedule.groups - len(schedule.active())
        if free < max(1, schedule.groups // 4) and schedule.active():
            return
        pairs = schedule.assign(t)
        if pairs:
            flags = batch.greedy or [False] * len(batch.rows)
            limits = batch.max_new or [schedule.max_new_tokens] * len(batch.rows)
            self._load(st, [(grp, batch.prompts[p], [batch.keys[i] for i in samples[p]], [flags[i] for i in samples[p]],
                             [limits[i] for i in samples[p]]) for grp, p in pairs], width)

    def _harvest(self, st: DecodeState, schedule: Schedule, samples: list[list[int]],
                 results: list[RowOutput | None], want_lp: bool) -> None:
        """Collect the rows of the groups whose rows all ended, and free those groups."""
        active = schedule.active()
        ended = st.done.view(st.groups, st.m).all(dim=1).tolist()
        finished = [grp for grp in active if ended[grp]]
        if not finished:
            return
        rows = [grp * st.m + j for grp in finished for j in range(len(samples[schedule.owner[grp]]))]
        outs = self._collect(st, rows, want_lp)
        k = 0
        for grp in finished:
            for i in samples[schedule.release(grp)]:
                results[i] = outs[k]
                k += 1

    def _report(self, st: DecodeState) -> None:
        over, truncated = (int(x) for x in st.stats.tolist())
        self.last_stats = {"overflow_rows": over, "truncated_rows": truncated}
        if truncated:
            # once per decoder as a warning, then quietly: a long run would print it per batch
            self.truncated_total += truncated
            first = self.truncated_total == truncated
            log.log(
                logging.WARNING if first else logging.DEBUG,
                "hf: %d row-steps had a top-p nucleus larger than the %d candidates and no exact "
                "slot left; they were sampled from their candidates (raise candidates or "
                "overflow_share to avoid it)%s", truncated, self.candidates,
                "; later batches are logged at DEBUG level" if first else f" ({self.truncated_total} so far)",
            )

    def _check_stops(self, st: DecodeState, stop_check: StopCheck) -> None:
        live = (~st.done).nonzero()[:, 0].tolist()
        if not live:
            return
        lens = st.length[live].tolist()
        toks = st.out_tok[live].tolist()
        hit = [live[i] for i in range(len(live)) if stop_check(toks[i][: lens[i]])]
        if hit:
            st.done[hit] = True

    def _collect(self, st: DecodeState, rows: list[int], want_lp: bool) -> list[RowOutput]:
        import torch

        index = torch.tensor(rows, dtype=torch.long, device=st.length.device)
        lens = st.length.index_select(0, index).tolist()
        toks = st.out_tok.index_select(0, index).tolist()
        lps = st.out_lp.index_select(0, index).tolist() if want_lp else None
        eos = set(self.eos_ids)
        outputs = []
        for i in range(len(rows)):
            tokens = toks[i][: lens[i]]
            outputs.append(RowOutput(
                tokens=tokens,
                logprobs=lps[i][: lens[i]] if lps is not None else None,
                eos=bool(tokens) and tokens[-1] in eos,
            ))
        return outputs
