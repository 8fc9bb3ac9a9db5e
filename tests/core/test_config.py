"""Configuration errors: each names its config path and says how to fix it."""

from __future__ import annotations

import attrs
import pytest

from selflearn import Pipeline
from selflearn.core.config import load_yaml, parse_slot
from selflearn.core.errors import ArtifactError, ConfigError
from selflearn.core.options import build_options


@attrs.frozen
class Inner:
    depth: int = 1


@attrs.frozen
class Opts:
    name: str
    max_new_tokens: int = 384
    temperature: float = 0.7
    greedy: bool = False
    stop: list[str] = attrs.field(factory=list)
    mode: str | None = None
    inner: Inner = Inner()


def test_options_validation_messages():
    assert build_options(Opts, {"name": "x", "temperature": 1, "stop": ["a"]}) == Opts(
        name="x", temperature=1.0, stop=["a"]
    )
    with pytest.raises(ConfigError, match=r"backend.options.max_new_tokens: expected an integer, got 'ten'"):
        build_options(Opts, {"name": "x", "max_new_tokens": "ten"}, "backend.options")
    with pytest.raises(ConfigError, match=r"backend.options.name: required option missing"):
        build_options(Opts, {}, "backend.options")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) tempreature; valid options are: .*temperature"):
        build_options(Opts, {"name": "x", "tempreature": 1}, "backend.options")
    with pytest.raises(ConfigError, match=r"o.greedy: expected true or false"):
        build_options(Opts, {"name": "x", "greedy": "yes"}, "o")
    with pytest.raises(ConfigError, match=r"o.stop\[1\]: expected a string"):
        build_options(Opts, {"name": "x", "stop": ["a", 3]}, "o")
    with pytest.raises(ConfigError, match=r"o.inner.depth: expected an integer"):
        build_options(Opts, {"name": "x", "inner": {"depth": 1.5}}, "o")
    assert build_options(Opts, {"name": "x", "temperature": "1e-6"}).temperature == 1e-6


def test_malformed_yaml_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("source:\n  use: files\n   options: [\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_yaml(bad)
    top = tmp_path / "list.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_yaml(top)
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml(tmp_path / "missing.yaml")


def test_unknown_top_level_key(run_dir):
    with pytest.raises(ConfigError, match=r"unknown top-level key\(s\) sorce; valid keys are: .*source"):
        Pipeline({"run_dir": run_dir, "sorce": "files"})


def test_slot_shapes():
    assert parse_slot("hf", "backend").name == "hf"
    spec = parse_slot({"use": "hf", "options": {"batch_size": 4}}, "backend")
    assert (spec.name, spec.options) == ("hf", {"batch_size": 4})
    assert parse_slot(None, "judge") is None
    with pytest.raises(ConfigError, match="backend: missing 'use: NAME'"):
        parse_slot({"options": {}}, "backend")
    with pytest.raises(ConfigError, match=r"backend: unknown key\(s\) option"):
        parse_slot({"use": "hf", "option": {}}, "backend")
    with pytest.raises(ConfigError, match="backend.options: expected a mapping"):
        parse_slot({"use": "hf", "options": [1]}, "backend")
    with pytest.raises(ConfigError, match="expected a component name"):
        parse_slot(3, "backend")


def test_wrong_option_type_in_pipeline_is_reported_before_running(run_dir):
    class Src:
        def documents(self):
            raise AssertionError("no stage may run before the configuration is valid")

    p = Pipeline(run_dir=run_dir, source=Src(), question_generator={"use": "template", "options": {"bogus": 1}})
    with pytest.raises(ConfigError) as err:
        p.run(until="questions")
    assert err.value.path == "question_generator.options"
    p = Pipeline(run_dir=run_dir, source=Src(), backend={"use": "echo", "options": {"sample_words": "many"}})
    with pytest.raises(ConfigError, match=r"backend.options.sample_words: expected an integer, got 'many'"):
        p.run()


def test_stage_section_validation(run_dir):
    with pytest.raises(ConfigError, match=r"documents.limit: expected an integer"):
        Pipeline(run_dir=run_dir, documents={"limit": "many"})
    with pytest.raises(ConfigError, match=r"documents: unknown option"):
        Pipeline(run_dir=run_dir, documents={"limt": 3})


def test_general_keys_validation(run_dir):
    with pytest.raises(ConfigError, match="seed: expected an integer"):
        Pipeline(run_dir=run_dir, seed="x")
    with pytest.raises(ConfigError, match="plugins.disable"):
        Pipeline(run_dir=run_dir, plugins={"disable": "x"})
    with pytest.raises(ConfigError, match="plugins"):
        Pipeline(run_dir=run_dir, plugins={"enable": ["x"]})


def test_unwritable_run_dir(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    from selflearn.core.store import ArtifactStore

    store = ArtifactStore(str(ro / "run"))
    import os

    if os.geteuid() == 0:  # root ignores permissions: use a path under a file instead
        blocker = tmp_path / "file"
        blocker.write_text("x")
        store = ArtifactStore(str(blocker / "run"))
    with pytest.raises(ArtifactError, match="is not writable"):
        store.ensure_writable()


def test_ready_object_must_satisfy_protocol(run_dir):
    class NotASource:
        pass

    with pytest.raises(ConfigError, match="does not satisfy the knowledge source protocol"):
        Pipeline(run_dir=run_dir, source=NotASource()).run(until="documents")
