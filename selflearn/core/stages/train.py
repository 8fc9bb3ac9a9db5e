"""Stage ``train``: SFT (when an ``sft_trainer`` is configured), then DPO from its model.

With ``trainer: null`` only SFT runs (an SFT-only run; the evaluate stage then compares the SFT
model with the base model). In ``flow: paper`` the sft_model stage has trained SFT before the
preference data was generated, and this stage runs DPO from that model (``sft_model.json``).

Reads what the ``datasets`` stage wrote: ``sft.jsonl`` (:class:`SFTExample`),
``dpo_pairs.jsonl`` (:class:`PreferencePair`) and ``datasets_summary.json`` (thresholds,
scorer, rows removed by each filter). The models are saved under the run directory,
``models/sft`` and ``models/dpo``, and recorded in ``train.json`` so that the evaluation stage
and a second self-training round can use them; ``train_loss.png`` plots the losses.

Resuming after a kill: the trainers resume from their last checkpoint, and a finished model
folder whose lineage carries this stage's fingerprint for it (same rows, trainer, input model
and seed) is reused without training.
"""

from __future__ import annotations

import io
import json
import logging
import os
from typing import Any

import attrs

from ..distributed import is_main_process
from ..errors import ArtifactError, ConfigError, StageError
from ..hashing import content_hash
from ..models import read_lineage
from ..options import SEED_MAX, bounded
from ..prompts import closed_book_messages
from ..protocols import TrainRequest, TrainResult
from ..records import PreferencePair, SFTExample
from ._sftdata import rows_by_origin
from .base import Stage

log = logging.getLogger("selflearn")

SFT_FILE = "sft.jsonl"
DPO_FILE = "dpo_pairs.jsonl"
SUMMARY_FILE = "datasets_summary.json"
#: G_SFT as the sft_model stage of ``flow: paper`` records it (read by generations and train)
SFT_MODEL_FILE = "sft_model.json"


def recorded_sft_model(store: Any) -> dict[str, Any]:
    """``sft_model.json``: G_SFT, which generates and starts DPO in ``flow: paper``; a clear
    error where a stage of that flow runs before the sft_model stage wrote it."""
    if not store.exists(SFT_MODEL_FILE):
        raise StageError(f"{SFT_MODEL_FILE} is missing: in flow: paper the sft_model stage runs first")
    return dict(store.read_json(SFT_MODEL_FILE))


@attrs.frozen
class TrainOptions:
    #: folder of the run directory where the models are saved (``<models_dir>/sft``, ``/dpo``)
    models_dir: str = "models"
    #: seed of the trainings (data order, dropout, LoRA init); None: the run's ``seed``. Set it
    #: to repeat only the training with other seeds while the data stages stay as they are
    #: (the top-level seed also seeds sampling, so changing it regenerates everything)
    seed: int | None = bounded(None, ge=0, le=SEED_MAX)
    #: extra fields recorded in the trained models' lineage and model card (a run with
    #: rounds names its earlier rounds' data, thresholds and models here, under "rounds")
    lineage: dict[str, Any] = attrs.field(factory=dict)


def sft_rows(examples: list[SFTExample]) -> list[dict[str, Any]]:
    """Conversational prompt/completion rows: the example's prompt text as the user turn."""
    return [
        {
            "prompt": [{"role": "user", "content": ex.prompt}],
            "completion": [{"role": "assistant", "content": ex.completion}],
        }
        for ex in examples
    ]


def dpo_rows(pairs: list[PreferencePair]) -> list[dict[str, Any]]:
    """Conversational preference rows; the prompt is the bare question (no passage)."""
    return [
        {
            "prompt": [dict(m) for m in closed_book_messages(p.prompt)],
            "chosen": [{"role": "assistant", "content": p.chosen}],
            "rejected": [{"role": "assistant", "content": p.rejected}],
        }
        for p in pairs
    ]


