"""The dry-run: what a run would do, per stage, before it does it.

For every stage of the run's flow, :func:`describe` gives

- ``components``: each slot's component, its model and the options the config sets;
- ``estimate``: the stage's counts, read from its input files when they are current, else
  forecast from the configuration (``estimated: true``; e.g. documents x passages per document
  x questions per passage before any of those files exist);
- ``calls``: the generation calls the stage would ask for (``total``), how many of them the
  per-call cache already holds (``cached``) and how many remain (``to_make``). Where the
  inputs are current the count is exact: the stage lists its calls (the same prompts,
  parameters and sample indices :meth:`run` uses) and each is looked up in the cache, so the
  dry-run's ``to_make`` equals the calls the run then makes. Self-labelling retries a rejected
  answer, so its count is a range (``to_make`` for the first attempt, ``to_make_max`` if every
  attempt were rejected);
- ``cost_usd``: for a component with prices (``price_input_per_mtok``/``price_output_per_mtok``,
  the ``openai`` backend, question generator and judge), the calls to make times their prompt
  tokens (about 4 characters a token) and at most ``max_new_tokens`` completion tokens: an
  upper bound.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .options import build_options
from .stages.base import Stage

#: slots whose component runs the model under training when its options name none
_MODEL_SLOTS = ("backend", "sft_trainer", "trainer")
_CHARS_PER_TOKEN = 4
#: prompt-token guesses where the prompts are not known yet (instructions around a passage)
_PROMPT_OVERHEAD = 60


def components(stage: Stage) -> dict[str, Any]:
    """Each slot of ``stage``: component name, model, and the options the config sets."""
    ctx = stage.run_ctx
    out: dict[str, Any] = {}
    for slot in stage.slots:
        spec = ctx.slots.get(slot)
        if spec is None:
            out[slot] = None
            continue
        if spec.is_object:
            out[slot] = {"object": f"{type(spec.obj).__module__}.{type(spec.obj).__qualname__}"}
            continue
        entry: dict[str, Any] = {"use": spec.name}
        model = _option(stage, slot, "model")
        if model is None and slot in _MODEL_SLOTS:
            model = ctx.model
        model = _stage_model(stage, slot, model)
        if model is not None:
            entry["model"] = model
        options = {k: v for k, v in spec.options.items() if k != "model"}
        if options:
            entry["options"] = options
        out[slot] = entry
    return out


def _stage_model(stage: Stage, slot: str, model: Any) -> Any:
    """The model a slot works on in this stage, where the stage replaces the configured one:
    G_SFT for paper-flow generations and for DPO after SFT, the two compared models in the
    evaluation."""
    ctx = stage.run_ctx
    sft_first = ctx.has("sft_trainer")
    sft = f"{stage.store.path('models/sft')} (the SFT model)"
    if stage.name == "generations" and slot == "backend" and stage.flow == "paper":
        return f"{stage.store.path('models/sft')} (G_SFT, from the sft_model stage)"
    if stage.name == "train" and slot == "trainer" and sft_first:
        return sft
    if stage.name == "train" and slot == "sft_trainer" and stage.flow == "paper":
        return f"{model} (already trained by the sft_model stage)"
    if stage.name == "evaluate" and slot == "backend":
        o = stage.options
        has_dpo = ctx.has("trainer")
        candidate = o.candidate_model or stage.store.path("models/dpo" if has_dpo else "models/sft")
        baseline = o.baseline_model or (sft if sft_first and has_dpo else model)
        return f"candidate {candidate} vs baseline {baseline}"
    return model


def _options(stage: Stage, slot: str) -> Any:
    """The validated options of the component in ``slot`` (None: none, or an object)."""
    ctx = stage.run_ctx
    spec = ctx.slots.get(slot)
    if spec is None or spec.is_object or spec.name is None:
        return None
    from .config import SLOTS

    cls = ctx.host.registry.get(SLOTS[slot], spec.name, slot).load_options_class()
    return build_options(cls, spec.options, f"{slot}.options") if cls is not None else None


def _option(stage: Stage, slot: str, name: str) -> Any:
    return getattr(_options(stage, slot), name, None)


def prices(stage: Stage, slot: str) -> tuple[float, float] | None:
    """(USD per million prompt tokens, per million completion tokens), if the slot's
    component is priced and either price is set."""
    pin = _option(stage, slot, "price_input_per_mtok")
    pout = _option(stage, slot, "price_output_per_mtok")
    if pin is None and pout is None:
        return None
    pin, pout = float(pin or 0.0), float(pout or 0.0)
    return (pin, pout) if pin or pout else None


def _cost(stage: Stage, slot: str, prompt_tokens: float, completion_tokens: float) -> float | None:
    priced = prices(stage, slot)
    if priced is None:
        return None
    return round((prompt_tokens * priced[0] + completion_tokens * priced[1]) / 1e6, 6)


def _tokens(prompt: Any) -> int:
    text = prompt if isinstance(prompt, str) else " ".join(str(m.get("content", "")) for m in prompt)
    return max(1, len(text) // _CHARS_PER_TOKEN)


# -- exact calls, counted against the cache ------------------------------------------------
def _count(backend: Any, groups: list[tuple[list[Any], Any, int]]) -> dict[str, int]:
    total = cached = prompt_tokens = completion_tokens = 0
    for prompts, params, n in groups:
        hits = backend.cached_count(prompts, params, n)
        total += len(prompts) * n
        cached += hits
        missing_share = 1 - hits / (len(prompts) * n) if prompts and n else 0
        prompt_tokens += int(sum(_tokens(p) for p in prompts) * n * missing_share)
        completion_tokens += (len(prompts) * n - hits) * params.max_new_tokens
    return {"total": total, "cached": cached, "to_make": total - cached,
            "prompt_tokens": prompt_tokens, "completion_tokens_max": completion_tokens}


def _self_label_calls(stage: Stage, questions: list[Any], retries: int) -> dict[str, int]:
    from .stages import _sftdata

    backend = stage.run_ctx.component("backend")
    prompts, params = _sftdata.self_label_calls(stage.run_ctx, _datasets(stage), questions)
    calls = _count(backend, [(list(prompts.values()), params, 1)])
    calls["to_make_max"] = calls["to_make"] + len(prompts) * (retries - 1)
    calls["completion_tokens_max"] = calls["to_make_max"] * params.max_new_tokens
    return calls


def _evaluate_calls(stage: Stage) -> dict[str, int] | None:
    """Both models' calls, each looked up in the cache under that model's identity (known once
    the train stage has recorded the models, or both are given in the options)."""
    o = stage.options
    if not stage.store.exists("train.json") and not (o.candidate_model and o.baseline_model):
        return None
    calls: dict[str, int] = {"total": 0, "cached": 0, "to_make": 0}
    for backend, groups in stage.planned_calls():  # type: ignore[attr-defined]
        try:
            calls = _merge(calls, _count(backend, groups))
        finally:
            backend.close()
    return calls


def _merge(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}
    if "to_make_max" in out:
        out["to_make_max"] = a.get("to_make_max", a.get("to_make", 0)) + b.get("to_make_max", b.get("to_make", 0))
    return out


def _datasets(stage: Stage) -> Any:
    return stage.run_ctx.stage_options["datasets"]


def exact_calls(stage: Stage) -> dict[str, int] | None:
    """The stage's generation calls counted against the cache, where its inputs exist."""
    from .records import Passage, Question
    from .stages import _sftdata

    if stage.name == "generations":
        backend = stage.planned_backend()  # type: ignore[attr-defined]
        return _count(backend, stage.call_groups()) if backend is not None else None  # type: ignore[attr-defined]
    if stage.name == "evaluate":
        return _evaluate_calls(stage)
    if stage.name not in ("datasets", "sft") or (stage.name == "datasets" and stage.flow == "paper"):
        return None
    d = _datasets(stage)
    if not stage.store.exists("questions.jsonl"):
        return None
    questions = [q for q in stage.store.read_records("questions.jsonl", Question) if q.split in d.splits]
    rc, rest = _sftdata.rc_split(stage.run_ctx, d, questions)
    calls: dict[str, int] = {"total": 0, "cached": 0, "to_make": 0}
    if stage.name == "sft" and rc:
        from .prompts import rc_messages

        passages = {p.id: p for p in stage.store.read_records("passages.jsonl", Passage)}
        prompts = [rc_messages(passages[q.passage_id].text, q.text) for q in rc if q.passage_id in passages]
        calls = _count(stage.run_ctx.component("backend"), [(prompts, stage._reference_params(), 1)])  # type: ignore[attr-defined]
    if _sftdata.self_label_on(stage.run_ctx, d) and rest:
        calls = _merge(calls, _self_label_calls(stage, rest, d.self_label_retries))
    return calls


