"""Contract tests for plugin authors: does my component behave as selflearn expects?

Each ``check_*`` function exercises one component the way the pipeline will, and raises
:class:`ContractError` (an ``AssertionError``, so pytest reports it as a failed assertion) with
a message naming the broken promise. Every built-in component passes the same checks in
selflearn's own test suite. In a plugin's tests::

    from selflearn.plugins.testing import build_component, check_knowledge_source, check_plugin

    def test_contract(tmp_path):
        check_plugin(my_pkg.plugin)                       # loads, no misspelt hook
        source = build_component("knowledge_source", {"use": "faq", "options": {...}},
                                 plugins=[my_pkg.plugin], run_dir=tmp_path)
        check_knowledge_source(source)

The checks need no network and no GPU; ``check_trainer`` loads the folder it trained with
transformers (and peft for an adapter), so it needs a small model to train.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ..core.errors import SelflearnError
from ..core.evaluation import EvaluationResult
from ..core.protocols import (
    PROTOCOLS,
    BackendCapabilities,
    GenerationParams,
    JudgeItem,
    MixedBackend,
    Prompt,
    ScoreItem,
    ScoreResult,
    TrainRequest,
    TrainResult,
)
from ..core.records import Completion, Document, Passage, Question, Verdict

__all__ = [
    "ContractError",
    "build_component",
    "check_chunker",
    "check_evaluator",
    "check_inference_backend",
    "check_judge",
    "check_knowledge_source",
    "check_plugin",
    "check_question_generator",
    "check_scorer",
    "check_trainer",
    "sample_run",
]


class ContractError(AssertionError):
    """A component broke a promise of its protocol (the message says which)."""


def _ensure(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def _protocol(kind: str, obj: Any) -> None:
    proto = PROTOCOLS.get(kind)
    if proto is not None:
        missing = [n for n in dir(proto) if not n.startswith("_") and not hasattr(obj, n)]
        _ensure(not missing, f"{type(obj).__name__} is no {kind.replace('_', ' ')}: it lacks "
                             f"{', '.join(missing)}")


def _json_dict(value: Any, what: str) -> None:
    _ensure(isinstance(value, dict), f"{what} must return a dict, got {type(value).__name__}")
    try:
        json.dumps(value, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise ContractError(f"{what} must be JSON-serialisable (it enters cache keys): {exc}") from exc


# -- plugins and building ------------------------------------------------------------------
def check_plugin(plugin: Any, *, with_builtins: bool = True) -> list[Any]:
    """Register ``plugin`` (a module or object with ``@hookimpl`` functions) in a fresh plugin
    host in strict mode, beside the built-ins (a name clash with one is an error unless it
    says ``replace=True``), so a misspelt hook or a failing registration hook is an error;
    check that each factory and options class imports; return the
    :class:`~selflearn.core.registry.ComponentSpec` of each component it registered."""
    from ..builtin.plugin import plugins as builtin_plugins
    from ..core.plugins import PluginHost

    disable = [] if with_builtins else [name for name, _ in builtin_plugins()]
    try:
        host = PluginHost(strict=True, extra_plugins=[plugin], load_entry_points=False,
                          disable=disable)
    except SelflearnError as exc:
        raise ContractError(f"the plugin does not load cleanly: {exc}") from exc
    info = host.infos[-1]
    _ensure(info.status == "loaded", f"the plugin is {info.status}: {info.error}")
    specs = [s for s in host.components() if s.provider == info.name]
    for spec in specs:
        spec.load_factory()
        spec.load_options_class()
    _ensure(bool(specs) or any(h.startswith("on_") or h == "resolve_secret" for h in info.hooks),
            "the plugin implements no selflearn hook")
    return specs


def build_component(kind: str, value: Any, *, plugins: Iterable[Any] = (),
                    run_dir: str | os.PathLike[str], **config: Any) -> Any:
    """Build one component of ``kind`` from a name or ``{use, options}`` exactly as a pipeline
    would (options validated, factory called with a real context), with ``plugins`` registered
    in-process; ``config`` adds top-level configuration (``model``, ``seed``...)."""
    from ..core.pipeline import Pipeline

    pipe = Pipeline({"run_dir": str(run_dir), **config}, plugin_objects=list(plugins),
                    load_entry_points=False)
    return pipe.ctx.build(kind, value, "component")


# -- knowledge sources, chunkers, question generators ---------------------------------------
def check_knowledge_source(source: Any, *, limit: int | None = 200) -> list[Document]:
    """Documents are :class:`Document` records with unique non-empty ids, non-empty text,
    dict metadata and a ``split`` of ``train``/``test`` where given. Reads at most ``limit``
    documents (None: all); returns them."""
    _protocol("knowledge_source", source)
    docs: list[Document] = []
    seen: set[str] = set()
    for doc in source.documents():
        _ensure(isinstance(doc, Document), f"documents() yielded a {type(doc).__name__}, not a Document")
        _ensure(bool(doc.id) and doc.id not in seen, f"document id {doc.id!r} is empty or repeated")
        _ensure(bool(doc.text and doc.text.strip()), f"document {doc.id!r} has no text")
        _ensure(isinstance(doc.metadata, dict), f"document {doc.id!r}: metadata is not a dict")
        split = doc.metadata.get("split")
        _ensure(split in (None, "train", "test"), f"document {doc.id!r}: split {split!r} is not train/test")
        seen.add(doc.id)
        docs.append(doc)
        if limit is not None and len(docs) >= limit:
            break
    _ensure(bool(docs), "documents() yielded no document")
    return docs


def check_chunker(chunker: Any, document: Document, *, max_passages: int = 2) -> list[Passage]:
    """Passages belong to the document, have unique ids, non-empty text and increasing
    indexes, and ``max_passages`` is honoured."""
    _protocol("chunker", chunker)
    passages = chunker.chunk(document)
    _ensure(bool(passages), f"chunk() returned no passage for document {document.id!r}")
    ids = [p.id for p in passages]
    _ensure(len(set(ids)) == len(ids), f"passage ids repeat: {ids}")
    for p in passages:
        _ensure(isinstance(p, Passage), f"chunk() returned a {type(p).__name__}, not a Passage")
        _ensure(p.document_id == document.id, f"passage {p.id!r} names document {p.document_id!r}")
        _ensure(bool(p.text.strip()), f"passage {p.id!r} has no text")
    _ensure([p.index for p in passages] == sorted({p.index for p in passages}),
            "passage indexes are not increasing and unique")
    capped = chunker.chunk(document, max_passages=max_passages)
    _ensure(len(capped) <= max_passages, f"max_passages={max_passages} gave {len(capped)} passages")
    return list(passages)


def check_question_generator(generator: Any, passages: Sequence[Passage], *, per_passage: int = 2,
                             split: str = "train") -> list[Question]:
    """Questions name one of the given passages (and its document), at most ``per_passage``
    per passage, with unique ids, non-empty text and the requested split."""
    _protocol("question_generator", generator)
    questions = generator.generate(list(passages), per_passage=per_passage, split=split)
    by_id = {p.id: p for p in passages}
    counts: dict[str, int] = {}
    ids: set[str] = set()
    for q in questions:
        _ensure(isinstance(q, Question), f"generate() returned a {type(q).__name__}, not a Question")
        _ensure(q.passage_id in by_id, f"question {q.id!r} names unknown passage {q.passage_id!r}")
        _ensure(q.document_id == by_id[q.passage_id].document_id,
                f"question {q.id!r} names document {q.document_id!r}, not its passage's")
        _ensure(bool(q.text.strip()) and q.id not in ids, f"question {q.id!r} is empty or repeated")
        _ensure(q.split == split, f"question {q.id!r} has split {q.split!r}, asked for {split!r}")
        ids.add(q.id)
        counts[q.passage_id] = counts.get(q.passage_id, 0) + 1
    over = {p: n for p, n in counts.items() if n > per_passage}
    _ensure(not over, f"more than per_passage={per_passage} questions for passages {over}")
    return list(questions)


# -- inference backends ---------------------------------------------------------------------
def _prompts(caps: BackendCapabilities) -> list[Prompt]:
    texts = ["Where is the Eiffel Tower? Answer in one sentence.",
             "Text:\nMont Blanc rises 4805 metres in the Alps. It lies between France and Italy.\n\n"
             "Question: How high is Mont Blanc?"]
    if caps.chat:
        return [[{"role": "user", "content": t}] for t in texts]
    return list(texts)


def _texts(out: list[list[Completion]]) -> list[list[str]]:
    return [[c.text for c in row] for row in out]


def _check_shape(out: Any, n_prompts: int, n: int, what: str) -> list[list[Completion]]:
    _ensure(isinstance(out, list) and len(out) == n_prompts,
            f"{what}: expected a list of {n_prompts} rows (one per prompt), got {out!r:.200}")
    for row in out:
        _ensure(isinstance(row, list) and len(row) == n, f"{what}: expected {n} completions per prompt")
        for c in row:
            _ensure(isinstance(c, Completion) and isinstance(c.text, str),
                    f"{what}: expected Completion records, got {type(c).__name__}")
    return list(out)


def check_inference_backend(backend: Any, *, max_new_tokens: int = 16,
                            sample_offsets: bool = True) -> dict[str, Any]:
    """Aligned ``n`` completions per prompt; as declared in ``capabilities``: equal seeds give
    equal samples and ``sample_offset`` continues a sample sequence (``seed``; pass
    ``sample_offsets=False`` for a backend that seeds a whole request rather than each sample,
    which then cannot extend K from the cache), per-token log-probabilities (``logprobs``), at
    most ``max_n``; stop strings never appear in the text and cut it; with ``mixed``,
    ``generate_mixed`` answers as one ``generate`` per parameter set. Returns what was checked
    (``stop`` is skipped when the greedy answers are too short to cut)."""
    _protocol("inference_backend", backend)
    caps = backend.capabilities
    _ensure(isinstance(caps, BackendCapabilities), "capabilities must be a BackendCapabilities")
    _json_dict(backend.identity(), "identity()")
    prompts = _prompts(caps)
    greedy = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0)
    first = _check_shape(backend.generate(prompts, greedy, n=1), len(prompts), 1, "greedy n=1")
    n = min(3, caps.max_n or 3)
    sampled = GenerationParams(max_new_tokens=max_new_tokens, temperature=1.0, top_p=1.0, seed=1234)
    out = _check_shape(backend.generate(prompts, sampled, n=n), len(prompts), n, f"sampled n={n}")
    checked = {"shape": True, "seed": False, "sample_offset": False, "logprobs": False, "stop": False,
               "mixed": False}
    if caps.seed:
        again = backend.generate(prompts, sampled, n=n)
        _ensure(_texts(again) == _texts(out), "the backend declares seed=True but the same seed "
                                              "gave different samples")
        checked["seed"] = True
        if n >= 2 and sample_offsets:
            tail = _check_shape(backend.generate(prompts, sampled, n=n - 1, sample_offset=1),
                                len(prompts), n - 1, "sample_offset=1")
            _ensure(_texts(tail) == [row[1:] for row in _texts(out)],
                    "samples 1.. of an n-sample call differ from a call with sample_offset=1 "
                    "(each sample must be seeded by its index)")
            checked["sample_offset"] = True
    if caps.logprobs:
        asked = GenerationParams(max_new_tokens=max_new_tokens, temperature=0.0, seed=0, logprobs=True)
        lp = backend.generate(prompts[:1], asked, n=1)
        c = _check_shape(lp, 1, 1, "logprobs")[0][0]
        _ensure(c.logprobs is not None and all(isinstance(x, float) and x <= 1e-6 for x in c.logprobs),
                "the backend declares logprobs=True but returned no per-token log-probabilities "
                "(or positive ones)")
        checked["logprobs"] = True
    checked["stop"] = _check_stop(backend, prompts, greedy, first)
    if caps.mixed:
        checked["mixed"] = _check_mixed(backend, prompts, [(greedy, 1, first), (sampled, n, out)], caps.seed)
    return checked


def _check_mixed(backend: Any, prompts: list[Prompt], parts: list[tuple[GenerationParams, int, Any]],
                 seeded: bool) -> bool:
    """``generate_mixed`` of a backend that declares ``mixed``: one answer per parameter set,
    each of the shape (and, seeded, the texts) of that set's own ``generate`` call."""
    _ensure(isinstance(backend, MixedBackend), "the backend declares mixed=True but has no generate_mixed")
    got = backend.generate_mixed(prompts, [(params, n) for params, n, _ in parts])
    _ensure(isinstance(got, list) and len(got) == len(parts),
            f"generate_mixed: expected one answer per parameter set ({len(parts)}), got {got!r:.200}")
    for (params, n, alone), answer in zip(parts, got, strict=True):
        rows = _check_shape(answer, len(prompts), n, f"generate_mixed, n={n}")
        _ensure(not seeded or _texts(rows) == _texts(alone),
                f"generate_mixed gave other texts than generate for the set with temperature {params.temperature} "
                "(a seeded backend must answer alike either way)")
    return True


