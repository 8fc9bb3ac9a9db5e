"""Contexts handed to stages (:class:`RunContext`) and component factories
(:class:`ComponentContext`)."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from .cache import JsonlCache
from .config import SLOTS, SlotSpec, parse_slot
from .errors import ConfigError
from .execution import ExecutionOptions
from .execution.local import LocalEngine
from .generation import CachedBackend
from .options import build_options
from .protocols import PROTOCOLS
from .store import ArtifactStore

if TYPE_CHECKING:
    from .execution import Engine
    from .plugins import PluginHost

T = TypeVar("T")
log = logging.getLogger("selflearn")


class RunContext:
    """Everything a stage needs: the config, the run directory, components, caches, progress."""

    def __init__(
        self,
        config: dict[str, Any],
        slots: dict[str, SlotSpec | None],
        host: PluginHost,
        store: ArtifactStore,
    ) -> None:
        self.config = config
        self.slots = slots
        self.host = host
        self.store = store
        self.seed: int = int(config.get("seed", 42))
        self.model: str | None = config.get("model")
        self._components: dict[str, Any] = {}
        self._caches: dict[str, JsonlCache] = {}
        #: one-time warnings already given in this run (e.g. "source-fingerprint")
        self.warned: set[str] = set()
        #: every stage's options by stage name (set by the Pipeline)
        self.stage_options: dict[str, Any] = {}
        #: the run's effective configuration, secrets excluded (set by the Pipeline)
        self.describe: Any = None
        #: where the stages' model calls run (the Pipeline sets the configured engine)
        self.engine: Engine = LocalEngine(self)
        self.execution = ExecutionOptions()
        cache_dir = config.get("cache_dir")
        if cache_dir:
            self.cache_dir = os.path.expanduser(str(cache_dir))
        elif store.is_local:
            self.cache_dir = store.local_path("cache")
        else:  # caches are append-only local files; remote run dirs keep them in the user cache
            digest = hashlib.sha256(store.url.encode()).hexdigest()[:16]
            self.cache_dir = os.path.join(
                os.path.expanduser("~/.cache/selflearn/runs"), digest
            )

    # -- components ----------------------------------------------------------------------
    def has(self, slot: str) -> bool:
        return self.slots.get(slot) is not None

    def component(self, slot: str) -> Any:
        """The component in ``slot``, built once per run (the backend is wrapped in a cache)."""
        if slot in self._components:
            return self._components[slot]
        spec = self.slots.get(slot)
        if spec is None:
            raise ConfigError(f"this stage needs a {slot!r} component, but none is configured", slot)
        comp = self.build(SLOTS[slot], spec, slot)
        bind = getattr(comp, "bind_run", None) if spec.is_object else None
        if callable(bind):
            # a ready object that builds parts of its own in the run's context (e.g. the rounds'
            # StoredQuestions): given this context, also on a worker that unpickled it unbound
            bind(self)
        if slot == "backend" and not isinstance(comp, CachedBackend):
            comp = CachedBackend(comp, self.cache("generations"))
        self._components[slot] = comp
        return comp

    def release(self, slot: str) -> None:
        """Close and forget the component in ``slot`` (it is rebuilt if asked for again).

        Stages that load models of their own (training, evaluation) call this first, so the
        pipeline's backend does not hold a second model in memory.
        """
        self.engine.release(slot)
        comp = self._components.pop(slot, None)
        close = getattr(comp, "close", None)
        if callable(close):
            close()

    def build(self, kind: str, value: Any, path: str) -> Any:
        """Build a component of ``kind`` from a slot value (name, mapping, SlotSpec or object)."""
        spec = value if isinstance(value, SlotSpec) else parse_slot(value, path)
        if spec is None:
            raise ConfigError(f"expected a {kind.replace('_', ' ')}, got nothing", path)
        if spec.is_object:
            check_protocol(kind, spec.obj, path)
            return spec.obj
        assert spec.name is not None
        cspec = self.host.registry.get(kind, spec.name, f"{path}.use" if spec.options else path)
        options_cls = cspec.load_options_class()
        if options_cls is None:
            if spec.options:
                raise ConfigError(f"{kind} {spec.name!r} takes no options", f"{path}.options")
            options: Any = None
        else:
            options = build_options(options_cls, spec.options, f"{path}.options")
        factory = cspec.load_factory()
        return factory(options, ComponentContext(self, path))

    def validate_slot(self, slot: str) -> None:
        """Check a slot's name and options without building the component."""
        spec = self.slots.get(slot)
        if spec is None or spec.is_object:
            if spec is not None:
                check_protocol(SLOTS[slot], spec.obj, slot)
            return
        assert spec.name is not None
        cspec = self.host.registry.get(SLOTS[slot], spec.name, slot)
        options_cls = cspec.load_options_class()
        if options_cls is not None:
            build_options(options_cls, spec.options, f"{slot}.options")
        elif spec.options:
            raise ConfigError(f"{SLOTS[slot]} {spec.name!r} takes no options", f"{slot}.options")

    # -- caches and progress -------------------------------------------------------------
    def cache(self, namespace: str) -> JsonlCache:
        if namespace not in self._caches:
            self._caches[namespace] = JsonlCache(os.path.join(self.cache_dir, f"{namespace}.jsonl"))
        return self._caches[namespace]

    def progress(
        self, iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterator[T]:
        from tqdm.auto import tqdm

        yield from tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            mininterval=1.0,
            dynamic_ncols=True,
            disable=os.environ.get("SELFLEARN_NO_PROGRESS", "") not in ("", "0"),
        )

    def secret(self, name: str) -> str | None:
        return self.host.resolve_secret(name)

    def close(self) -> None:
        for comp in self._components.values():
            close = getattr(comp, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing must not mask the run's outcome
                    log.debug("closing %r failed", comp, exc_info=True)
        try:
            self.engine.close()
        except Exception:  # noqa: BLE001 - closing must not mask the run's outcome
            log.debug("closing the %s engine failed", self.engine.name, exc_info=True)
        for cache in self._caches.values():
            cache.close()
        self._components.clear()
        self._caches.clear()


class ComponentContext:
    """What a component factory receives besides its options."""

    def __init__(self, run: RunContext, path: str) -> None:
        self._run = run
        self.path = path

    @property
    def model(self) -> str | None:
        """The model under training (hub id, local folder or GGUF reference), if configured."""
        return self._run.model

    @property
    def seed(self) -> int:
        return self._run.seed

    @property
    def run_dir(self) -> ArtifactStore:
        return self._run.store

    def cache(self, namespace: str) -> JsonlCache:
        """A persistent content-keyed cache shared by the run (e.g. ``"nli"``, ``"judge"``)."""
        return self._run.cache(namespace)

    def secret(self, name: str) -> str | None:
        """A secret from a ``resolve_secret`` plugin or the environment; never log it."""
        return self._run.secret(name)

    def backend(self) -> Any:
        """The pipeline's (cached) inference backend."""
        return self._run.component("backend")

    def build(self, kind: str, value: Any, path: str) -> Any:
        """Build a nested component (e.g. a judge's own backend given in its options)."""
        comp = self._run.build(kind, value, f"{self.path}.{path}")
        if kind == "inference_backend" and not isinstance(comp, CachedBackend):
            comp = CachedBackend(comp, self._run.cache("generations"))
        return comp

    def progress(
        self, iterable: Iterable[T], *, total: int | None = None, desc: str = "", unit: str = "it"
    ) -> Iterator[T]:
        return self._run.progress(iterable, total=total, desc=desc, unit=unit)


def check_protocol(kind: str, obj: Any, path: str) -> None:
    proto = PROTOCOLS.get(kind)
    if proto is not None and not isinstance(obj, proto):
        missing = [
            name
            for name in dir(proto)
            if not name.startswith("_") and not hasattr(obj, name)
        ]
        raise ConfigError(
            f"{type(obj).__name__} does not satisfy the {kind.replace('_', ' ')} protocol "
            f"(missing: {', '.join(missing) or '?'}); see selflearn.plugins.protocols",
            path,
        )
