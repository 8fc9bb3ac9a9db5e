"""The :class:`Pipeline`: configuration in, stages run in order, resumable at any point."""

from __future__ import annotations

import datetime as _dt
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import attrs

from .config import (
    FLOWS,
    GENERAL_KEYS,
    SLOT_DEFAULTS,
    SLOTS,
    SlotSpec,
    load_yaml,
    parse_slot,
)
from .context import RunContext
from .distributed import is_main_process, rank, world_size
from .errors import ConfigError, StageError
from .execution import ExecutionOptions, check_job_paths, make_engine
from .execution.worker import WorkerSpec
from .hashing import content_hash
from .hookspecs import RunInfo
from .options import SEED_MAX, build_options
from .plugins import PluginHost
from .registry import load_object
from .rounds_parts import RoundsOptions, parse_rounds
from .stages.base import STAGE_NAMES, STAGE_ORDER, Stage
from .store import ArtifactStore

log = logging.getLogger("selflearn")

MANIFEST = "manifest.json"


@attrs.frozen
class StageOutcome:
    name: str
    #: "ran" or "skipped"; rounds: "done", "stopped" (too few pairs), or "followed" (a process
    #: of a multi-process launch other than the main one, which trained in each round with it)
    status: str
    seconds: float
    summary: dict[str, Any]


