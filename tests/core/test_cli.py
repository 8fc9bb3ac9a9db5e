"""The command line: listings, exit codes, and that ``import selflearn`` stays light."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from selflearn.cli import main

KINDS = {"knowledge_source", "question_generator", "inference_backend", "scorer", "trainer", "judge"}


def test_import_does_not_import_torch(tmp_path):
    code = (
        "import sys, selflearn, selflearn.plugins; from selflearn import Pipeline, Document, hookimpl;"
        "from selflearn.core.plugins import PluginHost; PluginHost().components();"
        "Pipeline(execution={'engine': 'ray'}, load_entry_points=False).plan(until='passages');"
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets', 'openai', 'ray') if m in sys.modules];"
        "print(heavy)"
    )
    # in tmp_path: the plan's default run_dir (runs/selflearn) keeps a source cache
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]"


def test_components_json_lists_all_six_kinds(capsys):
    assert main(["components", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["kind"] for r in rows} >= KINDS
    assert all(r["provider"] and r["description"] for r in rows)
    names = {(r["kind"], r["name"]) for r in rows}
    assert {("knowledge_source", "wikipedia-offline"), ("inference_backend", "tgi"),
            ("scorer", "selfcheck-nli"), ("trainer", "trl-dpo"), ("judge", "openai")} <= names


def test_plugins_listing(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    judge = next(r for r in rows if r["name"] == "selflearn.builtin.judges.openai_judge")
    assert judge["status"] == "loaded" and judge["hooks"] == ["register_judges"]
    names = [r["name"] for r in rows]
    assert len(names) == len(set(names)), "a plugin is listed more than once"
    assert main(["plugins"]) == 0
    assert "selflearn.builtin.backends.tgi" in capsys.readouterr().out


def test_user_error_exits_2_with_one_paragraph(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("run_dir: x\nsource: [oops\n")
    assert main(["run", str(cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())  # one paragraph, wrapped where the path ends
    assert "malformed YAML" in err and "Traceback" not in err and "--debug" in err


def test_debug_shows_traceback(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path}/r\nsorce: files\n")
    assert main(["--debug", "run", str(cfg)]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_unknown_stage_in_until(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path}/r\n")
    assert main(["run", str(cfg), "--until", "everything"]) == 2
    assert "unknown stage 'everything'" in capsys.readouterr().err


def test_argparse_usage_error():
    with pytest.raises(SystemExit) as exc:
        main(["frobnicate"])
    assert exc.value.code == 2
