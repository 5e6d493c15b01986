"""Sync jobs whose sink is a feature service: layer A (`ags-etl serve --editable`) is copied
into the empty layer B (another `ags-etl serve --editable`) and kept equal to it, over HTTP.

A and B are served from the same empty point shapefile, each with its own store and its own
user (`--token-auth`); A is filled and edited through applyEdits, so its editor-tracking
``EditDate`` is the sync's cursor. B's access log counts the applyEdits requests a run sends.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fiona
import pytest
import requests
import shapely
from click.testing import CliRunner

from ags_etl.cli import main
from ags_etl.config import parse_pipeline
from ags_etl.errors import PipelineFileError
from ags_etl.server.testing import run_server
from tests.cli.test_run_sync import free_port, state_rows

A_PW = "pw-A-7c21e"  # the source's password
B_PW = "pw-B-93fd0"  # the target's password; neither may appear in outputs, reports or state
COMPARED = ("code", "name", "pop", "ratio")


def _seeded_layer(folder: Path, name: str) -> None:
    """A point shapefile with one feature (the server learns the geometry type from the data);
    :meth:`Layer.empty` deletes it."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = {"geometry": "Point", "properties": {"code": "str:16", "name": "str:40", "pop": "int", "ratio": "float"}}
    with fiona.open(folder / f"{name}.shp", "w", driver="ESRI Shapefile", schema=schema, crs="EPSG:4326") as dst:
        dst.write({"geometry": {"type": "Point", "coordinates": (1.0, 2.0)},
                   "properties": {"code": "SEED", "name": "seed", "pop": 1, "ratio": 0.5}})


def _post(url: str, **params: Any) -> dict[str, Any]:
    response = requests.post(url, data={"f": "json", **params}, timeout=30)
    assert response.status_code == 200, response.text
    data = response.json()
    assert "error" not in data, data
    return data


@dataclass
class Layer:
    """One served editable layer: ``publish`` (re)starts its server on the same store."""

    folder: Path
    name: str
    user: str
    password: str
    log: Path
    base: str = ""
    _stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def start(self, *extra: str, port: int = 0) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()
        self.base = self._stack.enter_context(run_server(
            self.folder, "--editable", "--store", str(self.folder.parent / f"{self.name}-store"),
            "--token-auth", f"{self.user}:{self.password}", "--port", str(port), *extra, log_path=self.log,
        ))

    def stop(self) -> None:
        self._stack.close()

    @property
    def url(self) -> str:
        return f"{self.base}/arcgis/rest/services/{self.name}/FeatureServer/0"

    def token(self) -> str:
        return str(_post(f"{self.base}/arcgis/tokens/generateToken", username=self.user, password=self.password,
                         client="referer", referer="test")["token"])

    def apply_edits(self, **edits: Any) -> dict[str, Any]:
        answer = _post(f"{self.url}/applyEdits", token=self.token(), **{k: json.dumps(v) for k, v in edits.items()})
        for kind in ("addResults", "updateResults", "deleteResults"):
            assert all(r["success"] for r in answer.get(kind, [])), answer
        return answer

    def empty(self) -> None:
        """Delete every feature (the store keeps the layer's schema)."""
        oids = _post(f"{self.url}/query", where="1=1", returnIdsOnly="true", token=self.token())["objectIds"]
        self.apply_edits(deletes=oids)

    def features(self) -> dict[str, dict[str, Any]]:
        """code → {attributes compared, geometry}; asserts every code is there once."""
        feats: list[dict[str, Any]] = []
        token = self.token()
        while True:  # page by offset: A's pages hold 9 features
            page = _post(f"{self.url}/query", where="1=1", outFields="*", returnGeometry="true", token=token,
                         orderByFields="OBJECTID", resultOffset=len(feats))
            feats += page["features"]
            if not page.get("exceededTransferLimit"):
                break
        out: dict[str, dict[str, Any]] = {}
        for f in feats:
            attrs = f["attributes"]
            assert attrs["code"] not in out, f"key {attrs['code']!r} twice in {self.name}"
            geom = f.get("geometry")
            point = None if geom is None or geom.get("x") is None else shapely.Point(geom["x"], geom["y"])
            out[attrs["code"]] = {**{k: attrs[k] for k in COMPARED[1:]}, "geometry": point, "OBJECTID": attrs["OBJECTID"]}
        return out

    def edit_requests(self) -> int:
        """applyEdits requests in the access log, once a marker request has been logged and the
        log stopped growing (the server logs each request after answering it)."""
        marker = f"/arcgis/rest/info/{time.monotonic_ns()}"
        requests.get(self.base + marker, timeout=30)
        deadline = time.monotonic() + 30
        while marker not in (text := self.log.read_text()):
            assert time.monotonic() < deadline, f"the server never logged {marker}"
            time.sleep(0.05)
        while True:
            time.sleep(0.3)
            again = self.log.read_text()
            if again == text:
                return sum(1 for line in text.splitlines() if "/applyEdits" in line)
            text = again


