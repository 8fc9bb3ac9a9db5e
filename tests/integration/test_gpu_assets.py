"""examples/reproduction/prepare_gpu_assets.py carries the gguf reader as a bare folder to a
machine with no package index: its version must come with it, because transformers asks
importlib.metadata for it and treats "N/A" as an invalid version (the GPU run of issue 20
failed on that once)."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "examples" / "reproduction"


def test_the_carried_gguf_package_keeps_its_version(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("prepare_gpu_assets", HERE / "prepare_gpu_assets.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.copy_package("gguf", str(tmp_path))
    module.copy_metadata("gguf", str(tmp_path))
    found = list(importlib.metadata.distributions(path=[str(tmp_path)]))
    assert [d.metadata["Name"] for d in found] == ["gguf"]
    assert found[0].version == importlib.metadata.version("gguf")
    assert (tmp_path / "gguf" / "__init__.py").exists()
