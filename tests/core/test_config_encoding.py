"""A config file that is not UTF-8: a clear error with the file, the byte offset and the fix
(exit code 2 from the CLI, no traceback); UTF-8 with a BOM and UTF-16 with a BOM still load."""

from __future__ import annotations

from pathlib import Path

import pytest

from selflearn.cli import main
from selflearn.core.config import load_yaml
from selflearn.core.errors import ConfigError


def test_latin1_config_names_file_offset_line_and_fix(tmp_path: Path) -> None:
    cfg = tmp_path / "latin1.yaml"
    text = "run_dir: runs/x\nname: caf\u00e9 run\n"
    cfg.write_bytes(text.encode("latin-1"))
    offset = text.encode("latin-1").index(b"\xe9")
    with pytest.raises(ConfigError) as err:
        load_yaml(cfg)
    msg = str(err.value)
    assert str(cfg) in msg and f"byte offset {offset}" in msg and "line 2, column 10" in msg
    assert "0xe9" in msg and "UTF-8" in msg and "iconv" in msg


def test_bom_utf8_and_utf16_configs_load(tmp_path: Path) -> None:
    text = "run_dir: runs/x\nname: caf\u00e9\n"
    for name, data in {"bom8.yaml": b"\xef\xbb\xbf" + text.encode("utf-8"),
                       "utf16.yaml": text.encode("utf-16")}.items():
        (tmp_path / name).write_bytes(data)
        assert load_yaml(tmp_path / name) == {"run_dir": "runs/x", "name": "caf\u00e9"}


def test_cli_exits_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(b"run_dir: x\nname: \x80\n")
    assert main(["run", str(cfg)]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the CLI wraps its paragraph
    assert "is not valid UTF-8" in err and "Traceback" not in err and "byte offset 17" in err
