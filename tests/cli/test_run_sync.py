"""Sync jobs as a user runs them: `ags-etl run` processes against `ags-etl serve` on 127.0.0.1.

Layer A is a GeoJSON file; it is changed between syncs by rewriting the file and restarting
the server on the same port (the server builds its store when it starts). The sink is a
GeoParquet file, read back with pyarrow and compared with A feature by feature.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import shapely
from click.testing import CliRunner

from ags_etl.cli import main
from ags_etl.server.testing import run_server
from ags_etl.state import StateStore, lock_is_held
from tests.cli.helpers import ags

PASSWORD = "pw-Sync-4f1e9"  # the server's user password; must never appear in outputs, reports or state
BASE_DAY = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def _iso(moment: dt.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def make_layer(n: int) -> dict[int, dict[str, Any]]:
    """OID → {NAME, SEQ, EditDate, geometry}: OIDs with gaps, one feature at (0, 0), one without geometry."""
    rows = {}
    for i in range(n):
        oid = 1 + i * 2
        geom = None if i == 3 else shapely.Point(0, 0) if i == 0 else shapely.Point(i * 0.5, -i * 0.25)
        rows[oid] = {"NAME": f"f{oid}", "SEQ": 100 + i, "EditDate": _iso(BASE_DAY + dt.timedelta(hours=i)),
                     "geometry": geom}
    return rows


def write_layer(path: Path, rows: dict[int, dict[str, Any]]) -> None:
    feats = []
    for oid, r in sorted(rows.items()):
        props = {"OBJECTID": oid, "NAME": r["NAME"], "SEQ": r["SEQ"], "EditDate": r["EditDate"]}
        geom = r["geometry"]
        feats.append({"type": "Feature", "properties": props,
                      "geometry": None if geom is None else json.loads(shapely.to_geojson(geom))})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": feats}), "utf-8")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Source:
    """Layer A served on a fixed port; :meth:`publish` rewrites it and restarts the server."""

    def __init__(self, folder: Path, *extra: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.extra = extra
        self.base = f"http://127.0.0.1:{self.port}"
        self._stack = contextlib.ExitStack()

    def publish(self, rows: dict[int, dict[str, Any]]) -> None:
        self._stack.close()
        write_layer(self.folder / "a.geojson", rows)
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(run_server(self.folder, "--port", str(self.port), *self.extra))

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def source(tmp_path: Path) -> Iterator[Source]:
    folder = tmp_path / "data"
    folder.mkdir()
    src = Source(folder, "--max-record-count", "7", "--token-auth", f"sync:{PASSWORD}")
    yield src
    src.close()


def pipeline(tmp_path: Path, sync: str, job: str = "a", concurrency: int = 4) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""\
version: 1
jobs:
  - name: {job}
    source:
      url: "${{SERVER}}/arcgis/rest/services/a/FeatureServer/0"
      auth: {{username: sync, password: "${{PW}}"}}
      concurrency: {concurrency}
    sink: {{type: geoparquet, path: "{tmp_path / 'out' / 'a.parquet'}"}}
    sync: {sync}
""")
    (tmp_path / "out").mkdir(exist_ok=True)
    return path


@dataclass
class Ran:
    returncode: int
    stdout: str
    stderr: str


def run(file: Path, src: Source, *args: str) -> Ran:
    """``ags-etl run FILE ARGS`` in this process (the kill and lock tests start real processes)."""
    result = CliRunner().invoke(main, ["run", str(file), *args], env={"SERVER": src.base, "PW": PASSWORD})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    ran = Ran(result.exit_code, result.stdout, result.stderr)
    assert PASSWORD not in ran.stdout + ran.stderr
    return ran


def read_output(path: Path) -> dict[int, dict[str, Any]]:
    """OID → row of the GeoParquet output; fails if an OID is there twice."""
    table = pq.read_table(path, columns=["OBJECTID", "NAME", "SEQ", "EditDate", "geometry"])
    rows: dict[int, dict[str, Any]] = {}
    for r in table.to_pylist():
        oid = r["OBJECTID"]
        assert oid not in rows, f"OID {oid} twice in the output"
        wkb = r["geometry"]
        rows[oid] = {"NAME": r["NAME"], "SEQ": r["SEQ"], "EditDate": _iso(r["EditDate"]),
                     "geometry": None if wkb is None else shapely.from_wkb(wkb)}
    return rows


def assert_equal(output: dict[int, dict[str, Any]], layer: dict[int, dict[str, Any]]) -> None:
    assert sorted(output) == sorted(layer)
    for oid, want in layer.items():
        got = output[oid]
        assert {k: got[k] for k in ("NAME", "SEQ", "EditDate")} == {k: want[k] for k in ("NAME", "SEQ", "EditDate")}, oid
        if want["geometry"] is None:
            assert got["geometry"] is None, oid
        else:
            assert got["geometry"] is not None and shapely.equals_exact(got["geometry"], want["geometry"], 1e-9), oid


