"""Run configuration: top-level keys, component slots and stage sections.

A slot (``source``, ``backend``, ...) accepts a registered name, ``{use: NAME, options: {...}}``
or, from Python, a ready object satisfying the slot's protocol. Stage sections (``questions``,
``generations``, ...) are validated by each stage's own options class.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from importlib import resources
from typing import Any

import attrs
import yaml

from .errors import ConfigError
from .options import check_secret_name
from .redact import safe_url

#: slot -> component kind
SLOTS: dict[str, str] = {
    "source": "knowledge_source",
    "chunker": "chunker",
    "question_generator": "question_generator",
    "test_question_generator": "question_generator",
    "backend": "inference_backend",
    "scorer": "scorer",
    "sft_trainer": "trainer",
    "trainer": "trainer",
    "judge": "judge",
}

#: the slots' defaults when a config leaves them out (the paper's components where possible)
SLOT_DEFAULTS: dict[str, Any] = {
    "source": "wikipedia",
    "chunker": "sentences",
    "question_generator": "openai",
    "test_question_generator": None,  # None: same as question_generator
    "backend": "hf",
    "scorer": "selfcheck-nli",
    "sft_trainer": None,  # None: no SFT step
    "trainer": "trl-dpo",
    "judge": None,  # None: no pairwise judging
}

GENERAL_KEYS = ("run_dir", "cache_dir", "seed", "model", "plugins", "name", "description", "flow", "rounds")

#: the training orders: "current" generates the preference data with the configured model,
#: "paper" trains SFT first and generates it with the SFT model (docs/training.md says why)
FLOWS = ("current", "paper")


@attrs.frozen
class SlotSpec:
    """A slot's value: a component name with options, or a ready object."""

    name: str | None = None
    options: dict[str, Any] = attrs.field(factory=dict)
    obj: Any = None

    @property
    def is_object(self) -> bool:
        return self.obj is not None

    def describe(self) -> Any:
        """A JSON-able description for manifests and fingerprints."""
        if self.obj is not None:
            ident = getattr(self.obj, "identity", None)
            described: dict[str, Any] = {"object": f"{type(self.obj).__module__}.{type(self.obj).__qualname__}"}
            if callable(ident):
                described["identity"] = ident()
            return described
        return {"use": self.name, "options": _shown(self.options)}


def _shown(options: Any) -> Any:
    """Options as a manifest may record them: a user, password or key-like query value in a
    URL option (``base_url``, ``url``, ...) redacted. Only URLs are touched, so two different
    templates or prompts never describe alike."""
    if isinstance(options, Mapping):
        return {
            k: safe_url(v) if isinstance(v, str) and str(k).endswith("url") else _shown(v)
            for k, v in options.items()
        }
    if isinstance(options, list):
        return [_shown(v) for v in options]
    return options


def parse_slot(value: Any, path: str) -> SlotSpec | None:
    """Turn a slot's config value into a :class:`SlotSpec` (None: the slot is off)."""
    if value is None or value is False:
        return None
    if isinstance(value, SlotSpec):
        return value
    if isinstance(value, str):
        if not value.strip():
            raise ConfigError("expected a component name, got an empty string", path)
        return SlotSpec(name=value)
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"use", "options"})
        if unknown:
            raise ConfigError(
                f"unknown key(s) {', '.join(map(str, unknown))}; a component is given as "
                "NAME or {use: NAME, options: {...}}",
                path,
            )
        if "use" not in value or not isinstance(value["use"], str):
            raise ConfigError("missing 'use: NAME' (the registered component name)", path)
        options = value.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"expected a mapping of options, got {options!r}", f"{path}.options")
        for key, option in options.items():  # a key pasted for its variable's name: refused
            if str(key).endswith("_env"):  # before anything can log or record it
                check_secret_name(option, f"{path}.options.{key}")
        return SlotSpec(name=value["use"], options=dict(options))
    if isinstance(value, (int, float, list, tuple)):
        raise ConfigError(
            f"expected a component name or {{use: NAME, options: ...}}, got {value!r}", path
        )
    return SlotSpec(obj=value)


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config file, with errors that name the file and the line."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc.strerror or exc}") from exc
    return parse_yaml(decode_config(data, str(path)), str(path))


def decode_config(data: bytes, origin: str) -> str:
    """The text of a config file: UTF-8 (a byte-order mark is dropped), or UTF-16 with its
    byte-order mark (what some Windows editors save). Anything else is a :class:`ConfigError`
    naming the file, the byte offset, line and column of the first bad byte, and the fix,
    instead of a UnicodeDecodeError traceback."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise _not_utf8(data, exc, origin, "UTF-16") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(data, exc, origin, "UTF-8") from None


def _not_utf8(data: bytes, exc: UnicodeDecodeError, origin: str, encoding: str) -> ConfigError:
    """The error for a config file that is not valid ``encoding`` (see :func:`decode_config`)."""
    offset = exc.start
    line = data.count(b"\n", 0, offset) + 1
    column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1
    return ConfigError(
        f"config file {origin!r} is not valid {encoding} text: byte 0x{data[offset]:02x} at byte offset "
        f"{offset} (line {line}, column {column}) cannot be decoded. Save the file as UTF-8 "
        f"(in an editor: save with encoding UTF-8; from a shell, for a Latin-1 file: iconv -f "
        f"latin1 -t utf-8 {origin} > fixed.yaml)"
    )


def parse_yaml(text: str, origin: str = "<config>") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{origin}: malformed YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def default_config() -> dict[str, Any]:
    """The embedded offline default run (what ``selflearn run`` does with no config)."""
    text = resources.files("selflearn").joinpath("configs/default.yaml").read_text("utf-8")
    return parse_yaml(text, "selflearn/configs/default.yaml")


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge two config mappings (``override`` wins; slots are replaced, not merged)."""
    out = dict(base)
    for key, value in override.items():
        if (
            key not in SLOTS
            and isinstance(value, Mapping)
            and isinstance(out.get(key), Mapping)
        ):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out