def describe(stage: Stage, done: bool, pending: set[str], expected: dict[str, Any]) -> dict[str, Any]:
    """The dry-run's row for one stage; ``pending`` names the stages that will run before it,
    ``expected`` carries the counts (documents, passages, questions by split) that later
    stages forecast from, and is updated here."""
    row: dict[str, Any] = {"stage": stage.name, "status": "done" if done else "pending",
                           "components": components(stage)}
    if done:
        counts = observed(stage)
        if counts is not None:
            expected[stage.name] = counts
        row.update(estimate={}, estimated=False, calls=None, cost_usd=None)
        return row
    predicted, out_counts = forecast(stage, expected)
    if out_counts is not None:
        expected[stage.name] = out_counts
    current = _current(stage, stage.dependencies(), pending)
    predicted_calls = predicted.pop("calls", None)
    estimate = stage.estimate() if current else {}
    # self-labels and RC labels need only the questions, not the generations and scores
    call_deps = ("passages", "questions") if stage.name in ("datasets", "sft") else stage.dependencies()
    calls = exact_calls(stage) if _current(stage, call_deps, pending) else None
    if not estimate or not current:  # nothing exact to say: the forecast, marked as such
        estimate, current = predicted, False
    if calls is None and not current:
        calls = predicted_calls
    if calls is None:
        calls = _rough_calls(stage, estimate)
    row.update(estimate=estimate, estimated=not current, calls=calls, cost_usd=cost(stage, calls, estimate))
    return row


