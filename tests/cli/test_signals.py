"""SIGTERM — what cron, systemd and orchestrators send first — stops a pull like Ctrl-C: the
temp output is removed, an earlier output is untouched, one line, exit 143. Real `ags-etl pull`
processes against a slow local FeatureServer or a stub that never answers."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ags_etl.server.testing import run_server
from tests.cli.helpers import N, url
from tests.layers import write_layer
from tests.loopback import JSONHandler, serving

STOPPED = "ags-etl: stopped by SIGTERM; no output was written (an earlier output is unchanged)"


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Pages of 3 and 100 ms per request: a pull of the points layer takes seconds."""
    d = tmp_path_factory.mktemp("signal-layers")
    write_layer(d / "points.geojson", "points", N)
    with run_server(d, "--max-record-count", "3", "--latency-ms", "100") as base:
        yield base


def temp_outputs(folder: Path, target: str) -> list[str]:
    pattern = re.compile(re.escape(f".{target}.") + r"\w+\.part")
    return [p.name for p in folder.iterdir() if pattern.fullmatch(p.name)]


def start_pull(layer: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    """Start a pull; return once its hidden temp output (file or folder) exists."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", layer, "-o", str(out), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not temp_outputs(out.parent, out.name):
        assert proc.poll() is None, f"the pull ended before writing: {proc.communicate()}"
        assert time.monotonic() < deadline, "the pull never started writing"
        time.sleep(0.02)
    return proc


@pytest.mark.parametrize("name", ["x.geojson", "x.parquet", "x.shp", "x.kmz"])
def test_sigterm_removes_temp_output_and_keeps_earlier_output(slow_server: str, tmp_path: Path, name: str) -> None:
    earlier = tmp_path / name
    earlier.write_bytes(b"earlier output \x00\xff")
    proc = start_pull(url(slow_server, "points"), earlier, "--overwrite", "--concurrency", "2")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err
    assert [line for line in err.splitlines() if line.strip()] == [STOPPED]
    assert earlier.read_bytes() == b"earlier output \x00\xff"
    assert sorted(p.name for p in tmp_path.iterdir()) == [name], "no temp file or folder left"


def test_sigint_still_exits_130(slow_server: str, tmp_path: Path) -> None:
    out = tmp_path / "x.geojson"
    proc = start_pull(url(slow_server, "points"), out)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert err.strip() == "ags-etl: interrupted; no output was written (an earlier output is unchanged)"
    assert list(tmp_path.iterdir()) == []


class Stalls(JSONHandler):
    """A point layer whose metadata, count and ids come at once, but whose feature queries
    hang for a minute: requests are in flight when SIGTERM arrives."""

    release = threading.Event()

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        if params.get("returnCountOnly") == "true":
            return 200, "application/json", b'{"count": 20}'
        if params.get("returnIdsOnly") == "true":
            ids = list(range(1, 21))
            return 200, "application/json", json.dumps({"objectIdFieldName": "OBJECTID", "objectIds": ids}).encode()
        if path.endswith("/query"):
            self.release.wait(60)
            return 200, "application/json", b'{"features": []}'
        info = {
            "currentVersion": 11.1, "id": 0, "name": "x", "type": "Feature Layer", "geometryType": "esriGeometryPoint",
            "objectIdField": "OBJECTID", "maxRecordCount": 5, "capabilities": "Query",
            "extent": {"spatialReference": {"wkid": 4326}},
            "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID", "alias": "OBJECTID"}],
            "advancedQueryCapabilities": {"supportsPagination": True, "supportsOrderBy": True},
        }
        return 200, "application/json", json.dumps(info).encode()


def test_sigterm_does_not_wait_for_requests_in_flight(tmp_path: Path) -> None:
    Stalls.release.clear()
    out = tmp_path / "x.geojson"
    try:
        with serving(Stalls) as base:
            proc = start_pull(f"{base}/arcgis/rest/services/x/FeatureServer/0", out, "--timeout", "60")
            time.sleep(0.3)  # let the page requests reach the stalling server
            proc.send_signal(signal.SIGTERM)
            # Generous bound: the requests would hold the process for 60 s.
            _, err = proc.communicate(timeout=15)
    finally:
        Stalls.release.set()
    assert proc.returncode == 143, err
    assert err.strip() == STOPPED
    assert list(tmp_path.iterdir()) == []
