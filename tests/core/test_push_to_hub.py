"""``datasets.push_to_hub`` (issue 23): both configs and a dataset card reach the hub in one
commit through huggingface_hub's HfApi, tested against a local stand-in for the hub's HTTP API
on 127.0.0.1 that records what was uploaded; the card has provenance, thresholds, scorer,
counts and the configuration, and no secret; a 500 is retried, a hub that keeps failing is one
clear error without the token."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest

from selflearn import Pipeline
from selflearn.core.errors import StageError
from selflearn.core.stages._export import redact_config
from tests.servers import FakeServer

from .test_dry_run import _config
from .test_rerun import CountingEcho

TOKEN = "hf_test_secret_value_123"
REPO = "someone/selflearn-rows"


@pytest.fixture(autouse=True)
def _online(monkeypatch):
    """The test session runs with HF_HUB_OFFLINE=1; the stand-in hub is on 127.0.0.1."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("SELFLEARN_NO_PROGRESS", "1")


class FakeHub:
    """The hub endpoints HfApi.create_repo and HfApi.create_commit call."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.created: list[dict[str, Any]] = []

    def __call__(self, path: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        if path == "/api/repos/create":
            self.created.append(body)
            return 200, {"url": f"https://huggingface.co/datasets/{body['organization']}/{body['name']}"}, {}
        if path == "/api/validate-yaml":
            return 200, {"errors": [], "warnings": []}, {}
        if path == f"/api/datasets/{REPO}/preupload/main":
            return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                   for f in body["files"]]}, {}
        if path == f"/api/datasets/{REPO}/commit/main":
            for line in body["_raw"].splitlines():
                row = json.loads(line)
                if row["key"] == "file":
                    self.files[row["value"]["path"]] = base64.b64decode(row["value"]["content"])
            oid = "a" * 40
            return 200, {"commitUrl": f"https://huggingface.co/datasets/{REPO}/commit/{oid}",
                         "commitOid": oid, "pullRequestUrl": None}, {}
        return 404, {"error": f"no route {path}"}, {}


def _push_config(tmp_path: Path, url: str) -> dict[str, Any]:
    return _config(tmp_path, CountingEcho([0]), datasets={
        "self_label": "off", "consistency_filter": False, "tau_k": 0.0,
        "push_to_hub": True, "hub_repo": REPO, "hub_endpoint": url,
    })


def test_push_writes_both_configs_and_a_dataset_card(tmp_path, monkeypatch):
    import pyarrow.parquet as pq
    from huggingface_hub import DatasetCard

    hub = FakeHub()
    with FakeServer(hub) as server:
        config = _push_config(tmp_path, server.url)
        summary = Pipeline(config).run(until="datasets")[-1].summary
    assert hub.created == [{"name": "selflearn-rows", "organization": "someone", "visibility": "private",
                            "type": "dataset"}]
    assert summary["sft"]["rows"] > 0  # reading-comprehension rows
    assert set(hub.files) == {"README.md", "dpo/train-00000-of-00001.parquet", "sft/train-00000-of-00001.parquet"}
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, _, h in server.requests)
    run = Path(config["run_dir"])
    pushed = pq.read_table(io.BytesIO(hub.files["dpo/train-00000-of-00001.parquet"]))
    assert pushed.to_pylist() == pq.read_table(run / "dpo_pairs.parquet").to_pylist()
    assert pushed.num_rows == summary["dpo_pairs"] > 0

    text = hub.files["README.md"].decode()
    assert text == (run / "datasets" / "README.md").read_text()
    card = DatasetCard(text)
    assert card.data.configs == [{"config_name": c, "data_files": [{"split": "train", "path": f"{c}/*.parquet"}]}
                                 for c in ("dpo", "sft")]
    assert "selflearn" in card.data.tags
    assert '"tau_k": 0.0' in text and '"knowledge": true' in text  # thresholds and filters
    assert '"scorer": "lexical"' in text  # the scorer's identity
    assert f"| kept questions | {summary['kept_questions']} |" in text
    assert f"| config `dpo` rows | {summary['dpo_pairs']} |" in text
    assert f"| config `sft` rows | {summary['sft']['rows']} |" in text
    assert "knowledge filter removed none" in text  # the stage's notes
    assert "## Configuration" in text and "hub_repo: someone/selflearn-rows" in text
    assert TOKEN not in text and all(TOKEN.encode() not in b for b in hub.files.values())


def test_a_500_is_retried_and_a_failing_hub_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    hub = FakeHub()
    with FakeServer(hub) as server:
        server.faults.append(("status", 500))
        Pipeline(_push_config(tmp_path, server.url)).run(until="datasets")
        assert "README.md" in hub.files
    hub = FakeHub()
    with FakeServer(hub) as server:
        server.faults.extend([("status", 503)] * 10)
        with pytest.raises(StageError) as exc:
            Pipeline(_push_config(tmp_path / "b", server.url)).run(until="datasets")
    message = str(exc.value)
    assert REPO in message and "after 3 attempt(s)" in message and "HF_TOKEN" in message
    assert TOKEN not in message and not hub.files


def test_redact_hides_secret_values_but_keeps_variable_names():
    config = {"judge": {"use": "openai", "options": {"api_key": "sk-123", "api_key_env": "MY_KEY",
                                                     "max_new_tokens": 5}}, "hf_token": "hf_x", "token": None,
              "source": {"options": {"url": "https://user:pw@host/corpus"}}}
    assert redact_config(config) == {
        "judge": {"use": "openai", "options": {"api_key": "[redacted]", "api_key_env": "MY_KEY", "max_new_tokens": 5}},
        "hf_token": "[redacted]", "token": None, "source": {"options": {"url": "https://[redacted]@host/corpus"}}}
