"""Smoke test of the Koop harness (tests/servers_koop.py, tests/koop/server.js).

Koop is the third-party FeatureServer other tests pull from; these tests check that it starts,
serves a file written by ``write_koop_geojson`` with our object ids, field types and page
limit, and pages the way docs/reference/koop.md describes (Koop 10.4.19 stack). They skip
only when Node.js is absent; missing npm packages fail with the ``npm ci`` command to run.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fiona
import pytest
import requests
import shapely
from shapely.geometry import MultiPolygon, Point, Polygon

from tests.servers_koop import (
    KoopUnavailableError,
    koop_layer_url,
    koop_server,
    node_executable,
    write_koop_geojson,
)

UTC = dt.timezone.utc
SAMPLE_DATA = Path(__file__).resolve().parent.parent / "sample_data"
needs_node = pytest.mark.skipif(node_executable() is None, reason="Node.js (`node`) is not on PATH; Koop cannot run")

SQUARE_WITH_HOLE = Polygon(
    [(-122.42, 37.77), (-122.40, 37.77), (-122.40, 37.79), (-122.42, 37.79)],
    [[(-122.415, 37.775), (-122.415, 37.785), (-122.405, 37.785), (-122.405, 37.775)]],
)
TWO_PARTS_ONE_HOLE = MultiPolygon(
    [
        Polygon(
            [(-122.38, 37.77), (-122.36, 37.77), (-122.36, 37.79), (-122.38, 37.79)],
            [[(-122.375, 37.775), (-122.375, 37.785), (-122.365, 37.785), (-122.365, 37.775)]],
        ),
        Polygon([(-122.35, 37.77), (-122.34, 37.77), (-122.34, 37.78), (-122.35, 37.78)]),
    ]
)
PARKS: list[dict[str, Any]] = [
    # OBJECTIDs with gaps and not in file order: Koop returns file order unless orderByFields is set.
    {"geometry": SQUARE_WITH_HOLE, "OBJECTID": 8, "NAME": "Parc de l'Étoile", "OPENED": dt.datetime(1965, 3, 1, tzinfo=UTC)},
    {"geometry": TWO_PARTS_ONE_HOLE, "OBJECTID": 2, "NAME": "Smith & Sons <b>", "OPENED": None},
    {"geometry": SQUARE_WITH_HOLE.buffer(-0.001), "OBJECTID": 5, "NAME": "公园 🌳", "OPENED": dt.date(1970, 1, 1)},
]
MARKS: list[dict[str, Any]] = [
    {"geometry": Point(0, 0), "OBJECTID": 1, "ELEV_M": 0.0},
    {"geometry": Point(0, 10), "OBJECTID": 2, "ELEV_M": None},
    {"geometry": Point(10, 0), "OBJECTID": 4, "ELEV_M": 12.5},
]


def _features(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"type": "Feature", "geometry": row["geometry"], "properties": {k: v for k, v in row.items() if k != "geometry"}}
        for row in rows
    ]


def _get(url: str, **params: Any) -> dict[str, Any]:
    response = requests.get(url, params={"f": "json", **params}, timeout=10)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    assert "error" not in body, body
    return body


@pytest.fixture(scope="module")
def koop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Koop serving ``parks.geojson`` (polygons, maxRecordCount 2) and ``marks.geojson`` (points)."""
    if node_executable() is None:
        pytest.skip("Node.js (`node`) is not on PATH; Koop cannot run")
    data = tmp_path_factory.mktemp("koop-data")
    write_koop_geojson(_features(PARKS), data / "parks.geojson", max_record_count=2, date_fields={"OPENED"})
    write_koop_geojson(_features(MARKS), data / "marks.geojson", max_record_count=1000)
    # The committed sample layers, read with GDAL (fiona) and rewritten for Koop.
    for stem, date_field in (("parks", "OPENED"), ("inspections", "INSPECTED")):
        with fiona.open(SAMPLE_DATA / f"{stem}.geojson") as src:
            write_koop_geojson(src, data / f"sample_{stem}.geojson", max_record_count=10, date_fields={date_field})
    with koop_server(data) as base:
        yield base


def test_status_answers_success(koop: str) -> None:
    assert koop.startswith("http://127.0.0.1:")
    assert requests.get(f"{koop}/status", timeout=5).json() == {"success": True}


def test_layer_metadata_uses_declared_id_field_types_and_limit(koop: str) -> None:
    layer = _get(koop_layer_url(koop, "parks"))
    assert layer["objectIdField"] == "OBJECTID"
    assert layer["maxRecordCount"] == 2
    assert layer["geometryType"] == "esriGeometryPolygon"
    types = {f["name"]: f["type"] for f in layer["fields"]}
    assert types == {
        "OBJECTID": "esriFieldTypeOID",
        "NAME": "esriFieldTypeString",
        "OPENED": "esriFieldTypeDate",
    }


def test_paging_with_result_record_count_flags_more_rows(koop: str) -> None:
    url = koop_layer_url(koop, "parks") + "/query"
    common = {"where": "1=1", "outFields": "*", "orderByFields": "OBJECTID", "resultRecordCount": 2}
    first = _get(url, resultOffset=0, **common)
    second = _get(url, resultOffset=2, **common)
    assert [f["attributes"]["OBJECTID"] for f in first["features"]] == [2, 5]
    assert first["exceededTransferLimit"] is True
    assert [f["attributes"]["OBJECTID"] for f in second["features"]] == [8]
    assert second["exceededTransferLimit"] is False
    # Koop never enforces maxRecordCount (koop.md): without resultRecordCount all 3 rows come at once.
    everything = _get(url, where="1=1", outFields="OBJECTID")
    assert sorted(f["attributes"]["OBJECTID"] for f in everything["features"]) == [2, 5, 8]
    assert everything.get("exceededTransferLimit") is False


