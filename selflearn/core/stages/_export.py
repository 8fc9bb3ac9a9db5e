"""Exports of the datasets stage: Parquet, a ``datasets.Dataset`` on disk, the hub, a histogram.

All files go through the :class:`ArtifactStore` (atomic writes, any fsspec run directory):
``datasets.Dataset.save_to_disk`` writes to a local temporary folder first, whose files are
then copied in. The tables have explicit schemas, so an empty selection still gives readable
files with the right columns (and ``num_shards=1``: datasets cannot load a zero-shard save).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tempfile
from collections.abc import Sequence
from typing import Any

from ..errors import StageError
from ..records import PreferencePair, SFTExample
from ..redact import redact, safe_url
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
    """``datasets.Dataset(tbl).save_to_disk`` into ``folder`` of the run directory, with a
    fingerprint taken from the table's content: datasets otherwise draws a random one into
    ``state.json``, so the same records exported again (a resumed run) gave other bytes."""
    import datasets
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, tbl.schema) as writer:
        writer.write_table(tbl)
    ds = datasets.Dataset(tbl, fingerprint=hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16])
    written = []
    with tempfile.TemporaryDirectory(prefix="selflearn-ds-") as tmp:
        ds.save_to_disk(tmp, num_shards=1)
        for name in sorted(os.listdir(tmp)):
            with open(os.path.join(tmp, name), "rb") as f:
                store.write_bytes(f"{folder}/{name}", f.read())
            written.append(f"{folder}/{name}")
    return written


#: config keys whose values are secrets (``api_key_env`` and friends name a variable: kept)
_SECRET = re.compile(r"(api_key|apikey|token|secret|password|authorization|credentials?)$", re.I)


def redact_config(value: Any) -> Any:
    """``value`` with the values of secret-looking keys replaced by ``[redacted]``, and
    key-shaped text or credentials in URLs inside strings too: the dataset card carries the
    run's configuration, which must never carry a credential."""
    if isinstance(value, dict):
        return {k: ("[redacted]" if _SECRET.search(str(k)) and v not in (None, "") else redact_config(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_config(v) for v in value]
    return safe_url(value) if isinstance(value, str) else value


def _table_md(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *(f"| {k} | {json.dumps(v, default=str) if isinstance(v, (dict, list)) else v} |" for k, v in rows)]


def dataset_card(repo: str, summary: dict[str, Any], config: dict[str, Any], counts: dict[str, int]) -> str:
    """A Hugging Face dataset card: front matter naming the ``dpo`` and ``sft`` configs (so
    ``datasets.load_dataset(repo, "dpo")`` finds them), then how the rows were made --
    provenance, thresholds, scorer, counts, notes -- and the run's configuration (redacted)."""
    import yaml
    from huggingface_hub import DatasetCard, DatasetCardData

    configs = [{"config_name": c, "data_files": [{"split": "train", "path": f"{c}/*.parquet"}]}
               for c, n in counts.items() if n]
    data = DatasetCardData(configs=configs, tags=["selflearn", "dpo", "sft", "knowledge-detection"],
                           task_categories=["text-generation"], language=["en"])
    cfg = redact_config(config)
    lines = [f"# {repo}", "", "Preference (DPO) and SFT rows built by selflearn "
             "(self-training through knowledge detection): each question was answered with its "
             "passage (y*, Y_c) and without it (Y_r); a scorer measured S_L (consistency) and S_K "
             "(knowledge), and the questions the model does not know became DPO pairs (chosen = y*, "
             "rejected = the most contradicting Y_r answer). Every row's `provenance` column names "
             "its passage, document, scores and the decision that kept it.", "",
             "## Provenance", ""]
    lines += _table_md([("model", cfg.get("model")), ("flow", cfg.get("flow")), ("seed", cfg.get("seed")),
                        ("source", cfg.get("source")), ("question generator", cfg.get("question_generator")),
                        ("backend", cfg.get("backend")), ("scorer", summary.get("scorer"))])
    lines += ["", "## Selection", ""]
    lines += _table_md([("thresholds", summary.get("thresholds")), ("filters", summary.get("filters")),
                        ("removed (by reason)", summary.get("removed")),
                        ("each filter alone would remove", summary.get("would_fail")),
                        ("pair mode", summary.get("pair_mode")), ("variant", summary.get("variant"))])
    lines += ["", "## Counts", ""]
    lines += _table_md([("questions", summary.get("questions")), ("scored", summary.get("scored")),
                        ("kept questions", summary.get("kept_questions")),
                        *((f"config `{c}` rows", n) for c, n in counts.items()),
                        ("SFT rows by origin", (summary.get("sft") or {}).get("by_origin"))])
    if summary.get("notes"):
        lines += ["", "## Notes", "", *(f"- {n}" for n in summary["notes"])]
    lines += ["", "## Configuration", "", "```yaml",
              yaml.safe_dump(cfg, sort_keys=True, allow_unicode=True).rstrip(), "```", ""]
    return str(DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def push_to_hub(
    tables: dict[str, Any], repo: str, private: bool, token: str | None, card: str,
    *, endpoint: str | None = None, attempts: int = 3, backoff: float = 2.0,
) -> None:
    """Push each non-empty table as a config (``dpo``, ``sft``) of the hub dataset ``repo``,
    with ``card`` as its README.md, in one commit (through ``huggingface_hub.HfApi``: create the
    repository if needed, then the commit). A failed attempt (429, 5xx, no answer) is retried
    ``attempts`` times with a growing pause; then one clear error, without the token."""
    import time

    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(endpoint=endpoint, token=token)
    ops = [
        CommitOperationAdd(path_in_repo=f"{config}/train-00000-of-00001.parquet", path_or_fileobj=_parquet(tbl))
        for config, tbl in tables.items() if tbl.num_rows
    ]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    for attempt in range(1, attempts + 1):
        try:
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            api.create_commit(repo, ops, commit_message="selflearn: DPO and SFT rows with their dataset card",
                              repo_type="dataset")
            return
        except Exception as exc:  # noqa: BLE001 - any hub failure: retried, then one clear error
            if attempt < attempts and _transient(exc):
                time.sleep(backoff * attempt)
                continue
            message = redact(str(exc), [token or ""])
            raise StageError(
                f"pushing the datasets to the hub repository {repo!r} failed after {attempt} "
                f"attempt(s) ({type(exc).__name__}: {message[:300]}). Check network access and "
                "that the HF_TOKEN secret may write to that repository, or set "
                "datasets.push_to_hub: false"
            ) from None


def _transient(exc: BaseException) -> bool:
    """A failure worth another attempt: 429, a 5xx answer, or no answer at all."""
    import httpx
    from huggingface_hub.errors import OfflineModeIsEnabled

    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int):
        return status == 429 or status >= 500
    if isinstance(exc, OfflineModeIsEnabled):  # HF_HUB_OFFLINE is set: no attempt can succeed
        return False
    return isinstance(exc, (httpx.TransportError, ConnectionError, TimeoutError))


def _parquet(tbl: Any) -> bytes:
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(tbl, buf)
    return buf.getvalue()


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
