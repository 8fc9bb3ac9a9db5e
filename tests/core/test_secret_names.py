"""A key pasted where the NAME of its environment variable belongs (``api_key_env: sk-...``)
is refused with a message saying what the option expects, never repeating the value, before
anything is written; credentials in server URLs and in error bodies are redacted."""

from __future__ import annotations

from pathlib import Path

import pytest

from selflearn import Pipeline
from selflearn.builtin.openai_client import ChatClient, ClientOptions
from selflearn.cli import main
from selflearn.core.errors import AuthenticationError, ConfigError
from selflearn.core.options import build_options, looks_like_secret
from selflearn.core.redact import safe_url
from tests.servers import FakeServer

KEY = "sk-proj-Q8xv2LmN0pRtY7uWzA3bC5dE9fG1hJ4k"
KEYS = [KEY, "hf_AbCdEfGhIjKlMnOpQrStUv", "Bearer abc.def", "AKIAIOSFODNN7EXAMPLE",
        "a8F3kLm92QxZp0Wv7Rt5Yu1Io", "0123456789abcdef0123456789abcdef", "my key=value"]
NAMES = ["OPENAI_API_KEY", "HF_TOKEN", "TGI_TOKEN", "ASIA_KEY", "openai/prod", "vault:team.key",
         "AZURE_OPENAI_API_KEY_2"]


@pytest.mark.parametrize("value", KEYS)
def test_values_that_look_like_keys_are_recognised(value: str) -> None:
    why = looks_like_secret(value)
    assert why and value not in why


@pytest.mark.parametrize("value", NAMES)
def test_names_of_variables_and_secrets_are_accepted(value: str) -> None:
    assert looks_like_secret(value) is None
    assert build_options(ClientOptions, {"api_key_env": value}).api_key_env == value


@pytest.mark.parametrize("slot,use", [("question_generator", "openai"), ("backend", "openai"),
                                      ("backend", "tgi"), ("judge", "openai")])
def test_every_http_component_refuses_a_key_in_api_key_env(slot: str, use: str) -> None:
    with pytest.raises(ConfigError) as err:
        Pipeline({"run_dir": "memory://secret-names", slot: {"use": use, "options": {"api_key_env": KEY}}})
    msg = str(err.value)
    assert msg.startswith(f"{slot}.options.api_key_env: expects the NAME of an environment variable")
    assert KEY not in msg and KEY[8:] not in msg and "'sk-'" in msg
    # the options class refuses it too (components built from Python)
    with pytest.raises(ConfigError, match=r"^o\.api_key_env: expects the NAME") as err2:
        build_options(ClientOptions, {"api_key_env": KEY}, "o")
    assert KEY not in str(err2.value)


def test_cli_refuses_it_before_writing_anything(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = tmp_path / "run"
    cfg = tmp_path / "c.yaml"
    # an unused slot (the judge is not run until evaluate) is checked too: the manifest
    # records every slot's options
    cfg.write_text(f"run_dir: {run_dir}\njudge: {{use: openai, options: {{api_key_env: '{KEY}'}}}}\n")
    assert main(["run", str(cfg), "--until", "documents"]) == 2
    err = capsys.readouterr().err
    assert "judge.options.api_key_env" in err and "Traceback" not in err and KEY not in err
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p != cfg]
    assert not (run_dir / "manifest.json").exists()
    assert all(KEY not in p.read_text(errors="replace") for p in written)


def test_urls_and_401_bodies_never_show_credentials() -> None:
    url = f"https://alice:{KEY}@proxy.example/v1?api_key={KEY}&region=eu"
    shown = safe_url(url)
    assert KEY not in shown and "proxy.example/v1" in shown and "region=eu" in shown
    body = b'{"error": {"message": "Incorrect API key provided: sk-proj-********abcd. See ..."}}'

    def refuse(path: str, req: dict) -> tuple[int, bytes, dict[str, str]]:
        return 401, body, {}

    with FakeServer(refuse) as server:
        host = server.url.split("//", 1)[1]
        opts = ClientOptions(base_url=f"http://user:{KEY}@{host}/v1", model="m", api_key_env="MY_KEY")
        client = ChatClient(opts, lambda name: KEY)
        with pytest.raises(AuthenticationError) as err:
            client.chat([{"role": "user", "content": "x"}])
    msg = str(err.value)
    assert "MY_KEY" in msg and "Incorrect API key provided" in msg
    assert KEY not in msg and "sk-proj-****" not in msg


def test_the_manifest_never_records_credentials_of_a_url(tmp_path: Path) -> None:
    url = f"http://user:{KEY}@127.0.0.1:9/v1?api_key={KEY}"
    pipe = Pipeline({"run_dir": str(tmp_path / "run"), "source": {"use": "files", "options": {"url": str(tmp_path)}},
                     "judge": {"use": "openai", "options": {"base_url": url}}})
    described = pipe.describe()
    assert KEY not in str(described)
    assert described["judge"]["options"]["base_url"] == "http://[redacted]@127.0.0.1:9/v1?api_key=[redacted]"
    (tmp_path / "a.txt").write_text("Alpha is a letter. " * 20)
    pipe.run(until="documents")
    assert KEY not in (tmp_path / "run" / "manifest.json").read_text()
