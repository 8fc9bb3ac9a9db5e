"""The judges: verdict parsing, the both-orders protocol, the openai judge against a judge
server written here, and the local judge through a registered backend."""

from __future__ import annotations

import json
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.builtin.judges.common import (
    JUDGE_INSTRUCTION,
    PairwiseProtocol,
    judge_messages,
    parse_verdict,
)
from selflearn.builtin.judges.openai_judge import OpenAIJudge, Options
from selflearn.builtin.openai_client import ChatClient
from selflearn.core.cache import JsonlCache
from selflearn.core.errors import BudgetExceededError
from selflearn.core.protocols import JudgeItem
from selflearn.core.records import Verdict
from tests.evaluation.conftest import scripted_judge_answer
from tests.servers import FakeServer, openai_handler


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A", "A"),
        ("B", "B"),
        ("a", "A"),
        (" b\n", "B"),
        ("A.", "A"),
        ("**B**", "B"),
        ("(A)", "A"),
        ("`B`", "B"),
        ('"A"', "A"),
        ("Response A", "A"),
        ("Answer: B", "B"),
        ("B is better", "B"),
        ("I choose B.", "B"),
        ("AB", None),
        ("A or B", None),
        ("A, B", None),
        ("Apple", None),
        ("Both", None),
        ("Bad", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("I am not sure", None),
        ("a good one", None),  # lower-case "a" in a sentence is the article
        ("C", None),
    ],
)
def test_parse_verdict(text: str | None, expected: str | None) -> None:
    assert parse_verdict(text) == expected


def test_judge_prompt_shows_question_passage_and_both_responses() -> None:
    msgs = judge_messages("Q?", "The passage.", "first answer", "second answer")
    assert msgs[0]["role"] == "system" and "judge" in msgs[0]["content"].lower()
    user = msgs[1]["content"]
    for part in ("Q?", "The passage.", "Response A:\nfirst answer", "Response B:\nsecond answer"):
        assert part in user
    assert '"A" or "B"' in JUDGE_INSTRUCTION


def _items() -> list[JudgeItem]:
    passage = "Mont Blanc rises 4805 metres above the sea in the Alps."
    return [
        JudgeItem("win", "How high?", passage, candidate="Mont Blanc rises 4805 metres.", baseline="Tall."),
        JudgeItem("lose", "How high?", passage, candidate="Tall.", baseline="It rises 4805 metres in the Alps."),
        JudgeItem("tie", "How high?", passage, candidate="Quite tall.", baseline="Very tall."),
        JudgeItem("bad", "UNPARSEABLE?", passage, candidate="x", baseline="y"),
    ]


def _user(body: dict[str, Any]) -> str:
    return str(body["messages"][-1]["content"])


def test_protocol_both_orders_ties_and_unjudged() -> None:
    seen: list[tuple[str, int]] = []

    def complete(requests: Any, on_result: Any) -> None:
        for i, r in enumerate(requests):
            seen.append((r.messages[-1]["content"][:20], r.attempt))
            on_result(i, scripted_judge_answer(r.messages[-1]["content"]))

    proto = PairwiseProtocol(complete, identity={"j": 1}, params={}, cache=None, max_attempts=3)
    verdicts = proto.judge(_items())
    assert [v.outcome for v in verdicts] == ["win", "lose", "tie", "unjudged"]
    assert (verdicts[0].first, verdicts[0].second) == ("candidate", "candidate")
    assert (verdicts[1].first, verdicts[1].second) == ("baseline", "baseline")
    assert (verdicts[2].first, verdicts[2].second) == ("candidate", "baseline")  # always "A"
    assert verdicts[3].first is None and verdicts[3].second is None
    assert verdicts[3].provenance["answers"] == [["Both are fine"] * 3] * 2
    # 3 judgeable items x 2 orders x 1 attempt + the unparseable item x 2 orders x 3 attempts
    assert proto.calls == 6 + 6
    assert Verdict.combine("candidate", None) == "unjudged"


def _judge(server: FakeServer, cache: JsonlCache | None, **kw: Any) -> OpenAIJudge:
    kw = {"concurrency": 4, **kw}
    opts = Options(base_url=server.url + "/v1", model="judge-4", backoff=0.01, **kw)
    from selflearn.builtin.judges.openai_judge import client_options

    client = ChatClient(client_options(opts), lambda name: "sk-test")
    return OpenAIJudge(opts, client, seed=7, cache=cache)


