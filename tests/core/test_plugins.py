"""Plugin discovery through entry points, with faked distributions on sys.path."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selflearn import Pipeline
from selflearn.core.errors import ConfigError, PluginError, UnknownComponentError
from selflearn.core.plugins import PluginHost
from selflearn.plugins import hookimpl

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
    assert all(i.name.startswith("selflearn.builtin.") and i.status == "loaded" for i in host.infos)
    nli = next(i for i in host.infos if i.name == "selflearn.builtin.scorers.nli")
    assert nli.hooks == ("register_scorers",)
    assert host.registry.get("scorer", "selfcheck-nli").provider == nli.name


@pytest.mark.hooks('register_knowledge_sources')
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
    assert len(info) == 1 and info[0].status == "failed" and "bad hook" in info[0].error


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
    with pytest.raises(PluginError, match="selflearn.builtin.sources.files") as err:
        PluginHost()
    assert "replace=True" in str(err.value)


def test_in_process_plugin_object(run_dir):
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


def _install_example(tmp_path: Path) -> Path:
    """pip-install examples/plugin-hello into ``tmp_path/site`` from a copy of its folder:
    setuptools builds in the source folder (build/, *.egg-info), which two tests running at
    once (pytest -n) would share."""
    source = tmp_path / "plugin-hello"
    example = Path(__file__).resolve().parents[2] / "examples" / "plugin-hello"
    shutil.copytree(example, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(source)],
        check=True,
    )
    return target


def test_example_plugin_package_pip_installed(tmp_path, run_dir):
    """The example package in examples/plugin-hello, pip-installed, is discovered and used."""
    target = _install_example(tmp_path)
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


def test_example_plugin_passes_its_own_contract_tests(tmp_path):
    """examples/plugin-hello's own test suite (selflearn.plugins.testing's contract checks of
    its source and its evaluator), run against the pip-installed package as its author would."""
    repo = Path(__file__).resolve().parents[2]
    example = repo / "examples" / "plugin-hello"
    target = _install_example(tmp_path)
    env = {"PYTHONPATH": f"{target}{os.pathsep}{repo}", "PATH": "/usr/bin:/bin", "SELFLEARN_NO_PROGRESS": "1",
           "HOME": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(example / "tests")],
        cwd=tmp_path, env=env, capture_output=True, text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 passed" in proc.stdout
    assert str(target) in subprocess.run(  # the installed copy was tested, not the source folder
        [sys.executable, "-c", "import selflearn_hello; print(selflearn_hello.__file__)"],
        cwd=tmp_path, env=env, capture_output=True, text=True, check=True).stdout


def test_config_error_type_is_config_error():
    assert issubclass(UnknownComponentError, ConfigError)


# -- the pluggy way: argument handling, pending hooks, attribution ----------------------------

FEWER_ARGS_PLUGIN = '''
from selflearn.plugins import hookimpl

@hookimpl
def on_run_start():
    import os
    open(os.environ["FEWER_ARGS_LOG"], "a").write("started\\n")

@hookimpl
def register_scorers(register):
    register("fewer", "selflearn.builtin.scorers.lexical:create")
'''


@pytest.mark.hooks('on_run_start', 'register_scorers')
def test_hook_implementation_with_fewer_arguments_works(plugin_path, run_dir, monkeypatch):
    """pluggy passes an implementation only the arguments it declares (how specs grow)."""
    make_dist(plugin_path, "fewer-dist", "fewer", "fewer_mod", FEWER_ARGS_PLUGIN)
    log_file = plugin_path / "log.txt"
    monkeypatch.setenv("FEWER_ARGS_LOG", str(log_file))
    host = PluginHost()
    infos = [i for i in host.infos if i.name == "fewer"]
    assert [(i.status, i.hooks) for i in infos] == [("loaded", ("on_run_start", "register_scorers"))]
    assert host.registry.get("scorer", "fewer").provider == "fewer"
    Pipeline(run_dir=run_dir, source="wikipedia-offline", documents={"limit": 2}).run(until="documents")
    assert log_file.read_text() == "started\n"


MISSPELT_PLUGIN = '''
from selflearn.plugins import hookimpl

@hookimpl
def register_scorer(register):
    register("never", "selflearn.builtin.scorers.lexical:create")
'''


def test_misspelt_hook_is_reported_naming_plugin_and_hook(plugin_path, caplog, capsys):
    make_dist(plugin_path, "typo-dist", "typo", "typo_mod", MISSPELT_PLUGIN)
    with caplog.at_level("WARNING", logger="selflearn.plugins"):
        host = PluginHost()
    info = next(i for i in host.infos if i.name == "typo")
    assert info.status == "loaded" and len(info.warnings) == 1
    assert "'typo'" in info.warnings[0] and "'register_scorer'" in info.warnings[0]
    assert "did you mean 'register_scorers'" in info.warnings[0]
    assert info.warnings[0] in caplog.text
    with pytest.raises(PluginError, match="'typo' implements 'register_scorer'"):
        PluginHost(strict=True)
    from selflearn.cli import main

    assert main(["plugins", "--json"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "typo")
    assert row["status"] == "loaded" and row["warnings"] == list(info.warnings)
    assert main(["plugins"]) == 0
    assert "    warning: plugin 'typo' implements 'register_scorer'" in capsys.readouterr().out


def test_optional_unknown_hook_is_not_reported(plugin_path):
    code = "from selflearn.plugins import hookimpl\n@hookimpl(optionalhook=True)\ndef on_future_event():\n    pass\n"
    make_dist(plugin_path, "opt-dist", "opt", "opt_mod", code)
    assert next(i for i in PluginHost(strict=True).infos if i.name == "opt").warnings == ()


def test_disable_a_builtin(run_dir):
    host = PluginHost(disable=["selflearn.builtin.backends.tgi"], load_entry_points=False)
    assert "tgi" not in host.registry.names("inference_backend")
    assert "hf" in host.registry.names("inference_backend")
    assert next(i for i in host.infos if i.name.endswith("backends.tgi")).status == "disabled"
    with pytest.raises(UnknownComponentError, match="valid names are"):
        Pipeline(run_dir=run_dir, source="wikipedia-offline",
                 plugins={"disable": ["selflearn.builtin.sources.wikipedia_offline"]},
                 load_entry_points=False).run(until="documents")


REPLACING_PLUGIN = '''
from selflearn.plugins import hookimpl

class Src:
    def __init__(self, options, context):
        pass
    def documents(self):
        from selflearn import Document
        yield Document(id="mine", title="Mine", text="A replacement document.")

@hookimpl
def register_knowledge_sources(register):
    register("files", "{module}:Src", description="our files", replace={replace})
'''


def test_replace_builtin_explicitly(plugin_path, run_dir, capsys):
    make_dist(plugin_path, "rep-dist", "rep", "rep_mod",
              REPLACING_PLUGIN.format(module="rep_mod", replace=True))
    spec = PluginHost().registry.get("knowledge_source", "files")
    assert (spec.provider, spec.replaces) == ("rep", "selflearn.builtin.sources.files")
    from selflearn.cli import main

    assert main(["components", "--json", "--kind", "knowledge_source"]) == 0
    row = next(r for r in json.loads(capsys.readouterr().out) if r["name"] == "files")
    assert (row["provider"], row["replaces"]) == ("rep", "selflearn.builtin.sources.files")
    Pipeline(run_dir=run_dir, source="files").run(until="documents")
    assert '"id": "mine"' in Path(run_dir, "documents.jsonl").read_text()


def test_two_replacements_of_one_name_name_both(plugin_path):
    for p in ("ra", "rb"):
        make_dist(plugin_path, f"{p}-dist", p, f"{p}_mod", REPLACING_PLUGIN.format(module=f"{p}_mod", replace=True))
    with pytest.raises(PluginError, match="both ask to replace it") as err:
        PluginHost()
    assert "'ra'" in str(err.value) and "'rb'" in str(err.value)


def test_replacement_wins_whatever_the_load_order():
    from selflearn.core.registry import ComponentSpec, Registry

    for order in ((False, True), (True, False)):
        registry = Registry()
        for replace in order:
            registry.add(ComponentSpec("scorer", "x", "m:f", provider=f"p{int(replace)}", replace=replace))
        assert registry.get("scorer", "x").provider == "p1"
        assert registry.get("scorer", "x").replaces == "p0"


def test_plugin_failing_half_way_registers_nothing(plugin_path):
    code = '''
from selflearn.plugins import hookimpl

@hookimpl
def register_knowledge_sources(register):
    register("half", "m:f")

@hookimpl
def register_scorers(register):
    raise RuntimeError("second hook fails")

@hookimpl
def on_run_start(run):
    raise AssertionError("a failed plugin's lifecycle hook must not run")
'''
    make_dist(plugin_path, "half-dist", "half", "half_mod", code)
    host = PluginHost()
    assert "half" not in host.registry.names("knowledge_source")
    assert [i.status for i in host.infos if i.name == "half"] == ["failed"]
    host.lifecycle.run_start(_run_info())  # does not raise: the plugin was unregistered


REGISTRATION_HOOKS = ["register_knowledge_sources", "register_chunkers", "register_question_generators",
                      "register_inference_backends", "register_scorers", "register_trainers",
                      "register_judges", "register_evaluators"]
#: kind -> a module of selflearn.builtin whose create/Options a third party re-registers
THIRD_PARTY = {"knowledge_source": "sources.files", "chunker": "chunking.sentences",
               "question_generator": "questions.template", "inference_backend": "backends.echo",
               "scorer": "scorers.lexical", "trainer": "trainers.sft", "judge": "judges.local",
               "evaluator": "evaluation.measures.qa"}


class EveryKindPlugin:
    """Registers one component of every kind through each registration hook."""

    __name__ = "every-kind"

    def _register(self, register, kind):
        module = f"selflearn.builtin.{THIRD_PARTY[kind]}"
        options = None if kind == "evaluator" else f"{module}:Options"
        register(f"tp-{kind}", f"{module}:create", options=options, description=f"third-party {kind}")

    @hookimpl
    def register_knowledge_sources(self, register):
        self._register(register, "knowledge_source")

    @hookimpl
    def register_chunkers(self, register):
        self._register(register, "chunker")

    @hookimpl
    def register_question_generators(self, register):
        self._register(register, "question_generator")

    @hookimpl
    def register_inference_backends(self, register):
        self._register(register, "inference_backend")

    @hookimpl
    def register_scorers(self, register):
        self._register(register, "scorer")

    @hookimpl
    def register_trainers(self, register):
        self._register(register, "trainer")

    @hookimpl
    def register_judges(self, register):
        self._register(register, "judge")

    @hookimpl
    def register_evaluators(self, register):
        self._register(register, "evaluator")


@pytest.mark.hooks("register_knowledge_sources", "register_chunkers", "register_question_generators",
                   "register_inference_backends", "register_scorers", "register_trainers",
                   "register_judges", "register_evaluators")
def test_every_registration_hook_contributes_a_buildable_component(run_dir):
    from selflearn.core.hookspecs import REGISTRATION_HOOKS as SPEC

    assert sorted(SPEC.values()) == sorted(REGISTRATION_HOOKS) and set(SPEC) == set(THIRD_PARTY)
    pipe = Pipeline(run_dir=run_dir, backend="echo", plugin_objects=[EveryKindPlugin()], load_entry_points=False)
    info = next(i for i in pipe.host.infos if i.name == "every-kind")
    assert info.hooks == tuple(sorted(REGISTRATION_HOOKS))
    for kind in THIRD_PARTY:
        spec = pipe.host.registry.get(kind, f"tp-{kind}")
        assert (spec.provider, spec.description) == ("every-kind", f"third-party {kind}")
        options = {"url": run_dir} if kind == "knowledge_source" else None
        built = pipe.ctx.build(kind, {"use": f"tp-{kind}", "options": options} if options else f"tp-{kind}", kind)
        assert type(built).__module__ == f"selflearn.builtin.{THIRD_PARTY[kind]}"
    pipe.close()


# -- lifecycle hooks and secrets ---------------------------------------------------------------


def _run_info():
    from selflearn.core.hookspecs import RunInfo

    return RunInfo("/tmp/x", {}, ("documents",))


class _Recorder:
    def __init__(self):
        self.calls = []

    @hookimpl
    def on_run_start(self, run):
        self.calls.append(("start", run.stages))

    @hookimpl
    def on_stage_end(self, run, stage, summary):
        self.calls.append(("stage", stage, sorted(summary)))

    @hookimpl
    def on_run_end(self, run, summary):
        self.calls.append(("end", sorted(summary)))


@pytest.mark.hooks('on_run_start', 'on_stage_end', 'on_run_end')
def test_lifecycle_hooks_called_in_order_with_summaries(run_dir):
    rec = _Recorder()
    pipe = Pipeline(run_dir=run_dir, source="wikipedia-offline", documents={"limit": 2},
                    plugin_objects=[rec], load_entry_points=False)
    pipe.run(until="passages")
    assert rec.calls[0] == ("start", ("documents", "passages"))
    assert [c[1] for c in rec.calls[1:3]] == ["documents", "passages"]
    assert rec.calls[1][2] and rec.calls[2][2]  # each stage's own (non-empty) summary
    assert rec.calls[3] == ("end", ["documents", "passages"])
    rec.calls.clear()
    Pipeline(run_dir=run_dir, source="wikipedia-offline", documents={"limit": 2},
             plugin_objects=[rec], load_entry_points=False).run(until="passages")
    assert [c[0] for c in rec.calls] == ["start", "stage", "stage", "end"]  # skipped stages too


@pytest.mark.hooks('on_stage_end')
def test_lifecycle_hook_error_names_the_plugin(run_dir):
    class Broken:
        __name__ = "broken-tracker"

        @hookimpl
        def on_stage_end(self, stage):
            raise ValueError(f"tracker down after {stage}")

    pipe = Pipeline(run_dir=run_dir, source="wikipedia-offline", documents={"limit": 1},
                    plugin_objects=[Broken()], load_entry_points=False)
    with pytest.raises(PluginError, match="'broken-tracker' failed in its on_stage_end hook") as err:
        pipe.run(until="documents")
    assert "tracker down after documents" in str(err.value)


@pytest.mark.hooks('resolve_secret')
def test_resolve_secret_first_plugin_wins_then_environment(monkeypatch):
    class Vault:
        __name__ = "vault"

        @hookimpl
        def resolve_secret(self, name):
            return "from-vault" if name == "VAULT_KEY" else None

    class Bad:
        __name__ = "bad-vault"

        @hookimpl
        def resolve_secret(self, name):
            return 123 if name == "BAD_KEY" else None

    monkeypatch.setenv("VAULT_KEY", "from-env")
    monkeypatch.setenv("ENV_ONLY", "env-value")
    monkeypatch.delenv("NOWHERE", raising=False)
    host = PluginHost(extra_plugins=[Vault(), Bad()], load_entry_points=False)
    assert host.resolve_secret("VAULT_KEY") == "from-vault"
    assert host.resolve_secret("ENV_ONLY") == "env-value"
    assert host.resolve_secret("NOWHERE") is None
    with pytest.raises(PluginError, match="must return the secret as a string"):
        host.resolve_secret("BAD_KEY")
    assert PluginHost(load_entry_points=False).resolve_secret("VAULT_KEY") == "from-env"