class Pipeline:
    """A self-training run.

    Build it from keyword arguments, a mapping (:meth:`from_config`) or a YAML file
    (:meth:`from_yaml`). Every component slot takes a registered name,
    ``{"use": NAME, "options": {...}}`` or a ready object::

        Pipeline(run_dir="runs/x", source=MySource(), backend={"use": "hf", "options": {...}})

    ``plugin_objects`` registers in-process plugins (objects or modules with ``@hookimpl``
    functions) besides the built-ins and the installed entry points; ``load_entry_points=False``
    ignores installed plugins.
    """

    def __init__(
        self,
        config: Mapping[str, Any] | None = None,
        *,
        plugin_objects: Iterable[Any] = (),
        load_entry_points: bool = True,
        **kwargs: Any,
    ) -> None:
        raw = dict(config or {})
        plugin_objects = tuple(plugin_objects)
        raw.update(kwargs)
        self.raw_config = raw
        #: True in the dry-run's in-memory rehearsal of the stages that make no model call
        self.rehearsal = False
        self.plugin_objects = plugin_objects
        self.load_entry_points = load_entry_points
        valid = set(GENERAL_KEYS) | set(SLOTS) | set(STAGE_NAMES) | {"execution"}
        unknown = sorted(set(raw) - valid)
        if unknown:
            raise ConfigError(
                f"unknown top-level key(s) {', '.join(map(str, unknown))}; valid keys are: "
                + ", ".join(sorted(valid))
            )
        disable, strict, seed, model, flow, run_dir = _general_settings(raw)
        check_job_paths({"run_dir": run_dir, "cache_dir": raw.get("cache_dir")})

        self.host = PluginHost(
            disable=disable, strict=strict, extra_plugins=self.plugin_objects, load_entry_points=load_entry_points
        )
        #: self-training in rounds (selflearn.core.rounds); None: one plain run
        self.rounds: RoundsOptions | None = parse_rounds(raw.get("rounds"))
        self.slots: dict[str, SlotSpec | None] = _parse_slots(raw)
        self.config: dict[str, Any] = {
            "run_dir": run_dir,
            "cache_dir": raw.get("cache_dir"),
            "seed": seed,
            "model": model,
            "flow": flow,
        }
        self.store = ArtifactStore(run_dir)
        #: where the main process of a multi-process launch holds its lock for the whole run (the
        #: run directory; a round's pipeline names its parent's), which the others watch
        self.lock_store = self.store
        self.ctx = RunContext(self.config, self.slots, self.host, self.store)
        self.execution = _execution_options(raw.get("execution"))
        spec = WorkerSpec(
            config=dict(self.config), cache_dir=self.ctx.cache_dir,
            # the documents and passages stages run here: workers need only model components
            slots={k: v for k, v in self.slots.items() if k not in ("source", "chunker")},
            disable=tuple(disable), strict=strict, extra_plugins=tuple(plugin_objects),
            load_entry_points=load_entry_points,
        )
        self.ctx.execution = self.execution
        self.ctx.engine = make_engine(self.execution, self.ctx, spec)
        self._stage_classes, self._stage_options = _load_stages(raw)
        # stages that share another stage's settings (the sft and sft_model stages of flow: paper) read them here
        self.ctx.stage_options = self._stage_options
        self.ctx.describe = self.describe
        self.stage_names = tuple(n for n in STAGE_NAMES if flow in (self._stage_classes[n].flows or (flow,)))

    # -- constructors --------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: Mapping[str, Any], **kwargs: Any) -> Pipeline:
        """Build from a mapping; keyword arguments override top-level keys."""
        return cls(config, **kwargs)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **kwargs: Any) -> Pipeline:
        """Build from a YAML file; keyword arguments override top-level keys."""
        return cls(load_yaml(path), **kwargs)

    # -- inspection ----------------------------------------------------------------------
    @property
    def run_dir(self) -> str:
        return self.store.url

    def stage(self, name: str) -> Stage:
        if name not in self._stage_classes:
            raise ConfigError(f"unknown stage {name!r}; stages are: {', '.join(self.stage_names)}")
        return self._stage_classes[name](self.ctx, self._stage_options[name])

    def _selected(self, until: str | None) -> list[str]:
        """The stages of this run's flow, up to ``until``."""
        names = self.stage_names
        if until is None:
            return list(names)
        if until not in names:
            raise ConfigError(
                f"unknown stage {until!r}"
                + (f" in flow {self.config['flow']!r}" if until in STAGE_NAMES else "")
                + f"; stages are: {', '.join(names)}",
                "--until",
            )
        return list(names[: names.index(until) + 1])

    def _forced(self, rerun: str | Iterable[str] | None, names: list[str]) -> set[str]:
        """The stages ``rerun`` names and every selected stage that reads their outputs,
        directly or through another stage: these run again even when their fingerprint
        matches (the per-call caches still answer every unchanged model call)."""
        if rerun is None:
            return set()
        wanted = [rerun] if isinstance(rerun, str) else list(rerun)
        unknown = [w for w in wanted if w not in STAGE_NAMES]
        if unknown:
            raise ConfigError(
                f"unknown stage {', '.join(map(repr, unknown))} to re-run; stages are: "
                + ", ".join(STAGE_NAMES),
                "--rerun",
            )
        forced = set(wanted)
        for name in names:
            if forced.intersection(self.stage(name).dependencies()):
                forced.add(name)
        return forced.intersection(names)

    def _manifest(self) -> dict[str, Any]:
        if self.store.exists(MANIFEST):
            try:
                data = self.store.read_json(MANIFEST)
                if isinstance(data, dict):
                    data.setdefault("stages", {})
                    return data
            except ValueError:
                log.warning("manifest.json is unreadable; every stage will be checked again")
        return {"stages": {}}

    def _fingerprint(self, stage: Stage) -> tuple[str, dict[str, str]]:
        inputs: dict[str, str] = {}
        for req in stage.dependencies():
            for fname in self.stage(req).outputs():
                inputs[fname] = self.store.hash(fname) if self.store.exists(fname) else "missing"
        fp = content_hash({"config": stage.fingerprint_config(), "inputs": inputs})
        return fp, inputs

    def _is_done(self, stage: Stage, fp: str, manifest: dict[str, Any]) -> bool:
        entry = manifest["stages"].get(stage.name)
        if not entry or entry.get("fingerprint") != fp:
            return False
        outputs = entry.get("outputs", {})
        for fname in stage.outputs():
            if not self.store.exists(fname) or outputs.get(fname) != self.store.hash(fname):
                return False
        return True

    def plan(
        self, until: str | None = None, rerun: str | Iterable[str] | None = None
    ) -> list[dict[str, Any]]:
        """What :meth:`run` would do, per stage: done or pending, the components and models it
        uses, its counts (exact from its inputs, else forecast from the configuration and
        marked ``estimated``), its generation calls less those the cache holds, and the cost
        of priced components (see :mod:`selflearn.core.plan`)."""
        if self.rounds is not None:
            from .rounds import plan_rounds

            return plan_rounds(self, self.rounds, until)
        from .plan import describe

        manifest = self._manifest()
        rows = []
        names = self._selected(until)
        pending: set[str] = self._forced(rerun, names)
        expected: dict[str, Any] = {}
        try:
            for name in names:
                stage = self.stage(name)
                stage.validate()
                fp, _ = self._fingerprint(stage)
                # a stage whose input will be rewritten by a pending stage will run again too
                upstream = bool(pending.intersection(stage.dependencies()))
                done = name not in pending and self._is_done(stage, fp, manifest) and not upstream
                if not done:
                    pending.add(name)
                rows.append(describe(stage, done, pending - {name}, expected))
            if not self.rehearsal:
                from .plan import rehearse

                rows = rehearse(self, rows, until)
        finally:
            self.ctx.close()
        return rows

    # -- running -------------------------------------------------------------------------
    def run(
        self,
        until: str | None = None,
        rerun: str | Iterable[str] | None = None,
        *,
        lock_wait: float = 0.0,
        rounds: int | None = None,
    ) -> list[StageOutcome]:
        """Run the stages in order up to ``until`` (inclusive), skipping finished ones.

        ``rerun`` (a stage name or several) runs those stages and every stage that depends on
        them again even if nothing changed, e.g. after editing a source that has no content
        fingerprint; the per-call caches keep every unchanged model call from being redone.

        The run holds the run directory's lock throughout (:mod:`selflearn.core.lock`): while
        another live process holds it, this waits up to ``lock_wait`` seconds, then raises
        :class:`~selflearn.core.errors.RunDirBusyError` naming the holder.

        With ``rounds`` (or a ``rounds:`` section in the configuration) the run is that many
        self-training rounds instead, each a pipeline over ``<run_dir>/round-<r>`` (see
        :mod:`selflearn.core.rounds`); the outcomes' names then carry their sub-directory.
        """
        from .lock import RunLock

        if not is_main_process():  # accelerate launch / torchrun: rank 0 holds the lock
            if rounds is not None or self.rounds is not None:
                return self._run_rounds(until, rerun, rounds)  # each round's pipeline follows
            return self._follow(until)
        with RunLock(self.store, wait=lock_wait):
            return self._run(until, rerun, rounds)

    def _follow(self, until: str | None, poll: float = 2.0) -> list[StageOutcome]:
        """A non-main process of a multi-process launch: wait for the main process to finish
        each stage up to the last one every process runs (training; without one, every stage),
        run that one with it, write nothing, and return once the main process has recorded it
        (so its files, e.g. ``train.json``, are there for what comes next: the next round). A
        training already done is not redone: the trainers reuse a finished model folder."""
        names = self._selected(until)
        last = max((i for i, n in enumerate(names) if self.stage(n).distributed), default=len(names) - 1)
        outcomes: list[StageOutcome] = []
        try:
            for name in names[: last + 1]:
                stage = self.stage(name)
                t0 = time.perf_counter()
                summary = (stage.run() or {}) if stage.distributed else {}
                self._wait_for_main(stage, poll)
                status = "ran" if stage.distributed else "skipped"
                outcomes.append(StageOutcome(name, status, time.perf_counter() - t0, summary))
        finally:
            self.ctx.close()
        return outcomes

    def _wait_for_main(self, stage: Stage, poll: float) -> None:
        """Until the main process has recorded ``stage`` as done with this configuration."""
        while True:
            fp, _ = self._fingerprint(stage)
            if self._is_done(stage, fp, self._manifest()):
                return
            self._check_main_alive(stage.name)
            time.sleep(poll)

    def _check_main_alive(self, waiting_for: str) -> None:
        """Stop waiting when the main process is gone (no lock on the run directory)."""
        from .lock import LOCK_NAME

        if not self.lock_store.exists(LOCK_NAME):
            time.sleep(5.0)  # the main process may not have taken the lock yet
            if not self.lock_store.exists(LOCK_NAME):
                raise StageError(
                    f"process {rank()} of {world_size()} waited for stage {waiting_for!r}, but the "
                    "main process (rank 0) holds no lock on the run directory: it stopped or has "
                    "not started. Check its log; the same launch command resumes the run"
                )

    def _run(self, until: str | None, rerun: str | Iterable[str] | None,
             rounds: int | None = None) -> list[StageOutcome]:
        """:meth:`run`'s work, under the run directory's lock (with rounds, each round's
        pipeline also holds its own directory's)."""
        names = self._selected(until)
        forced = self._forced(rerun, names)
        if rounds is not None or self.rounds is not None:
            return self._run_rounds(until, rerun, rounds)
        stages = [self.stage(n) for n in names]
        for stage in stages:
            stage.validate()
        check = getattr(self.ctx.engine, "check", None)
        if callable(check):
            check()
        self.store.ensure_writable()
        manifest = self._manifest()
        manifest.setdefault("created", _now())
        info = RunInfo(self.store.url, self.describe(), tuple(names))
        self.host.lifecycle.run_start(info)
        outcomes: list[StageOutcome] = []
        try:
            for stage in stages:
                outcome = self._run_stage(stage, stage.name in forced, manifest)
                outcomes.append(outcome)
                self.host.lifecycle.stage_end(info, stage.name, outcome.summary)
        finally:
            self.ctx.close()
        self.host.lifecycle.run_end(info, {o.name: o.summary for o in outcomes})
        return outcomes

    def _run_rounds(self, until: str | None, rerun: str | Iterable[str] | None,
                    rounds: int | None) -> list[StageOutcome]:
        """Hand the run to :func:`.rounds.run_rounds`; ``--rounds`` overrides the config's
        count. ``--rerun`` is refused: a round's directory is the unit to redo."""
        from .rounds import run_rounds

        if rerun:
            raise ConfigError("--rerun cannot be combined with rounds; to redo a round, delete "
                              "its directory (<run_dir>/round-<r>): the caches keep every "
                              "unchanged model call", "--rerun")
        opts = self.rounds or RoundsOptions()
        if rounds is not None:
            if rounds < 1:
                raise ConfigError(f"expected at least 1 round, got {rounds}", "--rounds")
            opts = attrs.evolve(opts, count=rounds)
        return run_rounds(self, opts, until)

    def _run_stage(self, stage: Stage, forced: bool, manifest: dict[str, Any]) -> StageOutcome:
        """Run one stage, or skip it when the manifest shows it done with the same fingerprint
        (and ``--rerun`` did not name it). A stage that ran is recorded in the manifest, written
        at once, so an interrupted run resumes after the last finished stage."""
        fp, inputs = self._fingerprint(stage)
        if not forced and self._is_done(stage, fp, manifest):
            summary = manifest["stages"][stage.name].get("summary", {})
            log.info("stage %s: already done, skipped", stage.name)
            return StageOutcome(stage.name, "skipped", 0.0, summary)
        log.info("stage %s: running", stage.name)
        t0 = time.perf_counter()
        summary = stage.run() or {}
        seconds = time.perf_counter() - t0
        missing = [f for f in stage.outputs() if not self.store.exists(f)]
        if missing:
            raise StageError(f"stage {stage.name} finished without writing {missing}")
        manifest["execution"] = self.ctx.engine.describe()
        manifest["stages"][stage.name] = {
            "fingerprint": fp,
            "config": stage.fingerprint_config(),
            "inputs": inputs,
            "outputs": {f: self.store.hash(f) for f in stage.outputs()},
            "summary": summary,
            "seconds": round(seconds, 3),
            "finished": _now(),
        }
        self.store.write_json(MANIFEST, manifest)
        return StageOutcome(stage.name, "ran", seconds, summary)

    def describe(self) -> dict[str, Any]:
        """The effective configuration (slots described; secrets are never part of it)."""
        out: dict[str, Any] = dict(self.config)
        for slot, spec in self.slots.items():
            out[slot] = spec.describe() if spec else None
        for name, opts in self._stage_options.items():
            out[name] = attrs.asdict(opts) if attrs.has(type(opts)) else {}
        out["execution"] = attrs.asdict(self.execution)
        return out

    def close(self) -> None:
        self.ctx.close()


