"""selflearn/core depends on nothing in selflearn/builtin: the built-ins are plugins of the core,
loaded by name like any installed plugin, never imported by it."""

from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[2] / "selflearn" / "core"
#: the one string in the core that names a built-in module: the plugin host loads the list of
#: built-in plugins from it by name, as it loads an entry point
ALLOWED_STRINGS = {("plugins.py", "selflearn.builtin.plugin")}


def _module_name(path: Path) -> str:
    parts = path.relative_to(CORE.parent.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[str]:
    """Every module an ``import`` or ``from ... import`` in ``path`` names, relative imports
    resolved against the file's package."""
    tree = ast.parse(path.read_text(), str(path))
    package = _module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out += [module] + [f"{module}.{a.name}" for a in node.names]
    return out


def builtin_strings(path: Path) -> list[str]:
    """String constants (docstrings excluded) that name a selflearn.builtin module."""
    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr)}
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and "selflearn.builtin" in n.value]


def test_core_imports_nothing_from_builtin():
    files = sorted(CORE.rglob("*.py"))
    assert len(files) > 20
    bad = [f"{f.relative_to(CORE)}: {m}" for f in files for m in imported_modules(f)
           if m == "selflearn.builtin" or m.startswith("selflearn.builtin.")]
    assert bad == [], "selflearn/core imports selflearn/builtin: " + "; ".join(bad)
    named = {(f.name, s) for f in files for s in builtin_strings(f)}
    assert named <= ALLOWED_STRINGS, f"selflearn/core names built-in modules: {named - ALLOWED_STRINGS}"


def test_the_scan_sees_relative_and_absolute_imports(tmp_path, monkeypatch):
    """The scan itself would catch each way of importing a built-in (it cannot pass vacuously)."""
    import tests.core.test_layering as mod

    fake_core = tmp_path / "selflearn" / "core"
    (fake_core / "stages").mkdir(parents=True)
    monkeypatch.setattr(mod, "CORE", fake_core)
    cases = {
        "stages/a.py": "from ...builtin.evaluation import report\n",
        "b.py": "from ..builtin import plugin\n",
        "c.py": "import selflearn.builtin.backends.hf as hf\n",
        "d.py": "from selflearn.builtin.openai_client import ClientOptions\n",
    }
    for name, code in cases.items():
        (fake_core / name).write_text(code)
        found = imported_modules(fake_core / name)
        assert any(m.startswith("selflearn.builtin") for m in found), (name, found)
    (fake_core / "e.py").write_text('"""selflearn.builtin in a docstring is fine."""\nX = "selflearn.builtin.x:y"\n')
    assert builtin_strings(fake_core / "e.py") == ["selflearn.builtin.x:y"]
    assert imported_modules(fake_core / "e.py") == []
