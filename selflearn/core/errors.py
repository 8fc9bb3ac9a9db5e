"""The error hierarchy.

Every error selflearn raises on purpose derives from :class:`SelflearnError`, so the CLI can
tell a user mistake (exit code 2, one paragraph, no traceback) from a bug (a traceback).
Messages follow one rule: say what failed, what was expected, what was received, and how to
fix it.
"""

from __future__ import annotations


class SelflearnError(Exception):
    """Base class of every deliberate selflearn error."""


class ConfigError(SelflearnError):
    """A configuration value is malformed, missing or of the wrong type.

    ``path`` is the dotted location in the configuration (``backend.options.max_new_tokens``).
    """

    def __init__(self, message: str, path: str = "") -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class UnknownComponentError(ConfigError):
    """A configuration names a component that no loaded plugin registered."""


class PluginError(SelflearnError):
    """A plugin could not be loaded, or two plugins registered the same component name."""


class StageError(SelflearnError):
    """A pipeline stage cannot run with what it was given (e.g. an empty input)."""


class BackendError(SelflearnError):
    """An inference backend, a judge or a question generator's server failed for good."""


class AuthenticationError(BackendError):
    """A server refused the credentials (HTTP 401/403)."""


class BudgetExceededError(SelflearnError):
    """A spend cap was reached; the stage stopped cleanly and kept what it finished."""


class ArtifactError(SelflearnError):
    """The run directory cannot be read or written."""


class RunDirBusyError(ArtifactError):
    """Another live process holds the run directory's lock (:mod:`selflearn.core.lock`)."""
