"""The plugin module named by this package's ``selflearn`` entry point.

It registers a knowledge source, ``faq`` (every ``*.yaml`` file in a folder holds a list of
``{question, answer}`` entries about one topic, and becomes one document), and an evaluator,
``answer-length`` (a measure of the ``evaluate`` stage).
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


@hookimpl
def register_evaluators(register):  # type: ignore[no-untyped-def]
    register(
        "answer-length",
        "selflearn_hello.measure:create",
        options="selflearn_hello.measure:Options",
        description="Mean closed-book answer length of each model, in words",
    )
