"""The saved model's lineage: ``selflearn-lineage.json`` and the model card ``README.md``.

The lineage file is written last, so its presence marks a finished model folder; its
``fingerprint`` (data hash, input model, options, seed) tells a resumed run whether that
folder can be reused as it is.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from ...core.hashing import canonical_json, content_hash
from ...core.models import LINEAGE_FILE, folder_files, read_lineage

CHECKPOINTS = "checkpoints"
FINGERPRINT_FILE = "selflearn-fingerprint.json"


def data_hash(rows: Sequence[dict[str, Any]]) -> str:
    return content_hash(list(rows))


def model_identity(ref: str) -> Any:
    """What identifies the input model: its lineage fingerprint if selflearn trained it, else
    (for a local folder) its files' names, sizes and times, else the reference itself.

    A path alone is not enough: ``models/sft`` holds a different model after SFT re-ran.
    """
    path = os.path.expanduser(ref)
    lineage = read_lineage(path) if os.path.isdir(path) else None
    if lineage is not None:
        return {"selflearn_model": lineage.get("fingerprint")}
    if os.path.isdir(path):
        return {"folder": os.path.abspath(path), "files": folder_files(path)}
    return {"ref": ref}


def versions() -> dict[str, str]:
    out = {}
    for dist in ("selflearn", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def prepare_output(output_dir: str, fingerprint: str) -> None:
    """Make ``output_dir`` ready for a run with ``fingerprint`` (main process only).

    Checkpoints of another run (other data or options) cannot be resumed from and are removed;
    a stale lineage file is removed so that a crash cannot leave a folder that looks finished.
    """
    ckpt = os.path.join(output_dir, CHECKPOINTS)
    marker = os.path.join(ckpt, FINGERPRINT_FILE)
    if os.path.isdir(ckpt):
        try:
            with open(marker, encoding="utf-8") as f:
                same = json.load(f).get("fingerprint") == fingerprint
        except (OSError, ValueError, AttributeError):
            same = False
        if not same:
            shutil.rmtree(ckpt)
    lineage = os.path.join(output_dir, LINEAGE_FILE)
    if os.path.exists(lineage):
        os.remove(lineage)
    os.makedirs(ckpt, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fingerprint}, f)


def write_lineage(folder: str, lineage: dict[str, Any]) -> None:
    """Write the model card, then the lineage file (atomically, last)."""
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(lineage))
    tmp = os.path.join(folder, LINEAGE_FILE + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(lineage, f, indent=2, ensure_ascii=False, default=str)
        f.write("\n")
    os.replace(tmp, os.path.join(folder, LINEAGE_FILE))


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _is_hub_id(ref: str) -> bool:
    return ref.count("/") == 1 and not os.path.exists(os.path.expanduser(ref)) and ":" not in ref


def _table(mapping: dict[str, Any]) -> str:
    rows = ["| key | value |", "| --- | --- |"]
    for key, value in mapping.items():
        shown = value if isinstance(value, (str, int, float, bool)) or value is None else canonical_json(value)
        rows.append(f"| {key} | {str(shown).replace('|', '/')} |")
    return "\n".join(rows)


_HUB_CACHE = re.compile(r"models--([^/\\]+?)--([^/\\]+)[/\\]snapshots[/\\]")


def hub_id(ref: str | None) -> str | None:
    """The hub repository a model reference stands for: the id itself, or the id that a folder
    of the Hugging Face cache (``.../models--ORG--NAME/snapshots/SHA``) was downloaded from."""
    if not ref:
        return None
    ref = str(ref)
    if _is_hub_id(ref):
        return ref
    match = _HUB_CACHE.search(os.path.abspath(os.path.expanduser(ref)) + os.sep)
    return f"{match.group(1)}/{match.group(2)}" if match else None


def card_base_model(lineage: dict[str, Any]) -> str | None:
    """The hub id the card links as ``base_model``: the model trained from, else the run's
    original base (DPO starts from the local SFT folder, whose own base is on the hub)."""
    upstream = lineage.get("lineage") or {}
    for ref in (lineage.get("base_model"), lineage.get("resolved_base"), upstream.get("base_model")):
        found = hub_id(ref)
        if found:
            return found
    return None


def base_license(lineage: dict[str, Any]) -> str | None:
    """The license named in the base model's own card, when its README is on this machine
    (a local folder, or the hub cache); the hub is never asked."""
    from huggingface_hub import ModelCard, try_to_load_from_cache

    candidates = [os.path.join(str(lineage.get("resolved_base", "")), "README.md")]
    base = card_base_model(lineage)
    if base:
        cached = try_to_load_from_cache(base, "README.md")
        if isinstance(cached, str):
            candidates.append(cached)
    for path in candidates:
        if os.path.isfile(path):
            try:
                found = ModelCard.load(path).data.license
            except Exception:  # noqa: BLE001 - a malformed card only loses its license
                continue
            if found:
                return str(found)
    return None


def front_matter(lineage: dict[str, Any]) -> str:
    """The card's YAML metadata, which the hub reads to link the model to its base and data.

    ``license``: the trainer's ``license`` option, else the base model's card's license.
    """
    from huggingface_hub import ModelCardData

    upstream = lineage.get("lineage") or {}
    tags = ["selflearn", "trl", str(lineage.get("method", "training"))]
    if lineage.get("adapter"):
        tags.append("lora")
    data = ModelCardData(
        base_model=card_base_model(lineage),
        datasets=[upstream["hub_dataset"]] if upstream.get("hub_dataset") else None,
        license=(lineage.get("training") or {}).get("license") or base_license(lineage),
        library_name="peft" if lineage.get("adapter") == "." else "transformers",
        pipeline_tag="text-generation",
        tags=tags,
    )
    return f"---\n{data.to_yaml()}\n---"


def rounds_section(rounds: dict[str, Any]) -> str:
    """The model card's account of self-training in rounds: which round this model is, and
    every earlier round's data, thresholds and model (the JSON holds the same, in full)."""
    head = (
        f"## Self-training rounds\n\nRound {rounds.get('round')} of {rounds.get('of')} "
        f"(passages: `{rounds.get('passages')}`), trained from `{rounds.get('model')}`; the "
        f"original model was `{rounds.get('original_model')}`."
    )
    earlier = rounds.get("earlier") or []
    if not earlier:
        return head
    rows = ["| round | data | rows | data hash | tau_L | tau_K | model | model fingerprint |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for e in earlier:
        data, th = e.get("data") or {}, e.get("thresholds") or {}
        rows.append(
            f"| {e.get('round')} | {data.get('file')} | {data.get('rows')} | {data.get('hash')} | "
            f"{th.get('tau_l')} | {th.get('tau_k')} | {e.get('model')} | {e.get('model_fingerprint')} |"
        )
    return head + "\n\nEarlier rounds:\n\n" + "\n".join(rows)


def model_card(lineage: dict[str, Any]) -> str:
    """A Hugging Face model card: YAML front matter, then what the lineage file holds."""
    base = str(lineage.get("base_model", ""))
    upstream = lineage.get("lineage") or {}
    selection = {
        k: upstream[k] for k in ("thresholds", "scorer", "filters", "would_fail") if k in upstream
    }
    parts = [
        front_matter(lineage),
        f"# {lineage.get('method', 'model').upper()} model trained by selflearn",
        "Self-training through knowledge detection (Yeo et al., 2024): trained with "
        f"`{lineage.get('trainer')}` from `{base}`. The machine-readable record is "
        f"`{LINEAGE_FILE}` in this folder.",
        "## Data\n\n" + _table(lineage.get("data", {})),
    ]
    if selection:
        parts.append("## How the rows were selected\n\n" + _table(selection))
    if isinstance(upstream.get("rounds"), dict):
        parts.append(rounds_section(upstream["rounds"]))
    other = {k: v for k, v in upstream.items() if k not in selection and k != "rounds"}
    if other:
        parts.append("## Upstream lineage\n\n" + _table(other))
    parts.append("## Training parameters\n\n" + _table(lineage.get("training", {})))
    if lineage.get("metrics"):
        parts.append("## Final metrics\n\n" + _table(lineage["metrics"]))
    parts.append("## Software\n\n" + _table(lineage.get("versions", {})))
    return "\n\n".join(parts) + "\n"