def test_dates_unicode_and_polygon_rings_survive(koop: str) -> None:
    body = _get(koop_layer_url(koop, "parks") + "/query", where="1=1", outFields="*", orderByFields="OBJECTID")
    by_oid = {f["attributes"]["OBJECTID"]: f for f in body["features"]}
    # Dates come back as epoch milliseconds, negative before 1970 and exactly 0 at the epoch.
    assert by_oid[8]["attributes"]["OPENED"] == -152_668_800_000
    assert by_oid[2]["attributes"]["OPENED"] is None
    assert by_oid[5]["attributes"]["OPENED"] == 0
    assert by_oid[8]["attributes"]["NAME"] == "Parc de l'Étoile"
    assert by_oid[2]["attributes"]["NAME"] == "Smith & Sons <b>"
    assert by_oid[5]["attributes"]["NAME"] == "公园 🌳"
    # Ring counts: shell + hole; two shells + one hole (Koop may list the hole first).
    assert len(by_oid[8]["geometry"]["rings"]) == 2
    assert len(by_oid[2]["geometry"]["rings"]) == 3
    areas = sorted(abs(shapely.Polygon(ring).area) for ring in by_oid[2]["geometry"]["rings"])
    assert areas == pytest.approx(sorted(abs(shapely.Polygon(r).area) for r in _rings(TWO_PARTS_ONE_HOLE)))


def _rings(geom: MultiPolygon) -> list[Any]:
    return [ring for part in geom.geoms for ring in (part.exterior, *part.interiors)]


def test_points_at_zero_keep_their_geometry(koop: str) -> None:
    body = _get(koop_layer_url(koop, "marks") + "/query", where="1=1", outFields="*", orderByFields="OBJECTID")
    got = {f["attributes"]["OBJECTID"]: (f["geometry"]["x"], f["geometry"]["y"]) for f in body["features"]}
    assert got == {1: (0, 0), 2: (0, 10), 4: (10, 0)}
    assert body["features"][0]["attributes"]["ELEV_M"] == 0


def test_sample_layers_serve_as_layer_and_table(koop: str) -> None:
    parks_url = koop_layer_url(koop, "sample_parks")
    parks = _get(parks_url)
    assert parks["type"] == "Feature Layer"
    assert {f["name"]: f["type"] for f in parks["fields"]}["OPENED"] == "esriFieldTypeDate"
    assert _get(parks_url + "/query", where="1=1", returnCountOnly="true") == {"count": 40}
    first = _get(parks_url + "/query", where="OBJECTID=1", outFields="OBJECTID,OPENED")["features"][0]
    assert first["attributes"]["OPENED"] == int(dt.datetime(1903, 7, 4, tzinfo=UTC).timestamp() * 1000)
    table_url = koop_layer_url(koop, "sample_inspections")
    table = _get(table_url)
    assert table["type"] == "Table"
    assert table.get("geometryType") is None
    page = _get(table_url + "/query", where="1=1", outFields="*", orderByFields="OBJECTID", resultRecordCount=10)
    assert len(page["features"]) == 10
    assert page["exceededTransferLimit"] is True
    assert all(f.get("geometry") is None for f in page["features"])


@needs_node
def test_missing_node_modules_fails_with_npm_ci_hint(tmp_path: Path) -> None:
    empty_koop_dir = tmp_path / "koop"
    empty_koop_dir.mkdir()
    with pytest.raises(KoopUnavailableError, match=r"npm ci --omit=optional --prefix tests/koop"):
        with koop_server(tmp_path, koop_dir=empty_koop_dir):
            pass


def test_write_koop_geojson_declares_metadata(tmp_path: Path) -> None:
    path = write_koop_geojson(_features(PARKS), tmp_path / "parks.geojson", max_record_count=7, date_fields={"OPENED"})
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["metadata"] == {
        "idField": "OBJECTID",
        "maxRecordCount": 7,
        "fields": [
            {"name": "OBJECTID", "type": "Integer"},
            {"name": "NAME", "type": "String"},
            {"name": "OPENED", "type": "Date"},
        ],
    }
    opened = [f["properties"]["OPENED"] for f in doc["features"]]
    assert opened == ["1965-03-01T00:00:00.000Z", None, "1970-01-01T00:00:00.000Z"]
    assert doc["features"][0]["geometry"]["type"] == "Polygon"
    assert len(doc["features"][0]["geometry"]["coordinates"]) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["parks.geojson"]


@pytest.mark.parametrize(
    ("oids", "message"),
    [([1, None], "integer OBJECTID"), ([1, 1], "repeats OBJECTID=1"), ([1, "2"], "integer OBJECTID")],
)
def test_write_koop_geojson_refuses_bad_object_ids(tmp_path: Path, oids: list[Any], message: str) -> None:
    features = [{"type": "Feature", "geometry": None, "properties": {"OBJECTID": oid}} for oid in oids]
    with pytest.raises(ValueError, match=message):
        write_koop_geojson(features, tmp_path / "t.geojson", max_record_count=10)
    assert not (tmp_path / "t.geojson").exists()


def test_write_koop_geojson_refuses_naive_dates(tmp_path: Path) -> None:
    features = [{"type": "Feature", "geometry": None, "properties": {"OBJECTID": 1, "D": dt.datetime(1960, 1, 1)}}]
    with pytest.raises(ValueError, match="naive datetime"):
        write_koop_geojson(features, tmp_path / "t.geojson", max_record_count=10, date_fields={"D"})
    assert list(tmp_path.iterdir()) == []