def _rough_calls(stage: Stage, estimate: dict[str, Any]) -> dict[str, int] | None:
    """Calls the stage cannot list ahead (question attempts, evaluation answers), as counts
    without a cache check."""
    if stage.name == "questions":
        spec = stage.run_ctx.slots.get("question_generator")
        if spec is not None and spec.name == "template":
            return None  # no model
        if "question_calls_at_least" in estimate:
            return {"total": estimate["question_calls_at_least"], "to_make_max": estimate["question_calls_at_most"]}
        n = sum((estimate.get("questions_at_most") or {}).values())
        return {"total": n, "to_make_max": n * 3} if n else None
    if stage.name == "evaluate" and estimate.get("generations", estimate.get("generations_at_most")):
        return {"total": int(estimate.get("generations", estimate.get("generations_at_most", 0)))}
    return None


def _current(stage: Stage, deps: tuple[str, ...], pending: set[str]) -> bool:
    """No stage in ``deps`` will run again first, and their files exist."""
    if pending.intersection(deps):
        return False
    return all(stage.store.exists(f) for dep in deps for f in _outputs_of(stage, dep))


def _outputs_of(stage: Stage, name: str) -> list[str]:
    from .registry import load_object
    from .stages.base import STAGE_ORDER

    cls = load_object(dict(STAGE_ORDER)[name], f"stage {name!r}")
    return list(cls(stage.run_ctx, stage.run_ctx.stage_options[name]).outputs())


def totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole plan's generation calls and cost (estimated where any stage is)."""
    out: dict[str, Any] = {"total": 0, "cached": 0, "to_make": 0, "to_make_max": 0, "cost_usd": None, "estimated": False}
    for row in rows:
        calls = row.get("calls") or {}
        total = int(calls.get("total", 0))
        cached = int(calls.get("cached", 0))
        out["total"] += total
        out["cached"] += cached
        make = int(calls.get("to_make", total - cached))
        out["to_make"] += make
        out["to_make_max"] += int(calls.get("to_make_max", make))
        if row.get("cost_usd") is not None:
            out["cost_usd"] = round((out["cost_usd"] or 0.0) + row["cost_usd"], 6)
        out["estimated"] = out["estimated"] or bool(calls and "cached" not in calls)
    return out


# -- forecasts from the configuration -------------------------------------------------------
def observed(stage: Stage) -> dict[str, int] | None:
    """The counts a finished stage's files hold (documents, passages, questions by split)."""
    from .records import Document, Passage

    store = stage.store
    if stage.name == "documents" and store.exists("documents.jsonl"):
        c = Counter(d.split for d in store.read_records("documents.jsonl", Document))
        return {"train": c.get("train", 0), "test": c.get("test", 0)}
    if stage.name == "passages" and store.exists("passages.jsonl"):
        c = Counter(str(p.metadata.get("split", "train")) for p in store.read_records("passages.jsonl", Passage))
        return {"train": c.get("train", 0), "test": c.get("test", 0)}
    if stage.name == "questions" and store.exists("questions.jsonl"):
        test = sum(1 for _ in store.iter_jsonl("test_questions.jsonl")) if store.exists("test_questions.jsonl") else 0
        return {"train": sum(1 for _ in store.iter_jsonl("questions.jsonl")), "test": test}
    return None


