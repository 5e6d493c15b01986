"""`ags-etl inspect` as a user runs it, against the local server."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from ags_etl.server.testing import run_server
from tests.cli.helpers import N, ags, one_error_line, url
from tests.layers import write_layer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("inspect-layers")
    write_layer(d / "points.geojson", "points", N)
    write_layer(d / "table.geojson", "table", 12)
    with run_server(d, "--max-record-count", "7") as base:
        yield base


def test_inspect_shows_plan(server: str) -> None:
    proc = ags("inspect", url(server, "points"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["count"] == N and report["strategy"] == "oid-list" and report["objectIdField"] == "OBJECTID"
    assert report["maxRecordCount"] == 7
    text = ags("inspect", url(server, "points"))
    assert "strategy: oid-list" in text.stdout


def test_inspect_service_and_catalog(server: str) -> None:
    service = ags("inspect", f"{server}/arcgis/rest/services/points/FeatureServer", "--json")
    assert service.returncode == 0, service.stderr
    assert json.loads(service.stdout)["layers"] == [{"id": 0, "name": "points"}]
    catalog = ags("inspect", f"{server}/arcgis/rest/services")
    assert catalog.returncode == 0, catalog.stderr
    assert "points FeatureServer" in catalog.stdout and "table FeatureServer" in catalog.stdout


def test_inspect_table_and_unknown_layer(server: str) -> None:
    table = ags("inspect", url(server, "table"), "--json")
    assert json.loads(table.stdout)["type"] == "Table" and json.loads(table.stdout)["count"] == 12
    missing = ags("inspect", f"{server}/arcgis/rest/services/nope/FeatureServer/0")
    assert missing.returncode == 1
    assert "check the service name and layer id" in one_error_line(missing)
