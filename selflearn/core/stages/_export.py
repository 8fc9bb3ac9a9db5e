"""Exports of the datasets stage: Parquet, a ``datasets.Dataset`` on disk, the hub, a histogram.

All files go through the :class:`ArtifactStore` (atomic writes, any fsspec run directory):
``datasets.Dataset.save_to_disk`` writes to a local temporary folder first, whose files are
then copied in. The tables have explicit schemas, so an empty selection still gives readable
files with the right columns (and ``num_shards=1``: datasets cannot load a zero-shard save).
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from collections.abc import Sequence
from typing import Any

from ..errors import StageError
from ..records import PreferencePair, SFTExample
from ..redact import redact
from ..store import ArtifactStore
from ._filters import FilterConfig

DPO_COLUMNS = ("id", "question_id", "prompt", "chosen", "rejected", "passage_id", "document_id")
SFT_COLUMNS = ("id", "question_id", "prompt", "completion", "origin", "passage_id", "document_id")


def _schema(kind: str) -> Any:
    import pyarrow as pa

    text = [(c, pa.string()) for c in (DPO_COLUMNS if kind == "dpo" else SFT_COLUMNS)]
    scores = [
        ("s_l", pa.float64()),
        ("s_k", pa.float64()),
        ("consistency_samples", pa.list_(pa.float64())),
        ("knowledge_samples", pa.list_(pa.float64())),
    ]
    extra = [("rejected_score", pa.float64())] if kind == "dpo" else []
    return pa.schema(text + scores + extra + [("provenance", pa.string())])


def _row(rec: PreferencePair | SFTExample) -> dict[str, Any]:
    d = rec.to_dict()
    prov = d.pop("provenance")
    d.update(
        passage_id=prov.get("passage_id"),
        document_id=prov.get("document_id"),
        s_l=prov.get("s_l"),
        s_k=prov.get("s_k"),
        consistency_samples=prov.get("consistency_samples"),
        knowledge_samples=prov.get("knowledge_samples"),
        provenance=json.dumps(prov, ensure_ascii=False, sort_keys=True, default=str),
    )
    if isinstance(rec, PreferencePair):
        d["rejected_score"] = prov.get("rejected_score")
    return d


def table(records: Sequence[PreferencePair | SFTExample], kind: str) -> Any:
    """A pyarrow table: the record's fields, provenance keys as columns, provenance as JSON."""
    import pyarrow as pa

    schema = _schema(kind)
    rows = [_row(r) for r in records]
    return pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)


def write_parquet(store: ArtifactStore, name: str, tbl: Any) -> None:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(tbl, buf)
    store.write_bytes(name, buf.getvalue())


def save_dataset(store: ArtifactStore, folder: str, tbl: Any) -> list[str]:
    """``datasets.Dataset(tbl).save_to_disk`` into ``folder`` of the run directory."""
    import datasets

    ds = datasets.Dataset(tbl)
    written = []
    with tempfile.TemporaryDirectory(prefix="selflearn-ds-") as tmp:
        ds.save_to_disk(tmp, num_shards=1)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                store.write_bytes(f"{folder}/{name}", f.read())
            written.append(f"{folder}/{name}")
    return written


def push_to_hub(tables: dict[str, Any], repo: str, private: bool, token: str | None) -> None:
    """Push each non-empty table as a config (``dpo``, ``sft``) of the hub dataset ``repo``."""
    import datasets

    for config, tbl in tables.items():
        if tbl.num_rows == 0:
            continue
        try:
            datasets.Dataset(tbl).push_to_hub(repo, config_name=config, private=private, token=token)
        except Exception as exc:  # noqa: BLE001 - any hub failure becomes one clear error
            raise StageError(
                f"pushing the {config} dataset to the hub repository {repo!r} failed "
                f"({type(exc).__name__}: {redact(str(exc), [token or ''])[:300]}). Check network "
                "access and that the "
                "HF_TOKEN secret may write to that repository, or set datasets.push_to_hub: false"
            ) from None


def histogram_png(
    s_l: Sequence[float | None], s_k: Sequence[float | None], cfg: FilterConfig, scorer: str, bins: int = 20
) -> bytes:
    """S_L and S_K histograms with the thresholds marked (matplotlib, Agg, no global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    panels = (
        ("S_L (consistency: y* vs samples with passage)", s_l, cfg.tau_l, cfg.consistency, "keep S_L <= tau_L"),
        ("S_K (knowledge: y* vs samples without passage)", s_k, cfg.tau_k, cfg.knowledge, "keep S_K > tau_K"),
    )
    for i, (title, values, tau, on, rule) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        present = [v for v in values if v is not None]
        lo = min([0.0, *present])
        hi = max([1.0, *present])
        ax.hist(present, bins=bins, range=(lo, hi), color="tab:blue" if i == 0 else "tab:orange", alpha=0.8)
        label = f"tau = {tau:g} ({rule})" if on else f"tau = {tau:g} (filter off)"
        ax.axvline(tau, color="black", linestyle="--" if on else ":", linewidth=1.5, label=label)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(f"score ({len(present)} questions, {len(values) - len(present)} missing)", fontsize=8)
        ax.set_ylabel("questions", fontsize=8)
        ax.legend(fontsize=8, loc="upper center")
    fig.suptitle(f"Knowledge-detection scores ({scorer})", fontsize=10)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