def _documents_forecast(stage: Stage) -> dict[str, int] | None:
    source = stage.run_ctx.component("source")
    hint = getattr(source, "size_hint", None)
    counts = hint() if callable(hint) else None
    if not isinstance(counts, dict):
        return None
    train, test = int(counts.get("train", 0)), int(counts.get("test", 0))
    limit = stage.options.limit
    if limit is not None and train + test > limit:
        share = test / (train + test)
        test = round(limit * share)
        train = limit - test
    return {"train": train, "test": test}


def forecast(stage: Stage, expected: dict[str, dict[str, int] | None]) -> tuple[dict[str, Any], dict[str, int] | None]:
    """(the stage's estimate from the configuration and upstream counts, its output counts)."""
    o = stage.options
    name = stage.name
    if name == "documents":
        docs = _documents_forecast(stage)
        return ({"documents": docs} if docs else {"documents": "unknown (the source gives no size hint)"}), docs
    up = expected.get({"passages": "documents", "questions": "passages"}.get(name, "questions"))
    if up is None:
        return {"note": "counts unknown until an upstream stage has run"}, None
    if name == "passages":
        out = {"train": up["train"] * o.max_per_document_train, "test": up["test"] * o.max_per_document_test}
        return {"passages_at_most": out}, out
    if name == "questions":
        train = min(up["train"], o.limit or up["train"]) * o.per_passage
        test = min(up["test"], o.test_limit or up["test"]) * o.test_per_passage if o.test_questions else 0
        return {"questions_at_most": {"train": train, "test": test}}, {"train": train, "test": test}
    return _late_forecast(stage, up), None


def _late_forecast(stage: Stage, questions: dict[str, int]) -> dict[str, Any]:
    """Forecasts of the stages after the questions (they change no upstream count)."""
    o = stage.options
    name = stage.name
    n = questions["train"]
    if name == "generations":
        kc, kr = stage._ks()  # type: ignore[attr-defined]
        n = min(n, o.limit or n)
        return {"questions": n, "generations": n * (1 + kc + kr), "calls": {"total": n * (1 + kc + kr)}}
    if name == "scores":
        out: dict[str, Any] = {"score_items": n * (2 if o.consistency else 1)}
        if o.no_passage:
            out["note"] = "plus one item per Y_r sample (no_passage)"
        return out
    if name in ("datasets", "sft"):
        from .stages import _sftdata

        d = _datasets(stage)
        if name == "datasets" and stage.flow == "paper":
            return {"self_label_generations": 0}
        rc = 0 if d.variant == "no_passage" else int(n * d.sft_rc_fraction + 1e-9)
        self_n = n - rc if _sftdata.self_label_on(stage.run_ctx, d) else 0
        rc_calls = rc if name == "sft" else 0
        out = {"rc_generations": rc_calls} if name == "sft" else {}
        return {**out, "self_label_generations": self_n,
                "calls": {"total": rc_calls + self_n, "to_make_max": rc_calls + self_n * d.self_label_retries}}
    if name == "evaluate":
        test = min(questions["test"], o.test_limit or questions["test"])
        per = 3 if o.agreement else 2
        return {"generations_at_most": test * per + o.known_items * per + 2 * (o.qa_limit or 0) * len(o.qa),
                "judge_calls_at_least": 2 * (test + o.known_items) if stage.run_ctx.has("judge") else 0}
    return stage.estimate()


def cost(stage: Stage, calls: dict[str, Any] | None, estimate: dict[str, Any]) -> float | None:
    """Upper-bound USD of the stage's priced components (None: nothing priced)."""
    total: float | None = None

    def add(value: float | None) -> None:
        nonlocal total
        if value is not None:
            total = (total or 0.0) + value

    if calls and stage.name in ("generations", "datasets", "sft"):
        prompt = calls.get("prompt_tokens")
        make = calls.get("to_make_max", calls.get("to_make", calls.get("total", 0)))
        if prompt is None:  # forecast: a passage and its instructions per prompt
            prompt = make * (_option_int(stage, "chunker", "max_tokens", 512) + _PROMPT_OVERHEAD)
        add(_cost(stage, "backend", prompt, calls.get("completion_tokens_max", make * 384)))
    if stage.name == "questions":
        n = sum((estimate.get("questions_at_most") or {}).values()) or estimate.get("question_calls_at_most", 0)
        passage = _option_int(stage, "chunker", "max_tokens", 512)
        add(_cost(stage, "question_generator", n * (passage + 400), n * 100))
    if stage.name == "evaluate":
        judged = int(estimate.get("judge_calls_at_least", 0))
        answer = int(stage.options.max_new_tokens)
        passage = _option_int(stage, "chunker", "max_tokens", 512)
        add(_cost(stage, "judge", judged * (passage + 2 * answer + 300), judged * 200))
    return None if total is None else round(total, 6)