def _stop_string(text: str) -> str | None:
    """Two characters from the second half of ``text`` that occur there first (so the answer
    must be cut exactly before them), or None when the answer is too short."""
    for k in range(len(text) // 2, len(text) - 1):
        cand = text[k : k + 2]
        if cand.strip() and text.find(cand) == k:
            return cand
    return None


def _check_stop(backend: Any, prompts: list[Prompt], greedy: GenerationParams,
                first: list[list[Completion]]) -> bool:
    """A stop string taken from inside the greedy answer cuts the answer before it."""
    for prompt, row in zip(prompts, first, strict=True):
        stop = _stop_string(row[0].text)
        if stop is None:
            continue
        params = GenerationParams(max_new_tokens=greedy.max_new_tokens, temperature=0.0, seed=0,
                                  stop=(stop,))
        got = _check_shape(backend.generate([prompt], params, n=1), 1, 1, "stop")[0][0].text
        _ensure(stop not in got, f"stop string {stop!r} appears in the answer {got!r}")
        _ensure(row[0].text.startswith(got.rstrip()),
                f"with stop {stop!r} the greedy answer {got!r} is not a prefix of {row[0].text!r}")
        return True
    return False


# -- scorers and judges ---------------------------------------------------------------------
DEFAULT_SCORE_ITEMS = [
    ScoreItem(reference="Paris is the capital of France.",
              samples=["The capital of France is Paris.", "Lyon is the capital of France.", ""],
              question="What is the capital of France?"),
    ScoreItem(reference="Mont Blanc is 4805 metres high.", samples=["It is 4805 metres high."],
              question="How high is Mont Blanc?"),
]


def _unit(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not math.isnan(x) and 0.0 <= x <= 1.0)


def check_scorer(scorer: Any, items: Sequence[ScoreItem] | None = None) -> list[ScoreResult]:
    """One :class:`ScoreResult` per item, aligned; ``score`` and each of the
    ``len(item.samples)`` ``sample_scores`` in [0, 1] or None; a JSON identity; an empty batch
    gives an empty list."""
    _protocol("scorer", scorer)
    _json_dict(scorer.identity(), "identity()")
    items = list(items or DEFAULT_SCORE_ITEMS)
    results = scorer.score(items)
    _ensure(isinstance(results, list) and len(results) == len(items),
            f"score() returned {len(results) if isinstance(results, list) else results!r} results "
            f"for {len(items)} items")
    for i, (item, res) in enumerate(zip(items, results, strict=True)):
        _ensure(isinstance(res, ScoreResult), f"item {i}: a {type(res).__name__}, not a ScoreResult")
        _ensure(_unit(res.score), f"item {i}: score {res.score!r} is not in [0, 1]")
        _ensure(len(res.sample_scores) == len(item.samples),
                f"item {i}: {len(res.sample_scores)} sample scores for {len(item.samples)} samples")
        _ensure(all(_unit(s) for s in res.sample_scores), f"item {i}: a sample score is not in [0, 1]")
    _ensure(scorer.score([]) == [], "score([]) must return []")
    return list(results)


DEFAULT_JUDGE_ITEMS = [
    JudgeItem(question_id="q1", question="How high is Mont Blanc?",
              passage="Mont Blanc rises 4805 metres in the Alps.",
              candidate="Mont Blanc rises 4805 metres.", baseline="It is about 3000 metres."),
    JudgeItem(question_id="q2", question="Who painted Guernica?",
              passage="Guernica was painted by Picasso in 1937.",
              candidate="A painter.", baseline="Picasso painted it in 1937."),
]
_MIRROR = {"win": "lose", "lose": "win", "tie": "tie", "unjudged": "unjudged"}
_PICKS = (None, "candidate", "baseline")


def check_judge(judge: Any, items: Sequence[JudgeItem] | None = None) -> list[Verdict]:
    """One verdict per item, aligned by question id; both orders recorded (``first``,
    ``second``) and combined as :meth:`Verdict.combine` says; swapping candidate and baseline
    mirrors each judged outcome (win <-> lose, tie stays), which holds when both orders are
    really asked."""
    _protocol("judge", judge)
    _json_dict(judge.identity(), "identity()")
    items = list(items or DEFAULT_JUDGE_ITEMS)
    verdicts = list(judge.judge(items))
    _ensure([v.question_id for v in verdicts] == [x.question_id for x in items],
            "judge() must return one verdict per item, in order")
    for v in verdicts:
        _ensure(isinstance(v, Verdict), f"a {type(v).__name__}, not a Verdict")
        _ensure(v.first in _PICKS and v.second in _PICKS, f"{v.question_id}: picks {v.first!r}, "
                                                          f"{v.second!r} are not candidate/baseline/None")
        _ensure(v.outcome == Verdict.combine(v.first, v.second),
                f"{v.question_id}: outcome {v.outcome!r} does not combine {v.first!r} and {v.second!r}")
    swapped = [JudgeItem(x.question_id, x.question, x.passage, x.baseline, x.candidate) for x in items]
    for v, w in zip(verdicts, judge.judge(swapped), strict=True):
        if "unjudged" not in (v.outcome, w.outcome):
            _ensure(w.outcome == _MIRROR[v.outcome],
                    f"{v.question_id}: {v.outcome!r} with the answers swapped gave {w.outcome!r}, "
                    "not its mirror; judge each item in both orders")
    return verdicts


# -- trainers ---------------------------------------------------------------------------------
def check_trainer(trainer: Any, *, model: str, output_dir: str | os.PathLike[str],
                  rows: list[dict[str, Any]] | None = None) -> TrainResult:
    """Training ``model`` on a few rows of the trainer's ``data_kind`` writes a folder that
    transformers (with peft, for an adapter) loads and generates from."""
    _protocol("trainer", trainer)
    _ensure(trainer.data_kind in ("sft", "preference"),
            f"data_kind must be 'sft' or 'preference', got {trainer.data_kind!r}")
    rows = rows or _train_rows(trainer.data_kind)
    result = trainer.train(TrainRequest(rows=rows, model=model, output_dir=str(output_dir)))
    _ensure(isinstance(result, TrainResult), f"train() returned a {type(result).__name__}")
    _ensure(os.path.isdir(result.model_path), f"model_path {result.model_path!r} is not a folder")
    _json_dict(result.metrics, "TrainResult.metrics")
    _generate_from(result.model_path)
    return result


def _train_rows(kind: str) -> list[dict[str, Any]]:
    facts = [("Where is the Eiffel Tower?", "In Paris.", "In Rome."),
             ("How high is Mont Blanc?", "4805 metres.", "100 metres."),
             ("Who painted Guernica?", "Picasso.", "Monet."),
             ("What is the capital of Peru?", "Lima.", "Quito.")] * 2
    if kind == "sft":
        return [{"prompt": [{"role": "user", "content": q}],
                 "completion": [{"role": "assistant", "content": a}]} for q, a, _ in facts]
    return [{"prompt": [{"role": "user", "content": q}], "chosen": [{"role": "assistant", "content": a}],
             "rejected": [{"role": "assistant", "content": b}]} for q, a, b in facts]


def _generate_from(folder: str) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(folder)
        if Path(folder, "adapter_config.json").exists():
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(folder)
        else:
            model = AutoModelForCausalLM.from_pretrained(folder)
    except (OSError, ValueError) as exc:
        raise ContractError(f"the trained folder {folder!r} does not load: {exc}") from exc
    ids = tok("Where is the Eiffel Tower?", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=2, do_sample=False,
                         pad_token_id=tok.pad_token_id or tok.eos_token_id)
    _ensure(out.shape[1] > ids["input_ids"].shape[1], "the trained model generates nothing")


# -- evaluators -------------------------------------------------------------------------------
def sample_run(run_dir: str | os.PathLike[str]) -> Path:
    """A minimal run directory the ``evaluate`` stage can run on: two passages, two held-out
    questions, one known training question, and a train.json naming a baseline and candidate."""
    from ..core.records import Scores

    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    passages = [Passage(id=f"p{i}", document_id=f"d{i}", index=0, title=t, text=x,
                        metadata={"category": c}) for i, (t, x, c) in enumerate([
                            ("Mont Blanc", "Mont Blanc rises 4805 metres in the Alps.", "Geography"),
                            ("Guernica", "Guernica was painted by Picasso in 1937.", "Arts")])]
    tests = [Question(id=f"t{i}", passage_id=p.id, document_id=p.document_id, text=q, split="test")
             for i, (p, q) in enumerate(zip(passages, ["How high is Mont Blanc?", "Who painted Guernica?"],
                                            strict=True))]
    known = Question(id="k0", passage_id="p0", document_id="d0", text="Where is Mont Blanc?")

    def jsonl(name: str, records: Iterable[Any]) -> None:
        (root / name).write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))

    jsonl("passages.jsonl", passages)
    jsonl("test_questions.jsonl", tests)
    jsonl("questions.jsonl", [known])
    jsonl("scores.jsonl", [Scores(question_id="k0", s_l=0.1, s_k=0.2)])
    (root / "train.json").write_text(json.dumps({"base_model": "base", "models": {"sft": "base",
                                                                                   "dpo": "trained"}}))
    return root