def assert_same(a: Layer, b: Layer) -> dict[str, dict[str, Any]]:
    """B holds every key of A once, with equal attributes and geometries (object ids aside)."""
    want, got = a.features(), b.features()
    assert sorted(got) == sorted(want)
    for code, w in want.items():
        g = got[code]
        assert {k: g[k] for k in COMPARED[1:]} == {k: w[k] for k in COMPARED[1:]}, code
        if w["geometry"] is None:
            assert g["geometry"] is None, code
        else:
            assert g["geometry"] is not None and shapely.equals_exact(g["geometry"], w["geometry"], 1e-9), code
    return want


@pytest.fixture
def layers(tmp_path: Path) -> Iterator[tuple[Layer, Layer]]:
    _seeded_layer(tmp_path / "A", "a")
    _seeded_layer(tmp_path / "B", "b")
    a = Layer(tmp_path / "A", "a", "alice", A_PW, tmp_path / "a.log")
    b = Layer(tmp_path / "B", "b", "bob", B_PW, tmp_path / "b.log")
    a.start("--max-record-count", "9")
    try:
        b.start()
        b.empty()  # B: an empty layer with A's schema; the tests restart it with their switches
        a.empty()
        a.apply_edits(adds=[
            {"attributes": {"code": f"K{i:02d}", "name": f"n{i}", "pop": i * 10, "ratio": i / 8},
             "geometry": None if i == 3 else {"x": 0.5 * i, "y": -0.25 * i}}
            for i in range(25)
        ])
        yield a, b
    finally:
        a.stop()
        b.stop()


def pipeline(tmp_path: Path, sync: str = "{cursor_field: EditDate, detect_deletes: true}", mode: str = "upsert") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""\
version: 1
jobs:
  - name: push
    source:
      url: "${{A}}/arcgis/rest/services/a/FeatureServer/0"
      auth: {{username: alice, password: "${{A_PW}}"}}
    sink:
      type: feature_service
      url: "${{B}}/arcgis/rest/services/b/FeatureServer/0"
      mode: {mode}
      key: code
      timeout: 10
      auth: {{username: bob, password: "${{B_PW}}"}}
    sync: {sync}
""")
    return path


def env(a: Layer, b: Layer) -> dict[str, str]:
    return {"A": a.base, "B": b.base, "A_PW": A_PW, "B_PW": B_PW}


def run(file: Path, a: Layer, b: Layer, report: Path) -> dict[str, Any]:
    """``ags-etl run FILE --report REPORT`` in this process; the job's report entry."""
    result = CliRunner().invoke(main, ["run", str(file), "--report", str(report)], env=env(a, b))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.stderr
    for text in (result.stdout, result.stderr, report.read_text()):
        assert A_PW not in text and B_PW not in text
    job: dict[str, Any] = json.loads(report.read_text())["jobs"][0]
    return job


def edit_source(a: Layer) -> None:
    """On A: 2 adds; updates of a name to null, a geometry to (0, 0), a geometry to null, a
    number; 2 deletes — through applyEdits, so that A sets their EditDate."""
    held = a.features()
    oid = {code: f["OBJECTID"] for code, f in held.items()}
    time.sleep(1.1)  # the cursor is compared in whole seconds: these edits are later than every earlier one
    a.apply_edits(
        adds=[{"attributes": {"code": f"N{i}", "name": f"new {i}", "pop": 1000 + i, "ratio": 0.5},
               "geometry": {"x": 3.0 + i, "y": 4.0}} for i in range(2)],
        updates=[
            {"attributes": {"OBJECTID": oid["K02"], "name": None}},
            {"attributes": {"OBJECTID": oid["K04"]}, "geometry": {"x": 0.0, "y": 0.0}},
            {"attributes": {"OBJECTID": oid["K05"]}, "geometry": None},
            {"attributes": {"OBJECTID": oid["K06"], "pop": -1}},
        ],
        deletes=[oid["K01"], oid["K07"]],
    )


