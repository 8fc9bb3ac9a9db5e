"""The component registry: what each plugin registered, under which name and kind."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Iterator
from typing import Any

import attrs

from .errors import ConfigError, PluginError, UnknownComponentError

Factory = Callable[..., Any]


def load_object(ref: Any, what: str) -> Any:
    """Resolve a ``"module:attr"`` string (or return a ready object unchanged)."""
    if not isinstance(ref, str):
        return ref
    module_name, sep, attr = ref.partition(":")
    if not sep or not module_name or not attr:
        raise PluginError(f"{what}: {ref!r} is not a 'module:attribute' reference")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise PluginError(
            f"{what}: cannot import {module_name!r} ({exc}). Is the package that provides it "
            "installed in this environment?"
        ) from exc
    except AttributeError as exc:
        raise PluginError(f"{what}: {module_name!r} has no attribute {attr!r}") from exc
    return obj


@attrs.frozen
class ComponentSpec:
    """One registered component."""

    kind: str
    name: str
    factory: Any  # callable or "module:attr"
    options: Any = None  # attrs options class, "module:attr", or None (no options)
    description: str = ""
    provider: str = "?"
    #: registered with ``replace=True``: meant to take the place of another plugin's component
    replace: bool = False
    #: the provider whose registration of the same name this one replaced ("" if none)
    replaces: str = ""

    def load_factory(self) -> Factory:
        factory = load_object(self.factory, f"{self.kind} {self.name!r}")
        if not callable(factory):
            raise PluginError(f"{self.kind} {self.name!r}: factory {factory!r} is not callable")
        return factory  # type: ignore[no-any-return,unused-ignore]

    def load_options_class(self) -> type | None:
        if self.options is None:
            return None
        cls: type | None = load_object(self.options, f"{self.kind} {self.name!r} options")
        return cls


class Registry:
    """Components by kind and name, filled by the registration hooks of one plugin manager."""

    def __init__(self, failed_plugins: dict[str, str] | None = None) -> None:
        self._specs: dict[str, dict[str, ComponentSpec]] = {}
        #: plugin name -> why it could not be loaded (shown in "unknown component" errors)
        self.failed_plugins: dict[str, str] = dict(failed_plugins or {})

    def add(self, spec: ComponentSpec) -> None:
        """Add one registration; a name already taken is replaced only on explicit request.

        The outcome does not depend on the order plugins load in: a registration made with
        ``replace=True`` wins over one without, whichever came first; two registrations of
        the same name that both (or neither) ask to replace are an error naming both.
        """
        by_name = self._specs.setdefault(spec.kind, {})
        other = by_name.get(spec.name)
        if other is None:
            by_name[spec.name] = spec
        elif spec.replace and not other.replace:
            by_name[spec.name] = attrs.evolve(spec, replaces=other.provider)
        elif other.replace and not spec.replace:
            by_name[spec.name] = attrs.evolve(other, replaces=spec.provider)
        else:
            both = "both ask to replace it" if spec.replace else "neither asks to replace it"
            raise PluginError(
                f"{spec.kind} {spec.name!r} is registered twice: by plugin {other.provider!r} "
                f"and by plugin {spec.provider!r} ({both}). Disable one of them "
                "(plugins.disable in the config, or SELFLEARN_DISABLE_PLUGINS), rename the "
                "component, or register it with replace=True in the plugin meant to win."
            )

    def names(self, kind: str) -> list[str]:
        return sorted(self._specs.get(kind, {}))

    def get(self, kind: str, name: str, path: str = "") -> ComponentSpec:
        try:
            return self._specs[kind][name]
        except KeyError:
            pass
        valid = self.names(kind)
        hint = difflib.get_close_matches(name, valid, n=1)
        msg = f"unknown {kind.replace('_', ' ')} {name!r}"
        if hint:
            msg += f" (did you mean {hint[0]!r}?)"
        msg += f"; valid names are: {', '.join(valid) or '(none registered)'}"
        if self.failed_plugins:
            failed = "; ".join(f"{p}: {why}" for p, why in sorted(self.failed_plugins.items()))
            msg += f". Plugins that failed to load: {failed}"
        raise UnknownComponentError(msg, path)

    def __iter__(self) -> Iterator[ComponentSpec]:
        for kind in sorted(self._specs):
            for name in sorted(self._specs[kind]):
                yield self._specs[kind][name]

    def check_kind(self, kind: str) -> None:
        if kind not in self._specs and kind not in _KNOWN_KINDS:
            raise ConfigError(f"unknown component kind {kind!r}")


def collector(kind: str, provider: str) -> tuple[Callable[..., None], list[ComponentSpec]]:
    """The ``register`` callable handed to one plugin's registration hook, and the list it
    fills; the host adds the list only once the plugin's hooks all succeeded, so a plugin
    that fails half-way registers nothing."""
    specs: list[ComponentSpec] = []

    def register(
        name: str,
        factory: Any,
        *,
        options: Any = None,
        description: str = "",
        replace: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise PluginError(f"plugin {provider!r} registered a {kind} with no name")
        if factory is None:
            raise PluginError(f"plugin {provider!r} registered {kind} {name!r} with no factory")
        specs.append(
            ComponentSpec(kind, name, factory, options, description, provider, bool(replace))
        )

    return register, specs


from .hookspecs import REGISTRATION_HOOKS  # noqa: E402

_KNOWN_KINDS = frozenset(REGISTRATION_HOOKS)
