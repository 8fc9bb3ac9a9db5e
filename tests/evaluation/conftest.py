"""Fixtures of the evaluation tests: a scripted backend plugin, a judge server responder and
a hand-written run directory (passages, held-out and training questions, scores, train.json).

The scripted backend answers closed-book questions from a per-model table (so a "trained"
model can know facts its baseline does not), answers reading-comprehension prompts with the
passage's first sentence, and judges like a careful but position-biased judge: it prefers the
response sharing more content words with the passage, and says "A" when they are even.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest

from selflearn.core.hookspecs import hookimpl
from selflearn.core.protocols import BackendCapabilities, GenerationParams, Prompt
from selflearn.core.records import Completion, Passage, Question, Scores

_WORD = re.compile(r"[a-z0-9]{4,}")

PASSAGES = [
    ("p1", "Geography", "Mont Blanc", "Mont Blanc rises 4805 metres in the Alps. It lies between France and Italy."),
    ("p2", "Geography", "Lake Baikal", "Lake Baikal is the deepest lake on Earth at 1642 metres. It is in Siberia."),
    ("p3", "Arts", "The Last Supper", "The Last Supper was painted by Leonardo around 1498. It is in Milan."),
    ("p4", "Arts", "Guernica", "Guernica was painted by Picasso in 1937. It hangs in Madrid."),
    ("p5", "Science", "White dwarf", "A white dwarf is made of electron-degenerate matter. Sirius B is one."),
]
# test question id -> (passage, question, what the trained model answers, what the SFT model answers)
TESTS = {
    "t1": ("p1", "How high is Mont Blanc?", "Mont Blanc rises 4805 metres in the Alps.", "It is about 3000 metres."),
    "t2": ("p2", "How deep is Lake Baikal?", "Lake Baikal is 1642 metres deep, the deepest lake on Earth.", "It is shallow."),
    "t3": ("p3", "Who painted The Last Supper?", "Raphael did.", "The Last Supper was painted by Leonardo around 1498."),
    "t4": ("p4", "Who painted Guernica?", "Someone famous.", "A painter."),
}
# training questions: (passage, question, S_K)
TRAIN = {
    "k1": ("p5", "What is a white dwarf made of?", 0.2),
    "k2": ("p1", "Where is Mont Blanc?", 0.4),
    "u1": ("p2", "Where is Lake Baikal?", 0.9),
}
KNOWLEDGE: dict[str, dict[str, str]] = {
    "dpo-model": {q: good for _, q, good, _ in TESTS.values()},
    "sft-model": {q: bad for _, q, _, bad in TESTS.values()},
}
KNOWLEDGE["dpo-model"]["What is a white dwarf made of?"] = "Electron-degenerate matter."
KNOWLEDGE["sft-model"]["What is a white dwarf made of?"] = "A white dwarf is made of electron-degenerate matter."


def _words(text: str) -> set[str]:
    return set(_WORD.findall(text.lower()))


def _section(text: str, start: str, end: str | None) -> str:
    body = text.split(start, 1)[1]
    return body.split(end, 1)[0] if end else body


def scripted_judge_answer(user: str) -> str:
    """The letter a careful, position-biased judge picks for a judge prompt."""
    passage = _section(user, "Source passage:\n", "\n\nResponse A:")
    a = _section(user, "Response A:\n", "\n\nResponse B:")
    b = _section(user, "Response B:\n", "\n\nWhich response")
    if "UNPARSEABLE" in user:
        return "Both are fine"
    pw = _words(passage)
    sa, sb = len(_words(a) & pw), len(_words(b) & pw)
    return "B" if sb > sa else "A"


@attrs.frozen
class ScriptedOptions:
    model: str = "judge-model"


class ScriptedBackend:
    capabilities = BackendCapabilities(chat=True, raw=False, seed=True)
    closed: list[str] = []  # models whose backend was closed, in order

    def __init__(self, options: ScriptedOptions) -> None:
        self.options = options
        self.calls = 0

    def identity(self) -> dict[str, Any]:
        return {"backend": "scripted", "model": self.options.model}

    def _answer(self, prompt: Prompt) -> str:
        assert not isinstance(prompt, str)
        user = [m["content"] for m in prompt if m["role"] == "user"][-1]
        if "Response A:" in user:
            return scripted_judge_answer(user)
        if "Text:\n" in user:
            passage = _section(user, "Text:\n", "\n\nQuestion:")
            return passage.split(". ")[0].rstrip(".") + "."
        return KNOWLEDGE.get(self.options.model, {}).get(user.strip(), "I do not know.")

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams, *, n: int = 1,
                 sample_offset: int = 0) -> list[list[Completion]]:
        self.calls += len(prompts) * n
        return [[Completion(text=self._answer(p), completion_tokens=3) for _ in range(n)] for p in prompts]

    def close(self) -> None:
        ScriptedBackend.closed.append(self.options.model)


class ScriptedPlugin:
    @hookimpl
    def register_inference_backends(self, register: Any) -> None:
        register("scripted", lambda options, ctx: ScriptedBackend(options), options=ScriptedOptions,
                 description="test backend")


@pytest.fixture()
def scripted_plugin() -> ScriptedPlugin:
    ScriptedBackend.closed.clear()
    return ScriptedPlugin()


def write_run(run_dir: str | Path, *, train_json: dict[str, Any] | None = None) -> Path:
    """The files the evaluate stage reads, written by hand."""
    root = Path(run_dir)
    root.mkdir(parents=True, exist_ok=True)

    def jsonl(name: str, rows: list[dict[str, Any]]) -> None:
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))

    jsonl("passages.jsonl", [
        Passage(id=pid, document_id=f"d-{pid}", index=0, title=title, text=text,
                metadata={"category": cat, "split": "test" if pid != "p5" else "train"}).to_dict()
        for pid, cat, title, text in PASSAGES
    ])
    jsonl("test_questions.jsonl", [
        Question(id=qid, passage_id=pid, document_id=f"d-{pid}", text=q, split="test").to_dict()
        for qid, (pid, q, _, _) in TESTS.items()
    ])
    jsonl("questions.jsonl", [
        Question(id=qid, passage_id=pid, document_id=f"d-{pid}", text=q).to_dict()
        for qid, (pid, q, _) in TRAIN.items()
    ])
    jsonl("scores.jsonl", [
        Scores(question_id=qid, s_l=0.1, s_k=sk).to_dict() for qid, (_, _, sk) in TRAIN.items()
    ])
    train = train_json or {"base_model": "base-model", "models": {"sft": "sft-model", "dpo": "dpo-model"}}
    (root / "train.json").write_text(json.dumps(train))
    return root
