"""Plugin discovery through entry points, with faked distributions on sys.path."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selflearn import Pipeline
from selflearn.core.errors import ConfigError, PluginError, UnknownComponentError
from selflearn.core.plugins import PluginHost

SOURCE_PLUGIN = '''
from selflearn.plugins import hookimpl

class Src:
    def __init__(self, options, context):
        self.n = options.n if options else 2
    def documents(self):
        from selflearn import Document
        for i in range(self.n):
            yield Document(id=f"d{{i}}", title=f"Doc {{i}}", text=f"Text number {{i}}.")

@hookimpl
def register_knowledge_sources(register):
    register("{name}", "{module}:Src", description="fake source {name}")
'''


def make_dist(root: Path, dist: str, ep_name: str, module: str, code: str) -> None:
    (root / f"{module}.py").write_text(code)
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[selflearn]\n{ep_name} = {module}\n")


@pytest.fixture()
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("SELFLEARN_DISABLE_PLUGINS", raising=False)
    monkeypatch.delenv("SELFLEARN_STRICT_PLUGINS", raising=False)
    return tmp_path


def test_builtins_cover_all_kinds():
    host = PluginHost(load_entry_points=False)
    kinds = {s.kind for s in host.components()}
    assert {"knowledge_source", "question_generator", "inference_backend", "scorer", "trainer", "judge"} <= kinds
    assert host.infos[0].name == "selflearn.builtin" and host.infos[0].status == "loaded"
    assert "register_scorers" in host.infos[0].hooks


def test_entry_point_plugin_is_discovered_and_used(plugin_path, run_dir):
    make_dist(plugin_path, "fake-src", "fakesrc", "fake_src_mod", SOURCE_PLUGIN.format(name="fake", module="fake_src_mod"))
    host = PluginHost()
    spec = host.registry.get("knowledge_source", "fake")
    assert spec.provider == "fakesrc"
    info = next(i for i in host.infos if i.name == "fakesrc")
    assert (info.distribution, info.version, info.status) == ("fake-src", "1.2.3", "loaded")
    Pipeline(run_dir=run_dir, source="fake").run(until="documents")
    rows = [json.loads(line) for line in Path(run_dir, "documents.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ["d0", "d1"]


def test_broken_plugin_is_reported_and_skipped(plugin_path):
    make_dist(plugin_path, "broken-dist", "broken", "broken_mod", "raise RuntimeError('boom at import')\n")
    host = PluginHost()
    info = next(i for i in host.infos if i.name == "broken")
    assert info.status == "failed" and "boom at import" in info.error and info.distribution == "broken-dist"
    with pytest.raises(UnknownComponentError) as err:
        host.registry.get("knowledge_source", "nope")
    assert "broken" in str(err.value) and "boom at import" in str(err.value)


def test_strict_mode_raises_on_broken_plugin(plugin_path, monkeypatch):
    make_dist(plugin_path, "broken-dist", "broken", "broken_mod2", "raise RuntimeError('boom')\n")
    with pytest.raises(PluginError, match="broken-dist"):
        PluginHost(strict=True)
    monkeypatch.setenv("SELFLEARN_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        PluginHost()


def test_plugin_raising_in_registration_hook_is_skipped(plugin_path):
    code = "from selflearn.plugins import hookimpl\n@hookimpl\ndef register_scorers(register):\n    raise ValueError('bad hook')\n"
    make_dist(plugin_path, "badhook-dist", "badhook", "badhook_mod", code)
    host = PluginHost()
    info = [i for i in host.infos if i.name == "badhook"]
    assert any(i.status == "failed" and "bad hook" in i.error for i in info)


def test_disable_by_config_and_env(plugin_path, monkeypatch, run_dir):
    make_dist(plugin_path, "fake-src", "fakesrc", "fake_src_mod3", SOURCE_PLUGIN.format(name="fake", module="fake_src_mod3"))
    host = PluginHost(disable=["fakesrc"])
    assert "fake" not in host.registry.names("knowledge_source")
    assert next(i for i in host.infos if i.name == "fakesrc").status == "disabled"
    monkeypatch.setenv("SELFLEARN_DISABLE_PLUGINS", "other, fakesrc")
    assert "fake" not in PluginHost().registry.names("knowledge_source")
    with pytest.raises(UnknownComponentError, match="valid names are"):
        Pipeline(run_dir=run_dir, source="fake", plugins={"disable": ["fakesrc"]}).run(until="documents")


def test_duplicate_component_names_an_error_naming_both(plugin_path):
    make_dist(plugin_path, "dup-a", "dupa", "dup_a_mod", SOURCE_PLUGIN.format(name="same", module="dup_a_mod"))
    make_dist(plugin_path, "dup-b", "dupb", "dup_b_mod", SOURCE_PLUGIN.format(name="same", module="dup_b_mod"))
    with pytest.raises(PluginError) as err:
        PluginHost()
    assert "'dupa'" in str(err.value) and "'dupb'" in str(err.value)


def test_duplicate_of_builtin_name(plugin_path):
    make_dist(plugin_path, "dup-files", "dupfiles", "dup_files_mod", SOURCE_PLUGIN.format(name="files", module="dup_files_mod"))
    with pytest.raises(PluginError, match="selflearn.builtin"):
        PluginHost()


def test_in_process_plugin_object(run_dir):
    from selflearn.plugins import hookimpl

    class MyPlugin:
        @hookimpl
        def register_knowledge_sources(self, register):
            register("inproc", lambda options, ctx: _ListSource(), description="in process")

    Pipeline(run_dir=run_dir, source="inproc", plugin_objects=[MyPlugin()], load_entry_points=False).run(until="documents")
    assert "Hello world" in Path(run_dir, "documents.jsonl").read_text()


class _ListSource:
    def documents(self):
        from selflearn import Document

        yield Document(id="a", title="A", text="Hello world, this is a document.")


def test_unknown_component_suggests_close_name(run_dir):
    with pytest.raises(UnknownComponentError) as err:
        Pipeline(run_dir=run_dir, source="wikipedia-ofline").run(until="documents")
    assert "did you mean 'wikipedia-offline'" in str(err.value)
    assert err.value.path == "source"


def test_example_plugin_package_pip_installed(tmp_path, run_dir):
    """The example package in examples/plugin-hello, pip-installed, is discovered and used."""
    repo = Path(__file__).resolve().parents[2]
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(repo / "examples" / "plugin-hello")],
        check=True,
    )
    faqs = tmp_path / "faqs"
    faqs.mkdir()
    (faqs / "billing.yaml").write_text('- {question: "How do I pay?", answer: By card or transfer.}\n')
    (faqs / "shipping.yaml").write_text('- {question: "When does it ship?", answer: Within two days.}\n')
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent(f"""
        run_dir: {run_dir}
        source: {{use: faq, options: {{folder: {faqs}, test_files: [billing]}}}}
    """))
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "SELFLEARN_NO_PROGRESS": "1"}
    listing = subprocess.run(
        [sys.executable, "-m", "selflearn", "components", "--json"], env=env, capture_output=True, text=True, check=True
    )
    assert {"kind": "knowledge_source", "name": "faq", "provider": "hello"}.items() <= next(
        r for r in json.loads(listing.stdout) if r["name"] == "faq"
    ).items()
    proc = subprocess.run(
        [sys.executable, "-m", "selflearn", "run", str(config), "--until", "documents"], env=env,
        capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in Path(run_dir, "documents.jsonl").read_text().splitlines()]
    assert [(r["id"], r["title"], r["metadata"]["split"]) for r in rows] == [
        ("faq:billing", "Billing", "test"),
        ("faq:shipping", "Shipping", "train"),
    ]
    assert "By card or transfer." in rows[0]["text"]


def test_config_error_type_is_config_error():
    assert issubclass(UnknownComponentError, ConfigError)
