"""Plugin loading: built-ins, entry points, isolation, disabling and strict mode.

Every :class:`~selflearn.Pipeline` builds its own :class:`PluginHost` (no global state): the
built-in plugins (one per built-in module) are registered like any other, then each
distribution's entry point in the group ``selflearn`` is loaded in isolation. A plugin that fails to import or to register is
reported (distribution, entry point, cause) and skipped, unless strict mode is on.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import logging
import os
from collections.abc import Iterable
from typing import Any

import attrs
import pluggy

from .errors import PluginError
from .hookspecs import PROJECT, REGISTRATION_HOOKS, Hooks, RunInfo
from .registry import ComponentSpec, Registry, collector

log = logging.getLogger("selflearn.plugins")

ENTRY_POINT_GROUP = "selflearn"
DISABLE_ENV = "SELFLEARN_DISABLE_PLUGINS"
STRICT_ENV = "SELFLEARN_STRICT_PLUGINS"
#: the module listing the built-in plugins (one per built-in module), loaded by name like an
#: entry point: the one place selflearn.core names selflearn.builtin
BUILTIN_PLUGINS = "selflearn.builtin.plugin"


@attrs.frozen
class PluginInfo:
    """What ``selflearn plugins`` shows for one plugin."""

    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...]
    status: str  # "loaded", "disabled" or "failed"
    error: str = ""
    #: problems that did not stop the plugin from loading (e.g. a misspelt hook)
    warnings: tuple[str, ...] = ()


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
        self._infos: dict[str, PluginInfo] = {}
        self._order: list[str] = []  # loaded plugins, in load order
        builtin = importlib.import_module(BUILTIN_PLUGINS)
        for name, plugin in builtin.plugins():
            self._add(plugin, name, ("selflearn", _version("selflearn")))
        if load_entry_points:
            for ep in _entry_points():
                self._load_entry_point(ep)
        for i, plugin in enumerate(extra_plugins):
            name = getattr(plugin, "__name__", None) or f"{type(plugin).__name__}-{i}"
            self._add(plugin, name, ("(in-process)", ""))
        self._warn_unknown_disabled()
        self.check_pending()
        self.registry = self._build_registry()
        self.lifecycle = Lifecycle(self.pm)

    @property
    def infos(self) -> list[PluginInfo]:
        """Every plugin seen (loaded, disabled or failed), once each, in load order."""
        return list(self._infos.values())

    # -- loading -------------------------------------------------------------------------
    def _fail(self, name: str, dist: tuple[str, str], why: str, key: str = "") -> None:
        """Report a plugin that cannot be used; its entry in :attr:`infos` (``key``, by
        default its name) says "failed", so the plugin is listed once."""
        msg = f"plugin {name!r} from distribution {dist[0]} {dist[1]} failed to load: {why}"
        if self.strict:
            raise PluginError(msg + " (strict mode: fix or uninstall the plugin, or disable it)")
        log.warning("%s; skipped", msg)
        self._infos[key or name] = PluginInfo(name, dist[0], dist[1], (), "failed", why)

    def _load_entry_point(self, ep: md.EntryPoint) -> None:
        dist = (ep.dist.name, ep.dist.version) if ep.dist else ("?", "")
        if ep.name in self.disabled:
            self._infos[ep.name] = PluginInfo(ep.name, dist[0], dist[1], (), "disabled")
            return
        try:
            plugin = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not break start-up
            self._fail(ep.name, dist, f"{type(exc).__name__}: {exc}")
            return
        self._add(plugin, ep.name, dist)

    def _add(self, plugin: Any, name: str, dist: tuple[str, str]) -> None:
        if name in self.disabled:
            self._infos[name] = PluginInfo(name, dist[0], dist[1], (), "disabled")
            return
        if self.pm.has_plugin(name):
            self._fail(name, dist, "another plugin with this name is already registered",
                       key=f"{name} ({dist[0]})")
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # noqa: BLE001
            self._fail(name, dist, f"{type(exc).__name__}: {exc}")
            return
        hooks = tuple(sorted(h.name for h in self.pm.get_hookcallers(plugin) or ()))
        self._infos[name] = PluginInfo(name, dist[0], dist[1], hooks, "loaded")
        self._order.append(name)

    def _warn_unknown_disabled(self) -> None:
        unknown = sorted(self.disabled - set(self._infos))
        if unknown:
            log.warning(
                "plugins.disable / %s names %s, which no installed plugin is called; "
                "`selflearn plugins` lists the names", DISABLE_ENV, ", ".join(map(repr, unknown)),
            )

    def check_pending(self) -> None:
        """Report hook implementations that match no hook spec (pluggy's ``check_pending``).

        A misspelt hook (``register_scorer``) would otherwise register nothing, silently. Each
        one is a warning naming the plugin and the hook (and the closest real hook), kept in
        the plugin's :class:`PluginInfo`; in strict mode it is an error.
        """
        specs = [n for n in vars(Hooks) if not n.startswith("_")]
        for hook_name, caller in sorted(vars(self.pm.hook).items()):
            if hook_name.startswith("_") or caller.has_spec():
                continue
            for impl in caller.get_hookimpls():
                if impl.optionalhook:
                    continue
                hint = difflib.get_close_matches(hook_name, specs, n=1)
                msg = (
                    f"plugin {impl.plugin_name!r} implements {hook_name!r}, which is not a "
                    f"selflearn hook" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + "; the function is never called. docs/hooks.md lists the hooks"
                )
                if self.strict:
                    raise PluginError(msg + " (strict mode)")
                log.warning("%s", msg)
                info = self._infos[impl.plugin_name]
                self._infos[impl.plugin_name] = attrs.evolve(
                    info, warnings=(*info.warnings, msg)
                )

    def _build_registry(self) -> Registry:
        """Call each plugin's registration hooks through pluggy, one plugin at a time.

        One plugin at a time, so each registration is attributed to its plugin and a plugin
        that raises is skipped whole (what it registered before raising is dropped, and it is
        unregistered, so its lifecycle hooks are not called either).
        """
        registry = Registry()
        collected: list[ComponentSpec] = []
        for name in list(self._order):
            specs = self._call_registration_hooks(name)
            if specs is not None:
                collected.extend(specs)
        for spec in collected:
            registry.add(spec)  # duplicate names are always an error, even outside strict mode
        registry.failed_plugins = {i.name: i.error for i in self.infos if i.status == "failed"}
        return registry

    def _call_registration_hooks(self, name: str) -> list[ComponentSpec] | None:
        plugin = self.pm.get_plugin(name)
        others = [p for n, p in self.pm.list_name_plugin() if n != name]
        specs: list[ComponentSpec] = []
        for kind, hook_name in REGISTRATION_HOOKS.items():
            if hook_name not in self._infos[name].hooks:
                continue
            register, got = collector(kind, name)
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            try:
                caller(register=register)
            except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
                info = self._infos[name]
                self.pm.unregister(plugin, name)
                self._order.remove(name)
                self._fail(name, (info.distribution, info.version), f"{hook_name} raised {exc!r}")
                return None
            specs.extend(got)
        return specs

    # -- queries -------------------------------------------------------------------------
    def components(self) -> list[ComponentSpec]:
        return list(self.registry)

    def resolve_secret(self, name: str) -> str | None:
        """A secret from the first ``resolve_secret`` plugin that answers, else the
        environment variable of that name (None when neither has it)."""
        return self.lifecycle.resolve_secret(name) or os.environ.get(name) or None


class Lifecycle:
    """The typed way to call the lifecycle hooks (what :class:`Pipeline` uses).

    An exception raised inside a plugin's hook becomes a :class:`PluginError` naming that
    plugin and the hook, chained to the original (``--debug`` shows its traceback).
    """

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self._pm = pm

    def run_start(self, run: RunInfo) -> None:
        self._call("on_run_start", run=run)

    def stage_end(self, run: RunInfo, stage: str, summary: dict[str, Any]) -> None:
        self._call("on_stage_end", run=run, stage=stage, summary=summary)

    def run_end(self, run: RunInfo, summary: dict[str, Any]) -> None:
        self._call("on_run_end", run=run, summary=summary)

    def resolve_secret(self, name: str) -> str | None:
        value = self._call("resolve_secret", name=name)
        if value is not None and not isinstance(value, str):
            raise PluginError(
                f"a resolve_secret hook returned a {type(value).__name__} for {name!r}; it "
                "must return the secret as a string, or None to pass"
            )
        return value or None

    def _call(self, hook_name: str, **kwargs: Any) -> Any:
        caller = getattr(self._pm.hook, hook_name)
        try:
            return caller(**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            who = _raising_plugin(caller.get_hookimpls(), exc)
            raise PluginError(
                f"plugin {who!r} failed in its {hook_name} hook: {type(exc).__name__}: {exc}. "
                f"Fix the plugin, or disable it (plugins.disable: [{who}])"
            ) from exc


def _raising_plugin(impls: list[Any], exc: BaseException) -> str:
    """The name of the plugin whose hook function is in ``exc``'s traceback (innermost)."""
    codes = {impl.function.__code__: impl.plugin_name for impl in impls
             if hasattr(impl.function, "__code__")}
    who = "?"
    tb = exc.__traceback__
    while tb is not None:
        who = codes.get(tb.tb_frame.f_code, who)
        tb = tb.tb_next
    return who


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "(not installed)"
