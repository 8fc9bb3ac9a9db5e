"""The decoding loop of the ``hf`` backend.

Why our own loop instead of ``model.generate``: sampling must be batch-invariant (see
:mod:`.sampling`), which ``generate``'s shared random stream is not; and the K samples of a
prompt should share its prefill. The loop:

1. **Prefill** the distinct prompts of the batch once (left padding, positions from the
   attention mask, logits of the last position only), with a ``DynamicCache``.
2. **Expand** the cache, the last logits and the "seen tokens" mask to one row per sample
   (an index-select: sample rows of the same prompt share its prefill computation).
3. **Decode** one token per step for all rows with :func:`.sampling.select`, all on the
   device. The host only looks every ``sync_every`` steps: to stop when every row finished, to
   check stop strings, and (dynamic cache) to drop finished rows from the batch.

Two cache implementations share steps 1-3:

* ``dynamic`` (default, CPU and GPU): a ``DynamicCache`` that grows by one position per step;
  finished rows are dropped from the batch as they accumulate.
* ``static``: the prefilled keys/values are copied into a ``StaticCache`` sized for the whole
  generation, so every decode step has the same shapes and can be compiled and captured in
  CUDA graphs (``compile=True``: ``torch.compile(mode="reduce-overhead")``). Row counts and
  cache lengths are rounded up to buckets so a run compiles only a few times; the CPU path runs
  it eagerly (useful to test it). The faster GPU path is the ``shared`` decoder
  (:mod:`.shared_decoder`), which the backend uses on CUDA by default.

A row's tokens depend only on its prompt, its key and the model, never on the batch (up to the
floating-point differences batched kernels may show between batch shapes).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import attrs

from .sampling import SamplingConfig, select, vocab_keys
from .transformers_api import cache_kwargs, returned_cache

if TYPE_CHECKING:
    import torch

log = logging.getLogger("selflearn.hf")

CacheKind = Literal["dynamic", "static"]
#: called with a row's generated tokens so far; True when a stop string has appeared
StopCheck = Callable[[list[int]], bool]


@attrs.frozen
class DecodeBatch:
    """One forward batch: distinct prompts and the sample rows to generate from them."""

    prompts: list[list[int]]  # token ids of each distinct prompt (no padding)
    rows: list[int]  # for each row, the index of its prompt in ``prompts``
    keys: list[int]  # for each row, its 63-bit sampling key


@attrs.frozen
class RowOutput:
    tokens: list[int]  # generated ids, the EOS token included when one was generated
    logprobs: list[float] | None
    eos: bool  # the row ended with an EOS token


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


class Decoder:
    """Runs :class:`DecodeBatch` es through one model; keeps compiled functions between calls."""

    def __init__(
        self,
        model: Any,
        *,
        eos_ids: tuple[int, ...],
        pad_id: int,
        cache: CacheKind = "dynamic",
        compile: bool = False,
        sync_every: int = 8,
        row_bucket: int = 64,
        length_bucket: int = 256,
    ) -> None:
        self.model = model
        self.eos_ids = eos_ids
        self.pad_id = pad_id
        self.cache = cache
        self.sync_every = max(1, sync_every)
        self.row_bucket = max(1, row_bucket)
        self.length_bucket = max(1, length_bucket)
        self._keep_arg = "logits_to_keep" in inspect.signature(model.forward).parameters
        self._forward = model.forward
        self._select: Callable[..., Any] = select
        if compile:
            import torch

            self._forward = torch.compile(model.forward, mode="reduce-overhead", dynamic=False)
            self._select = torch.compile(select, dynamic=False)
        self.compiled = compile

    # -- steps ----------------------------------------------------------------------------
    def _prefill(self, prompts: list[list[int]]) -> tuple[Any, ...]:
        import torch
        from transformers import DynamicCache

        device = self.model.device
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
        ids, mask = ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        kv = DynamicCache(config=self.model.config)
        extra = {"logits_to_keep": 1} if self._keep_arg else {}
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions,
            use_cache=True, **cache_kwargs(self.model, kv), **extra,
        )
        logits = out.logits[:, -1, :].to(torch.float32, copy=True)
        vocab = logits.shape[-1]
        # "seen" for the repetition penalty: the prompt's tokens, padding excluded (column
        # ``vocab`` catches the padding and is dropped), so padding never penalises a token.
        seen = torch.zeros((len(prompts), vocab + 1), dtype=torch.bool, device=device)
        seen.scatter_(1, ids.masked_fill(mask == 0, vocab).clamp(max=vocab), True)
        lens = torch.tensor(lengths, dtype=torch.long, device=device)
        return returned_cache(out), logits, seen[:, :vocab], mask, lens

    def _static_cache(self, dyn: Any, rows: torch.Tensor, width: int, cache_len: int) -> Any:
        from transformers import StaticCache
        from transformers.cache_utils import StaticLayer

        static = StaticCache(config=self.model.config, max_cache_len=cache_len)
        layers: list[Any] = list(static.layers)
        if any(type(layer) is not StaticLayer for layer in layers) or len(layers) != len(dyn.layers):
            return None
        first = dyn.layers[0].keys
        static.early_initialization(
            batch_size=int(rows.shape[0]),
            num_heads=[int(layer.keys.shape[1]) for layer in dyn.layers],
            head_dim=[int(layer.keys.shape[-1]) for layer in dyn.layers],
            dtype=first.dtype,
            device=first.device,
        )
        for s, d in zip(layers, dyn.layers, strict=True):
            s.keys[:, :, :width].copy_(d.keys.index_select(0, rows))
            s.values[:, :, :width].copy_(d.values.index_select(0, rows))
            s.cumulative_length.fill_(width)
        return static

    # -- the loop -------------------------------------------------------------------------
    def run(
        self,
        batch: DecodeBatch,
        cfg: SamplingConfig,
        max_new_tokens: int,
        stop_check: StopCheck | None = None,
    ) -> list[RowOutput]:
        import torch

        with torch.inference_mode():
            return self._run(batch, cfg, max_new_tokens, stop_check)

    def _run(
        self,
        batch: DecodeBatch,
        cfg: SamplingConfig,
        max_new_tokens: int,
        stop_check: StopCheck | None,
    ) -> list[RowOutput]:
        import torch

        n_rows = len(batch.rows)
        if n_rows == 0 or max_new_tokens <= 0:
            return [RowOutput([], [] if cfg.logprobs else None, False) for _ in batch.rows]
        kv, logits, seen, mask, lens = self._prefill(batch.prompts)
        device = logits.device
        width = mask.shape[1]
        static = self.cache == "static"
        n_alloc = _round_up(n_rows, self.row_bucket) if static else n_rows
        # padding rows (static shapes only) copy row 0 and start finished
        rows = torch.tensor(batch.rows + [batch.rows[0]] * (n_alloc - n_rows), device=device)
        if static:
            cache_len = _round_up(width + max_new_tokens, self.length_bucket)
            static_kv = self._static_cache(kv, rows, width, cache_len)
            if static_kv is None:
                log.warning("this model's cache layers cannot be made static; decoding dynamically")
                static = False
                n_alloc, rows = n_rows, rows[:n_rows]
            else:
                kv = static_kv
                full = torch.ones((n_alloc, cache_len), dtype=mask.dtype, device=device)
                full[:, :width] = mask.index_select(0, rows)
                mask = full
        if not static:
            kv.reorder_cache(rows)
            mask = mask.index_select(0, rows)
        logits = logits.index_select(0, rows)
        seen = seen.index_select(0, rows)
        pos = lens.index_select(0, rows)
        keys = torch.tensor(
            batch.keys + [0] * (n_alloc - n_rows), dtype=torch.int64, device=device
        )
        eos = torch.tensor(self.eos_ids or (-1,), dtype=torch.long, device=device)
        out_tok = torch.full((n_alloc, max_new_tokens), self.pad_id, dtype=torch.long, device=device)
        out_lp = torch.zeros((n_alloc, max_new_tokens), dtype=torch.float32, device=device)
        length = torch.zeros(n_alloc, dtype=torch.long, device=device)
        done = torch.zeros(n_alloc, dtype=torch.bool, device=device)
        done[n_rows:] = True
        active = torch.arange(n_alloc, device=device)  # global row of each batch row
        step = torch.zeros((), dtype=torch.int64, device=device)
        forward = self._forward if static else self.model.forward
        choose = self._select if static else select
        vocab = vocab_keys(logits.shape[-1], device)
        for t in range(max_new_tokens):
            if self.compiled and static:
                torch.compiler.cudagraph_mark_step_begin()
            tok, lp = choose(logits, seen, keys, step if static else t, cfg, vocab)
            live = ~done
            tok = torch.where(live, tok, self.pad_id)
            out_tok[active, t] = tok
            if lp is not None:
                out_lp[active, t] = lp
            length[active] += live.long()
            seen.scatter_(1, tok[:, None], True)
            done = done | torch.isin(tok, eos)
            if t + 1 == max_new_tokens:
                break
            if (t + 1) % self.sync_every == 0:
                if stop_check is not None:
                    done = self._check_stops(stop_check, out_tok, length, active, done)
                if bool(done.all()):
                    break
                if not static and bool(done.float().mean() >= 0.25):
                    keep = (~done).nonzero()[:, 0]
                    kv.reorder_cache(keep)
                    tok, mask, pos, keys, seen, done, active = (
                        x.index_select(0, keep) for x in (tok, mask, pos, keys, seen, done, active)
                    )
            if not static:
                mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
            out = forward(
                input_ids=tok[:, None], attention_mask=mask, position_ids=pos[:, None],
                use_cache=True, **cache_kwargs(self.model, kv),
            )
            logits = out.logits[:, -1, :].to(torch.float32, copy=True)
            pos = pos + 1
            step += 1
        return self._collect(out_tok, out_lp, length, n_rows, cfg.logprobs is not None)

    def _check_stops(
        self,
        stop_check: StopCheck,
        out_tok: torch.Tensor,
        length: torch.Tensor,
        active: torch.Tensor,
        done: torch.Tensor,
    ) -> torch.Tensor:
        live = (~done).nonzero()[:, 0].tolist()
        if not live:
            return done
        rows = active[live]
        lens = length[rows].tolist()
        toks = out_tok[rows].tolist()
        hit = [i for i in range(len(live)) if stop_check(toks[i][: lens[i]])]
        if hit:
            done = done.clone()
            done[[live[i] for i in hit]] = True
        return done

    def _collect(
        self, out_tok: torch.Tensor, out_lp: torch.Tensor, length: torch.Tensor, n_rows: int,
        want_lp: bool,
    ) -> list[RowOutput]:
        lens = length[:n_rows].tolist()
        toks = out_tok[:n_rows].tolist()
        lps = out_lp[:n_rows].tolist() if want_lp else None
        eos = set(self.eos_ids)
        outputs = []
        for i in range(n_rows):
            tokens = toks[i][: lens[i]]
            outputs.append(
                RowOutput(
                    tokens=tokens,
                    logprobs=lps[i][: lens[i]] if lps is not None else None,
                    eos=bool(tokens) and tokens[-1] in eos,
                )
            )
        return outputs
