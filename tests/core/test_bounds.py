"""Declared ranges of numeric options: every int/float option of every registered component and
every stage section declares one (a new option without one fails here), its default lies in it,
and a value just outside each bound is a ConfigError naming the dotted path."""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from selflearn import Pipeline
from selflearn.cli import main
from selflearn.core.errors import ConfigError
from selflearn.core.options import bounded, bounds_of, build_options
from selflearn.core.pipeline import STAGE_ORDER
from selflearn.core.plugins import PluginHost
from selflearn.core.registry import load_object


def _numeric(tp: Any) -> bool:
    """Whether an annotation admits an int or a float (bool is not a number here)."""
    if tp in (int, float):
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType, list, tuple):
        return any(_numeric(a) for a in typing.get_args(tp))
    return False


def _is_float(tp: Any) -> bool:
    return tp is float or any(_is_float(a) for a in typing.get_args(tp))


def _fields(cls: type, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any, Any]]:
    """(path inside the options, attrs field, annotation) of every numeric field, nested
    option classes included."""
    hints = typing.get_type_hints(cls)
    for field in attrs.fields(cls):
        tp = hints.get(field.name)
        if _numeric(tp):
            yield (*prefix, field.name), field, tp
        for arg in (tp, *typing.get_args(tp)):
            if isinstance(arg, type) and attrs.has(arg):
                yield from _fields(arg, (*prefix, field.name))


def _roots() -> list[tuple[str, type]]:
    """(config path, options class) of every stage section and registered component."""
    roots = [(name, load_object(ref, name).options_class) for name, ref in STAGE_ORDER]
    for spec in PluginHost().components():
        cls = spec.load_options_class()
        if cls is not None:
            roots.append((f"{spec.kind}[{spec.name}].options", cls))
    return roots


CASES = [(root, cls, path, field, tp) for root, cls in _roots() for path, field, tp in _fields(cls)]


def _nest(path: tuple[str, ...], value: Any) -> dict[str, Any]:
    out: dict[str, Any] = {path[-1]: value}
    for key in reversed(path[:-1]):
        out = {key: out}
    return out


def _outside(key: str, bound: float, is_float: bool) -> float:
    """A value just outside ``key`` = ``bound``."""
    step = 0.5 if is_float else 1
    return {"ge": bound - step, "gt": bound, "le": bound + step, "lt": bound}[key]


def test_the_table_covers_stages_and_components() -> None:
    roots = {root for root, *_ in CASES}
    assert {"generations", "datasets", "documents"} <= roots
    assert len(CASES) > 150  # every numeric option of every component and stage


@pytest.mark.parametrize("root,cls,path,field,tp", CASES,
                         ids=[f"{r}.{'.'.join(p)}" for r, _, p, _, _ in CASES])
def test_numeric_option_declares_a_range_and_enforces_it(root: str, cls: type, path: tuple[str, ...],
                                                         field: Any, tp: Any) -> None:
    limits = bounds_of(field)
    dotted = f"{root}.{'.'.join(path)}"
    assert limits, f"{dotted} ({tp}) declares no range: use selflearn.core.options.bounded"
    build_options(cls, _nest(path, field.default) if field.default is not None else {}, root)
    for key, bound in limits.items():
        bad = _outside(key, bound, _is_float(tp))
        if not _is_float(tp) and bad != int(bad):
            continue
        with pytest.raises(ConfigError) as err:
            build_options(cls, _nest(path, int(bad) if not _is_float(tp) else bad), root)
        assert err.value.path == dotted
        assert str(err.value).startswith(f"{dotted}: must be ") and repr(bad) in str(err.value)


def test_bounds_of_lists_none_nan_and_the_issues_values() -> None:
    @attrs.frozen
    class Opts:
        xs: list[float] = bounded([0.5], ge=0, le=1)
        n: int | None = bounded(None, ge=1)
        bs: int | str = bounded(8, ge=1)

    assert build_options(Opts, {"n": None, "bs": "auto"}).bs == "auto"
    with pytest.raises(ConfigError, match=r"^o\.xs\[1\]: must be >= 0 and <= 1, got 1.5"):
        build_options(Opts, {"xs": [0.2, 1.5]}, "o")
    with pytest.raises(ConfigError, match="got nan"):
        build_options(Opts, {"xs": [math.nan]}, "o")
    with pytest.raises(TypeError):
        bounded(1)
    bad = {
        "datasets": {"tau_l": 1.5},
        "documents": {"limit": -1},
        "generations": {"k": 10**30},
    }
    for section, values in bad.items():
        with pytest.raises(ConfigError, match=rf"^{section}\.\w+: must be"):
            Pipeline({"run_dir": "memory://bounds", section: values})
    with pytest.raises(ConfigError, match=r"^generations\.with_passage\.max_new_tokens: must be >= 1 and <= 1000000, got 0"):
        Pipeline({"run_dir": "memory://bounds", "generations": {"with_passage": {"max_new_tokens": 0}}})
    with pytest.raises(ConfigError, match=r"^datasets\.tau_k: must be >= 0 and <= 1, got -0.2"):
        Pipeline({"run_dir": "memory://bounds", "datasets": {"tau_k": -0.2}})
    with pytest.raises(ConfigError, match=r"^generations\.reference\.temperature: must be a finite number >= 0, got inf"):
        Pipeline({"run_dir": "memory://bounds", "generations": {"reference": {"temperature": math.inf}}})
    for seed in (-1, 2**32):
        with pytest.raises(ConfigError, match=rf"^seed: must be >= 0 and <= 4294967295, got {seed}"):
            Pipeline({"run_dir": "memory://bounds", "seed": seed})


def test_component_option_out_of_range_names_the_slot_path() -> None:
    pipe = Pipeline({"run_dir": "memory://bounds2", "backend": {"use": "echo", "options": {"sample_words": 0}}})
    with pytest.raises(ConfigError, match=r"^backend\.options\.sample_words: must be >= 1 and <= 100000, got 0"):
        pipe.ctx.validate_slot("backend")


def test_cli_bad_value_exits_2_with_one_paragraph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"run_dir: {tmp_path / 'run'}\ngenerations: {{k: 0}}\n")
    assert main(["run", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "generations.k: must be >= 1 and <= 10000, got 0" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.jsonl"))
