"""The component protocols (re-exported from :mod:`selflearn.core.protocols`)."""

from ..core.protocols import *  # noqa: F403
from ..core.protocols import PROTOCOLS  # noqa: F401
