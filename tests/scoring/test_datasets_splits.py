"""``datasets.splits`` naming a split without generations (or without questions) stops with a
message that names the split and the fix, instead of empty datasets."""

from __future__ import annotations

import pytest

from selflearn.core.errors import ConfigError

from .test_stages import run_stages, setup_run


def test_a_split_without_generations_is_named(run_dir: str) -> None:
    # questions.jsonl holds train questions (with generations) and q7 of split "test" (none)
    pipe = setup_run(run_dir, datasets={"splits": ["test"]})
    run_stages(pipe, "scores")
    with pytest.raises(ConfigError) as err:
        run_stages(pipe, "datasets")
    msg = str(err.value)
    assert msg.startswith("datasets.splits: split 'test' has questions but none has generations")
    assert "answered split(s) 'train'" in msg and "add 'test' to generations.splits" in msg
    assert not pipe.store.exists("dpo_pairs.jsonl")


def test_a_split_without_questions_is_named(run_dir: str) -> None:
    pipe = setup_run(run_dir, datasets={"splits": ["train", "validation"]})
    run_stages(pipe, "scores")
    with pytest.raises(ConfigError, match=r"^datasets\.splits: questions.jsonl has no question of "
                                          r"split 'validation' \(it holds split\(s\) 'test', 'train'\)"):
        run_stages(pipe, "datasets")


def test_the_default_split_still_builds_datasets(run_dir: str) -> None:
    pipe = setup_run(run_dir)
    _, summary = run_stages(pipe, "scores", "datasets")
    assert summary["dpo_pairs"] > 0