def _execution_options(section: Any) -> ExecutionOptions:
    """The ``execution`` section, validated (absent: the local engine)."""
    if section is None:
        return ExecutionOptions()
    if isinstance(section, ExecutionOptions):
        return section
    if isinstance(section, Mapping):
        return build_options(ExecutionOptions, section, "execution")
    raise ConfigError(f"expected a mapping such as {{engine: ray, workers: 2}}, got {section!r}", "execution")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _parse_slots(raw: Mapping[str, Any]) -> dict[str, SlotSpec | None]:
    """Every component slot's spec (its default where the config is silent); held-out questions
    are written by the training questions' generator unless one of their own is given."""
    slots = {slot: parse_slot(raw.get(slot, default), slot) for slot, default in SLOT_DEFAULTS.items()}
    if slots["test_question_generator"] is None:
        slots["test_question_generator"] = slots["question_generator"]
    return slots


def _load_stages(raw: Mapping[str, Any]) -> tuple[dict[str, type[Stage]], dict[str, Any]]:
    """The stage classes and their options, each section checked against its stage's options
    class (so a typo in any stage's section stops the run before the first stage)."""
    classes: dict[str, type[Stage]] = {}
    options: dict[str, Any] = {}
    for name, ref in STAGE_ORDER:
        cls = load_object(ref, f"stage {name!r}")
        classes[name] = cls
        section = raw.get(name) or {}
        if not isinstance(section, Mapping):
            raise ConfigError(f"expected a mapping of stage options, got {section!r}", name)
        options[name] = build_options(cls.options_class, section, name)
    return classes, options


