"""Stage ``evaluate``: the trained model against its baseline (method.md section 13).

Both models (candidate = the DPO model of ``train.json``, baseline = the SFT model, or the base
model when no SFT step ran; in an SFT-only run, ``trainer: null``, the SFT model against the
base model) answer the held-out test questions closed-book: greedy, no passage,
repetition penalty 1.1, through the configured backend with its ``model`` replaced. Then:

- **agreement** (offline, judge-free): the baseline answers each question *with* its passage
  (the passage-grounded reference, as y* in training) and the configured scorer measures how
  far each model's closed-book answer is from it (lower = closer to what the passage says);
- **known items** (method.md 13.1): up to ``known_items`` training questions the model already
  knew (S_K <= ``known_threshold``) are answered and scored the same way, to see whether
  training on unknown items damaged known ones;
- **pairwise judge** when the ``judge`` slot is set: both orders, win/tie/lose overall and per
  category, and the losing rate on the known items;
- **QA accuracy** on gold answers for the sets named in ``qa`` (FanOutQA, trivia lists);
- **forgetting** through lm-evaluation-harness when ``forgetting`` is set.

Every figure is reported with its 95% bootstrap interval. Outputs: ``evaluation/*.jsonl``,
``evaluation/report.json``, PNG charts, and the run-level ``report.md``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import attrs

from ...builtin.evaluation.answers import EvalItem, answer_row, pair_answers
from ...builtin.evaluation.detection import DetectionOptions
from ...builtin.evaluation.lm_eval import ForgettingOptions
from ...builtin.evaluation.summaries import qa_summary, set_summary, stage_summary
from ..config import SlotSpec
from ..errors import ConfigError, StageError
from ..generation import CachedBackend
from ..notes import evaluation_notes
from ..options import bounded
from ..prompts import closed_book_messages, rc_messages
from ..protocols import GenerationParams, JudgeItem, ScoreItem
from ..records import Completion, Passage, Question, Scores, Verdict
from .base import Stage

EVAL_DIR = "evaluation"


@attrs.frozen
class EvaluateOptions:
    #: most new tokens per answer (the paper: 384)
    max_new_tokens: int = bounded(384, ge=1)
    #: repetition penalty of the greedy answers (the paper: 1.1)
    repetition_penalty: float = bounded(1.1, gt=0)
    #: prompts per backend call (also the granularity of progress and resume)
    batch_size: int = bounded(16, ge=1)
    #: evaluate at most this many held-out questions (None: all)
    test_limit: int | None = bounded(None, ge=1)
    #: the model after training; None: train.json's models.dpo
    candidate_model: str | None = None
    #: the model to compare with; None: train.json's models.sft, else its base_model
    baseline_model: str | None = None
    #: score each closed-book answer against the passage-grounded reference with the scorer
    agreement: bool = True
    #: known training items (S_K <= known_threshold) to evaluate too (the paper: 200; 0: off)
    known_items: int = bounded(200, ge=0)
    #: S_K at or below which a training item counts as known
    known_threshold: float = bounded(0.5, ge=0, le=1)
    #: QA sets with gold answers: "fanoutqa", "trivia", "trivia:LIST[,LIST]", "trivia:all"
    qa: list[str] = attrs.field(factory=list)
    #: questions per QA set (a seeded sample; None: all)
    qa_limit: int | None = bounded(200, ge=1)
    #: bootstrap resamples for the 95% intervals
    bootstrap_resamples: int = bounded(1000, ge=0)
    #: lm-evaluation-harness before/after (None: off)
    forgetting: ForgettingOptions | None = None
    #: knowledge detection quality on the QA sets (AUROC of S_K for wrong answers; None: off)
    detection: DetectionOptions | None = None


class EvaluateStage(Stage):
    name = "evaluate"
    requires = ("passages", "questions", "scores", "train")
    slots = ("backend", "judge", "scorer")
    options_class = EvaluateOptions

    # -- contract ------------------------------------------------------------------------
    def outputs(self) -> list[str]:
        opts: EvaluateOptions = self.options
        files = [
            f"{EVAL_DIR}/answers_baseline.jsonl",
            f"{EVAL_DIR}/answers_candidate.jsonl",
            f"{EVAL_DIR}/report.json",
            f"{EVAL_DIR}/before_after.png",
            "report.md",
        ]
        if opts.agreement:
            files.append(f"{EVAL_DIR}/references.jsonl")
        if self.run_ctx.has("judge"):
            files += [f"{EVAL_DIR}/verdicts.jsonl", f"{EVAL_DIR}/outcomes.png"]
        if opts.detection is not None:
            files += [f"{EVAL_DIR}/detection.jsonl", f"{EVAL_DIR}/detection_roc.png"]
        return files

    def validate(self) -> None:
        super().validate()
        from ...builtin.evaluation.lm_eval import require_lm_eval
        from ...builtin.evaluation.loaders import check_qa_name

        opts: EvaluateOptions = self.options
        for i, name in enumerate(opts.qa):
            check_qa_name(name, f"evaluate.qa[{i}]")
        if opts.forgetting is not None:
            require_lm_eval()
        if opts.detection is not None:
            self._check_detection(opts.detection, bool(opts.qa))
        spec = self.run_ctx.slots.get("backend")
        if spec is not None and spec.is_object:
            raise ConfigError(self._object_backend_message(), "backend")
        self._check_judge_key()

    def _check_detection(self, det: DetectionOptions, has_qa: bool) -> None:
        from ..config import parse_slot

        if not has_qa:
            raise ConfigError(
                "detection measures S_K against gold answers, so it needs QA sets: add e.g. "
                "qa: [\"trivia:general\", \"fanoutqa\"] to the evaluate section, or remove "
                "detection", "evaluate.detection",
            )
        if det.k < 2:
            raise ConfigError(f"k must be at least 2 samples, got {det.k}", "evaluate.detection.k")
        if det.metric not in ("contains", "exact", "f1"):
            raise ConfigError(f"metric must be contains, exact or f1, got {det.metric!r}",
                              "evaluate.detection.metric")
        if not self.run_ctx.has("scorer"):
            raise ConfigError("detection scores S_K with the configured scorer: set `scorer:`",
                              "scorer")
        for i, value in enumerate(det.scorers):
            parse_slot(value, f"evaluate.detection.scorers[{i}]")

    def _check_judge_key(self) -> None:
        """A judge on the official OpenAI API without a key fails now, not after the answers
        were generated (any judge whose options extend the shared ClientOptions)."""
        from ...builtin.openai_client import ClientOptions
        from ..options import build_options

        spec = self.run_ctx.slots.get("judge")
        if spec is None or spec.is_object or spec.name is None:
            return
        cls = self.run_ctx.host.registry.get("judge", spec.name, "judge").load_options_class()
        if cls is None or not (isinstance(cls, type) and issubclass(cls, ClientOptions)):
            return
        opts = build_options(cls, spec.options, "judge.options")
        official = opts.base_url is None or "api.openai.com" in opts.base_url
        if official and not (opts.api_key_env and self.run_ctx.secret(opts.api_key_env)):
            raise ConfigError(
                f"the judge calls the OpenAI API but no key is set: set the environment variable "
                f"{opts.api_key_env} (or point judge.options.base_url at a local "
                "OpenAI-compatible server)",
                "judge.options.api_key_env",
            )

    def fingerprint_config(self) -> dict[str, Any]:
        """Also the held-out questions' hash: they are read whether or not the questions
        stage lists test_questions.jsonl among its outputs."""
        config = super().fingerprint_config()
        name = "test_questions.jsonl"
        config["test_questions"] = self.store.hash(name) if self.store.exists(name) else None
        return config

    def estimate(self) -> dict[str, Any]:
        opts: EvaluateOptions = self.options
        n = 0
        if self.store.exists("test_questions.jsonl"):
            n = sum(1 for _ in self.store.iter_jsonl("test_questions.jsonl"))
            n = min(n, opts.test_limit) if opts.test_limit is not None else n
        known = opts.known_items
        per = 3 if opts.agreement else 2
        return {
            "generations": n * per + known * per + 2 * (opts.qa_limit or 0) * len(opts.qa),
            "judge_calls_at_least": 2 * (n + known) if self.run_ctx.has("judge") else 0,
            "note": "known items counted at most; QA sets at qa_limit each",
        }

    # -- models --------------------------------------------------------------------------
    @staticmethod
    def _object_backend_message() -> str:
        return (
            "the evaluate stage loads each model (baseline, candidate) into the configured "
            "backend by replacing its 'model' option, so the backend must be given by name "
            "({use: NAME, options: {...}}), not as a ready Python object"
        )

    def _models(self) -> tuple[str, str]:
        opts: EvaluateOptions = self.options
        train: dict[str, Any] = {}
        if self.store.exists("train.json"):
            train = self.store.read_json("train.json") or {}
        models = train.get("models") or {}
        # an SFT-only run (trainer: null) evaluates the SFT model against the base model
        sft_only = not models.get("dpo") and bool(models.get("sft"))
        candidate = opts.candidate_model or models.get("dpo") or models.get("sft")
        baseline = (
            opts.baseline_model
            or (None if sft_only else models.get("sft"))
            or train.get("base_model")
            or self.run_ctx.model
        )
        if not candidate:
            raise StageError(
                "no model to evaluate: train.json names neither models.dpo nor models.sft (did "
                "the train stage run?) and evaluate.candidate_model is not set"
            )
        if not baseline:
            raise StageError(
                "no baseline model: train.json names neither models.sft nor base_model, and "
                "neither evaluate.baseline_model nor the top-level 'model' is set"
            )
        return str(candidate), str(baseline)

    def _backend(self, model: str) -> CachedBackend:
        spec = self.run_ctx.slots.get("backend")
        if spec is None:
            raise ConfigError("the evaluate stage needs an inference backend", "backend")
        if spec.is_object:
            raise ConfigError(self._object_backend_message(), "backend")
        backend = self.run_ctx.build(
            "inference_backend",
            SlotSpec(name=spec.name, options={**spec.options, "model": model}),
            "evaluate.backend",
        )
        return CachedBackend(backend, self.run_ctx.cache("generations"))

    def _generate(self, backend: CachedBackend, prompts: Sequence[Any], desc: str) -> list[Completion]:
        """The greedy answer to each prompt (an empty one where the backend gave none)."""
        opts: EvaluateOptions = self.options
        params = GenerationParams(
            max_new_tokens=opts.max_new_tokens,
            temperature=0.0,
            repetition_penalty=opts.repetition_penalty,
            seed=self.run_ctx.seed,
        )
        return [r[0] if r else Completion(text="") for r in self._batched(backend, prompts, params, 1, desc)]

    def _batched(self, backend: CachedBackend, prompts: Sequence[Any], params: GenerationParams, n: int,
                 desc: str) -> list[list[Completion]]:
        """``n`` completions per prompt, ``batch_size`` prompts per backend call, with progress."""
        opts: EvaluateOptions = self.options
        out: list[list[Completion]] = []
        starts = range(0, len(prompts), max(1, opts.batch_size))
        for start in self.run_ctx.progress(starts, total=len(starts), desc=desc, unit="batch"):
            out.extend(backend.generate(prompts[start : start + opts.batch_size], params, n=n))
        return out

    # -- items ---------------------------------------------------------------------------
    def _items(self) -> tuple[list[EvalItem], list[EvalItem], dict[str, list[EvalItem]], dict[str, Any]]:
        opts: EvaluateOptions = self.options
        if not self.store.exists("test_questions.jsonl"):
            raise StageError(
                "test_questions.jsonl is missing: the questions stage writes the held-out "
                "questions there (it needs documents with split 'test')"
            )
        passages = {p.id: p for p in self.store.read_records("passages.jsonl", Passage)}
        tests = self.store.read_records("test_questions.jsonl", Question)
        if opts.test_limit is not None:
            tests = tests[: opts.test_limit]
        if not tests:
            raise StageError("test_questions.jsonl holds no question: nothing to evaluate")
        missing = sorted({q.passage_id for q in tests if q.passage_id not in passages})
        if missing:
            raise StageError(f"passages.jsonl lacks the passages of test questions: {missing[:10]}")
        test = [_item("test", q, passages[q.passage_id]) for q in tests]
        known, known_info = self._known(passages)
        qa: dict[str, list[EvalItem]] = {}
        qa_info: dict[str, Any] = {}
        if opts.qa:
            from ...builtin.evaluation.loaders import load_qa

            for i, name in enumerate(opts.qa):
                loaded, skipped = load_qa(name, f"evaluate.qa[{i}]")
                loaded = sorted(loaded, key=lambda x: x.id)
                if opts.qa_limit is not None and len(loaded) > opts.qa_limit:
                    loaded = sorted(random.Random(self.run_ctx.seed).sample(loaded, opts.qa_limit), key=lambda x: x.id)
                qa[name] = [
                    EvalItem(f"qa:{name}", x.id, x.question, x.category, None, list(x.answers))
                    for x in loaded
                ]
                qa_info[name] = {"items": len(loaded), "skipped": skipped}
        return test, known, qa, {"known": known_info, "qa": qa_info}

    def _known(self, passages: dict[str, Passage]) -> tuple[list[EvalItem], dict[str, Any]]:
        opts: EvaluateOptions = self.options
        if opts.known_items <= 0:
            return [], {"status": "off"}
        if not (self.store.exists("scores.jsonl") and self.store.exists("questions.jsonl")):
            return [], {"status": "no scores.jsonl or questions.jsonl"}
        questions = {q.id: q for q in self.store.read_records("questions.jsonl", Question)}
        pool = sorted(
            s.question_id
            for s in self.store.read_records("scores.jsonl", Scores)
            if s.s_k is not None and s.s_k <= opts.known_threshold
            and s.question_id in questions and questions[s.question_id].passage_id in passages
        )
        chosen = pool if len(pool) <= opts.known_items else sorted(
            random.Random(self.run_ctx.seed).sample(pool, opts.known_items)
        )
        items = [_item("known", questions[q], passages[questions[q].passage_id]) for q in chosen]
        return items, {"status": "ok", "pool": len(pool), "sampled": len(items),
                       "threshold": opts.known_threshold}

    # -- the run -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from ...builtin.evaluation import report as rep

        opts: EvaluateOptions = self.options
        candidate_ref, baseline_ref = self._models()
        test, known, qa, info = self._items()
        grounded = test + known
        everything = grounded + [x for items in qa.values() for x in items]
        closed = [closed_book_messages(x.question) for x in everything]

        self.run_ctx.release("backend")  # this stage loads its own models, one at a time
        backend = self._backend(baseline_ref)
        try:
            base_out = self._generate(backend, closed, "evaluate: baseline answers")
            samples: list[list[Completion]] = []
            if opts.detection is not None:
                samples = self._samples(backend, closed[len(grounded):], opts.detection)
            refs: list[Completion] = []
            if opts.agreement:
                refs = self._generate(
                    backend, [rc_messages(x.passage or "", x.question) for x in grounded],
                    "evaluate: references",
                )
        finally:
            backend.close()
        backend = self._backend(candidate_ref)
        try:
            cand_out = self._generate(backend, closed, "evaluate: candidate answers")
        finally:
            backend.close()

        base_rows = [answer_row(x, "baseline", baseline_ref, c) for x, c in zip(everything, base_out, strict=True)]
        cand_rows = [answer_row(x, "candidate", candidate_ref, c) for x, c in zip(everything, cand_out, strict=True)]
        pairs = pair_answers(base_rows, cand_rows)
        if opts.agreement:
            self._agreement(grounded, refs, pairs)
        from ...builtin.evaluation.qa import score_answer

        for b, c in pairs:
            if "gold" in b:
                b["qa"] = score_answer(b["answer"], b["gold"])
                c["qa"] = score_answer(c["answer"], c["gold"])

        ed = EVAL_DIR
        detection = None
        if opts.detection is not None:
            detection = self._detection(base_rows[len(grounded):], samples, opts.detection)
        self.store.write_jsonl(f"{ed}/answers_baseline.jsonl", base_rows)
        self.store.write_jsonl(f"{ed}/answers_candidate.jsonl", cand_rows)
        if opts.agreement:
            self.store.write_jsonl(
                f"{ed}/references.jsonl",
                [{"set": x.set, "question_id": x.id, "model": baseline_ref, "reference": r.text}
                 for x, r in zip(grounded, refs, strict=True)],
            )

        report: dict[str, Any] = {
            "models": {"baseline": baseline_ref, "candidate": candidate_ref},
            "params": {"max_new_tokens": opts.max_new_tokens,
                       "repetition_penalty": opts.repetition_penalty, "greedy": True,
                       "scorer": self._scorer_identity() if opts.agreement else None},
            "items": {"test": len(test), "known": len(known),
                      "qa": {k: len(v) for k, v in qa.items()}, **info},
        }
        seed = self.run_ctx.seed
        for set_name, items in (("test", test), ("known", known)):
            if items:
                report[set_name] = set_summary(set_name, pairs, items, agreement=opts.agreement,
                                               resamples=opts.bootstrap_resamples, seed=seed)
        report["qa"] = {name: qa_summary(name, pairs, resamples=opts.bootstrap_resamples, seed=seed)
                        for name in qa}
        report["judge"] = self._judge(test, known, base_rows, cand_rows) if self.run_ctx.has("judge") else None
        report["forgetting"] = self._forgetting(baseline_ref, candidate_ref) if opts.forgetting else None
        report["detection"] = detection
        report["notes"] = evaluation_notes(report)
        self.store.write_json(f"{ed}/report.json", report)
        self._write_charts_and_markdown(report, rep)
        return stage_summary(report)

    # -- measures ------------------------------------------------------------------------
    def _scorer_identity(self) -> Any:
        return self.run_ctx.component("scorer").identity()

    def _agreement(self, grounded: list[EvalItem], refs: list[Completion],
                   pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> None:
        """Fill ``disagreement`` of every grounded row (scores cached by content)."""
        scorer = self.run_ctx.component("scorer")
        cache = self.run_ctx.cache("evaluate-agreement")
        ident = scorer.identity()
        ref_of = {x.key: r.text for x, r in zip(grounded, refs, strict=True)}
        rows: list[dict[str, Any]] = []
        keyed: list[tuple[str, ScoreItem]] = []
        for b, c in pairs:
            ref = ref_of.get((b["set"], b["question_id"]))
            if ref is None:
                continue
            for row in (b, c):
                rows.append(row)
                keyed.append((cache.key("agreement", ident, b["question"], ref, row["answer"]),
                              ScoreItem(reference=ref, samples=[row["answer"]], question=b["question"])))
        scores = self._cached_scores(scorer, cache, keyed, "evaluate: agreement", "")
        for row, score in zip(rows, scores, strict=True):
            row["disagreement"] = score

    def _cached_scores(self, scorer: Any, cache: Any, keyed: list[tuple[str, ScoreItem]], desc: str,
                       who: str) -> list[float | None]:
        """The score of each (cache key, item): from the cache where present, the rest scored in
        steps of 4 x batch_size (with progress) and cached as they come."""
        scores: list[float | None] = [None] * len(keyed)
        todo: list[int] = []
        for i, (key, _) in enumerate(keyed):
            hit = cache.get(key)
            if hit is None:
                todo.append(i)
            else:
                scores[i] = hit.get("score")
        step = max(1, self.options.batch_size * 4)
        starts = range(0, len(todo), step)
        for start in self.run_ctx.progress(starts, total=len(starts), desc=desc, unit="batch"):
            idx = todo[start : start + step]
            results = scorer.score([keyed[i][1] for i in idx])
            if len(results) != len(idx):
                raise StageError(f"the scorer{who} returned {len(results)} results for {len(idx)} items")
            for i, res in zip(idx, results, strict=True):
                scores[i] = res.score
            cache.put_many([(keyed[i][0], {"score": scores[i]}) for i in idx])
        return scores

    def _samples(self, backend: CachedBackend, prompts: Sequence[Any],
                 det: DetectionOptions) -> list[list[Completion]]:
        """K closed-book samples per QA question from the baseline model (its Y_r)."""
        opts: EvaluateOptions = self.options
        params = GenerationParams(
            max_new_tokens=det.max_new_tokens or opts.max_new_tokens,
            temperature=det.temperature,
            top_p=det.top_p,
            repetition_penalty=opts.repetition_penalty,
            seed=self.run_ctx.seed,
        )
        return self._batched(backend, prompts, params, det.k, "evaluate: detection samples")

    def _detection(self, rows: list[dict[str, Any]], samples: list[list[Completion]],
                   det: DetectionOptions) -> dict[str, Any]:
        """S_K of each QA question under each scorer, and its AUROC for wrong answers."""
        from ...builtin.evaluation import detection as dmod

        opts: EvaluateOptions = self.options
        spec = self.run_ctx.slots["scorer"]
        scorers: list[tuple[str, Any, bool]] = [
            ((spec.name if spec else None) or "scorer", self.run_ctx.component("scorer"), False)
        ]
        for i, value in enumerate(det.scorers):
            built = self.run_ctx.build("scorer", value, f"evaluate.detection.scorers[{i}]")
            name = value if isinstance(value, str) else str(value.get("use")) + "(" + ", ".join(
                f"{k}={v}" for k, v in sorted((value.get("options") or {}).items())) + ")"
            while name in [n for n, _, _ in scorers]:
                name += "'"
            scorers.append((name, built, True))
        out_rows = [
            {"set": r["set"].removeprefix("qa:"), "question_id": r["question_id"],
             "question": r["question"], "greedy": r["answer"], "samples": [c.text for c in s],
             "gold": r["gold"], "wrong": dmod.is_wrong(r["qa"], det.metric), "s_k": {}}
            for r, s in zip(rows, samples, strict=True)
        ]
        cache = self.run_ctx.cache("evaluate-detection")
        try:
            for name, scorer, _ in scorers:
                ident = scorer.identity()
                keyed = [(cache.key("s_k", ident, r["question"], r["greedy"], r["samples"]),
                          ScoreItem(reference=r["greedy"], samples=r["samples"], question=r["question"]))
                         for r in out_rows]
                scores = self._cached_scores(scorer, cache, keyed, f"evaluate: detection ({name})", f" {name!r}")
                for r, score in zip(out_rows, scores, strict=True):
                    r["s_k"][name] = score
        finally:
            for _, scorer, own in scorers:
                close = getattr(scorer, "close", None)
                if own and callable(close):
                    close()
        names = [n for n, _, _ in scorers]
        self.store.write_jsonl(f"{EVAL_DIR}/detection.jsonl", out_rows)
        self.store.write_bytes(f"{EVAL_DIR}/detection_roc.png", dmod.plot_roc(out_rows, names))
        summary = dmod.summarize(out_rows, names, resamples=opts.bootstrap_resamples, seed=self.run_ctx.seed)
        return {"model": "baseline", "k": det.k, "temperature": det.temperature,
                "metric": det.metric, "scorers": names, "sets": summary}

    def _judge(self, test: list[EvalItem], known: list[EvalItem],
               base_rows: list[dict[str, Any]], cand_rows: list[dict[str, Any]]) -> dict[str, Any]:
        from ...builtin.evaluation.report import outcome_summary, outcomes_by_category

        judge = self.run_ctx.component("judge")
        answers = {(r["set"], r["question_id"]): (r["answer"], c["answer"])
                   for r, c in zip(base_rows, cand_rows, strict=True)}
        out: dict[str, Any] = {"identity": judge.identity()}
        for set_name, items in (("test", test), ("known", known)):
            if not items:
                out[set_name] = None
                continue
            jitems = [
                JudgeItem(question_id=x.id, question=x.question, passage=x.passage or "",
                          candidate=answers[x.key][1], baseline=answers[x.key][0])
                for x in items
            ]
            verdicts: list[Verdict] = list(judge.judge(jitems))
            if len(verdicts) != len(jitems) or any(
                v.question_id != j.question_id for v, j in zip(verdicts, jitems, strict=False)
            ):
                raise StageError(
                    f"the judge returned {len(verdicts)} verdicts for {len(jitems)} items, or out "
                    "of order; a judge must return one verdict per item, aligned"
                )
            fname = "verdicts.jsonl" if set_name == "test" else "verdicts_known.jsonl"
            self.store.write_records(f"{EVAL_DIR}/{fname}", verdicts)
            if set_name == "test":
                out["test"] = outcomes_by_category(verdicts, {x.id: x.category for x in items})
            else:
                out["known"] = {"overall": outcome_summary(verdicts)}
        usage = getattr(judge, "usage", None)
        out["usage"] = dict(usage) if isinstance(usage, dict) else None
        return out

    def _forgetting(self, baseline: str, candidate: str) -> dict[str, Any]:
        from ...builtin.evaluation.lm_eval import compare, model_fingerprint, run_lm_eval

        fopts = self.options.forgetting
        assert fopts is not None
        cache = self.run_ctx.cache("lm_eval")
        results = {}
        for role, ref in (("before", baseline), ("after", candidate)):
            key = cache.key("lm_eval", model_fingerprint(ref), attrs.asdict(fopts), self.run_ctx.seed)
            hit = cache.get(key)
            if hit is None:
                hit = run_lm_eval(ref, fopts, seed=self.run_ctx.seed)
                cache.put(key, hit)
            results[role] = hit
        out = compare(results["before"], results["after"], fopts.margin)
        out["lm_eval_version"] = results["after"].get("lm_eval_version")
        out["versions"] = results["after"].get("versions")
        return out

    # -- reports -------------------------------------------------------------------------
    def _write_charts_and_markdown(self, report: dict[str, Any], rep: Any) -> None:
        images: list[tuple[str, str]] = []
        for title, fname in (("S_L / S_K histogram", "scores_hist.png"),
                             ("Training loss", "train_loss.png")):
            if self.store.exists(fname):
                images.append((title, fname))
        panels = []
        rows = []
        for set_name in ("test", "known"):
            agr = (report.get(set_name) or {}).get("disagreement")
            if agr:
                rows.append((f"{set_name} (n={agr['difference']['n']})", agr["baseline"], agr["candidate"]))
        panels.append(("disagreement with reference (lower is better)", rows))
        qa_rows = [(f"{name} (n={q['n']})", q["baseline"]["contains"], q["candidate"]["contains"])
                   for name, q in (report.get("qa") or {}).items()]
        panels.append(("QA accuracy (contains)", qa_rows))
        self.store.write_bytes(f"{EVAL_DIR}/before_after.png", rep.plot_before_after(panels))
        images.append(("Before / after", f"{EVAL_DIR}/before_after.png"))
        judge = report.get("judge")
        if judge:
            groups: dict[str, Any] = {}
            if judge.get("test"):
                groups["test: all"] = judge["test"]["overall"]
                groups.update({f"test: {c}": s for c, s in judge["test"]["by_category"].items()})
            if judge.get("known"):
                groups["known items"] = judge["known"]["overall"]
            self.store.write_bytes(
                f"{EVAL_DIR}/outcomes.png", rep.plot_outcomes(groups, "candidate vs baseline")
            )
            images.append(("Win / tie / lose", f"{EVAL_DIR}/outcomes.png"))
        manifest = self.store.read_json("manifest.json") if self.store.exists("manifest.json") else None
        datasets = (self.store.read_json("datasets_summary.json")
                    if self.store.exists("datasets_summary.json") else None)
        md = rep.render_markdown(report, manifest=manifest, datasets_summary=datasets, images=images)
        self.store.write_text("report.md", md)


def _item(set_name: str, q: Question, passage: Passage) -> EvalItem:
    category = q.metadata.get("category") or passage.metadata.get("category")
    return EvalItem(set_name, q.id, q.text, None if category is None else str(category), passage.text)
