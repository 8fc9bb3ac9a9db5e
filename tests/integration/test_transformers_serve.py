"""The real ``transformers serve`` (transformers' own OpenAI-compatible server, a subprocess on
127.0.0.1) serving tiny random Llamas, with docs/servers.md's recipe.

It is the issue's acceptance run: a model whose generation config does not sample makes
``transformers serve`` answer every sample with the greedy text, and the generations stage
flags it (an error in strict mode) instead of scoring K copies of y*. The same model with
``do_sample: true`` in its generation config gives varied samples. The server needs fastapi and
uvicorn (transformers' ``serving`` extra; in selflearn's ``test`` extra).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from selflearn import Pipeline
from selflearn.core.errors import StageError
from tests.integration.test_servers import config, recipes

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow  # a real server process: about a minute and a half on 2 CPU cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def serve() -> Iterator[str]:
    """``transformers serve`` on a free port (models are loaded on first request)."""
    port = _free_port()
    cli = [sys.executable, "-c", "import sys; from transformers.cli.transformers import main; sys.argv[0] = 'transformers'; main()"]
    proc = subprocess.Popen(
        [*cli, "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    pytest.fail(f"transformers serve did not start: {err[-2000:]}")
                time.sleep(0.5)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _model(tiny_llama: str, folder: Path, do_sample: bool) -> str:
    """A copy of the tiny model whose generation config samples or not."""
    shutil.copytree(tiny_llama, folder)
    gen = json.loads((folder / "generation_config.json").read_text())
    gen["do_sample"] = do_sample
    (folder / "generation_config.json").write_text(json.dumps(gen))
    return str(folder)


def _run(serve: str, model: str, run_dir: Path, **generations: object) -> Pipeline:
    recipe = recipes()["transformers-serve"]
    recipe["generations"].update({"k": 3, **generations})
    for call in ("reference", "with_passage", "without_passage"):
        recipe["generations"][call] = {"max_new_tokens": 6}
    cfg = config(run_dir, serve, recipe)
    cfg["backend"]["options"]["model"] = model
    cfg["questions"] = {"limit": 2, "test_questions": False}
    return Pipeline(cfg, load_entry_points=False)


def test_a_model_that_does_not_sample_is_flagged(serve: str, tiny_llama: str, tmp_path: Path) -> None:
    model = _model(tiny_llama, tmp_path / "greedy-model", do_sample=False)
    pipe = _run(serve, model, tmp_path / "run")
    with pytest.raises(StageError, match=r"100% of the \d+ questions got with_passage samples.*do_sample"):
        pipe.run(until="generations")  # strict mode: the recipe's run stops
    pipe.close()
    assert not (tmp_path / "run" / "generations.jsonl").exists()


def test_a_model_that_samples_passes_and_logprobs_are_refused(
    serve: str, tiny_llama: str, tmp_path: Path
) -> None:
    model = _model(tiny_llama, tmp_path / "sampling-model", do_sample=True)
    pipe = _run(serve, model, tmp_path / "run")
    pipe.run(until="generations")
    pipe.close()
    summary = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]["generations"]["summary"]
    assert summary["sample_diversity"]["with_passage"]["all_identical"] < 0.5
    pipe = _run(serve, model, tmp_path / "run-logprobs", logprobs=True)
    with pytest.raises(StageError, match=r"generations.logprobs is true, but the backend .* returned no log-probabilities"):
        pipe.run(until="generations")
    pipe.close()
