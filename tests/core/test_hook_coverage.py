"""Every hook spec is exercised by at least one test that says so with
``@pytest.mark.hooks(NAME, ...)``, and no such mark names a hook that does not exist."""

from __future__ import annotations

import ast
from pathlib import Path

from selflearn.core.hookdocs import hook_names

TESTS = Path(__file__).resolve().parents[1]


def _is_hooks_mark(node: ast.AST) -> bool:
    """``pytest.mark.hooks(...)``."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "hooks" and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "mark")


def marked_hooks(root: Path = TESTS) -> dict[str, list[str]]:
    """hook name -> the tests (file::function) whose hooks mark names it."""
    out: dict[str, list[str]] = {}
    for path in sorted(root.rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not fn.name.startswith("test"):
                continue
            for dec in fn.decorator_list:
                if _is_hooks_mark(dec):
                    assert isinstance(dec, ast.Call)
                    for arg in dec.args:
                        assert isinstance(arg, ast.Constant), f"{path}:{fn.lineno}: hooks() takes names"
                        out.setdefault(str(arg.value), []).append(f"{path.relative_to(root)}::{fn.name}")
    return out


def test_every_hook_has_a_test():
    marked = marked_hooks()
    missing = [h for h in hook_names() if h not in marked]
    assert not missing, f"hooks without a test marked @pytest.mark.hooks(...): {missing}"
    unknown = sorted(set(marked) - set(hook_names()))
    assert not unknown, f"@pytest.mark.hooks names no such hook: {unknown} ({[marked[u] for u in unknown]})"


def test_the_scan_finds_marks_and_would_report_a_missing_hook(tmp_path):
    (tmp_path / "test_x.py").write_text(
        "import pytest\n\n@pytest.mark.hooks('on_run_end', 'resolve_secret')\ndef test_a():\n    pass\n"
        "\n@pytest.mark.slow\ndef test_b():\n    pass\n")
    marked = marked_hooks(tmp_path)
    assert marked == {"on_run_end": ["test_x.py::test_a"], "resolve_secret": ["test_x.py::test_a"]}
    assert [h for h in hook_names() if h not in marked]  # a scan of these tests alone would fail