def check_evaluator(value: Any, *, plugins: Iterable[Any] = (), run_dir: str | os.PathLike[str],
                    evaluate: dict[str, Any] | None = None, **config: Any) -> dict[str, Any]:
    """Run the ``evaluate`` stage with the evaluator ``value`` (a name or ``{use, options}``
    from ``plugins``, or the name of a built-in, configured by ``evaluate``) on
    :func:`sample_run` (echo backend, lexical scorer, unless ``config`` says otherwise): it
    validates, writes the files it declares, and its result reaches report.json, report.md
    and the stage summary. Returns its name, result, the report and the summary."""
    from ..core.pipeline import Pipeline
    from ..core.stages.evaluate import BUILTIN_EVALUATORS

    builtin = isinstance(value, str) and value in BUILTIN_EVALUATORS
    root = sample_run(run_dir)
    cfg = {"run_dir": str(root), "backend": "echo", "scorer": "lexical", **config,
           "evaluate": {"bootstrap_resamples": 20, **(evaluate or {}),
                        "evaluators": [] if builtin else [value]}}
    pipe = Pipeline(cfg, plugin_objects=list(plugins), load_entry_points=False)
    try:
        stage: Any = pipe.stage("evaluate")
        stage.validate()
        name = value if builtin else stage.evaluators()[-1][0]
        summary = stage.run()
        result = dict(stage.results)[name]
    finally:
        pipe.close()
    missing = [f for f in stage.outputs() if not (root / f).exists()]
    _ensure(not missing, f"evaluator {name!r} did not write the files it declares: {missing}")
    _ensure(isinstance(result, EvaluationResult),
            f"evaluate() returned a {type(result).__name__}, not an EvaluationResult")
    report = json.loads((root / "evaluation" / "report.json").read_text())
    for key, value_ in result.report.items():
        _ensure(key in report, f"evaluator {name!r}: report key {key!r} missing from report.json")
        _ensure(report[key] is not None or value_ is None, f"report.json {key!r} is empty")
    markdown = (root / "report.md").read_text()
    for row in result.rows:
        _ensure(f"| {row.measure} | {row.n} |" in markdown, f"row {row.measure!r} not in report.md")
    first_line = result.markdown.strip().split("\n")[0] if result.markdown.strip() else ""
    _ensure(first_line in markdown, f"evaluator {name!r}: its section is not in report.md")
    _ensure(all(k in summary for k in result.summary), f"evaluator {name!r}: summary keys missing")
    _ensure(bool(result.report or result.rows or result.markdown),
            f"evaluator {name!r} measured nothing: its result has no report, row or section")
    return {"name": name, "result": result, "report": report, "summary": summary}
