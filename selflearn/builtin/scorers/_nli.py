"""The NLI engine shared by ``selfcheck-nli``, ``bsdetector`` and ``semantic-entropy``.

It turns (premise, hypothesis) text pairs into the full softmax probability vector of an MNLI
sequence classifier, as fast as the model allows:

- identical pairs are computed once per call (a stage batches every pair of every item), and
  every computed vector is kept in a persistent cache keyed by (model identity, premise,
  hypothesis), so a re-run or a second scorer on the same pairs loads no model at all;
- the pairs are tokenised in one fast-tokenizer call, truncated to ``max_length`` tokens
  (``longest_first``, as SelfCheckGPT's ``truncation=True`` does with a 512-token tokenizer),
  sorted by length and cut into batches by a padded-token budget, so padding stays small;
- the model runs in bfloat16 on CUDA and float32 on CPU; the softmax is taken in float32 over
  **all** logits (for a 2-class entailment/contradiction head this is exactly SelfCheckGPT's
  ``softmax(logits)[1]``).

Label indices come from ``config.id2label`` (case-insensitive ``entailment``/``contradiction``/
``neutral``). A 2-class head with generic names (``LABEL_0``/``LABEL_1``, which is what
``potsawee/deberta-v3-large-mnli`` ships) follows SelfCheckGPT's convention: 0 = entailment,
1 = contradiction. Explicit indices in the options override both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ...core.cache import JsonlCache
from ...core.errors import ConfigError
from ._common import (
    model_fingerprint,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    token_batches,
    torch_dtype,
)

log = logging.getLogger("selflearn.scorers.nli")

Progress = Callable[..., Iterable[Any]]


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
                f"{dict(sorted(names.items()))}. Expected labels named 'entailment' and "
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
        self.cache = cache
        self.progress = progress
        self._model: Any = None
        self._tokenizer: Any = None
        self._labels: dict[str, int] | None = None
        self._identity: dict[str, Any] | None = None
        self.computed = 0  # pairs run through the model (not from the cache)

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

    def identity(self) -> dict[str, Any]:
        """What changes the probabilities: model, weights fingerprint, labels, dtype, length."""
        if self._identity is None:
            self._identity = {
                "nli_model": self.ref,
                "fingerprint": model_fingerprint(self.model_path),
                "labels": self.labels,
                "dtype": self.dtype,
                "max_length": self.max_length,
            }
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
        self._use_token_types = int(getattr(model.config, "type_vocab_size", 0) or 0) > 0
        log.info("NLI model %s loaded on %s (%s)", self.ref, self.device, self.dtype)

    def _key(self, premise: str, hypothesis: str) -> str:
        return JsonlCache.key(self.identity(), premise, hypothesis)

    def probabilities(self, pairs: Sequence[tuple[str, str]]) -> list[list[float]]:
        """The softmax probability vector of each (premise, hypothesis) pair, aligned."""
        unique: dict[tuple[str, str], list[float] | None] = dict.fromkeys(pairs)
        missing: list[tuple[str, str]] = []
        for pair in unique:
            hit = self.cache.get(self._key(*pair)) if self.cache is not None else None
            if hit is None:
                missing.append(pair)
            else:
                unique[pair] = hit
        if missing:
            for pair, probs in zip(missing, self._compute(missing)):
                unique[pair] = probs
        return [unique[p] for p in pairs]  # type: ignore[misc]

    def _compute(self, pairs: list[tuple[str, str]]) -> list[list[float]]:
        import torch

        self._load()
        tok = self._tokenizer
        encoded = tok(
            [p for p, _ in pairs],
            [h for _, h in pairs],
            truncation=True,
            max_length=self.max_length,
            padding=False,
            return_token_type_ids=self._use_token_types,
        )
        ids: list[list[int]] = encoded["input_ids"]
        types: list[list[int]] | None = encoded.get("token_type_ids") if self._use_token_types else None
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        batches = token_batches([len(x) for x in ids], self.max_tokens_per_batch, self.batch_size)
        out: list[list[float] | None] = [None] * len(pairs)
        iterator: Iterable[list[int]] = batches
        if self.progress is not None and len(pairs) > 1000:
            iterator = self.progress(batches, total=len(batches), desc="nli", unit="batch")
        device = self.device
        pending: tuple[list[int], Any] | None = None  # the previous batch, still on the device

        def collect(done: tuple[list[int], Any]) -> None:
            batch, probs_t = done
            probs = probs_t.cpu().tolist()
            for row, i in enumerate(batch):
                out[i] = probs[row]
            if self.cache is not None:
                self.cache.put_many((self._key(*pairs[i]), probs[r]) for r, i in enumerate(batch))

        with torch.inference_mode():
            for batch in iterator:
                width = max(len(ids[i]) for i in batch)
                input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in batch])
                mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch])
                inputs = {
                    "input_ids": input_ids.to(device, non_blocking=True),
                    "attention_mask": mask.to(device, non_blocking=True),
                }
                if types is not None:
                    tt = torch.tensor([types[i] + [0] * (width - len(types[i])) for i in batch])
                    inputs["token_type_ids"] = tt.to(device, non_blocking=True)
                logits = self._model(**inputs).logits.float()
                probs_t = torch.softmax(logits, dim=-1)
                # collect the previous batch only now: the device works on this one meanwhile
                if pending is not None:
                    collect(pending)
                pending = (batch, probs_t)
            if pending is not None:
                collect(pending)
        self.computed += len(pairs)
        return out  # type: ignore[return-value]

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
        cache=cache,
        progress=progress,
        path=f"{getattr(context, 'path', 'scorer')}.options",
    )
