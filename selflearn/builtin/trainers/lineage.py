"""The saved model's lineage: ``selflearn-lineage.json`` and the model card ``README.md``.

The lineage file is written last, so its presence marks a finished model folder; its
``fingerprint`` (data hash, input model, options, seed) tells a resumed run whether that
folder can be reused as it is.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
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


def model_card(lineage: dict[str, Any]) -> str:
    """A Hugging Face model card: YAML front matter, then what the lineage file holds."""
    base = str(lineage.get("base_model", ""))
    front = ["---", "library_name: transformers", "tags:", "- selflearn", "- trl"]
    front.append(f"- {lineage.get('method', 'training')}")
    if lineage.get("adapter"):
        front.append("- lora")
    if _is_hub_id(base):
        front.append(f"base_model: {base}")
    front.append("---")
    upstream = lineage.get("lineage") or {}
    selection = {
        k: upstream[k] for k in ("thresholds", "scorer", "filters", "would_fail") if k in upstream
    }
    parts = [
        "\n".join(front),
        f"# {lineage.get('method', 'model').upper()} model trained by selflearn",
        "Self-training through knowledge detection (Yeo et al., 2024): trained with "
        f"`{lineage.get('trainer')}` from `{base}`. The machine-readable record is "
        f"`{LINEAGE_FILE}` in this folder.",
        "## Data\n\n" + _table(lineage.get("data", {})),
    ]
    if selection:
        parts.append("## How the rows were selected\n\n" + _table(selection))
    other = {k: v for k, v in upstream.items() if k not in selection}
    if other:
        parts.append("## Upstream lineage\n\n" + _table(other))
    parts.append("## Training parameters\n\n" + _table(lineage.get("training", {})))
    if lineage.get("metrics"):
        parts.append("## Final metrics\n\n" + _table(lineage["metrics"]))
    parts.append("## Software\n\n" + _table(lineage.get("versions", {})))
    return "\n\n".join(parts) + "\n"
