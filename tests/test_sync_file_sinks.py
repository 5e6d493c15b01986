"""Sync jobs writing GeoJSON, GeoJSONL and shapefile outputs: the changes are merged into a
GeoParquet shadow kept beside the state file and the output is rendered from it.

Layer A is a GeoJSON file served by `ags-etl serve` on a fixed port; it is changed between
syncs by rewriting it and restarting the server (helpers of tests/cli/test_run_sync.py). Each
output is read back with its own reader and compared with A feature by feature.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import fiona
import pytest
import shapely

from ags_etl.config import parse_pipeline
from ags_etl.errors import PipelineFileError
from tests.cli.test_run_sync import (
    BASE_DAY,
    PASSWORD,
    Source,
    edit,
    make_layer,
    run,
    state_rows,
)

Rows = dict[int, dict[str, Any]]


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    folder = tmp_path / "data"
    folder.mkdir()
    src = Source(folder, "--max-record-count", "7", "--token-auth", f"sync:{PASSWORD}")
    yield src
    src.close()


def pipeline(tmp_path: Path, sink_type: str, out: Path, sync: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""\
version: 1
jobs:
  - name: a
    source:
      url: "${{SERVER}}/arcgis/rest/services/a/FeatureServer/0"
      auth: {{username: sync, password: "${{PW}}"}}
    sink: {{type: {sink_type}, path: "{out}"}}
    sync: {sync}
""")
    out.parent.mkdir(exist_ok=True)
    return path


def _geom(value: Any) -> shapely.Geometry | None:
    return None if value is None else shapely.geometry.shape(value)


def read_geojson(path: Path) -> Rows:
    return _rows(json.loads(path.read_text("utf-8"))["features"])


def read_geojsonl(path: Path) -> Rows:
    return _rows([json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()])


def _rows(features: list[dict[str, Any]]) -> Rows:
    rows: Rows = {}
    for f in features:
        p = f["properties"]
        assert p["OBJECTID"] not in rows, f"OID {p['OBJECTID']} twice in the output"
        rows[p["OBJECTID"]] = {"NAME": p["NAME"], "SEQ": p["SEQ"], "EditDate": p["EditDate"][:19],
                               "geometry": _geom(f["geometry"])}
    return rows


def read_shapefile(path: Path) -> Rows:
    rows: Rows = {}
    with fiona.open(path) as src:
        for f in src:
            p = f["properties"]
            assert p["OBJECTID"] not in rows, f"OID {p['OBJECTID']} twice in the output"
            # a shapefile holds dates without time
            rows[p["OBJECTID"]] = {"NAME": p["NAME"], "SEQ": p["SEQ"], "EditDate": str(p["EditDate"])[:10],
                                   "geometry": _geom(f["geometry"])}
    return rows


SINKS: dict[str, tuple[str, Callable[[Path], Rows], int]] = {
    # type: (file name, reader, characters of EditDate compared)
    "geojson": ("a.geojson", read_geojson, 19),
    "geojsonl": ("a.geojsonl", read_geojsonl, 19),
    "shapefile": ("a.shp", read_shapefile, 10),
}


def assert_equal(output: Rows, layer: Rows, date_chars: int) -> None:
    assert sorted(output) == sorted(layer)
    for oid, want in layer.items():
        got = output[oid]
        assert (got["NAME"], got["SEQ"]) == (want["NAME"], want["SEQ"]), oid
        assert got["EditDate"][:date_chars] == want["EditDate"][:date_chars], oid
        if want["geometry"] is None:
            assert got["geometry"] is None, oid
        else:
            assert got["geometry"] is not None and shapely.equals_exact(got["geometry"], want["geometry"], 1e-7), oid


def shadows(file: Path) -> list[str]:
    folder = file.parent / ".ags_etl" / "data"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


