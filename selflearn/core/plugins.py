"""Plugin loading: built-ins, entry points, isolation, disabling and strict mode.

Every :class:`~selflearn.Pipeline` builds its own :class:`PluginHost` (no global state): the
built-in plugin is registered like any other, then each distribution's entry point in the
group ``selflearn`` is loaded in isolation. A plugin that fails to import or to register is
reported (distribution, entry point, cause) and skipped, unless strict mode is on.
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import logging
import os
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from .errors import PluginError
from .hookspecs import PROJECT, REGISTRATION_HOOKS, Hooks
from .registry import ComponentSpec, Registry

log = logging.getLogger("selflearn.plugins")

ENTRY_POINT_GROUP = "selflearn"
DISABLE_ENV = "SELFLEARN_DISABLE_PLUGINS"
STRICT_ENV = "SELFLEARN_STRICT_PLUGINS"
BUILTIN_NAME = "selflearn.builtin"


@attrs.frozen
class PluginInfo:
    """What ``selflearn plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    status: str  # "loaded", "disabled" or "failed"
    error: str = ""


def _env_list(name: str) -> list[str]:
    return [p.strip() for p in os.environ.get(name, "").split(",") if p.strip()]


def _entry_points() -> Iterable[md.EntryPoint]:
    return md.entry_points(group=ENTRY_POINT_GROUP)


class PluginHost:
    """A pluggy manager plus the registry of components its plugins contributed."""

    def __init__(
        self,
        *,
        disable: Iterable[str] = (),
        strict: bool | None = None,
        extra_plugins: Iterable[Any] = (),
        load_entry_points: bool = True,
    ) -> None:
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(Hooks)
        self.disabled = set(disable) | set(_env_list(DISABLE_ENV))
        self.strict = (
            strict if strict is not None else os.environ.get(STRICT_ENV, "") not in ("", "0")
        )
        self.infos: list[PluginInfo] = []
        self._dists: dict[str, tuple[str, str]] = {}

        builtin = importlib.import_module("selflearn.builtin.plugin")
        self._add(builtin, BUILTIN_NAME, ("selflearn", _version("selflearn")))
        if load_entry_points:
            for ep in _entry_points():
                self._load_entry_point(ep)
        for i, plugin in enumerate(extra_plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
            self._add(plugin, name, ("(in-process)", ""))
        self.registry = self._build_registry()

    # -- loading -------------------------------------------------------------------------
    def _fail(self, name: str, dist: tuple[str, str], why: str) -> None:
        msg = f"plugin {name!r} from distribution {dist[0]} {dist[1]} failed to load: {why}"
        if self.strict:
            raise PluginError(msg + " (strict mode: fix or uninstall the plugin, or disable it)")
        log.warning("%s; skipped", msg)
        self.infos.append(PluginInfo(name, dist[0], dist[1], (), "failed", why))

    def _load_entry_point(self, ep: md.EntryPoint) -> None:
        dist = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "")
        if ep.name in self.disabled:
            self.infos.append(PluginInfo(ep.name, dist[0], dist[1], (), "disabled"))
            return
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break start-up
            self._fail(ep.name, dist, f"{type(exc).__name__}: {exc}")
            return
        self._add(plugin, ep.name, dist)

    def _add(self, plugin: Any, name: str, dist: tuple[str, str]) -> None:
        if name in self.disabled and name != BUILTIN_NAME:
            self.infos.append(PluginInfo(name, dist[0], dist[1], (), "disabled"))
            return
        if self.pm.has_plugin(name):
            self._fail(name, dist, "another plugin with this name is already registered")
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001
            self._fail(name, dist, f"{type(exc).__name__}: {exc}")
            return
        self._dists[name] = dist
        hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
        self.infos.append(PluginInfo(name, dist[0], dist[1], hooks, "loaded"))

    def _build_registry(self) -> Registry:
        registry = Registry()
        for kind, hook_name in REGISTRATION_HOOKS.items():
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                register = registry.register_function(kind, impl.plugin_name)
                try:
                    impl.function(register=register)
                except PluginError:
                    raise  # duplicate names are always an error, even outside strict mode
                except Exception as exc:  # noqa: BLE001
                    dist = self._dists.get(impl.plugin_name, ("?", ""))
                    self._fail(impl.plugin_name, dist, f"{hook_name} raised {exc!r}")
        registry.failed_plugins = {i.name: i.error for i in self.infos if i.status == "failed"}
        return registry

    # -- queries -------------------------------------------------------------------------
    def components(self) -> list[ComponentSpec]:
        return list(self.registry)

    def resolve_secret(self, name: str) -> str | None:
        value = self.pm.hook.resolve_secret(name=name)
        if value:
            return str(value)
        return os.environ.get(name) or None


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "(not installed)"
