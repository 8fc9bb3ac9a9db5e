"""One cattrs converter turns plain YAML/JSON values into options and records: strict types,
dotted-path errors (declared ranges of nested options included), and records' own errors."""

from __future__ import annotations

from typing import Literal

import attrs
import cattrs
import pytest

from selflearn.core.convert import CONVERTER, structure
from selflearn.core.errors import ConfigError
from selflearn.core.options import bounded, build_options
from selflearn.core.records import Completion, Generations, Scores


@attrs.frozen
class Inner:
    k: int = bounded(2, ge=1)
    mode: Literal["a", "b"] = "a"


@attrs.frozen
class Outer:
    inner: Inner = Inner()
    maybe: Inner | None = None
    items: list[Inner] = attrs.field(factory=list)
    size: int | str = 8
    ratio: float = 0.5


def test_one_cattrs_converter_for_options_and_records():
    assert isinstance(CONVERTER, cattrs.Converter)
    assert CONVERTER.structure({"inner": {"k": 3}}, Outer) == Outer(inner=Inner(k=3))
    done = Completion(text="hi", logprobs=[-0.5])
    assert CONVERTER.structure(done.to_dict(), Completion) == done


@pytest.mark.parametrize(("data", "path", "message"), [
    ({"inner": {"k": 0}}, "o.inner.k", "must be >= 1, got 0"),
    ({"maybe": {"k": "two"}}, "o.maybe.k", "expected an integer, got 'two'"),
    ({"items": [{"k": 1}, {"mode": "c"}]}, "o.items[1].mode", "expected one of 'a', 'b', got 'c'"),
    ({"items": [{"k": 1}, {"k": -1}]}, "o.items[1].k", "must be >= 1"),
    ({"items": "k"}, "o.items", "expected a list of mappings of options, got 'k'"),
    ({"size": 1.5}, "o.size", "expected an integer or a string, got 1.5"),
    ({"ratio": True}, "o.ratio", "expected a number, got True"),
    ({"inner": {"kk": 1}}, "o.inner", "unknown option(s) kk; valid options are: k, mode"),
])
def test_option_errors_name_the_dotted_path(data, path, message):
    with pytest.raises(ConfigError) as err:
        build_options(Outer, data, "o")
    assert err.value.path == path and message in str(err.value)


def test_values_are_converted_not_just_checked():
    opts = build_options(Outer, {"ratio": "1e-3", "size": "auto", "items": ({"k": 4},)}, "o")
    assert opts.ratio == 1e-3 and opts.size == "auto" and opts.items == [Inner(k=4)]
    assert structure(["a"], tuple[str, ...], "x") == ("a",)


def test_record_errors_name_class_and_field():
    with pytest.raises(ValueError, match=r"Completion\.text: expected a string, got 3"):
        Completion.from_dict({"text": 3})
    bad = Generations(question_id="q", reference=Completion(text="r")).to_dict()
    bad["with_passage"] = [{"text": "a"}, {"txt": "b"}]
    with pytest.raises(ValueError, match=r"Generations\.with_passage\[1\]: Completion: unknown field"):
        Generations.from_dict(bad)
    with pytest.raises(ValueError, match=r"Scores\.s_l: required field missing"):
        Scores.from_dict({"question_id": "q", "s_k": 0.5})
    row = Scores(question_id="q", s_l=None, s_k=1, knowledge_samples=[0.5, None]).to_dict()
    assert Scores.from_dict(row).knowledge_samples == [0.5, None]