@pytest.mark.parametrize("sink_type", sorted(SINKS))
def test_merge_adds_updates_deletes_then_nothing(source: Source, tmp_path: Path, sink_type: str) -> None:
    name, read, date_chars = SINKS[sink_type]
    layer = make_layer(16)
    source.publish(layer)
    out = tmp_path / "out" / name
    file = pipeline(tmp_path, sink_type, out, "{cursor_field: EditDate, lag: 5m, detect_deletes: true}")
    report = tmp_path / "report.json"

    first = run(file, source, "--report", str(report))
    assert first.returncode == 0, first.stderr
    assert_equal(read(out), layer, date_chars)
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["written"], job["deleted"]) == ("full", 16, 0)
    kept = shadows(file)
    assert len(kept) == 1 and kept[0].startswith("a.") and kept[0].endswith(".parquet"), kept

    layer = edit(layer, BASE_DAY + dt.timedelta(days=5))  # adds 2, updates 3 (null, (0, 0), no geometry), deletes 2
    source.publish(layer)
    second = run(file, source, "--report", str(report))
    assert second.returncode == 0, second.stderr
    assert_equal(read(out), layer, date_chars)
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["deleted"], job["written"]) == ("incremental", 2, 16)
    assert job["features_read"] == 6, "the 5 rows edited since, and the last one before, within the lag"
    state = state_rows(file)

    third = run(file, source, "--report", str(report))
    assert third.returncode == 0, third.stderr
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["deleted"]) == ("incremental", 0)
    assert_equal(read(out), layer, date_chars)
    assert [r[2] for r in state_rows(file)] == [r[2] for r in state], "cursor unchanged"
    assert shadows(file) == kept, "one shadow, no pending file or temp output left"
    for blob in [(file.parent / ".ags_etl" / "state.db").read_bytes(), report.read_bytes(),
                 *(p.read_bytes() for p in (file.parent / ".ags_etl" / "data").iterdir())]:
        assert PASSWORD.encode() not in blob


def test_missing_shadow_or_output_means_a_full_run(source: Source, tmp_path: Path) -> None:
    layer = make_layer(10)
    source.publish(layer)
    out = tmp_path / "out" / "a.geojson"
    file = pipeline(tmp_path, "geojson", out, "{cursor_field: EditDate, detect_deletes: true}")
    report = tmp_path / "report.json"
    assert run(file, source).returncode == 0
    shadow = file.parent / ".ags_etl" / "data" / shadows(file)[0]

    shadow.unlink()
    assert run(file, source, "--report", str(report)).returncode == 0
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["written"]) == ("full", 10) and shadow.exists()

    out.unlink()
    assert run(file, source, "--report", str(report)).returncode == 0
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["written"]) == ("full", 10)
    assert_equal(read_geojson(out), layer, 19)

    again = run(file, source, "--report", str(report))
    assert again.returncode == 0 and json.loads(report.read_text())["jobs"][0]["sync"] == "incremental"


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_killed_after_output_commit_leaves_state_and_next_run_repairs(source: Source, tmp_path: Path) -> None:
    layer = make_layer(12)
    source.publish(layer)
    out = tmp_path / "out" / "a.shp"
    file = pipeline(tmp_path, "shapefile", out, "{cursor_field: EditDate, detect_deletes: true}")
    assert run(file, source).returncode == 0
    before = state_rows(file)
    layer = edit(layer, BASE_DAY + dt.timedelta(days=3))
    source.publish(layer)
    committed_at = out.stat().st_mtime_ns

    db = file.parent / ".ags_etl" / "state.db"
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the run reads the state; its commit waits behind this one
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(file), "-q"],
            env={**os.environ, "SERVER": source.base, "PW": PASSWORD},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: out.stat().st_mtime_ns != committed_at, "the output to be committed")
        _wait(lambda: not any(".pending." in n for n in shadows(file)), "the shadow to be renamed into place")
        time.sleep(0.2)
        assert proc.poll() is None, "the run should be waiting at its state commit"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert state_rows(file) == before, "state as it was"
    assert_equal(read_shapefile(out), layer, 10)

    # the next run reads again from the old cursor: the same changes merge into the new shadow once
    layer = edit(layer, BASE_DAY + dt.timedelta(days=4))
    source.publish(layer)
    again = run(file, source)
    assert again.returncode == 0, again.stderr
    assert_equal(read_shapefile(out), layer, 10)
    assert state_rows(file) != before


def test_sync_accepts_every_local_file_sink_and_refuses_urls() -> None:
    url = "https://host/arcgis/rest/services/S/FeatureServer/0"
    jobs = [{"name": t, "source": {"url": url}, "sink": {"type": t, "path": f"out/a.{ext}"},
             "sync": {"cursor_field": "EditDate"}}
            for t, ext in (("geojson", "geojson"), ("geojsonl", "geojsonl"), ("shapefile", "shp"), ("kmz", "kmz"),
                           ("geoparquet", "parquet"))]
    assert len(parse_pipeline({"version": 1, "jobs": jobs}).jobs) == 5
    with pytest.raises(PipelineFileError, match="sync: a sync job merges into a single local file"):
        parse_pipeline({"version": 1, "jobs": [{**jobs[0], "sink": {"type": "geojson", "path": "s3://b/a.geojson"}}]})
