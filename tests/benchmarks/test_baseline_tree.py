"""benchmarks/baseline_tree.sh: an earlier commit exported into bench_base/ (git-ignored), the
tree the baseline arm of a side-by-side GPU call runs from."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.skipif(shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout")
def test_exports_the_revision_into_an_ignored_folder(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    # the script of the working tree, run in a clone with one more commit than the revision asked for
    shutil.copy(ROOT / "benchmarks" / "baseline_tree.sh", clone / "benchmarks" / "baseline_tree.sh")
    shutil.copy(ROOT / ".gitignore", clone / ".gitignore")
    base = git(clone, "rev-parse", "HEAD")
    (clone / "newer.txt").write_text("a change after the baseline\n")
    git(clone, "add", "-A")
    git(clone, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "newer")
    out = subprocess.run(["bash", "benchmarks/baseline_tree.sh", base], cwd=clone, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    tree = clone / "bench_base"
    assert (tree / "REVISION").read_text().strip() == base
    assert (tree / "selflearn" / "__init__.py").exists() and (tree / "benchmarks" / "gpu_calls.sh").exists()
    assert not (tree / "newer.txt").exists()  # the revision's files, not the working tree's
    assert "bench_base" not in git(clone, "status", "--short")  # ignored: never committed by accident
    bad = subprocess.run(["bash", "benchmarks/baseline_tree.sh", "no-such-rev"], cwd=clone, capture_output=True, text=True)
    assert bad.returncode != 0
