"""Bulk decoding of raw query answers (Arrow's JSON reader) gives exactly what the careful
decoder gives, or steps aside; raw id lists and point WKB likewise."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pytest
import shapely
from pyproj import CRS

from ags_etl.arcgis.esrijson import decode_features, decode_raw_page
from ags_etl.arcgis.paging import normalise_ids
from ags_etl.batch import wkb_array
from ags_etl.extractors.feature_layer import ids_from_raw
from ags_etl.schema import Field, LayerSchema

FIELDS = (
    Field("OBJECTID", "esriFieldTypeOID"),
    Field("N", "esriFieldTypeSmallInteger"),
    Field("I", "esriFieldTypeInteger"),
    Field("D", "esriFieldTypeDate"),
    Field("S", "esriFieldTypeString"),
    Field("F", "esriFieldTypeDouble"),
)
SQUARE = [[0.0, 0.0], [0.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 0.0]]
HOLE = [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4], [0.2, 0.2]]


def schema(geometry_type: str | None, has_z: bool = False) -> LayerSchema:
    return LayerSchema(fields=FIELDS, oid_field="OBJECTID", geometry_type=geometry_type,
                       crs=CRS.from_epsg(4326) if geometry_type else None, has_z=has_z)


def attrs(i: int) -> dict[str, Any]:
    return {"OBJECTID": i + 1, "N": i % 7, "I": None if i % 5 == 0 else i * 1000, "D": 1_600_000_000_000 + i,
            "S": f"ü \"{i}\" \\ ,[]{{}}", "F": i / 3}


def answer(features: list[dict[str, Any]], exceeded: bool | None = True) -> bytes:
    doc: dict[str, Any] = {"objectIdFieldName": "OBJECTID", "fields": [{"name": "OBJECTID", "defaultValue": None},
                                                                        {"name": "S", "defaultValue": ""}],
                           "features": features}
    if exceeded is not None:
        doc["exceededTransferLimit"] = exceeded
    return orjson.dumps(doc)


def assert_same(body: bytes, layer: LayerSchema, *, bulk: bool) -> None:
    """The raw decoder agrees with the careful one; ``bulk``: it must not step aside."""
    got = decode_raw_page(body, layer)
    if not bulk:
        assert got is None
        return
    assert got is not None, "a plain page should be decoded in bulk"
    batch, exceeded = got
    data = orjson.loads(body)
    want = decode_features(data["features"], layer)
    assert exceeded == bool(data.get("exceededTransferLimit"))
    assert batch.attributes.equals(want.attributes)
    assert batch.attributes.schema == want.attributes.schema
    if want.geometry is None:
        assert batch.geometry is None
        return
    assert batch.geometry is not None and len(batch.geometry) == len(want.geometry)
    for g, w in zip(batch.geometry, want.geometry):
        assert (g is None) == (w is None)
        if w is not None:
            assert g.geom_type == w.geom_type and shapely.to_wkb(g) == shapely.to_wkb(w)


def test_point_page_with_nulls_and_extra_members() -> None:
    feats = [{"attributes": attrs(i), "geometry": {"x": i * 0.5, "y": -i, "spatialReference": {"wkid": 4326}}}
             for i in range(40)]
    feats[3]["geometry"] = None
    del feats[4]["geometry"]
    assert_same(answer(feats), schema("esriGeometryPoint"), bulk=True)
    assert_same(answer(feats, exceeded=None), schema("esriGeometryPoint"), bulk=True)


def test_point_page_with_z() -> None:
    feats = [{"attributes": attrs(i), "geometry": {"x": i, "y": 1, "z": 2.5 if i % 2 else None}} for i in range(10)]
    del feats[4]["geometry"]["z"]
    assert_same(answer(feats), schema("esriGeometryPoint", has_z=True), bulk=True)


def test_polygon_polyline_multipoint_pages_plain_and_irregular() -> None:
    shifted = [[[x + i, y] for x, y in SQUARE] for i in range(30)]
    polys = [{"attributes": attrs(i), "geometry": {"rings": [ring]}} for i, ring in enumerate(shifted)]
    polys[5]["geometry"] = {"rings": [SQUARE, HOLE]}  # a hole: one by one
    polys[6]["geometry"] = {"rings": [[[x + 5, y] for x, y in SQUARE], SQUARE]}  # two polygons
    polys[7]["geometry"] = {"rings": [SQUARE[:-1]]}  # open ring
    polys[8]["geometry"] = None
    assert_same(answer(polys), schema("esriGeometryPolygon"), bulk=True)
    lines = [{"attributes": attrs(i), "geometry": {"paths": [[[0, i], [1, i]]] * (1 + i % 2)}} for i in range(20)]
    assert_same(answer(lines), schema("esriGeometryPolyline"), bulk=True)
    points = [{"attributes": attrs(i), "geometry": {"points": [[0, i], [1, i]]}} for i in range(20)]
    assert_same(answer(points), schema("esriGeometryMultipoint"), bulk=True)


def test_table_page() -> None:
    assert_same(answer([{"attributes": attrs(i)} for i in range(5)]), schema(None), bulk=True)


@pytest.mark.parametrize(
    "change",
    [
        lambda f: f[1]["attributes"].update(OBJECTID=6.4579816e7),  # a float id: the careful path converts it
        lambda f: f[1]["attributes"].update(S=5),  # a number in a string field
        lambda f: f[1]["attributes"].update(F="NaN"),
        lambda f: f[1]["attributes"].update(D="2020-01-01"),
        lambda f: [a["attributes"].update(I=None) for a in f],  # a column all null: maybe another key name
        lambda f: [a["attributes"].update(S=a["attributes"].pop("S")) or a["attributes"].update(s="x") for a in f],
        lambda f: f[1].pop("attributes"),
        lambda f: f[1].update(geometry={"x": "NaN", "y": 1}),
        lambda f: f[1].update(geometry={"x": None, "y": 1}),
        lambda f: f[1].update(geometry={"rings": [SQUARE]}),  # a polygon in a point layer
        lambda f: f[1].update(geometry={}),
    ],
)
def test_irregular_point_pages_take_the_careful_path(change: Any) -> None:
    feats = [{"attributes": attrs(i), "geometry": {"x": i, "y": i}} for i in range(4)]
    change(feats)
    body = answer(feats)
    if b'"s"' in body:  # only an extra key: the columns still decode in bulk, and agree
        assert_same(body, schema("esriGeometryPoint"), bulk=True)
    else:
        assert_same(body, schema("esriGeometryPoint"), bulk=False)


@pytest.mark.parametrize(
    "body",
    [b"", b"[]", b'{"features": null}', b'{"features": {}}', b'{"features": [1]}', b'{"features": []}',
     b'{"features": [{"attributes": {"OBJECTID": 1}}]} {"features": []}', b'{"features": [{"attributes": {"OBJECTID": 1',
     b'{"features": [{"attributes": {"OBJECTID": 1, "OBJECTID": 2}}]}', b'{"features": [{"attributes": {"S": "\xff"}}]}',
     b'{"features": [{"attributes": {"OBJECTID": 1, "F": NaN}}]}'],
)
def test_malformed_answers_are_left_to_the_careful_path(body: bytes) -> None:
    assert decode_raw_page(body, schema(None)) is None


def test_curved_or_unsupported_layers_step_aside() -> None:
    envelope = schema("esriGeometryEnvelope")
    assert decode_raw_page(answer([{"attributes": attrs(0), "geometry": {"xmin": 0}}]), envelope) is None
    curves = answer([{"attributes": attrs(0), "geometry": {"curveRings": [[[0, 0]]]}}])
    assert decode_raw_page(curves, schema("esriGeometryPolygon")) is None
    dated = LayerSchema(fields=(Field("OBJECTID", "esriFieldTypeOID"), Field("DO", "esriFieldTypeDateOnly")),
                        oid_field="OBJECTID")
    assert decode_raw_page(orjson.dumps({"features": [{"attributes": {"OBJECTID": 1, "DO": "2020-01-02"}}]}),
                           dated) is None


@pytest.mark.parametrize(
    "ids",
    [[3, 1, 2, 2], [], list(range(1, 5000)), [0, 2**53]],
)
def test_raw_id_lists_match_normalise_ids(ids: list[int]) -> None:
    body = orjson.dumps({"objectIdFieldName": "OBJECTID", "objectIds": ids})
    got = ids_from_raw(body)
    assert got is not None and got.dtype == np.int64
    assert np.array_equal(got, normalise_ids(ids))


@pytest.mark.parametrize(
    "body",
    [b'{"objectIds":null}', b'{"objectIds":[1.0,2]}', b'{"objectIds":[-1,2]}', b'{"objectIds":[1,,2]}',
     b'{"objectIds":[,1]}', b'{"objectIds":[1,]}', b'{"objectIds":[99999999999999999999]}',
     b'{"objectIds":[9007199254740993]}', b'{"objectIds":[[1],[2]]}', b'{"objectIds":["1"]}', b'{"objectIds":[1,2',
     b'{"a":{"objectIds":[1]},"objectIds":[2]}', b'{"count": 3}'],
)
def test_irregular_id_lists_are_left_to_normalise_ids(body: bytes) -> None:
    assert ids_from_raw(body) is None


@pytest.mark.parametrize(
    "geoms",
    [
        shapely.points(np.arange(20.0).reshape(10, 2)),
        shapely.points(np.arange(30.0).reshape(10, 3)),
        np.array([shapely.Point(1, 2), None, shapely.Point(3, 4)], dtype=object),
        np.array([None, None], dtype=object),
        np.array([shapely.Point(), shapely.Point(1, 2)], dtype=object),
        np.array([shapely.Point(1, 2, 3), shapely.Point(1, 2)], dtype=object),
        np.empty(0, dtype=object),
        np.array([shapely.Point(0, 0).buffer(1), shapely.Point(1, 2)], dtype=object),
    ],
)
def test_wkb_array_is_shapely_iso_wkb(geoms: np.ndarray) -> None:
    got = wkb_array(geoms)
    got.validate(full=True)
    assert got.equals(pa.array(shapely.to_wkb(geoms, flavor="iso"), type=pa.binary()))
