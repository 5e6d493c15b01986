"""The atomic-output helpers every file loader relies on."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ags_etl.errors import ConfigError, OutputExistsError
from ags_etl.loaders.base import atomic_file, check_target


def test_atomic_file_appears_only_on_success_with_normal_mode(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with atomic_file(target, overwrite=False) as tmp:
        tmp.write_text("done")
        assert not target.exists()
    assert target.read_text() == "done"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_file_failure_keeps_earlier_output(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("earlier")
    with pytest.raises(RuntimeError):
        with atomic_file(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_check_target(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        check_target(tmp_path / "missing" / "x.geojson", overwrite=False)
    with pytest.raises(ConfigError, match="is a folder"):
        check_target(tmp_path, overwrite=True)
    (tmp_path / "x.geojson").write_text("{}")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        check_target(tmp_path / "x.geojson", overwrite=False)
    check_target(tmp_path / "x.geojson", overwrite=True)
