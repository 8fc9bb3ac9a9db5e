"""Plain-language notes on silent outcomes: a filter that removed nothing or kept nothing, an
evaluation pool that was empty -- each with its likely cause and what to try.

A run that finishes can still have measured nothing: a knowledge filter that passes every
question trains on all of them as if the model knew none, and an empty known-items pool means
forgetting on known items was not measured. The numbers are in the summaries, but nobody
reads a zero as a warning; these notes go into the stage summaries (``notes``), the CLI's
output and ``report.md``.
"""

from __future__ import annotations

from typing import Any

#: what most likely emptied the selection, by the reason that removed the most questions
_KEPT_NOTHING_CAUSES = {
    "consistency": "y* disagrees with the samples that saw the passage (S_L > tau_L): raise "
    "tau_L, or check that y* and Y_c are complete answers (max_new_tokens, truncation)",
    "knowledge": "the model already knows the answers (S_K <= tau_K): lower tau_K, or use "
    "documents the model is less likely to know",
    "s_l_missing": "no question has an S_L: set scores.consistency: true, or "
    "datasets.consistency_filter: false",
    "s_k_missing": "no question has an S_K: check that Y_r was generated (generations.k) and scored",
    "reference_truncated": "y* hit max_new_tokens: raise generations.reference.max_new_tokens or "
    "set datasets.drop_truncated_reference: false",
    "reference_empty": "the model gave empty y* answers: check the backend and its chat template",
    "no_rejected_candidate": "no usable Y_r sample to reject (all truncated?): raise "
    "generations.without_passage.max_new_tokens or set datasets.truncated_samples: trim",
    "no_generations": "the generations stage answered none of these questions (generations.limit, "
    "generations.splits)",
    "no_scores": "the scores stage scored none of these questions",
    "sampled_out": "datasets.max_questions sampled them out",
}


def _stat(summary: dict[str, Any], key: str, field: str) -> Any:
    value = (summary.get(key) or {}).get(field)
    return f"{value:.3g}" if isinstance(value, (int, float)) else "?"


def filter_notes(summary: dict[str, Any]) -> list[str]:
    """Notes on the datasets stage's summary: a filter that removed nothing, or a selection
    that kept nothing, with the likely cause."""
    notes: list[str] = []
    scored = int(summary.get("scored") or 0)
    would = summary.get("would_fail") or {}
    filters = summary.get("filters") or {}
    tau = summary.get("thresholds") or {}
    if scored and filters.get("knowledge") and would.get("knowledge") == 0:
        notes.append(
            f"the knowledge filter removed none of the {scored} scored questions: every S_K was "
            f"above tau_K = {tau.get('tau_k')} (lowest {_stat(summary, 's_k', 'min')}), so the model "
            "looked ignorant of all of them. Likely cause: the samples without the passage "
            "disagree with y* whatever the model knows (a small model, a high sampling "
            "temperature, few samples K, or a scorer that sees contradictions everywhere); look "
            "at S_K in scores_hist.png and consider raising tau_K"
        )
    if scored and filters.get("consistency") and would.get("consistency") == 0:
        notes.append(
            f"the consistency filter removed none of the {scored} scored questions: every S_L was "
            f"at most tau_L = {tau.get('tau_l')} (highest {_stat(summary, 's_l', 'max')}). Expected "
            "when the model answers consistently from the passage; if S_L is 0 everywhere, check "
            "that the scorer tells answers apart"
        )
    questions = int(summary.get("questions") or 0)
    if questions and not summary.get("kept_questions"):
        removed = {k: v for k, v in (summary.get("removed") or {}).items() if v}
        top = max(removed, key=lambda k: removed[k]) if removed else None
        cause = _KEPT_NOTHING_CAUSES.get(top or "", "see the removed counts")
        notes.append(
            f"the filters kept none of the {questions} questions (removed: {removed or 'none'}), so "
            f"there is no DPO pair. Likely cause: {cause}"
        )
    return notes + sft_notes(summary.get("sft") or {})


_SELF_LABEL_CAUSES = {
    "truncated": "the answers hit datasets.self_label_max_new_tokens: raise it",
    "repetition": "the answers repeat themselves: a larger model, or a higher self_label_repetition_penalty",
    "duplicate_sentences": "the answers repeat sentences: a higher self_label_repetition_penalty",
    "empty": "the model answered nothing: check the backend and the few-shot prompt",
}


def sft_notes(stats: dict[str, Any]) -> list[str]:
    """Notes on the SFT rows: self-labelling that labelled none of its questions."""
    asked = int(stats.get("self_label_questions") or 0)
    if not asked or stats.get("self_label_rows"):
        return []
    rejections = stats.get("self_label_rejections") or {}
    top = max(rejections, key=lambda k: rejections[k]) if rejections else ""
    cause = _SELF_LABEL_CAUSES.get(top, "see self_label_rejections")
    return [
        f"self-labelling labelled none of its {asked} questions (rejected: {rejections or 'none'}), "
        f"so the SFT rows are reading-comprehension rows only. Likely cause: {cause}"
    ]


def evaluation_notes(report: dict[str, Any]) -> list[str]:
    """Notes on the evaluation: an empty known-items pool or an empty QA set."""
    notes: list[str] = []
    items = report.get("items") or {}
    known: dict[str, Any] = items["known"] if isinstance(items.get("known"), dict) else {}
    if known.get("status") == "ok" and not known.get("pool"):
        notes.append(
            f"the known-items probe had an empty pool: no training question has S_K <= "
            f"{known.get('threshold')} (the model knew none of them), so damage to known items "
            "was not measured. Likely cause: the knowledge scores are all high (see the datasets "
            "stage's note and scores_hist.png); raise evaluate.known_threshold or check the scorer"
        )
    elif known.get("status") not in (None, "ok", "off"):
        notes.append(f"the known-items probe did not run: {known['status']}")
    qa: dict[str, Any] = items["qa"] if isinstance(items.get("qa"), dict) else {}
    for name, info in qa.items():
        if isinstance(info, dict) and not info.get("items"):
            notes.append(
                f"the QA set {name!r} had no usable item ({info.get('skipped') or 'none skipped'}), so "
                "it was not measured; check the set's name and its download"
            )
    return notes
