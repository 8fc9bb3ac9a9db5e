"""The plugin module named by this package's ``selflearn`` entry point.

It registers one knowledge source, ``faq``: every ``*.yaml`` file in a folder holds a list of
``{question, answer}`` entries about one topic, and becomes one document.
"""

from __future__ import annotations

from selflearn.plugins import hookimpl


@hookimpl
def register_knowledge_sources(register):  # type: ignore[no-untyped-def]
    register(
        "faq",
        "selflearn_hello.source:create",
        options="selflearn_hello.source:Options",
        description="FAQ YAML files (one document per file) from a folder",
    )
