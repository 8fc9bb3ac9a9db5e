"""``selflearn.component``: one component, built by name outside a pipeline.

A scorer to score a few answers in a notebook, a backend to try a server, a judge to compare
two models: the same names, options, validation and error messages as in a pipeline's config,
from a fresh plugin host (built-ins plus installed plugins), with no pipeline and no stages.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

from .config import SLOTS, SlotSpec, parse_slot
from .errors import ConfigError
from .hookspecs import REGISTRATION_HOOKS


def resolve_kind(kind: str) -> tuple[str, str]:
    """(component kind, config path) for a kind (``"scorer"``) or a slot name (``"backend"``)."""
    if kind in SLOTS:
        return SLOTS[kind], kind
    if kind in REGISTRATION_HOOKS:
        return kind, kind
    valid = sorted(set(SLOTS) | set(REGISTRATION_HOOKS))
    raise ConfigError(f"unknown component kind {kind!r}; valid kinds are: {', '.join(valid)}", "kind")


def _spec(name_or_config: Any, options: Mapping[str, Any], path: str) -> SlotSpec:
    spec = parse_slot(name_or_config, path)
    if spec is None:
        raise ConfigError("expected a component name or {use: NAME, options: {...}}, got nothing", path)
    if spec.is_object:
        raise ConfigError(
            f"expected a component name or {{use: NAME, options: {{...}}}}, got a "
            f"{type(name_or_config).__name__} object (a ready object needs no building)",
            path,
        )
    return SlotSpec(name=spec.name, options={**spec.options, **options})


def component(
    kind: str,
    name_or_config: str | Mapping[str, Any],
    *,
    model: str | None = None,
    seed: int = 42,
    cache_dir: str | None = None,
    plugins: Iterable[Any] = (),
    load_entry_points: bool = True,
    **options: Any,
) -> Any:
    """Build one component by name, as a pipeline would build it from its config.

    ``kind`` is a component kind (``scorer``, ``inference_backend``, ``judge``, ...) or a
    pipeline slot (``backend``, ``source``, ``trainer``, ...); ``name_or_config`` a registered
    name or ``{"use": NAME, "options": {...}}``; keyword ``options`` are merged over the
    config's (they win). ``model`` and ``seed`` are what the component would get from a run's
    top-level ``model`` and ``seed``; per-call caches (NLI pairs, judge verdicts) go to
    ``cache_dir`` (default: a new temporary folder). Bad names and options raise the same
    :class:`~selflearn.core.errors.ConfigError` as in a config, with paths such as
    ``scorer.options.model``. Call the component's ``close()`` when done.
    """
    from .context import RunContext
    from .plugins import PluginHost
    from .store import ArtifactStore

    kind, path = resolve_kind(kind)
    spec = _spec(name_or_config, options, path)
    run_dir = cache_dir or tempfile.mkdtemp(prefix="selflearn-component-")
    host = PluginHost(extra_plugins=plugins, load_entry_points=load_entry_points)
    config = {"run_dir": run_dir, "cache_dir": cache_dir, "seed": seed, "model": model}
    ctx = RunContext(config, {}, host, ArtifactStore(run_dir))
    return ctx.build(kind, spec, path)
