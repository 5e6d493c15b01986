"""Reading data files: field, OID and geometry rules; both GDAL readers agree; where rewriting."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely
from serve_helpers import feature, get_json, layer_url, write_geojson, write_geoparquet

from ags_etl.errors import ConfigError
from ags_etl.server import where
from ags_etl.server.protocol import RestError
from ags_etl.server.sources import read_source, service_name
from ags_etl.server.testing import run_server


@pytest.fixture(scope="module")
def odd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("odd")
    write_geojson(
        d / "z points.geojson",
        [feature({"OBJECTID": 10, "h": 1}, shapely.Point(1, 2, 30)), feature({"OBJECTID": 20, "h": 2}, shapely.Point(0, 0, 0))],
    )
    write_geojson(
        d / "mixed-multi.geojson",
        [feature({"k": 1}, shapely.Point(5, 5)), feature({"k": 2}, shapely.MultiPoint([(1, 1), (2, 2)]))],
    )
    write_geojson(
        d / "dup_oid.geojson",
        [feature({"OBJECTID": 7, "big": 2**40}, shapely.Point(0, 1)), feature({"OBJECTID": 7, "big": 1}, shapely.Point(1, 0))],
    )
    write_geojson(
        d / "lines.geojson",
        [
            feature({"objectid": 3, "my field": "x", "1st": 1}, shapely.LineString([(0, 0), (1, 1)])),
            feature({"objectid": 9, "my field": "y", "1st": 2}, shapely.MultiLineString([[(2, 2), (3, 3)], [(4, 4), (5, 6)]])),
        ],
    )
    write_geoparquet(d / "unknown_crs.parquet", None, unknown_crs=True)
    write_geojson(d / "a-b.geojson", [feature({"v": 1}, shapely.Point(0, 0))])
    write_geojson(d / "a_b.geojson", [feature({"v": 2}, shapely.Point(0, 0))])
    return d


@pytest.fixture(scope="module")
def odd_server(odd_dir: Path) -> Iterator[str]:
    with run_server(odd_dir) as base:
        yield base


def _query(base: str, name: str, **params: Any) -> Any:
    params.setdefault("where", "1=1")
    params.setdefault("outFields", "*")
    return get_json(layer_url(base, name) + "/query", **params)


def test_service_names(odd_server: str) -> None:
    names = [s["name"] for s in get_json(f"{odd_server}/arcgis/rest/services")["services"]]
    assert names == ["a_b", "a_b_2", "dup_oid", "lines", "mixed_multi", "unknown_crs", "z_points"]
    assert service_name(Path("my-data set.v2.geojson")) == "my_data_set_v2"


def test_z_values_only_when_asked(odd_server: str) -> None:
    assert get_json(layer_url(odd_server, "z_points"))["hasZ"] is True
    flat = _query(odd_server, "z_points")
    assert [f["geometry"] for f in flat["features"]] == [{"x": 1.0, "y": 2.0}, {"x": 0.0, "y": 0.0}]
    with_z = _query(odd_server, "z_points", returnZ="true")
    assert with_z["hasZ"] is True
    assert [f["geometry"] for f in with_z["features"]] == [{"x": 1.0, "y": 2.0, "z": 30.0}, {"x": 0.0, "y": 0.0, "z": 0.0}]
    assert [f["attributes"]["OBJECTID"] for f in with_z["features"]] == [10, 20]


def test_points_with_multipoints_make_a_multipoint_layer(odd_server: str) -> None:
    layer = get_json(layer_url(odd_server, "mixed_multi"))
    assert layer["geometryType"] == "esriGeometryMultipoint"
    geoms = [f["geometry"] for f in _query(odd_server, "mixed_multi")["features"]]
    assert geoms == [{"points": [[5.0, 5.0]]}, {"points": [[1.0, 1.0], [2.0, 2.0]]}]


def test_duplicate_objectid_values_are_not_the_oid(odd_server: str) -> None:
    layer = get_json(layer_url(odd_server, "dup_oid"))
    assert layer["objectIdField"] == "OBJECTID_1"
    fields = {f["name"]: f["type"] for f in layer["fields"]}
    assert fields["OBJECTID"] == "esriFieldTypeInteger"
    assert fields["big"] == "esriFieldTypeBigInteger"  # 2**40 does not fit 32 bits
    attrs = [f["attributes"] for f in _query(odd_server, "dup_oid")["features"]]
    assert attrs == [{"OBJECTID_1": 1, "OBJECTID": 7, "big": 2**40}, {"OBJECTID_1": 2, "OBJECTID": 7, "big": 1}]


def test_lowercase_objectid_and_sanitised_field_names(odd_server: str) -> None:
    layer = get_json(layer_url(odd_server, "lines"))
    assert layer["objectIdField"] == "objectid"
    assert layer["geometryType"] == "esriGeometryPolyline"
    assert [f["name"] for f in layer["fields"]] == ["objectid", "my_field", "F_1st", "Shape"]
    body = _query(odd_server, "lines", where="my_field = 'y' AND F_1st = 2")
    assert body["features"][0]["attributes"] == {"objectid": 9, "my_field": "y", "F_1st": 2}
    assert body["features"][0]["geometry"] == {"paths": [[[2.0, 2.0], [3.0, 3.0]], [[4.0, 4.0], [5.0, 6.0]]]}


def test_unknown_crs_is_served_without_a_spatial_reference(odd_server: str) -> None:
    layer = get_json(layer_url(odd_server, "unknown_crs"))
    assert layer["extent"]["spatialReference"] == {}
    body = _query(odd_server, "unknown_crs", geometry="0,0,2,3")
    assert [f["geometry"] for f in body["features"]] == [{"x": 1.0, "y": 2.0}]
    refused = _query(odd_server, "unknown_crs", outSR="4326")
    assert refused["error"]["code"] == 400  # nothing to project from


def test_all_null_geometries_make_a_table(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "t.geojson", [feature({"a": 1}, None), feature({"a": 2}, None)])
    source = read_source(path)
    assert source.geometry is None and source.geometry_type is None
    assert source.oids.tolist() == [1, 2]


def test_unreadable_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.geojson"
    path.write_text("{ this is not json")
    with pytest.raises(ConfigError, match="broken.geojson"):
        read_source(path)


def test_both_gdal_readers_serve_the_same_layers(data_dir: Path, server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """fiona-only reading (no pyogrio) gives the same metadata and features as the default path."""
    monkeypatch.setenv("AGS_ETL_SERVE_READER", "fiona")
    names = ["points", "polygons", "lookup_table", "lots_utm", "lots_merc"]
    with run_server(data_dir) as fiona_base:
        for name in names:
            assert get_json(layer_url(fiona_base, name)) == get_json(layer_url(server, name)), name
            assert _query(fiona_base, name) == _query(server, name), name


# --------------------------------------------------------------------------- where rewriting


def test_where_rewrites_date_literals_to_epoch_ms() -> None:
    assert where.rewrite("d < date '1969-12-31'", ["d"]) == "d < -86400000"
    assert where.rewrite("d = TIMESTAMP '1970-01-01 00:00:01'", ["d"]) == "d = 1000"
    assert where.rewrite("d >= date '2000-01-01 12:00:00'", ["d"]) == "d >= 946728000000"


def test_where_keeps_semicolons_and_keywords_inside_strings() -> None:
    clause = "name = 'a;b' OR name = 'select date ''x'''"
    assert where.rewrite(clause, ["name"]) == clause


@pytest.mark.parametrize("clause", ["a = 1; b", "a = ?", "x IN (SELECT 1)", '"b" = 1', "__ags_xmin > 0", "a = $x"])
def test_where_refusals(clause: str) -> None:
    with pytest.raises(RestError) as caught:
        where.rewrite(clause, ["a"])
    assert caught.value.body()["error"]["message"] == "Unable to complete operation."
    assert json.dumps(caught.value.body())  # serialisable as sent