def edit(rows: dict[int, dict[str, Any]], edited_at: dt.datetime) -> dict[int, dict[str, Any]]:
    """Adds two features, updates three (a name to null, a geometry to (0, 0), a geometry to
    none), deletes two; edited rows get ``edited_at`` as EditDate and a larger SEQ."""
    rows = {oid: dict(r) for oid, r in rows.items()}
    stamp, seq = _iso(edited_at), max(r["SEQ"] for r in rows.values())
    oids = sorted(rows)
    rows[oids[2]].update(NAME=None, EditDate=stamp, SEQ=seq + 1)
    rows[oids[4]].update(geometry=shapely.Point(0, 0), EditDate=stamp, SEQ=seq + 2)
    rows[oids[5]].update(geometry=None, NAME="moved away", EditDate=stamp, SEQ=seq + 3)
    del rows[oids[1]], rows[oids[6]]
    for k, oid in enumerate((oids[-1] + 2, oids[-1] + 10)):
        rows[oid] = {"NAME": f"new {k}", "SEQ": seq + 4 + k, "EditDate": stamp, "geometry": shapely.Point(k + 3, 4)}
    return rows


def state_rows(file: Path) -> list[tuple[Any, ...]]:
    db = file.parent / ".ags_etl" / "state.db"
    if not db.exists():
        return []
    with contextlib.closing(sqlite3.connect(db)) as conn:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'job_state'").fetchone() is None:
            return []
        return conn.execute("SELECT * FROM job_state ORDER BY name").fetchall()


def test_editdate_sync_adds_updates_deletes_then_nothing(source: Source, tmp_path: Path) -> None:
    layer = make_layer(20)
    source.publish(layer)
    file = pipeline(tmp_path, "{cursor_field: EditDate, lag: 5m, detect_deletes: true}")
    out = tmp_path / "out" / "a.parquet"
    report = tmp_path / "report.json"

    first = run(file, source, "--report", str(report))
    assert first.returncode == 0, first.stderr
    assert_equal(read_output(out), layer)
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["written"], job["deleted"]) == ("full", 20, 0)

    layer = edit(layer, BASE_DAY + dt.timedelta(days=5))
    source.publish(layer)
    second = run(file, source, "--report", str(report))
    assert second.returncode == 0, second.stderr
    assert_equal(read_output(out), layer)
    job = json.loads(report.read_text())["jobs"][0]
    assert job["sync"] == "incremental" and job["deleted"] == 2
    assert job["features_read"] == 6, "the 5 rows edited since, and the last one before, within the lag"
    state_after_second = state_rows(file)

    third = run(file, source, "--report", str(report))
    assert third.returncode == 0, third.stderr
    assert_equal(read_output(out), layer)
    job = json.loads(report.read_text())["jobs"][0]
    assert (job["sync"], job["deleted"]) == ("incremental", 0)
    assert [r[2] for r in state_rows(file)] == [r[2] for r in state_after_second], "cursor unchanged"

    state = StateStore(file.parent / ".ags_etl" / "state.db").get("a")
    assert state is not None and state.cursor is not None and state.cursor.text().startswith("2024-01-06T00:00:00")
    for blob in (file.parent / ".ags_etl" / "state.db").read_bytes(), report.read_bytes():
        assert PASSWORD.encode() not in blob and b"token" not in blob.lower()


def test_numeric_cursor_without_deletes_and_full_refresh(source: Source, tmp_path: Path) -> None:
    layer = make_layer(12)
    source.publish(layer)
    file = pipeline(tmp_path, "{cursor_field: SEQ, initial_value: 0}")
    out = tmp_path / "out" / "a.parquet"
    assert run(file, source).returncode == 0
    assert_equal(read_output(out), layer)

    edited = edit(layer, BASE_DAY + dt.timedelta(days=1))
    source.publish(edited)
    proc = run(file, source)
    assert proc.returncode == 0, proc.stderr
    kept = read_output(out)
    deleted = set(layer) - set(edited)
    assert sorted(kept) == sorted(set(edited) | deleted), "without detect_deletes deleted rows stay"
    assert_equal({k: v for k, v in kept.items() if k not in deleted}, edited)

    proc = run(file, source, "--full-refresh")
    assert proc.returncode == 0, proc.stderr
    assert_equal(read_output(out), edited)

    listed = CliRunner().invoke(main, ["state", "list", str(file)])
    assert listed.exit_code == 0 and listed.stdout.splitlines()[1].split()[:3] == ["a", "full", repr(max(
        r["SEQ"] for r in edited.values()))]
    shown = CliRunner().invoke(main, ["state", "show", str(file), "a"])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["mode"] == "full"
    cleared = CliRunner().invoke(main, ["state", "clear", str(file)])
    assert (cleared.exit_code, cleared.stdout.strip()) == (0, "cleared a")
    assert state_rows(file) == []
    assert CliRunner().invoke(main, ["state", "show", str(file), "a"]).exit_code == 2


