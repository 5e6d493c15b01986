"""The query operation of ``ags-etl serve``: filters, encodings, statistics, guarded where clauses."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import shapely
from pyproj import Transformer
from serve_helpers import HOLED, MULTI, PLAIN, POINT_BORN_MS, POINT_OIDS, get_json, layer_url, post_json

from ags_etl.arcgis.esrijson import decode_geometry

QUERY_FAILED = "Unable to complete operation."


def query(base: str, name: str, **params: Any) -> Any:
    params.setdefault("where", "1=1")
    return get_json(layer_url(base, name) + "/query", **params)


def oids(body: dict[str, Any]) -> list[int]:
    return [f["attributes"]["OBJECTID"] for f in body["features"]]


def ids(base: str, name: str, **params: Any) -> list[int]:
    body = query(base, name, returnIdsOnly="true", **params)
    assert "error" not in body, body
    return body["objectIds"]


def assert_query_error(body: dict[str, Any]) -> None:
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == 400
    assert body["error"]["message"] == QUERY_FAILED
    assert len(body["error"]["details"]) == 1 and body["error"]["details"][0]


# --------------------------------------------------------------------------- attributes and where


def test_all_features_in_oid_order_with_attributes(server: str) -> None:
    body = query(server, "points", outFields="*")
    assert oids(body) == POINT_OIDS
    first = body["features"][0]
    assert first["attributes"] == {
        "OBJECTID": 1, "name": "origin", "pop": 0, "ratio": 0.0, "born": POINT_BORN_MS[1],
    }  # fmt: skip
    assert first["geometry"] == {"x": 0.0, "y": 0.0}  # the point at (0, 0) keeps its geometry
    assert body["objectIdFieldName"] == "OBJECTID"
    assert body["geometryType"] == "esriGeometryPoint"
    assert [f["name"] for f in body["fields"]] == ["OBJECTID", "name", "pop", "ratio", "born"]
    assert "exceededTransferLimit" not in body


def test_dates_before_1970_are_negative_epoch_ms(server: str) -> None:
    body = query(server, "points", outFields="born")
    born = {f["attributes"]["OBJECTID"]: f["attributes"]["born"] for f in body["features"]}
    assert born == POINT_BORN_MS
    assert born[1] == -2174586894000  # 1901-02-03T04:05:06Z
    assert born[5] is None


def test_null_geometry_feature_has_no_geometry(server: str) -> None:
    feature = query(server, "points", objectIds="21", outFields="*")["features"][0]
    assert feature["attributes"]["name"] == "no geometry"
    assert feature.get("geometry") is None


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("name = 'Zürich'", [2]),
        ("name = '東京'", [3]),
        ("name = 'O''Hare'", [5]),
        ("name LIKE 'Null%'", [13]),
        ("pop IS NULL", [5]),
        ("pop > 1000000 AND ratio >= 2.25", [3, 34]),
        ("OBJECTID IN (1, 13, 21)", [1, 13, 21]),
        ("upper(name) = 'SYDNEY'", [34]),
        ("born < date '1970-01-01'", [1, 2, 3, 34]),
        ("born = timestamp '1970-01-01 00:00:00'", [13]),
        ("born >= DATE '2020-06-15 12:30:00'", [8]),
        ("born BETWEEN date '1960-01-01' AND timestamp '1969-12-31 23:59:59'", [2, 3]),
        ("born < CURRENT_TIMESTAMP AND born > date '2000-01-01'", [8]),
        ("1=1", POINT_OIDS),
        ("", POINT_OIDS),
    ],
)
def test_where(server: str, where: str, expected: list[int]) -> None:
    assert ids(server, "points", where=where) == expected


def test_where_by_post_and_case_insensitive_parameter_names(server: str) -> None:
    url = layer_url(server, "points") + "/query"
    assert oids(post_json(url, WHERE="name = 'Zürich'", OutFields="name")) == [2]


@pytest.mark.parametrize(
    "where",
    [
        "nosuch = 1",  # unknown field
        '"nosuch" = 1',  # SQLite would read this as a string and match nothing
        "pop >",  # syntax
        "name = 'unterminated",
        "born = date 'yesterday'",
        "nosuchfunction(pop) = 1",
    ],
)
def test_bad_where_is_an_arcgis_error(server: str, where: str) -> None:
    assert_query_error(query(server, "points", where=where))


@pytest.mark.parametrize(
    "where",
    [
        "1=1; DROP TABLE features",
        "1=1; DROP TABLE features; --",
        "(SELECT count(*) FROM sqlite_master) > 0",
        "pop IN (SELECT pop FROM features)",
        "load_extension('/tmp/evil.so') IS NULL",
        "randomblob(100000000) IS NOT NULL",
        "\"__ags_wkb\" IS NOT NULL",
        "__ags_hit(__ags_wkb) = 1",
        "OBJECTID > ?1",
        "OBJECTID > :x",
        "sqlite_version() IS NOT NULL",
    ],
)
def test_where_injection_is_refused(server: str, where: str) -> None:
    assert_query_error(query(server, "points", where=where))
    # and the table is still there, whole
    assert query(server, "points", returnCountOnly="true") == {"count": len(POINT_OIDS)}


def test_object_ids(server: str) -> None:
    assert ids(server, "points", objectIds="34, 2,5,999") == [2, 5, 34]
    assert ids(server, "points", objectIds="1,2,3,34", where="pop > 1000000") == [3, 34]
    assert_query_error(query(server, "points", objectIds="1,abc"))


def test_long_object_id_list_by_post(server: str) -> None:
    url = layer_url(server, "points") + "/query"
    body = post_json(url, objectIds=",".join(str(i) for i in range(1, 20001)), returnIdsOnly="true")
    assert body["objectIds"] == POINT_OIDS


def test_out_fields(server: str) -> None:
    body = query(server, "points", outFields="NAME", objectIds="2")
    assert body["features"][0]["attributes"] == {"OBJECTID": 2, "name": "Zürich"}
    assert [f["name"] for f in body["fields"]] == ["OBJECTID", "name"]
    assert body["fields"][1]["type"] == "esriFieldTypeString"
    # the geometry field may be named; it is not an attribute
    body = query(server, "points", outFields="Shape,pop", objectIds="2")
    assert body["features"][0]["attributes"] == {"OBJECTID": 2, "pop": 400000}
    assert_query_error(query(server, "points", outFields="name,nosuch"))


def test_return_geometry_false(server: str) -> None:
    body = query(server, "points", returnGeometry="false")
    assert all("geometry" not in f for f in body["features"])
    assert len(body["features"]) == len(POINT_OIDS)


def test_order_by_offset_and_count(server: str) -> None:
    body = query(server, "points", where="pop IS NOT NULL", orderByFields="pop DESC", outFields="pop")
    assert oids(body) == [3, 34, 2, 8, 21, 13, 1]
    body = query(server, "points", orderByFields="OBJECTID DESC", resultOffset="2", resultRecordCount="3")
    assert oids(body) == [13, 8, 5]
    assert body["exceededTransferLimit"] is True
    assert_query_error(query(server, "points", orderByFields="nosuch ASC"))
    assert_query_error(query(server, "points", orderByFields="pop SIDEWAYS"))


def test_count_and_ids_follow_the_filters(server: str) -> None:
    assert query(server, "points", where="pop > 100", returnCountOnly="true") == {"count": 3}
    body = query(server, "points", where="pop > 100", returnIdsOnly="true")
    assert body == {"objectIdFieldName": "OBJECTID", "objectIds": [2, 3, 34]}


# --------------------------------------------------------------------------- spatial filter


@pytest.mark.parametrize(
    ("geometry", "params", "expected"),
    [
        ("-1,-1,0,0", {}, [1, 8]),  # (0, 0) on the corner counts
        ("0,0,0,0", {}, [1]),  # degenerate envelope = the point
        ('{"xmin": 0.5, "ymin": -1, "xmax": 200, "ymax": 50}', {}, [2, 3, 13]),
        ("0,0", {"geometryType": "esriGeometryPoint"}, [1]),
        # Web Mercator box around (0,0)…(1,0): inSR as a parameter, then inside the JSON
        ("-1000,-1000,120000,1000", {"inSR": "3857"}, [1, 13]),
        ('{"xmin":-1000,"ymin":-1000,"xmax":120000,"ymax":1000,"spatialReference":{"wkid":102100}}', {}, [1, 13]),
        (
            '{"rings": [[[-2, -2], [2, -2], [-2, 2], [-2, -2]]]}',  # triangle holding (0,0), (-0.5,-0.5), not (1,0)
            {"geometryType": "esriGeometryPolygon"},
            [1, 8],
        ),
    ],
)
def test_spatial_filter_on_points(server: str, geometry: str, params: dict[str, str], expected: list[int]) -> None:
    assert ids(server, "points", geometry=geometry, **params) == expected


@pytest.mark.parametrize(
    ("geometry", "params", "expected"),
    [
        ("4.5,4.5,5.5,5.5", {}, []),  # inside the hole: envelopes overlap, geometries do not
        ("4.5,4.5,5.5,5.5", {"spatialRel": "esriSpatialRelEnvelopeIntersects"}, [1]),
        ("5,5,7,7", {}, [1]),  # across the hole's edge
        ("31,1,39,4", {}, []),  # in the gap between the multipolygon's parts
        ("22.5,2.5,23.5,3.5", {}, []),  # inside the multipolygon's hole
        ("29,1,41,2", {}, [2]),
        ("-180,-90,180,90", {}, [1, 2, 3]),
        ('{"x": 5, "y": 5}', {"geometryType": "esriGeometryPoint"}, []),
        ('{"x": 1, "y": 1}', {"geometryType": "esriGeometryPoint"}, [1]),
        ('{"paths": [[[-1, 5], [100.5, 50.5]]]}', {"geometryType": "esriGeometryPolyline"}, [1, 3]),
    ],
)
def test_spatial_filter_is_exact_on_polygons(
    server: str, geometry: str, params: dict[str, str], expected: list[int]
) -> None:
    assert ids(server, "polygons", geometry=geometry, **params) == expected


def test_spatial_filter_combines_with_where_and_paging(server: str) -> None:
    body = query(server, "points", geometry="-180,-90,180,90", where="pop > 10", resultRecordCount="2")
    assert oids(body) == [2, 3]
    assert body["exceededTransferLimit"] is True
    assert query(server, "points", geometry="-180,-90,180,90", returnCountOnly="true") == {"count": 7}


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("points", {"geometry": "5,5,1,1"}),  # xmin > xmax
        ("points", {"geometry": "1,2,3"}),
        ("points", {"geometry": "{not json"}),
        ("points", {"geometry": "0,0,1,1", "spatialRel": "esriSpatialRelTouches"}),
        ("points", {"geometry": "0,0,1,1", "inSR": "999999999"}),
        ("lookup_table", {"geometry": "0,0,1,1"}),
    ],
)
def test_bad_spatial_filter_is_an_error(server: str, name: str, params: dict[str, str]) -> None:
    assert_query_error(query(server, name, **params))


# --------------------------------------------------------------------------- geometry encoding and outSR


def _signed_area(ring: list[list[float]]) -> float:
    return shapely.LinearRing(ring).is_ccw and 1.0 or -1.0


def test_esri_polygon_rings_are_clockwise_with_counter_clockwise_holes(server: str) -> None:
    features = query(server, "polygons", outFields="kind")["features"]
    by_kind = {f["attributes"]["kind"]: f["geometry"] for f in features}
    holed, multi = by_kind["holed"]["rings"], by_kind["multi"]["rings"]
    assert len(holed) == 2 and len(multi) == 3
    assert [_signed_area(r) for r in holed] == [-1.0, 1.0]  # exterior CW, hole CCW
    assert sorted(_signed_area(r) for r in multi) == [-1.0, -1.0, 1.0]
    for kind, original in (("holed", HOLED), ("multi", MULTI), ("plain", PLAIN)):
        decoded = decode_geometry(by_kind[kind])
        assert decoded is not None and decoded.normalize().equals(original.normalize()), kind


def test_out_sr_reprojects_points(server: str) -> None:
    to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
    expected = to_merc.transform(8.54, 47.37)
    for out_sr in ("3857", "102100", '{"wkid": 3857}', '{"wkid": 102100, "latestWkid": 3857}'):
        body = query(server, "points", objectIds="1,2", outSR=out_sr)
        assert body["spatialReference"] == {"wkid": 102100, "latestWkid": 3857}
        origin, zurich = body["features"]
        assert origin["geometry"]["x"] == pytest.approx(0.0, abs=1e-6)
        assert origin["geometry"]["y"] == pytest.approx(0.0, abs=1e-6)
        assert zurich["geometry"]["x"] == pytest.approx(expected[0], abs=1e-3)
        assert zurich["geometry"]["y"] == pytest.approx(expected[1], abs=1e-3)


def test_out_sr_reprojects_polygons_from_utm_and_by_wkt(server: str) -> None:
    body = query(server, "lots_utm", objectIds="1", outSR="4326")
    ring = body["features"][0]["geometry"]["rings"][0]
    to_utm = Transformer.from_crs(32633, 4326, always_xy=True)
    assert ring[0] == pytest.approx(list(to_utm.transform(500000, 5000000)), abs=1e-9)
    assert _signed_area(ring) == -1.0
    wkt = json.dumps({"wkt": 'GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],'
                      'PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]'})
    by_wkt = query(server, "lots_utm", objectIds="1", outSR=wkt)
    assert by_wkt["features"][0]["geometry"]["rings"][0][0] == pytest.approx(ring[0], abs=1e-9)


def test_unknown_out_sr_is_an_error(server: str) -> None:
    assert_query_error(query(server, "points", outSR="12345678"))
    assert_query_error(query(server, "points", outSR="{bad"))


# --------------------------------------------------------------------------- GeoJSON


def test_geojson_output(server: str) -> None:
    response = requests.get(
        layer_url(server, "polygons") + "/query", params={"where": "1=1", "outFields": "*", "f": "geojson"}, timeout=30
    )
    assert response.status_code == 200
    body = response.json()
    assert body["type"] == "FeatureCollection"
    assert "crs" not in body and "properties" not in body
    feats = {f["id"]: f for f in body["features"]}
    assert sorted(feats) == [1, 2, 3]
    assert feats[1]["type"] == "Feature"
    assert feats[1]["properties"] == {"OBJECTID": 1, "kind": "holed", "stamp": -457_452_000_000, "day": -14_256_000_000}
    holed = feats[1]["geometry"]["coordinates"]
    # RFC 7946: exterior counter-clockwise, holes clockwise
    assert shapely.LinearRing(holed[0]).is_ccw and not shapely.LinearRing(holed[1]).is_ccw
    assert shapely.geometry.shape(feats[2]["geometry"]).normalize().equals(MULTI.normalize())


def test_geojson_defaults_to_wgs84_and_flags_the_limit_in_properties(server: str) -> None:
    body = query(server, "lots_utm", f="geojson", resultRecordCount="2")
    lon, lat = body["features"][0]["geometry"]["coordinates"][0][0]
    assert 14 < lon < 16 and 44 < lat < 46  # UTM 33N near (15°E, 45°N)
    assert body["properties"] == {"exceededTransferLimit": True}
    merc = query(server, "points", f="geojson", outSR="3857", objectIds="2")
    assert merc["crs"] == {"type": "name", "properties": {"name": "EPSG:3857"}}
    table = query(server, "lookup_table", f="geojson")
    assert [f["geometry"] for f in table["features"]] == [None] * 4


def test_null_geometry_in_geojson(server: str) -> None:
    body = query(server, "points", f="geojson", objectIds="21")
    assert body["features"][0]["geometry"] is None
    assert body["features"][0]["id"] == 21


def test_unsupported_format_is_an_error(server: str) -> None:
    body = requests.get(layer_url(server, "points") + "/query", params={"where": "1=1", "f": "kmz"}, timeout=30).json()
    assert body["error"]["code"] == 400


# --------------------------------------------------------------------------- statistics and extent


def test_statistics(server: str) -> None:
    stats = [
        {"statisticType": "min", "onStatisticField": "OBJECTID", "outStatisticFieldName": "min_oid"},
        {"statisticType": "max", "onStatisticField": "OBJECTID", "outStatisticFieldName": "max_oid"},
        {"statisticType": "count", "onStatisticField": "pop", "outStatisticFieldName": "n_pop"},
        {"statisticType": "sum", "onStatisticField": "pop", "outStatisticFieldName": "total"},
        {"statisticType": "avg", "onStatisticField": "ratio", "outStatisticFieldName": "mean"},
        {"statisticType": "max", "onStatisticField": "born"},
    ]
    body = query(server, "points", outStatistics=json.dumps(stats))
    assert len(body["features"]) == 1
    attrs = body["features"][0]["attributes"]
    ratios = [0.0, 1.5, 2.25, -3.5, 10.0, 7.0, 3.0]
    assert attrs == {
        "min_oid": 1, "max_oid": 34, "n_pop": 7, "total": 19400020,
        "mean": pytest.approx(sum(ratios) / len(ratios)), "max_born": POINT_BORN_MS[8],
    }  # fmt: skip
    types = {f["name"]: f["type"] for f in body["fields"]}
    assert types["max_born"] == "esriFieldTypeDate"
    assert types["n_pop"] == "esriFieldTypeInteger"
    filtered = query(server, "points", where="pop > 100", outStatistics=json.dumps(stats[:2]))
    assert filtered["features"][0]["attributes"] == {"min_oid": 2, "max_oid": 34}


def test_statistics_grouped(server: str) -> None:
    stats = [{"statisticType": "count", "onStatisticField": "OBJECTID", "outStatisticFieldName": "n"}]
    body = query(server, "lots_utm", outStatistics=json.dumps(stats), groupByFieldsForStatistics="AREA")
    assert [f["attributes"] for f in body["features"]] == [{"AREA": 250000.0, "n": 3}]


@pytest.mark.parametrize(
    "stats",
    [
        '[{"statisticType": "median", "onStatisticField": "pop"}]',
        '[{"statisticType": "min", "onStatisticField": "nosuch"}]',
        '[{"statisticType": "sum", "onStatisticField": "name"}]',
        "not json",
        "[]",
    ],
)
def test_bad_statistics_are_errors(server: str, stats: str) -> None:
    assert_query_error(query(server, "points", outStatistics=stats))


def test_return_extent_only(server: str) -> None:
    body = query(server, "points", where="pop > 100", returnExtentOnly="true", returnCountOnly="true")
    assert body["count"] == 3
    extent = body["extent"]
    assert (extent["xmin"], extent["ymin"], extent["xmax"], extent["ymax"]) == (8.54, -33.87, 151.2, 47.37)
    assert extent["spatialReference"] == {"wkid": 4326, "latestWkid": 4326}


@pytest.mark.parametrize("has_z", [False, True])
def test_point_fast_path_matches_esrijson_encoder(has_z: bool) -> None:
    import numpy as np

    from ags_etl.arcgis.esrijson import encode_geometry
    from ags_etl.server.query import encode_esri

    geoms = np.array(
        [shapely.Point(0, 0), None, shapely.Point(1.5, -2.25, 7.0), shapely.Point(-180, 90), shapely.Point()],
        dtype=object,
    )
    expected = [encode_geometry(g, has_z=has_z) for g in geoms]
    assert encode_esri(geoms, "esriGeometryPoint", has_z) == expected
    assert expected[0] == {"x": 0.0, "y": 0.0} and expected[1] is None and expected[4] is None
