"""`ags-etl pull` in a hostile place: a read-only or full output folder, stale temp outputs of a
killed run. Real processes against the local FeatureServer or a recording stub on 127.0.0.1;
real file systems (small tmpfs mounts, which needs root, as in CI; skipped otherwise)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from ags_etl.server.testing import run_server
from tests.cli.helpers import N, ags, one_error_line, url
from tests.layers import write_layer
from tests.loopback import JSONHandler, serving


@contextlib.contextmanager
def tmpfs(folder: Path, options: str) -> Iterator[Path]:
    """Mount a tmpfs with ``options`` on ``folder`` for the block; skip when mounting is not allowed."""
    folder.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); needs root")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


class Recorder(JSONHandler):
    """Answers 500 to everything and records the paths asked for."""

    seen: ClassVar[list[str]] = []
    lock = threading.Lock()

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        with self.lock:
            self.seen.append(path)
        return 500, "application/json", b"{}"


def test_read_only_folder_refused_before_any_request(tmp_path: Path) -> None:
    Recorder.seen = []
    with tmpfs(tmp_path / "ro", "ro,size=64k") as folder, serving(Recorder) as base:
        proc = ags("pull", url(base, "points"), "-o", str(folder / "x.geojson"))
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc)
    assert f"output folder {str(folder)!r} cannot be written (Read-only file system)" in line
    assert "choose another -o folder" in line
    assert Recorder.seen == [], "no request before the output folder is known to be writable"


def test_output_folder_that_is_a_file(tmp_path: Path) -> None:
    Recorder.seen = []
    (tmp_path / "file").write_text("not a folder")
    with serving(Recorder) as base:
        proc = ags("pull", url(base, "points"), "-o", str(tmp_path / "file" / "x.geojson"))
    assert proc.returncode == 2
    assert "is not a folder" in one_error_line(proc)
    assert Recorder.seen == []


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("hostile-layers")
    write_layer(d / "polygons.geojson", "polygons", N)
    with run_server(d, "--max-record-count", "30") as base:
        yield base


@pytest.mark.parametrize("name", ["x.geojson", "x.geojsonl", "x.kmz", "x.parquet"])
def test_full_disk_is_one_line_naming_the_output(server: str, tmp_path: Path, name: str) -> None:
    # 4 KiB hold the probe and the temp file's first bytes, not the layer.
    with tmpfs(tmp_path / "full", "size=4k") as folder:
        proc = ags("pull", url(server, "polygons"), "-o", str(folder / name))
        left = sorted(os.listdir(folder))
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert f"could not write {str(folder / name)!r}: " in line and "No space left on device" in line
    assert line.endswith("free some space there or choose another -o folder")
    assert left == [], "the temp output is removed"


def test_full_disk_shapefile_no_traceback(server: str, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "full", "size=4k") as folder:
        proc = ags("pull", url(server, "polygons"), "-o", str(folder / "x.shp"))
        left = sorted(os.listdir(folder))
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith("ags-etl: error: ")
    assert left == [], "the temp folder is removed"


@pytest.mark.parametrize("name", ["x.geojson", "x.shp"])
def test_stale_temp_outputs_are_reported_not_deleted(server: str, tmp_path: Path, name: str) -> None:
    stale_file = tmp_path / f".{name}.k3j_x9ab.part"  # as a SIGKILLed atomic_file leaves it
    stale_file.write_text("half")
    stale_dir = tmp_path / f".{name}.q1w2e3r4.part"  # as a SIGKILLed shapefile run leaves it
    stale_dir.mkdir()
    other = tmp_path / ".other.geojson.a1b2c3d4.part"  # another target's: not ours to report
    other.write_text("half")
    proc = ags("pull", url(server, "polygons"), "-o", str(tmp_path / name))
    assert proc.returncode == 0, proc.stderr
    warnings = [line for line in proc.stderr.splitlines() if "temp output" in line]
    assert len(warnings) == 1, proc.stderr
    assert warnings[0].startswith("warning: ")
    assert f"{stale_file.name}, {stale_dir.name} in {str(tmp_path)!r}" in warnings[0]
    assert other.name not in warnings[0]
    assert "delete them once no other run of this job is in progress" in warnings[0]
    assert stale_file.read_text() == "half" and stale_dir.is_dir() and other.exists()
    assert f"wrote {N} features" in proc.stderr