def _wait(predicate: Any, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def test_killed_after_sink_commit_leaves_state_and_next_run_repairs(source: Source, tmp_path: Path) -> None:
    layer = make_layer(15)
    source.publish(layer)
    file = pipeline(tmp_path, "{cursor_field: EditDate, detect_deletes: true}")
    out = tmp_path / "out" / "a.parquet"
    assert run(file, source).returncode == 0
    before = state_rows(file)
    layer = edit(layer, BASE_DAY + dt.timedelta(days=3))
    source.publish(layer)
    committed_at = out.stat().st_mtime_ns

    db = file.parent / ".ags_etl" / "state.db"
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the run may read the state; its commit waits behind this one
    try:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(file), "-q"],
            env={**os.environ, "SERVER": source.base, "PW": PASSWORD},
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )
        _wait(lambda: out.stat().st_mtime_ns != committed_at, "the sink to commit")
        time.sleep(0.2)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert state_rows(file) == before, "state as it was"
    assert_equal(read_output(out), layer)  # the sink had committed

    layer = edit(layer, BASE_DAY + dt.timedelta(days=4))
    source.publish(layer)
    again = run(file, source)
    assert again.returncode == 0, again.stderr
    assert_equal(read_output(out), layer)


def test_killed_during_extraction_changes_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    src = Source(folder, "--max-record-count", "2", "--latency-ms", "100", "--token-auth", f"sync:{PASSWORD}")
    try:
        layer = make_layer(10)
        src.publish(layer)
        file = pipeline(tmp_path, "{cursor_field: EditDate, detect_deletes: true}")
        out = tmp_path / "out" / "a.parquet"
        assert run(file, src).returncode == 0
        before, content = state_rows(file), out.read_bytes()
        layer = edit(layer, BASE_DAY + dt.timedelta(days=2))
        src.publish(layer)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(file), "-q"],
            env={**os.environ, "SERVER": src.base, "PW": PASSWORD},
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        _wait(lambda: any(p.name.endswith(".part") for p in out.parent.iterdir()), "the run to open its temp output")
        assert proc.poll() is None, "the run should still be reading"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        assert state_rows(file) == before and out.read_bytes() == content
        stale = [p.name for p in out.parent.iterdir() if p.name.endswith(".part")]
        report = tmp_path / "r.json"
        again = run(file, src, "--report", str(report))
        assert again.returncode == 0, again.stderr
        assert_equal(read_output(out), layer)
        warnings = json.loads(report.read_text())["jobs"][0]["warnings"]
        assert stale and len([w for w in warnings if "temp output" in w]) == len(stale)
        assert [p.name for p in out.parent.iterdir() if p.name.endswith(".part")] == []
    finally:
        src.close()


def test_two_runs_at_once_one_exits_75(source: Source, tmp_path: Path) -> None:
    layer = make_layer(12)
    source.publish(layer)
    file = pipeline(tmp_path, "{cursor_field: EditDate}")
    out = tmp_path / "out" / "a.parquet"
    db = file.parent / ".ags_etl" / "state.db"
    lock_dir = db.parent / "locks"
    db.parent.mkdir()
    blocker = sqlite3.connect(db, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the first run at its state commit, with its lock taken
    argv = [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(file), "--job", "a", "-q"]
    first = subprocess.Popen(argv, env={**os.environ, "SERVER": source.base, "PW": PASSWORD},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait(out.exists, "the first run's sink to commit")
        written = (out.stat().st_mtime_ns, out.read_bytes())
        report = tmp_path / "second.json"
        second = ags("run", str(file), "--job", "a", "--report", str(report), env={"SERVER": source.base, "PW": PASSWORD})
        assert second.returncode == 75, second.stderr
        assert "is being run by another process" in second.stderr and PASSWORD not in second.stderr
        data = json.loads(report.read_text())
        assert (data["exit_code"], data["status"], data["jobs"][0]["status"]) == (75, "locked", "locked")
        assert (out.stat().st_mtime_ns, out.read_bytes()) == written, "the locked run changed nothing"
        refused = ags("state", "clear", str(file), "a")
        assert refused.returncode == 75, refused.stderr
        assert first.poll() is None, "the first run waited all along"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 0, stderr
    assert_equal(read_output(out), layer)
    assert [s.name for s in StateStore(db).rows()] == ["a"]
    assert not lock_is_held(lock_dir, "a")