def selection(summary: dict[str, Any]) -> dict[str, Any]:
    """The thresholds, scorer and per-filter removals of the datasets stage, where given."""
    out: dict[str, Any] = {}
    thresholds = summary.get("thresholds")
    if thresholds is None:
        thresholds = {k: summary[k] for k in ("tau_l", "tau_k") if k in summary} or None
    if thresholds is not None:
        out["thresholds"] = thresholds
    if "scorer" in summary:
        out["scorer"] = summary["scorer"]
    for key in ("removed", "removed_by_filter", "filters"):
        if key in summary:
            out["filters"] = summary[key]
            break
    if "would_fail" in summary:  # rows each filter alone would remove
        out["would_fail"] = summary["would_fail"]
    if summary.get("hub_dataset"):  # the model card links the pushed dataset
        out["hub_dataset"] = summary["hub_dataset"]
    return out


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


class TrainStage(Stage):
    name = "train"
    flow_sensitive = True
    requires = ("datasets",)
    slots = ("sft_trainer", "trainer")
    options_class = TrainOptions

    def outputs(self) -> list[str]:
        return ["train.json", "train_loss.png"]

    def dependencies(self) -> tuple[str, ...]:
        """In ``flow: paper`` also the ``sft_model`` stage, whose model DPO starts from."""
        return (*self.requires, "sft_model") if self.flow == "paper" else self.requires

    def validate(self) -> None:
        super().validate()
        if not self.run_ctx.model:
            raise ConfigError(
                "the train stage needs the model under training: set `model:` to a hub id, a "
                "local folder, a .gguf file or a pkg: reference",
                "model",
            )
        if not self.run_ctx.has("trainer") and not self.run_ctx.has("sft_trainer"):
            raise ConfigError(
                "nothing to train: both trainer and sft_trainer are null. Set trainer (e.g. "
                "trl-dpo) for preference training, sft_trainer (e.g. trl-sft) for SFT, or both",
                "trainer",
            )

    #: every process of an accelerate launch / torchrun run takes part in this stage
    distributed = True

    def _phases(self) -> list[str]:
        """The trainings this stage runs: SFT here only in the default flow (``flow: paper``
        trains it in the sft_model stage, before the preference data exists), then DPO."""
        sft = self.flow != "paper" and self.run_ctx.has("sft_trainer")
        return (["sft"] if sft else []) + (["dpo"] if self.run_ctx.has("trainer") else [])

    def estimate(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model_calls": 0}
        for key, fname in (("sft_rows", SFT_FILE), ("dpo_pairs", DPO_FILE)):
            if self.store.exists(fname):
                out[key] = sum(1 for _ in self.store.iter_jsonl(fname))
        out["trainings"] = self._phases()
        return out

    # -- running -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        opts: TrainOptions = self.options
        if not self.store.is_local:
            raise ArtifactError(
                f"the train stage saves models under the run directory, which must be on the "
                f"local filesystem; got {self.store.url!r}. Use a local run_dir (copy the "
                "models elsewhere afterwards if needed)"
            )
        base = str(self.run_ctx.model or "")
        if not base:
            raise ConfigError("the train stage needs `model:` (the model under training)", "model")
        summary = self.store.read_json(SUMMARY_FILE) if self.store.exists(SUMMARY_FILE) else {}
        if not isinstance(summary, dict):
            summary = {}
        picked = selection(summary)
        phases = self._phases()
        pairs = self._read(DPO_FILE, PreferencePair) if "dpo" in phases else []
        if "dpo" in phases and not pairs:
            raise StageError(self._empty_message(summary, picked))
        # the trainers load their own copies of the model: free the generation backend's first
        self.run_ctx.release("backend")
        models_root = self.store.local_path(opts.models_dir)
        results: dict[str, TrainResult | None] = {"sft": None, "dpo": None}
        counts: dict[str, int | None] = {"sft": None, "dpo": len(pairs) if "dpo" in phases else None}
        start, start_identity = base, {"model": base}
        if self.flow == "paper":
            results["sft"], counts["sft"], start, start_identity = self._paper_sft()
        elif "sft" in phases:
            sft_result, counts["sft"], fp = self._sft(base, models_root, picked)
            results["sft"] = sft_result
            start, start_identity = sft_result.model_path, {"sft": fp}
        if "dpo" in phases:
            results["dpo"], _ = self._train(
                "trainer", "preference", dpo_rows(pairs), start, start_identity,
                os.path.join(models_root, "dpo"), DPO_FILE, picked,
                {"start_model": start, "base_model": base},
            )
        record = self._record(base, results, counts)
        record["flow"] = self.flow
        if is_main_process():  # under accelerate launch / torchrun the others only train
            self.store.write_json("train.json", record)
            self.store.write_bytes("train_loss.png", _plot(record["loss"], record["eval_loss"]))
        return {
            "base_model": base,
            "flow": self.flow,
            "models": record["models"],
            "rows": record["rows"],
            "final_loss": {k: (v[-1]["loss"] if v else None) for k, v in record["loss"].items()},
        }

    def _sft(self, base: str, models_root: str, picked: dict[str, Any]) -> tuple[TrainResult, int, str]:
        """SFT from the base model on ``sft.jsonl`` (the default flow)."""
        examples = self._read(SFT_FILE, SFTExample)
        if not examples:
            raise StageError(
                f"{SFT_FILE} has no rows, but an sft_trainer is configured. Check the "
                "datasets stage's SFT settings, or remove sft_trainer to start DPO from "
                f"{base!r}"
            )
        res, fp = self.train_sft(examples, base, models_root, picked)
        return res, len(examples), fp

    def train_sft(
        self, examples: list[SFTExample], base: str, models_root: str, picked: dict[str, Any]
    ) -> tuple[TrainResult, str]:
        """SFT of ``base`` on ``examples`` (rows of ``sft.jsonl``) into ``<models_root>/sft``:
        this stage's in the default flow, the sft_model stage's (G_SFT) in ``flow: paper``."""
        origins = rows_by_origin(examples)
        return self._train(
            "sft_trainer", "sft", sft_rows(examples), base, {"model": base},
            os.path.join(models_root, "sft"), SFT_FILE, picked, {"rows_by_origin": origins},
        )

    def _paper_sft(self) -> tuple[TrainResult, int, str, dict[str, Any]]:
        """G_SFT as the sft_model stage recorded it: DPO starts from it (``flow: paper``)."""
        rec = recorded_sft_model(self.store)
        res = TrainResult(rec["model"], rec.get("metrics") or {}, rec.get("log_history") or [])
        return res, int(rec.get("rows") or 0), rec["model"], {"sft": rec.get("fingerprint")}

    @property
    def _seed(self) -> int:
        opts: TrainOptions = self.options
        return self.run_ctx.seed if opts.seed is None else opts.seed

    def _read(self, fname: str, cls: Any) -> list[Any]:
        if not self.store.exists(fname):
            return []
        return list(self.store.read_records(fname, cls))

    def _empty_message(self, summary: dict[str, Any], picked: dict[str, Any]) -> str:
        parts = [f"no DPO pairs to train on: {DPO_FILE} is missing or empty, so the filters kept nothing."]
        if "thresholds" in picked:
            parts.append(f"Thresholds: {_compact(picked['thresholds'])}.")
        if "scorer" in picked:
            parts.append(f"Scorer: {_compact(picked['scorer'])}.")
        if "filters" in picked:
            parts.append(f"Rows removed by each filter: {_compact(picked['filters'])}.")
        if "would_fail" in picked:
            parts.append(f"Rows each filter alone would remove: {_compact(picked['would_fail'])}.")
        if not picked:
            parts.append(
                f"({SUMMARY_FILE} is missing or holds no thresholds/filter counts"
                + (f": {_compact(summary)}" if summary else "")
                + ".)"
            )
        parts.append(
            "To keep more questions, raise tau_L or lower tau_K (or switch a filter off) in the "
            "datasets stage, generate more questions, or check that the scorer works."
        )
        return " ".join(parts)

    def _train(
        self,
        slot: str,
        kind: str,
        rows: list[dict[str, Any]],
        model: str,
        model_identity: Any,
        output_dir: str,
        source: str,
        picked: dict[str, Any],
        extra: dict[str, Any],
    ) -> tuple[TrainResult, str]:
        trainer = self.run_ctx.component(slot)
        if getattr(trainer, "data_kind", None) != kind:
            raise ConfigError(
                f"{slot} must take {kind!r} rows, but this trainer's data_kind is "
                f"{getattr(trainer, 'data_kind', None)!r}. Use trl-sft for sft_trainer and "
                "trl-dpo (or another preference trainer) for trainer",
                slot,
            )
        spec = self.run_ctx.slots[slot]
        fingerprint = content_hash(
            {
                "rows": content_hash(rows),
                "trainer": spec.describe() if spec else None,
                "model": model_identity,
                "seed": self._seed,
            }
        )
        done = read_lineage(output_dir)
        if done and (done.get("lineage") or {}).get("stage_fingerprint") == fingerprint:
            log.info("train: %s already holds this %s model; reusing it", output_dir, kind)
            return TrainResult(output_dir, done.get("metrics", {}), done.get("log_history", [])), fingerprint
        lineage = {
            "stage": "train",
            "run_dir": self.store.url,
            "source_file": source,
            "source_file_hash": self.store.hash(source),
            "rows": len(rows),
            **picked,
            **extra,
            **self.options.lineage,
            "trainer_config": spec.describe() if spec else None,
            "stage_fingerprint": fingerprint,
        }
        request = TrainRequest(
            rows=rows, model=model, output_dir=output_dir, lineage=lineage, seed=self._seed
        )
        return trainer.train(request), fingerprint

    def _record(
        self, base: str, results: dict[str, TrainResult | None], rows: dict[str, int | None]
    ) -> dict[str, Any]:
        models: dict[str, str | None] = {}
        metrics: dict[str, Any] = {}
        loss: dict[str, list[dict[str, float]]] = {}
        eval_loss: dict[str, list[dict[str, float]]] = {}
        for key, res in results.items():
            models[key] = os.path.abspath(res.model_path) if res else None
            metrics[key] = res.metrics if res else None
            history = res.log_history if res else []
            loss[key] = [
                {"step": e["step"], "loss": e["loss"]} for e in history if "loss" in e and "step" in e
            ]
            eval_loss[key] = [
                {"step": e["step"], "loss": e["eval_loss"]}
                for e in history
                if "eval_loss" in e and "step" in e
            ]
        return {
            "base_model": base,
            "models": models,
            "metrics": metrics,
            "loss": loss,
            "eval_loss": eval_loss,
            "rows": rows,
        }


def _plot(loss: dict[str, list[dict[str, float]]], eval_loss: dict[str, list[dict[str, float]]]) -> bytes:
    """Training (and evaluation) loss per step, one panel per trained model, as PNG bytes."""
    import matplotlib.pyplot as plt

    fig = loss_figure(loss, eval_loss)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


#: at most this many logged points per series get their value written beside them
_LABELLED_POINTS = 3
#: series longer than this are drawn without markers
_MARKED_POINTS = 60


def loss_figure(loss: dict[str, list[dict[str, float]]], eval_loss: dict[str, list[dict[str, float]]]) -> Any:
    """The figure of :func:`_plot`. Every point has a marker, so a short run's one or two
    logged steps show as points rather than an empty plot or a bare line; a series of a few
    points also has its values written beside them, and a panel with none says so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    phases = [k for k in ("sft", "dpo") if loss.get(k) or eval_loss.get(k)] or ["dpo"]
    fig, axes = plt.subplots(1, len(phases), figsize=(5 * len(phases), 3.5), squeeze=False)
    for ax, phase in zip(axes[0], phases, strict=True):
        drawn: list[float] = []
        for series, label, style in ((loss, "train", "o-"), (eval_loss, "eval", "s--")):
            points = series.get(phase) or []
            if not points:
                continue
            steps, values = [p["step"] for p in points], [p["loss"] for p in points]
            if len(points) > _MARKED_POINTS:  # a long run: the line alone reads better
                style = style.lstrip("os")
            ax.plot(steps, values, style, label=f"{label} ({len(points)} logged)", markersize=5)
            if len(points) <= _LABELLED_POINTS:
                for x, y in zip(steps, values, strict=True):
                    ax.annotate(f"{y:.3g}", (x, y), textcoords="offset points", xytext=(4, 5), fontsize=8)
            drawn += steps
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(set(drawn)) == 1:  # one logged step: a readable axis around it
            ax.set_xlim(drawn[0] - 1, drawn[0] + 1)
            ax.set_xticks([drawn[0]])
        if not drawn:
            ax.text(0.5, 0.5, "no loss logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{phase.upper()} loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    return fig