def _option_int(stage: Stage, slot: str, name: str, default: int) -> int:
    try:
        value = _option(stage, slot, name)
    except Exception:  # noqa: BLE001 - a guess for a cost forecast; validation reports errors
        value = None
    return int(value) if isinstance(value, int) else default


# -- rehearsal: the stages that make no model call, run in memory -------------------------
_REHEARSABLE = {"documents": ("source",), "passages": ("chunker",),
                "questions": ("question_generator", "test_question_generator")}


def _model_free(pipeline: Any, name: str) -> bool:
    """The stage's components all declare ``dry_run_safe`` (they make no model call)."""
    slots = _REHEARSABLE.get(name)
    if slots is None:
        return False
    ctx = pipeline.ctx
    return all(not ctx.has(s) or getattr(ctx.component(s), "dry_run_safe", False) is True for s in slots)


def rehearse(pipeline: Any, rows: list[dict[str, Any]], until: str | None) -> list[dict[str, Any]]:
    """``rows`` with exact counts where the first pending stages make no model call.

    Those stages (a ``files`` or ``wikipedia-offline`` source, the ``sentences`` chunker,
    ``template`` questions) run for real into a ``memory://`` run directory that shares the
    run's caches, starting from a copy of the finished stages' files; the later stages are
    then counted from those files as the run will count them, calls looked up in the cache.
    Nothing is written to the run directory."""
    first = next((i for i, r in enumerate(rows) if r["status"] == "pending"), None)
    if first is None:
        return rows
    cheap = []
    for row in rows[first:]:
        if not _model_free(pipeline, row["stage"]):
            break
        cheap.append(row["stage"])
    if not cheap:
        return rows
    try:
        shadow_rows, counts = _shadow_plan(pipeline, [r["stage"] for r in rows[:first]], cheap, until)
    except Exception as exc:  # noqa: BLE001 - the plan stands without it; the run will say more
        import logging

        logging.getLogger("selflearn").warning(
            "dry-run: running %s in memory for exact counts failed (%s: %s); the counts after "
            "them are forecasts", ", ".join(cheap), type(exc).__name__, str(exc)[:300])
        return rows
    out = []
    for i, row in enumerate(rows):
        name = row["stage"]
        if name in cheap:
            row = {**row, "estimate": {name: counts[name]}, "estimated": False, "rehearsed": True}
        elif i >= first:
            shadow = shadow_rows[name]
            row = {**row, **{k: shadow[k] for k in ("estimate", "estimated", "calls", "cost_usd")}}
        out.append(row)
    return out


def _shadow_plan(pipeline: Any, done: list[str], cheap: list[str], until: str | None
                 ) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    import logging
    import os
    import uuid

    from .pipeline import MANIFEST, Pipeline

    url = f"memory://selflearn-dry-run-{uuid.uuid4().hex}"
    raw = {**pipeline.raw_config, "run_dir": url, "cache_dir": pipeline.ctx.cache_dir, "execution": None}
    raw.pop("rounds", None)
    shadow = Pipeline(raw, plugin_objects=pipeline.plugin_objects, load_entry_points=pipeline.load_entry_points)
    shadow.rehearsal = True
    files = [f for name in done for f in pipeline.stage(name).outputs()] + [MANIFEST, "test_questions.jsonl"]
    for name in files:
        if pipeline.store.exists(name):
            shadow.store.write_bytes(name, pipeline.store.read_bytes(name))
    quiet = logging.getLogger("selflearn")
    level, progress = quiet.level, os.environ.get("SELFLEARN_NO_PROGRESS")
    quiet.setLevel(logging.WARNING)  # the rehearsal's stage logs and progress bars are not the run's
    os.environ["SELFLEARN_NO_PROGRESS"] = "1"
    try:
        shadow.run(until=cheap[-1])
        rows = {r["stage"]: r for r in shadow.plan(until)}
        counts = {name: observed(shadow.stage(name)) for name in cheap}
    finally:
        quiet.setLevel(level)
        if progress is None:
            os.environ.pop("SELFLEARN_NO_PROGRESS", None)
        else:
            os.environ["SELFLEARN_NO_PROGRESS"] = progress
        shadow.close()
        shadow.store.fs.rm(shadow.store.root, recursive=True)
    return rows, counts
