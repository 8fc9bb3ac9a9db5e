"""Self-training in rounds (issue 20): round r + 1 trains the model round r trained.

A run with ``rounds:`` is a layer above :class:`~selflearn.core.pipeline.Pipeline`; every
part of it is an ordinary pipeline over a sub-directory of the run, with its own stages,
manifest and resume::

    <run_dir>/documents/        the source, read once (documents stage)
    <run_dir>/round-<r>/        round r: documents .. evaluate (baseline: the model it started from)
    <run_dir>/round-<r>/vs-base/  round r's evaluation against the original model (r >= 2)
    <run_dir>/heldout/<model>/  S_K of the held-out questions under the original model and
                                after each round (documents .. scores)
    <run_dir>/cache/            the per-call caches, shared (every key holds the model fingerprint)
    <run_dir>/rounds.json, report.md, rounds.png

Round r trains on its own seeded slice of the training documents (and, with ``passages:
fresh+unknown``, the previous round's questions whose S_K was above tau_K, answered and scored
again by the new model); every round is evaluated on round 1's held-out questions. A round
whose filters keep fewer than ``min_pairs`` DPO pairs ends the run before training.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from .config import SLOT_DEFAULTS, SlotSpec, parse_slot
from .distributed import is_main_process
from .errors import ConfigError
from .models import read_lineage
from .records import Document, Question, Scores
from .rounds_parts import DocumentSlice, RoundsOptions, StoredQuestions, slice_documents
from .stages.base import STAGE_NAMES
from .store import ArtifactStore

if TYPE_CHECKING:
    from .pipeline import Pipeline, StageOutcome

log = logging.getLogger("selflearn")

SUMMARY = "rounds.json"


def _reaches(until: str | None, stage: str) -> bool:
    return until is None or STAGE_NAMES.index(until) >= STAGE_NAMES.index(stage)


class Rounds:
    """Runs the rounds of one pipeline's configuration (see the module docstring)."""

    def __init__(self, pipeline: Pipeline, opts: RoundsOptions) -> None:
        self.pipeline = pipeline
        self.opts = opts
        self.base = {k: v for k, v in pipeline.raw_config.items() if k != "rounds"}
        self.store = pipeline.store
        self.cache_dir = pipeline.ctx.cache_dir
        self.model0 = pipeline.config["model"]
        self.seed: int = pipeline.config["seed"]
        self.configs: dict[int, dict[str, Any]] = {}
        self._check()

    # -- configuration -------------------------------------------------------------------
    def _check(self) -> None:
        if not self.model0:
            raise ConfigError("rounds train the model under training again and again: set `model:`", "model")
        backend = parse_slot(self.base.get("backend", SLOT_DEFAULTS["backend"]), "backend")
        if self.opts.count > 1 and backend is not None and backend.is_object:
            raise ConfigError(
                "round 2 and later load the previous round's model into the backend by replacing "
                "its 'model' option, so the backend must be given by name ({use: NAME, options: "
                "{...}}), not as a ready Python object", "backend",
            )
        evaluate = self.base.get("evaluate") or {}
        for key in ("candidate_model", "baseline_model"):
            if isinstance(evaluate, dict) and evaluate.get(key):
                raise ConfigError(
                    "with rounds, each round evaluates its own model against the model it started "
                    f"from (and against the original model); remove evaluate.{key}",
                    f"evaluate.{key}",
                )

    def _sub(self, name: str) -> str:
        return self.store.url.rstrip("/") + "/" + name

    def _pipeline(self, sub: str, config: dict[str, Any]) -> Pipeline:
        from .pipeline import Pipeline

        cfg = {**config, "run_dir": self._sub(sub), "cache_dir": self.cache_dir}
        # the StoredQuestions in the question slots are bound to the round's context when the
        # context (here, or a Ray worker's) first builds them (RunContext.component)
        pipeline = Pipeline(cfg, plugin_objects=self.pipeline.plugin_objects,
                            load_entry_points=self.pipeline.load_entry_points)
        pipeline.lock_store = self.pipeline.lock_store  # held by the main process all along
        return pipeline

    def _backend_for(self, model: str) -> Any:
        """The user's backend, with its own ``model`` option (if any) replaced by ``model``."""
        value = self.base.get("backend", SLOT_DEFAULTS["backend"])
        spec = parse_slot(value, "backend")
        if spec is None or spec.is_object or "model" not in spec.options:
            return value
        return {"use": spec.name, "options": {**spec.options, "model": model}}

    def _model_config(self, model: str) -> dict[str, Any]:
        cfg = {k: v for k, v in self.base.items() if k != "documents"}
        cfg["model"] = model
        cfg["backend"] = self._backend_for(model)
        return cfg

    def _round_config(self, r: int, model: str, slices: list[list[str]], test_ids: list[str],
                      earlier: list[dict[str, Any]]) -> dict[str, Any]:
        cfg = self._model_config(model)
        ids = list(slices[r - 1])
        carried: list[Question] = []
        if r >= 2 and self.opts.passages == "fresh+unknown":
            carried = self._unknown(r - 1)
            ids += [d for d in dict.fromkeys(q.document_id for q in carried) if d not in ids]
            inner = parse_slot(self.base.get("question_generator", SLOT_DEFAULTS["question_generator"]),
                               "question_generator")
            cfg["question_generator"] = StoredQuestions(
                carried, label=f"round-{r}: unknown questions of round-{r - 1}", inner=inner)
        if r >= 2:
            held_out = self._round_store(1).read_records("test_questions.jsonl", Question)
            cfg["test_question_generator"] = StoredQuestions(held_out, label="held-out questions of round-1")
        cfg["source"] = DocumentSlice(self._docs_store(), ids + test_ids, label=f"round-{r}")
        train = dict(self.base.get("train") or {})
        train["lineage"] = {**(train.get("lineage") or {}), "rounds": {
            "round": r, "of": self.opts.count, "passages": self.opts.passages,
            "original_model": self.model0, "model": model,
            "documents": {"fresh": len(slices[r - 1]), "carried_questions": len(carried)},
            "earlier": [_lineage_entry(e) for e in earlier],
        }}
        cfg["train"] = train
        return cfg

    def _docs_store(self) -> ArtifactStore:
        return ArtifactStore(self._sub("documents"))

    def _round_store(self, r: int) -> ArtifactStore:
        return ArtifactStore(self._sub(f"round-{r}"))

    def _unknown(self, r: int) -> list[Question]:
        """Round r's training questions whose S_K was above its tau_K (unknown to its model)."""
        store = self._round_store(r)
        summary = store.read_json("datasets_summary.json") if store.exists("datasets_summary.json") else {}
        tau_k = float(((summary or {}).get("thresholds") or {}).get("tau_k", 0.5))
        s_k = {s.question_id: s.s_k for s in store.read_records("scores.jsonl", Scores)}
        return [q for q in store.read_records("questions.jsonl", Question)
                if (s_k.get(q.id) is not None and float(s_k[q.id] or 0.0) > tau_k)]

    # -- running -------------------------------------------------------------------------
    def run(self, until: str | None = None) -> list[StageOutcome]:
        """Every round in turn (each resumable); the last one stops after ``until``."""
        from .pipeline import StageOutcome

        t0 = time.perf_counter()
        main = is_main_process()  # the other processes of a launch follow each round's pipeline
        if main:
            self.store.ensure_writable()
        docs_cfg = {k: v for k, v in self.base.items()}
        outcomes = _prefixed("documents", self._pipeline("documents", docs_cfg).run(until="documents"))
        docs = self._docs_store().read_records("documents.jsonl", Document)
        slices, test_ids = slice_documents(docs, self.opts.count, self.seed, self.opts.documents_per_round)
        earlier: list[dict[str, Any]] = []
        model, stop = str(self.model0), None
        for r in range(1, self.opts.count + 1):
            last = r == self.opts.count
            cfg = self._round_config(r, model, slices, test_ids, earlier)
            self.configs[r] = cfg
            first = "datasets" if (not last or _reaches(until, "datasets")) else until
            outcomes += _prefixed(f"round-{r}", self._pipeline(f"round-{r}", cfg).run(until=first))
            if first != "datasets":
                break
            pairs = sum(1 for _ in self._round_store(r).iter_jsonl("dpo_pairs.jsonl"))
            if pairs < self.opts.min_pairs:
                stop = self._stop_message(r, pairs)
                log.warning("%s", stop)
                break
            rest = self._pipeline(f"round-{r}", cfg).run(until=None if not last else until)
            outcomes += _prefixed(f"round-{r}", [o for o in rest if STAGE_NAMES.index(o.name) > STAGE_NAMES.index("datasets")])
            if not _reaches(until if last else None, "train"):
                break
            earlier.append(self._round_info(r, model, pairs))
            if main and r >= 2 and self.opts.compare_with_base and _reaches(until if last else None, "evaluate"):
                outcomes += _prefixed(f"round-{r}/vs-base", self._vs_base(r))
            model = earlier[-1]["model"]
        if not main:  # trained in every round with the main process; it evaluates and reports
            outcomes.append(StageOutcome("rounds", "followed", time.perf_counter() - t0, {}))
            return outcomes
        if self.opts.heldout_scores and earlier:
            outcomes += self._heldout(earlier, test_ids)
        summary = self._write_summary(earlier, stop)
        status = "stopped" if stop else "done"
        outcomes.append(StageOutcome("rounds", status, time.perf_counter() - t0, summary))
        return outcomes

    def _stop_message(self, r: int, pairs: int) -> str:
        summary = self._round_store(r).read_json("datasets_summary.json") or {}
        thresholds = summary.get("thresholds") or {}
        done = f"the run ends after round {r - 1}" if r > 1 else "nothing was trained"
        return (
            f"round {r} kept {pairs} DPO pair(s), fewer than rounds.min_pairs={self.opts.min_pairs}: "
            f"nothing left to learn at these thresholds (tau_L={thresholds.get('tau_l')}, "
            f"tau_K={thresholds.get('tau_k')}), so {done}. Removed by each filter: "
            f"{summary.get('removed')}. To go on, add fresh documents to the source, loosen "
            "tau_L/tau_K, or lower rounds.min_pairs"
        )

    def _round_info(self, r: int, model_in: str, pairs: int) -> dict[str, Any]:
        """What later rounds' lineage and the report say about round r."""
        store = self._round_store(r)
        models = store.read_json("train.json")["models"]
        model = str(models.get("dpo") or models["sft"])  # trainer: null trains SFT only
        lineage = read_lineage(model) or {}
        summary = store.read_json("datasets_summary.json") or {}
        manifest = store.read_json("manifest.json") or {}
        stages = manifest.get("stages", {})
        rounds = ((self.configs[r].get("train") or {}).get("lineage") or {}).get("rounds") or {}
        return {
            "round": r,
            "run_dir": self._sub(f"round-{r}"),
            "model_in": model_in,
            "model": model,
            "model_fingerprint": lineage.get("fingerprint"),
            "data": {"file": f"round-{r}/dpo_pairs.jsonl", "hash": store.hash("dpo_pairs.jsonl"), "rows": pairs},
            "thresholds": summary.get("thresholds"),
            "documents": rounds.get("documents"),
            "questions": (stages.get("questions") or {}).get("summary", {}).get("questions"),
            "kept_questions": summary.get("kept_questions"),
            "kept_pairs": pairs,
            "evaluation": (stages.get("evaluate") or {}).get("summary"),
        }

    def _vs_base(self, r: int) -> list[StageOutcome]:
        """Round r's model evaluated against the original model: a pipeline over
        ``round-<r>/vs-base`` holding round r's files and manifest (so only evaluate runs)."""
        src, dst = self._round_store(r), ArtifactStore(self._sub(f"round-{r}/vs-base"))
        manifest = src.read_json("manifest.json")
        stages = {k: v for k, v in manifest["stages"].items() if k != "evaluate"}
        for entry in stages.values():
            for name, digest in (entry.get("outputs") or {}).items():
                if not dst.exists(name) or dst.hash(name) != digest:
                    dst.write_bytes(name, src.read_bytes(name))
        own = dst.read_json("manifest.json") if dst.exists("manifest.json") else {}
        kept = {"evaluate": own["stages"]["evaluate"]} if "evaluate" in (own or {}).get("stages", {}) else {}
        dst.write_json("manifest.json", {**manifest, "stages": {**stages, **kept}})
        cfg = dict(self.configs[r])
        models = src.read_json("train.json")["models"]
        cfg["evaluate"] = {**(self.base.get("evaluate") or {}), "baseline_model": self.model0,
                           "candidate_model": str(models.get("dpo") or models["sft"])}
        outcomes = self._pipeline(f"round-{r}/vs-base", cfg).run()
        return [o for o in outcomes if o.name == "evaluate"]

    def _heldout(self, earlier: list[dict[str, Any]], test_ids: list[str]) -> list[StageOutcome]:
        """S_K of round 1's held-out questions under the original model and each round's."""
        held_out = self._round_store(1).read_records("test_questions.jsonl", Question)
        if not held_out:
            return []
        passages = dict(self.base.get("passages") or {})
        passages["max_per_document_train"] = passages.get("max_per_document_test", 2)
        outcomes: list[StageOutcome] = []
        models = [("base", str(self.model0))] + [(f"round-{e['round']}", e["model"]) for e in earlier]
        for label, model in models:
            cfg = self._model_config(model)
            cfg["flow"] = "current"  # S_K of this very model: no G_SFT (flow: paper) to train
            cfg["source"] = DocumentSlice(self._docs_store(), test_ids, label="held-out", relabel="train")
            cfg["passages"] = passages
            cfg["questions"] = {"test_questions": False}
            cfg["generations"] = {**(self.base.get("generations") or {}), "splits": ["test"]}
            cfg["question_generator"] = StoredQuestions(held_out, label="held-out questions of round-1")
            cfg["test_question_generator"] = None
            p = self._pipeline(f"heldout/{label}", cfg)
            outcomes += _prefixed(f"heldout/{label}", p.run(until="scores"))
        return outcomes

    def _write_summary(self, earlier: list[dict[str, Any]], stop: str | None) -> dict[str, Any]:
        from .rounds_report import heldout_scores, write_report

        heldout = heldout_scores(self.store, ["base"] + [f"round-{e['round']}" for e in earlier])
        vs_base: dict[str, Any] = {}
        for e in earlier:
            if e["round"] == 1:
                vs_base["1"] = e["evaluation"]
                continue
            store = ArtifactStore(self._sub(f"round-{e['round']}/vs-base"))
            if store.exists("manifest.json"):
                stage = (store.read_json("manifest.json") or {}).get("stages", {}).get("evaluate")
                vs_base[str(e["round"])] = (stage or {}).get("summary")
        record = {
            "rounds": self.opts.count,
            "completed": len(earlier),
            "passages": self.opts.passages,
            "min_pairs": self.opts.min_pairs,
            "original_model": self.model0,
            "stopped": stop,
            "per_round": earlier,
            "vs_base": vs_base,
            "heldout_s_k": heldout,
        }
        self.store.write_json(SUMMARY, record)
        write_report(self.store, record)
        out: dict[str, Any] = {"completed": len(earlier), "of": self.opts.count, "report": "report.md"}
        if stop:
            out["stopped"] = stop
        return out