def test_sync_copies_edits_deletes_and_then_sends_nothing(layers: tuple[Layer, Layer], tmp_path: Path) -> None:
    a, b = layers
    b.start("--drop-edit-answers", "1")
    file = pipeline(tmp_path)
    report = tmp_path / "report.json"

    first = run(file, a, b, report)
    assert (first["status"], first["sync"], first["written"], first["deleted"]) == ("ok", "full", 25, 0)
    assert "dropped after commit" in b.log.read_text(), "B dropped its answer to the first edit request"
    assert len(assert_same(a, b)) == 25

    edit_source(a)
    sent, state = b.edit_requests(), state_rows(file)
    dry = CliRunner().invoke(main, ["run", str(file), "--dry-run", "-q"], env=env(a, b))
    assert dry.exit_code == 0, dry.stderr
    printed = sorted(line.split(": ", 2)[2].split(" objectid=")[0] for line in dry.stdout.splitlines())
    assert printed == ["add key='N0'", "add key='N1'", "delete key='K01'", "delete key='K07'",
                       *(f"update key='K0{i}'" for i in (2, 4, 5, 6))], dry.stdout
    assert b.edit_requests() == sent and state_rows(file) == state, "a dry run sends nothing and keeps the state"

    second = run(file, a, b, report)
    assert (second["sync"], second["deleted"]) == ("incremental", 2)
    assert second["features_read"] == 25, "A's first 25 share the cursor's second: read again, and unchanged"
    held = assert_same(a, b)
    assert held["K02"]["name"] is None and held["K05"]["geometry"] is None
    assert held["K04"]["geometry"] == shapely.Point(0, 0)

    sent = b.edit_requests()
    third = run(file, a, b, report)
    assert (third["sync"], third["deleted"], third["features_read"]) == ("incremental", 0, 6)
    assert b.edit_requests() == sent, "an immediate second sync sent applyEdits"
    assert_same(a, b)

    for blob in ((tmp_path / ".ags_etl" / "state.db").read_bytes(), report.read_bytes()):
        assert A_PW.encode() not in blob and B_PW.encode() not in blob and b"token" not in blob.lower()


def test_killed_after_the_target_committed_then_the_rerun_repairs(layers: tuple[Layer, Layer], tmp_path: Path) -> None:
    a, b = layers
    port = free_port()
    b.start(port=port)
    file = pipeline(tmp_path)
    run(file, a, b, tmp_path / "r1.json")
    before = state_rows(file)
    assert len(before) == 1

    edit_source(a)
    b.start("--edit-answer-delay", "60", port=port)  # B commits each edit, then waits before answering
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(file), "-q"],
        env={**os.environ, **env(a, b)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not {"N0", "N1"} <= set(b.features()):  # the adds are sent first
            assert proc.poll() is None, "the run ended before B committed its first edit"
            assert time.monotonic() < deadline, "B never committed the run's adds"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert state_rows(file) == before, "state as it was"
    assert {"K01", "K07"} <= set(b.features()), "the run was killed before its deletes"

    b.start(port=port)  # the same store, answering at once
    again = run(file, a, b, tmp_path / "r2.json")
    assert (again["sync"], again["deleted"]) == ("incremental", 2)
    assert_same(a, b)
    assert state_rows(file) != before


def test_sync_checks_of_a_feature_service_sink() -> None:
    def job(mode: str, **sync: Any) -> dict[str, Any]:
        return {"name": f"j{mode}", "source": {"url": "http://127.0.0.1:1/arcgis/rest/services/A/FeatureServer/0"},
                "sink": {"type": "feature_service", "url": "http://127.0.0.1:1/arcgis/rest/services/B/FeatureServer/0",
                         "mode": mode, "key": "code"},
                "sync": {"cursor_field": "EditDate", **sync}}

    assert len(parse_pipeline({"version": 1, "jobs": [job("upsert"), job("mirror", detect_deletes=True)]}).jobs) == 2
    with pytest.raises(PipelineFileError) as err:
        parse_pipeline({"version": 1, "jobs": [job("append"), job("mirror"), {**job("upsert", key="GID"), "name": "k"}]})
    text = str(err.value)
    assert "job 'jappend': sink.mode: a sync job upserts the changed features by key; mode append" in text
    assert "job 'jmirror': sync.detect_deletes: with mode mirror a sync job deletes through" in text
    assert "job 'k': sync.key: sync.key 'GID' differs from the sink's key 'code'" in text