def _general_settings(raw: Mapping[str, Any]) -> tuple[list[str], bool | None, int, str | None, str, str]:
    """The top-level settings (plugins, seed, model, flow, run_dir), each checked with its
    config path: these are plain keys, not an options class, so they are validated here."""
    plugin_cfg = raw.get("plugins") or {}
    if not isinstance(plugin_cfg, Mapping) or set(plugin_cfg) - {"disable", "strict"}:
        raise ConfigError("expected {disable: [NAMES], strict: true|false}", "plugins")
    disable = plugin_cfg.get("disable") or []
    if not isinstance(disable, list) or not all(isinstance(d, str) for d in disable):
        raise ConfigError(f"expected a list of plugin names, got {disable!r}", "plugins.disable")
    strict = plugin_cfg.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise ConfigError(f"expected true or false, got {strict!r}", "plugins.strict")
    seed = raw.get("seed", 42)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"expected an integer, got {seed!r}", "seed")
    if not 0 <= seed <= SEED_MAX:  # numpy, and so the trainers, take 32-bit seeds
        raise ConfigError(f"must be >= 0 and <= {SEED_MAX}, got {seed}", "seed")
    model = raw.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"expected a model id, folder or GGUF path, got {model!r}", "model")
    flow = raw.get("flow", "current")
    if flow not in FLOWS:
        raise ConfigError(
            f"expected one of {', '.join(FLOWS)}, got {flow!r}: 'current' generates the "
            "preference data with the configured model, 'paper' trains SFT first and "
            "generates it with the SFT model (see docs/training.md)",
            "flow",
        )
    run_dir = raw.get("run_dir", "runs/selflearn")
    if not isinstance(run_dir, str) or not run_dir:
        raise ConfigError(f"expected a path or fsspec URL, got {run_dir!r}", "run_dir")
    return disable, strict, seed, model, flow, run_dir