def _lineage_entry(info: dict[str, Any]) -> dict[str, Any]:
    """An earlier round as a later round's lineage names it: its data, thresholds and model."""
    return {k: info.get(k) for k in ("round", "run_dir", "model_in", "model", "model_fingerprint",
                                     "data", "thresholds", "kept_pairs")}


def _prefixed(prefix: str, outcomes: list[StageOutcome]) -> list[StageOutcome]:
    import attrs

    return [attrs.evolve(o, name=f"{prefix}/{o.name}") for o in outcomes]


def plan_rounds(pipeline: Pipeline, opts: RoundsOptions, until: str | None = None) -> list[dict[str, Any]]:
    """For ``--dry-run``: the shared documents step's plan, then each round as done (its
    manifest has every stage it will run) or pending; a round's calls depend on the model the
    round before trains, so they are not estimated."""
    rounds = Rounds(pipeline, opts)
    base = {k: v for k, v in rounds.base.items()}
    rows = [{**row, "stage": f"documents/{row['stage']}"}
            for row in rounds._pipeline("documents", base).plan(until="documents")]
    for r in range(1, opts.count + 1):
        store = rounds._round_store(r)
        manifest = (store.read_json("manifest.json") if store.exists("manifest.json") else None) or {}
        wanted = until if r == opts.count and until is not None else "evaluate"
        done = wanted in manifest.get("stages", {})
        note = f"planned once round {r - 1} has trained its model" if r > 1 else f"stages up to {wanted}"
        rows.append({"stage": f"round-{r}", "status": "done" if done else "pending", "components": {},
                     "estimate": {} if done else {"note": note}, "estimated": True, "calls": None,
                     "cost_usd": None})
    return rows


def run_rounds(pipeline: Pipeline, opts: RoundsOptions, until: str | None = None) -> list[StageOutcome]:
    """What :meth:`Pipeline.run` does when the configuration (or the call) asks for rounds."""
    return Rounds(pipeline, opts).run(until)


__all__ = ["Rounds", "RoundsOptions", "SlotSpec", "run_rounds"]
