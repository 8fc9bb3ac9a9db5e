"""The NLI engine shared by ``selfcheck-nli``, ``bsdetector`` and ``semantic-entropy``.

It turns (premise, hypothesis) text pairs into the full softmax probability vector of an MNLI
sequence classifier, as fast as the model allows:

- identical pairs are computed once per call (a stage batches every pair of every item), and
  every computed vector is kept in a persistent cache keyed by (model identity, premise,
  hypothesis), so a re-run or a second scorer on the same pairs loads no model at all;
- the pairs are tokenised as the tokenizer's own pair call does, truncated to ``max_length``
  tokens (``longest_first``, as SelfCheckGPT's ``truncation=True`` does with a 512-token
  tokenizer), but each distinct text once (:mod:`._pairs`; checked against that call on the
  first pairs), sorted by length and cut into batches by a padded-token budget, so padding
  stays small;
- the model runs in bfloat16 on CUDA and float32 on CPU; on CUDA a DeBERTa-v2/v3 classifier's
  attention runs as one fused Triton kernel (:mod:`._deberta_attention`, option ``attention``),
  checked against transformers' own attention on the first batch of every run (a failure or a
  difference falls back to transformers' attention with a warning); the softmax is taken in
  float32 over **all** logits (for a 2-class entailment/contradiction head this is exactly SelfCheckGPT's
  ``softmax(logits)[1]``).

Label indices come from ``config.id2label`` (case-insensitive ``entailment``/``contradiction``/
``neutral``). A 2-class head with generic names (``LABEL_0``/``LABEL_1``, which is what
``potsawee/deberta-v3-large-mnli`` ships) follows SelfCheckGPT's convention: 0 = entailment,
1 = contradiction. Explicit indices in the options override both.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Literal, get_args

from ...core.cache import JsonlCache
from ...core.errors import ConfigError
from ...core.hashing import canonical_json
from .. import triton_support
from ._common import (
    cached_lookup,
    model_fingerprint,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    token_batches,
    torch_dtype,
)
from ._deberta_attention import FusedAttentionFailed, install, uninstall, unsupported
from ._pairs import PairEncoder

log = logging.getLogger("selflearn.scorers.nli")

Progress = Callable[..., Iterable[Any]]
#: the ``attention`` option of every scorer on this engine (see :attr:`NLIEngine.fused`)
Attention = Literal["auto", "transformers", "triton"]

#: batches queued on the GPU before the oldest one's results are read back
_LAG = 4
#: pairs tokenised at a time (the next chunk is tokenised while the GPU runs this one)
_CHUNK = 4096
#: pairs of a call's first chunk: the GPU waits for it (nothing runs before), so it is small; a
#: stage scores shard by shard (execution.shard_size records, ~1,300 pairs at K = 10 per 64),
#: so each call's wait counts
_FIRST_CHUNK = 256
#: pairs of the first chunk also tokenised by the tokenizer's own call, to check :mod:`._pairs`
_CHECK = 64
#: most a probability of the first batch may differ between the fused attention kernel and
#: transformers' attention (both bfloat16 on CUDA: each rounds differently; a wrong kernel
#: differs by far more)
_FUSED_TOLERANCE = 0.05


#: a launched batch: its pair indices, its probabilities (pinned host memory on CUDA, filled
#: asynchronously) and the CUDA event recorded after the copy (None on the CPU)
_Pending = tuple[list[int], Any, Any]


def _chunks(order: list[int]) -> list[list[int]]:
    """``order`` cut into tokenisation chunks: ``_FIRST_CHUNK`` pairs, then ``_CHUNK`` each."""
    first = min(_FIRST_CHUNK, _CHUNK)
    head, rest = order[:first], order[first:]
    return ([head] if head else []) + [rest[i : i + _CHUNK] for i in range(0, len(rest), _CHUNK)]


def _to_device(arr: Any, device: str) -> Any:
    """A numpy array as a tensor on ``device``; on CUDA through pinned memory, so the copy is
    asynchronous and the host goes on padding the next batch."""
    import torch

    tensor = torch.from_numpy(arr)
    return tensor.pin_memory().to(device, non_blocking=True) if device.startswith("cuda") else tensor


def _batch_inputs(
    ids: list[list[int]], types: list[list[int]] | None, lengths: Any, local: list[int], pad: int,
    device: str,
) -> dict[str, Any]:
    """The model inputs of the rows ``local`` of a chunk, right-padded to their longest row
    only (batches follow token lengths, so padding stays small)."""
    import numpy as np

    def padded(rows: list[list[int]], width: int, fill: int) -> Any:
        arr = np.full((len(rows), width), fill, dtype=np.int64)
        for r, row in enumerate(rows):
            arr[r, : len(row)] = row
        return _to_device(arr, device)

    width = int(lengths[local].max())
    inputs = {
        "input_ids": padded([ids[j] for j in local], width, pad),
        "attention_mask": _to_device(
            (np.arange(width)[None, :] < lengths[local][:, None]).astype(np.int64), device
        ),
    }
    if types is not None:
        inputs["token_type_ids"] = padded([types[j] for j in local], width, 0)
    return inputs


def label_indices(
    id2label: dict[Any, str],
    *,
    entailment: int | None = None,
    contradiction: int | None = None,
    path: str = "options",
) -> dict[str, int]:
    """Indices of ``entailment``, ``contradiction`` (and ``neutral`` when present)."""
    names = {int(i): str(name).strip().lower() for i, name in id2label.items()}
    found = {name: i for i, name in names.items() if name in ("entailment", "contradiction", "neutral")}
    n = len(names)
    if "entailment" not in found and "contradiction" not in found and n == 2:
        found = {"entailment": 0, "contradiction": 1}  # SelfCheckGPT's convention (potsawee)
    if entailment is not None:
        found["entailment"] = entailment
    if contradiction is not None:
        found["contradiction"] = contradiction
    for key in ("entailment", "contradiction"):
        if key not in found:
            raise ConfigError(
                f"cannot tell which output of the NLI model is {key!r}: its config.id2label is "
                f"{ {int(i): str(v) for i, v in id2label.items()} }. Expected labels named 'entailment' and "
                f"'contradiction' (any case); set {key}_label: INDEX in the scorer options",
                path,
            )
        if not 0 <= found[key] < n:
            raise ConfigError(
                f"{key} index {found[key]} is out of range for a {n}-class model", path
            )
    return found


class NLIEngine:
    """Batched, cached (premise, hypothesis) -> probability vectors. See the module docstring."""

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int = 512,
        batch_size: int = 256,
        max_tokens_per_batch: int = 32768,
        entailment_label: int | None = None,
        contradiction_label: int | None = None,
        attention: Attention = "auto",
        cache: JsonlCache | None = None,
        progress: Progress | None = None,
        path: str = "scorer.options",
    ) -> None:
        if max_length < 8:
            raise ConfigError(f"expected at least 8 tokens, got {max_length}", f"{path}.max_length")
        if batch_size < 1 or max_tokens_per_batch < max_length:
            raise ConfigError(
                f"expected batch_size >= 1 and max_tokens_per_batch >= max_length ({max_length}), "
                f"got {batch_size} and {max_tokens_per_batch}",
                path,
            )
        self.ref = model
        self.path = path
        self.model_path = resolve_model_path(model, f"{path}.model")
        self.device_option = device
        self.dtype_option = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.max_tokens_per_batch = max_tokens_per_batch
        self._forced = (entailment_label, contradiction_label)
        if attention not in get_args(Attention):
            raise ConfigError(
                f"expected 'auto', 'transformers' or 'triton', got {attention!r}", f"{path}.attention"
            )
        self.attention_option = attention
        self._fused: bool | None = None  # whether the fused kernel runs (None: not resolved yet)
        self._fused_checked = False
        self._caching = True  # False for the rest of a call whose fused results fell back
        self.cache = cache
        self.progress = progress
        self._model: Any = None
        self._tokenizer: Any = None
        self._pairs: PairEncoder | None = None
        self._pairs_checked = False
        self._use_token_types = False
        self._labels: dict[str, int] | None = None
        self._identity: dict[str, Any] | None = None
        self._id_json: str | None = None
        self.computed = 0  # pairs run through the model (not from the cache)
        self.timing = {"tokenize_s": 0.0, "model_s": 0.0}  # where _compute spends its time

    # -- identity and labels (no weights loaded) ------------------------------------------
    def _config(self) -> Any:
        from transformers import AutoConfig

        try:
            return AutoConfig.from_pretrained(self.model_path)
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the NLI model {self.ref!r}: {exc}. Give a local folder or a hub "
                "id reachable from this machine (no NLI model ships offline; the offline "
                "default scorer is selfcheck-embedding)",
                f"{self.path}.model",
            ) from exc

    @property
    def labels(self) -> dict[str, int]:
        if self._labels is None:
            config = self._config()
            self._labels = label_indices(
                dict(config.id2label),
                entailment=self._forced[0],
                contradiction=self._forced[1],
                path=self.path,
            )
            self.num_labels = int(config.num_labels)
        return self._labels

    @property
    def device(self) -> str:
        return resolve_device(self.device_option)

    @property
    def dtype(self) -> str:
        return resolve_dtype(self.dtype_option, self.device)

    @property
    def fused(self) -> bool:
        """Whether the attention runs as the fused kernel: ``auto`` on CUDA where it supports the
        model, ``triton`` always (an error where it cannot: needs CUDA, or the CPU under
        ``TRITON_INTERPRET=1``, Triton's interpreter, for tests), ``transformers`` never."""
        if self._fused is None:
            self._fused = self._resolve_fused()
        return self._fused

    def _resolve_fused(self) -> bool:
        if self.attention_option == "transformers":
            return False
        why = unsupported(self._config())
        on_gpu = self.device.startswith("cuda")
        if self.attention_option == "auto":
            return why is None and on_gpu
        if why is None and not on_gpu and not triton_support.interpreting():
            why = f"it runs on CUDA, and the device is {self.device!r}"
        if why is not None:
            raise ConfigError(
                f"the fused DeBERTa attention kernel cannot run {self.ref!r}: {why}. Use "
                "attention: auto (the kernel where it applies) or transformers",
                f"{self.path}.attention",
            )
        return True

    def identity(self) -> dict[str, Any]:
        """What changes the probabilities: model, weights fingerprint, labels, dtype, length, and
        the fused attention kernel when it runs (it rounds differently from transformers')."""
        if self._identity is None:
            self._identity = {
                "nli_model": self.ref,
                "fingerprint": model_fingerprint(self.model_path),
                "labels": self.labels,
                "dtype": self.dtype,
                "max_length": self.max_length,
            }
            if self.fused:
                self._identity["attention"] = "triton-fused"
        return self._identity

    # -- model -----------------------------------------------------------------------------
    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        _ = self.labels
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModelForSequenceClassification.from_pretrained(
                self.model_path, dtype=torch_dtype(self.dtype)
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot load the NLI model {self.ref!r}: {exc}", f"{self.path}.model"
            ) from exc
        self._model = model.to(self.device).eval()
        if self.fused:
            install(self._model)
            self._fused_checked = False
        self._use_token_types = int(getattr(model.config, "type_vocab_size", 0) or 0) > 0
        self._pairs = PairEncoder.of(self._tokenizer, self.max_length)
        self._pairs_checked = False
        log.info("NLI model %s loaded on %s (%s)", self.ref, self.device, self.dtype)

    def _key(self, premise: str, hypothesis: str) -> str:
        """Cache key of a pair: a hash of (model identity, premise, hypothesis).

        The identity's canonical JSON is computed once; hashing one pair costs a few
        microseconds, which matters at thousands of pairs per second.
        """
        if self._id_json is None:
            self._id_json = canonical_json(self.identity())
        payload = f"{self._id_json}\x00{premise}\x00{hypothesis}".encode()
        return hashlib.sha256(payload).hexdigest()[:40]

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        """The softmax probability vector of each (premise, hypothesis) pair, aligned."""
        return cached_lookup(pairs, self.cache, lambda p: self._key(*p), lambda hit: hit, self._compute)

    def _encode(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]] | None]:
        """Token ids (and types) of ``pairs``: each distinct text tokenised once
        (:mod:`._pairs`) where that gives the tokenizer's own result, else the tokenizer's call."""
        t0 = time.perf_counter()
        fast = self._pairs
        result = None
        if fast is not None and all(p and h for p, h in pairs):
            result = fast.encode(pairs, self._use_token_types)
            if not self._pairs_checked:
                self._pairs_checked = True
                head = list(pairs[:_CHECK])
                if self._encode_slow(head) != (result[0][:_CHECK], None if result[1] is None else result[1][:_CHECK]):
                    log.info("NLI: the tokenizer's pairs differ from encoding each text once; using its own call")
                    self._pairs, result = None, None
        if result is None:
            result = self._encode_slow(pairs)
        self.timing["tokenize_s"] += time.perf_counter() - t0
        return result

    def _encode_slow(self, pairs: Sequence[tuple[str, str]]) -> tuple[list[list[int]], list[list[int]] | None]:
        """The tokenizer's own pair call (the reference of :meth:`_encode`)."""
        encoded = self._tokenizer(
            [p for p, _ in pairs],
            [h for _, h in pairs],
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_token_type_ids=self._use_token_types,
            return_attention_mask=False,
        )
        types = encoded.get("token_type_ids") if self._use_token_types else None
        return encoded["input_ids"], types

    def _compute(self, pairs: list[tuple[str, str]], keys: list[str]) -> list[list[float]]:
        """Run the model on ``pairs``, longest first, in token-budget batches.

        The GPU is never left waiting for the CPU:

        - pairs are ordered by character length (longest first) and tokenised in chunks of
          ``_CHUNK`` pairs on a helper thread, the next chunk while the GPU works on this one
          (the fast tokenizer releases the GIL; the first chunk, which nothing overlaps, is
          ``_FIRST_CHUNK`` pairs); within a chunk, batches follow token lengths;
        - each batch's probabilities are copied to pinned host memory asynchronously and read
          back ``_LAG`` batches later (a CUDA event says when), so the next batches are padded
          and launched while the GPU computes.
        """
        import torch

        self._load()
        self._caching = True
        t1 = time.perf_counter()
        order = sorted(range(len(pairs)), key=lambda i: (-len(pairs[i][0]) - len(pairs[i][1]), i))
        chunks = _chunks(order)
        out: list[list[float] | None] = [None] * len(pairs)
        pending: list[_Pending] = []
        with ThreadPoolExecutor(max_workers=1) as pool, torch.inference_mode():
            future = pool.submit(self._encode, [pairs[i] for i in chunks[0]]) if chunks else None
            for c in self._chunk_progress(len(chunks)):
                assert future is not None
                ids, types = future.result()
                if c + 1 < len(chunks):
                    future = pool.submit(self._encode, [pairs[i] for i in chunks[c + 1]])
                for launched in self._launch_batches(chunks[c], ids, types):
                    pending.append(launched)
                    while len(pending) > _LAG:
                        self._store(pending.pop(0), out, keys)
            while pending:
                self._store(pending.pop(0), out, keys)
        self.timing["model_s"] += time.perf_counter() - t1
        self.computed += len(pairs)
        return out  # type: ignore[return-value]

    def _chunk_progress(self, n_chunks: int) -> Iterable[int]:
        """The chunk indices, through the progress bar when there is one and more than one
        chunk (a single chunk finishes too fast for a bar to say anything)."""
        iterator: Iterable[int] = range(n_chunks)
        if self.progress is not None and n_chunks > 1:
            iterator = self.progress(iterator, total=n_chunks, desc="nli", unit="chunk")
        return iterator

    def _launch_batches(
        self, chunk: list[int], ids: list[list[int]], types: list[list[int]] | None
    ) -> Iterator[_Pending]:
        """Pad and run each token-budget batch of one tokenised chunk (``chunk`` maps its rows
        to pair indices), yielding each as soon as it is launched.

        On CUDA the probabilities are copied to pinned host memory asynchronously and a CUDA
        event marks when they are there, so the caller can launch more batches before reading
        them; on the CPU they are ready at once (event None).
        """
        import numpy as np
        import torch

        tok = self._tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        device = self.device
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        for local in token_batches(lengths.tolist(), self.max_tokens_per_batch, self.batch_size):
            inputs = _batch_inputs(ids, types, lengths, local, pad, device)
            probs_t = self._probabilities(inputs)
            batch = [chunk[j] for j in local]
            if device.startswith("cuda"):
                host = torch.empty(probs_t.shape, dtype=probs_t.dtype, pin_memory=True)
                host.copy_(probs_t, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                yield batch, host, event
            else:
                yield batch, probs_t, None

    def _probabilities(self, inputs: dict[str, Any]) -> Any:
        """Softmax probabilities (float32) of one padded batch, through the fused attention
        when it runs; the first such batch of a load is also run through transformers'
        attention and compared (:meth:`_first_fused`)."""
        if self._fused and not self._fused_checked:
            return self._first_fused(inputs)
        try:
            return self._softmax(inputs)
        except FusedAttentionFailed as exc:
            self._give_up_fused(str(exc))
            return self._softmax(inputs)

    def _softmax(self, inputs: dict[str, Any]) -> Any:
        """The model's forward on one padded batch: float32 softmax over all logits."""
        import torch

        return torch.softmax(self._model(**inputs).logits.float(), dim=-1)

    def _first_fused(self, inputs: dict[str, Any]) -> Any:
        """The first fused batch, checked against transformers' attention on the same inputs
        (the longest pairs of the call: the sort puts them first)."""
        self._fused_checked = True
        try:
            fused = self._softmax(inputs)
        except Exception as exc:  # the kernel, or our forward under another transformers
            if type(exc).__name__ == "OutOfMemoryError":
                raise
            self._give_up_fused(str(exc) if isinstance(exc, FusedAttentionFailed) else f"{type(exc).__name__}: {exc}")
            return self._softmax(inputs)
        uninstall(self._model)
        reference = self._softmax(inputs)
        diff = float((fused - reference).abs().max())
        if diff <= _FUSED_TOLERANCE:
            install(self._model)
            log.info("NLI: fused attention kernel checked on %d pairs (largest difference %.2g)", len(fused), diff)
            return fused
        self._give_up_fused(f"its probabilities differ from transformers' by up to {diff:.3g}")
        return reference

    def _give_up_fused(self, why: str) -> None:
        """Run transformers' attention from now on: an error with ``attention: triton``, a
        warning with ``auto``. This call's results are not cached (their keys name the kernel);
        later calls get an identity without it."""
        uninstall(self._model)
        if self.attention_option == "triton":
            raise ConfigError(
                f"the fused DeBERTa attention kernel failed on this machine: {why}. Use "
                "attention: auto or transformers",
                f"{self.path}.attention",
            )
        log.warning("NLI: the fused attention kernel is off for this run (%s); using transformers' attention", why)
        self._fused = False
        self._caching = False
        self._identity = None
        self._id_json = None

    def _store(self, launched: _Pending, out: list[list[float] | None], keys: list[str]) -> None:
        """Read one launched batch's probabilities back (waiting for its event) into ``out``
        at its pairs' positions, and into the persistent cache under ``keys``."""
        batch, host, event = launched
        if event is not None:
            event.synchronize()
        probs = host.tolist()
        for row, i in enumerate(batch):
            out[i] = probs[row]
        if self.cache is not None and self._caching:
            self.cache.put_many((keys[i], probs[r]) for r, i in enumerate(batch))

    def close(self) -> None:
        self._model = None
        self._tokenizer = None


def engine_from_options(options: Any, context: Any, namespace: str = "nli") -> NLIEngine:
    """Build an :class:`NLIEngine` from a scorer's options (fields named as in the engine)."""
    cache = context.cache(namespace) if context is not None else None
    progress = getattr(context, "progress", None)
    return NLIEngine(
        options.model,
        device=options.device,
        dtype=options.dtype,
        max_length=options.max_length,
        batch_size=options.batch_size,
        max_tokens_per_batch=options.max_tokens_per_batch,
        entailment_label=options.entailment_label,
        contradiction_label=options.contradiction_label,
        attention=options.attention,
        cache=cache,
        progress=progress,
        path=f"{getattr(context, 'path', 'scorer')}.options",
    )