def test_openai_judge_counts_retries_and_cache(tmp_path: Any) -> None:
    def respond(body: dict[str, Any], i: int) -> str:
        user = _user(body)
        if "FLAKY" in user and body.get("seed") == 7:  # first attempt of each order: chatter
            return "Let me think"
        return scripted_judge_answer(user.replace("FLAKY", ""))

    items = [*_items(), JudgeItem("flaky", "FLAKY?", "Lake Baikal is 1642 metres deep.",
                                  candidate="Baikal is 1642 metres deep.", baseline="No idea.")]
    cache = JsonlCache(str(tmp_path / "judge.jsonl"))
    with FakeServer(openai_handler(respond, model="judge-4")) as server:
        judge = _judge(server, cache)
        verdicts = judge.judge(items)
        outcomes = {v.question_id: v.outcome for v in verdicts}
        assert outcomes == {"win": "win", "lose": "lose", "tie": "tie", "bad": "unjudged", "flaky": "win"}
        flaky = verdicts[-1]
        assert flaky.provenance["answers"] == [["Let me think", "A"], ["Let me think", "B"]]
        # 3 items x 2 + unparseable 2 x 3 attempts + flaky 2 x 2 attempts
        assert len(server.requests) == 6 + 6 + 4
        bodies = [b for _, b, _ in server.requests]
        assert {b["temperature"] for b in bodies} == {0.3} and {b["max_tokens"] for b in bodies} == {3}
        assert {b["seed"] for b in bodies} == {7, 8, 9}  # attempt k sends seed + k
        assert judge.usage["requests"] == 16 and judge.usage["cost_usd"] > 0
        cache.close()
        # a second run over the same cache makes no call and gives the same verdicts
        cache2 = JsonlCache(str(tmp_path / "judge.jsonl"))
        again = _judge(server, cache2).judge(items)
        assert len(server.requests) == 16
        assert [v.to_dict() for v in again] == [v.to_dict() for v in verdicts]


def test_openai_judge_spend_cap_keeps_finished_calls(tmp_path: Any) -> None:
    cache = JsonlCache(str(tmp_path / "judge.jsonl"))
    with FakeServer(openai_handler(lambda b, i: scripted_judge_answer(_user(b)), model="judge-4")) as server:
        # each call costs ~ (prompt words) * $1 -> the cap is hit after the first call
        judge = _judge(server, cache, concurrency=1, price_input_per_mtok=1e6, max_cost_usd=1.0)
        with pytest.raises(BudgetExceededError, match="max_cost_usd"):
            judge.judge(_items())
        made = len(server.requests)
        assert made >= 1
        assert len(cache) == made  # what was paid for is cached
        assert "sk-test" not in json.dumps(judge.identity())


def test_local_judge_through_a_registered_backend(run_dir: str, scripted_plugin: Any) -> None:
    pipe = Pipeline(run_dir=run_dir, backend="echo", judge={"use": "local", "options": {
        "backend": {"use": "scripted", "options": {"model": "my-judge"}}, "max_attempts": 2}},
        plugin_objects=[scripted_plugin], load_entry_points=False)
    judge = pipe.ctx.component("judge")
    assert judge.identity() == {"judge": "local", "backend": {"backend": "scripted", "model": "my-judge"}}
    verdicts = judge.judge(_items())
    assert [v.outcome for v in verdicts] == ["win", "lose", "tie", "unjudged"]
    assert len(verdicts[3].provenance["answers"][0]) == 2
    calls = judge.backend.backend.calls  # CachedBackend -> ScriptedBackend
    assert calls == 6 + 4
    judge.close()
    assert ScriptedBackend_closed() == ["my-judge"]
    pipe.close()
    # a new pipeline over the same run directory answers from the caches
    pipe2 = Pipeline(run_dir=run_dir, backend="echo", judge={"use": "local", "options": {
        "backend": {"use": "scripted", "options": {"model": "my-judge"}}, "max_attempts": 2}},
        plugin_objects=[scripted_plugin], load_entry_points=False)
    judge2 = pipe2.ctx.component("judge")
    assert [v.outcome for v in judge2.judge(_items())] == ["win", "lose", "tie", "unjudged"]
    assert judge2.backend.backend.calls == 0
    pipe2.close()


def test_local_judge_defaults_to_the_pipeline_backend(run_dir: str, scripted_plugin: Any) -> None:
    pipe = Pipeline(run_dir=run_dir, backend="scripted", judge="local",
                    plugin_objects=[scripted_plugin], load_entry_points=False)
    judge = pipe.ctx.component("judge")
    assert judge.backend is pipe.ctx.component("backend")
    assert [v.outcome for v in judge.judge(_items()[:3])] == ["win", "lose", "tie"]
    judge.close()  # must not close the pipeline's backend
    assert ScriptedBackend_closed() == []
    pipe.close()


def ScriptedBackend_closed() -> list[str]:  # noqa: N802 - reads like the attribute it returns
    from tests.evaluation.conftest import ScriptedBackend

    return list(ScriptedBackend.closed)
