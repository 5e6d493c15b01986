"""f=pbf: the local server's FeatureCollection protocol buffers, read by ags_etl.arcgis.pbf.

Every page is asked twice over HTTP, as f=json and f=pbf, and compared feature by feature:
attributes exactly, coordinates within the quantisation tolerance sent in
``quantizationParameters`` (1e-9 of the layer extent's larger side; a quantised
coordinate is at most half a tolerance off, the comparison allows one).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from ags_etl.arcgis import pbf
from ags_etl.arcgis.client import ArcGISClient
from ags_etl.arcgis.esrijson import decode_features
from ags_etl.arcgis.layer import LayerInfo, parse_layer
from ags_etl.errors import ArcGISError, QueryError
from ags_etl.server import pbf as server_pbf
from ags_etl.server.testing import run_server
from tests.layers import write_layer


def line_features(n: int) -> list[dict[str, Any]]:
    """LineStrings and MultiLineStrings (every third), one without geometry, in Web Mercator-like metres."""
    feats = []
    for i in range(n):
        x0, y0 = -13_600_000.0 + i * 37.25, 4_540_000.0 + (i % 5) * 11.125
        part = [[x0, y0], [x0 + 10.5, y0 + 3.25], [x0 + 20.0, y0 - 1.0]]
        if i % 7 == 6:
            geom = None
        elif i % 3 == 0:
            geom = {"type": "MultiLineString", "coordinates": [part, [[x0, y0 + 50], [x0 + 5, y0 + 55.5]]]}
        else:
            geom = {"type": "LineString", "coordinates": part}
        props = {"OBJECTID": i + 1, "LABEL": f"line {i}" if i % 4 else None, "LEN": i * 1.5, "RANK": -i}
        feats.append({"type": "Feature", "properties": props, "geometry": geom})
    return feats


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("pbf-data")
    write_layer(d / "points.geojson", "points", 120)
    write_layer(d / "polygons.geojson", "polygons", 60)
    write_layer(d / "table.geojson", "table", 30)
    fc = {"type": "FeatureCollection", "features": line_features(40)}
    (d / "lines.geojson").write_text(json.dumps(fc), "utf-8")
    with run_server(d) as base:
        yield base


def layer(base: str, name: str) -> LayerInfo:
    url = f"{base}/arcgis/rest/services/{name}/FeatureServer/0"
    return parse_layer(url, requests.get(url, params={"f": "json"}, timeout=30).json())


def quantization(info: LayerInfo) -> dict[str, Any] | None:
    e = info.extent
    if e is None:
        return None
    return pbf.quantization_parameters((e["xmin"], e["ymin"], e["xmax"], e["ymax"]), info.spatial_reference)


def both(info: LayerInfo, **params: Any) -> tuple[pbf.PbfFeatures, Any, float]:
    """The same query as f=pbf (decoded) and f=json (decoded); the tolerance used."""
    q = quantization(info)
    form = {"where": "1=1", "outFields": "*", **params}
    body = requests.post(
        info.url + "/query",
        data={**form, "f": "pbf", **({"quantizationParameters": json.dumps(q)} if q else {})},
        timeout=30,
    )
    assert body.headers["Content-Type"] == "application/x-protobuf"
    decoded = pbf.decode(body.content, info.schema)
    assert isinstance(decoded, pbf.PbfFeatures)
    answer = requests.post(info.url + "/query", data={**form, "f": "json"}, timeout=30).json()
    return decoded, decode_features(answer["features"], info.schema), (q["tolerance"] if q else 0.0)


@pytest.mark.parametrize("name", ["points", "lines", "polygons", "table"])
def test_pbf_page_equals_json_page(server: str, name: str) -> None:
    info = layer(server, name)
    assert "pbf" in info.query_formats
    got, want, tol = both(info)
    assert len(got.batch) == len(want) > 0
    assert got.batch.attributes.equals(want.attributes)  # exactly, nulls and dates included
    assert pbf.compare(got.batch, want, tol, info.schema.oid_field) is None
    if name == "table":
        assert got.batch.geometry is None
        return
    assert got.transform is not None and got.transform.upper_left
    assert got.transform.scale == (tol, tol)
    assert got.spatial_reference.get("wkid") == info.spatial_reference.get("wkid")
    present = [g for g in want.geometry if g is not None]
    assert [g is None for g in got.batch.geometry] == [g is None for g in want.geometry]
    a = shapely.get_coordinates(np.array([g for g in got.batch.geometry if g is not None]))
    b = shapely.get_coordinates(np.array(present))
    assert a.shape == b.shape
    assert np.abs(a - b).max() <= tol  # quantised: at most half a tolerance off, plus rounding
    kinds = {g.geom_type for g in present}
    assert {g.geom_type for g in got.batch.geometry if g is not None} == kinds
    if name == "polygons":
        assert "MultiPolygon" in kinds and any(len(g.interiors) for g in present if g.geom_type == "Polygon")
    if name == "lines":
        assert kinds == {"LineString", "MultiLineString"}


def test_paged_pbf_sets_exceeded_and_matches_ids(server: str) -> None:
    info = layer(server, "points")
    got, want, tol = both(info, resultRecordCount=25, resultOffset=50, orderByFields="OBJECTID ASC")
    assert got.exceeded and len(got.batch) == 25
    assert pbf.compare(got.batch, want, tol, "OBJECTID") is None
    count = requests.post(info.url + "/query", data={"f": "pbf", "returnCountOnly": "true"}, timeout=30)
    assert pbf.decode(count.content) == pbf.PbfCount(120)
    ids = pbf.decode(requests.post(info.url + "/query", data={"f": "pbf", "returnIdsOnly": "true"}, timeout=30).content)
    assert isinstance(ids, pbf.PbfIds) and ids.oid_field == "OBJECTID"
    expected = requests.post(info.url + "/query", data={"f": "json", "returnIdsOnly": "true"}, timeout=30).json()
    assert ids.ids.tolist() == expected["objectIds"]


def test_polygon_rings_are_clockwise_outside_and_counter_clockwise_holes(server: str) -> None:
    info = layer(server, "polygons")
    got, _, _ = both(info, objectIds="2")  # OID 2: a square with a square hole
    (geom,) = got.batch.geometry
    assert len(geom.interiors) == 1
    # The wire order and orientation, as Esri JSON has them: exterior clockwise first, then the hole.
    raw = requests.post(
        info.url + "/query", data={"f": "json", "objectIds": "2", "outFields": "OBJECTID"}, timeout=30
    ).json()
    rings = raw["features"][0]["geometry"]["rings"]
    assert shapely.LinearRing(rings[0]).is_ccw is False and shapely.LinearRing(rings[1]).is_ccw is True
    assert shapely.equals_exact(shapely.normalize(geom), shapely.normalize(shapely.Polygon(rings[0], [rings[1]])), 1e-9)


def test_a_coarser_quantisation_is_found_by_the_comparison(server: str) -> None:
    info = layer(server, "points")
    q = {"mode": "edit", "originPosition": "upperLeft", "tolerance": 0.01}
    body = requests.post(
        info.url + "/query",
        data={"where": "1=1", "outFields": "*", "f": "pbf", "quantizationParameters": json.dumps(q)},
        timeout=30,
    ).content
    coarse, _ = pbf.decode_features(body, info.schema)
    _, want, tol = both(info)
    difference = pbf.compare(coarse, want, tol, "OBJECTID")
    assert difference is not None and "differ by more than" in difference
    assert pbf.compare(coarse, want, 0.01, "OBJECTID") is None
    changed = want.replace(attributes=want.attributes.set_column(1, "NAME", want.attributes.column("COUNT").cast("string")))
    assert "field 'NAME' differs" in (pbf.compare(want, changed, tol) or "")


def test_errors_come_back_as_json_and_raise(server: str) -> None:
    info = layer(server, "points")
    with ArcGISClient(retries=0) as client:
        with pytest.raises(QueryError, match="where"):
            client.post_binary(info.url + "/query", {"where": "NOPE = ", "f": "pbf"})
        with pytest.raises(QueryError, match="f=json only"):
            client.post_binary(info.url + "/query", {"f": "pbf", "outStatistics": json.dumps(
                [{"statisticType": "count", "onStatisticField": "OBJECTID"}])})
        with pytest.raises(QueryError, match="tolerance"):
            client.post_binary(info.url + "/query", {"f": "pbf", "quantizationParameters": '{"tolerance": -1}'})
        data = client.post_binary(info.url + "/query", {"f": "pbf", "where": "1=1", "outFields": "*"})
    batch, _ = pbf.decode_features(data, info.schema)
    assert len(batch) == 120


def test_malformed_answers_name_the_problem(server: str) -> None:
    info = layer(server, "polygons")
    q = quantization(info)
    body = requests.post(
        info.url + "/query",
        data={"f": "pbf", "where": "1=1", "outFields": "*", "quantizationParameters": json.dumps(q)},
        timeout=30,
    ).content
    for cut in (len(body) // 2, len(body) - 1, 3):
        with pytest.raises(pbf.PbfError, match="malformed PBF|runs past|beyond|end"):
            pbf.decode(body[:cut], info.schema)
    with pytest.raises(pbf.PbfError, match="no query result"):
        pbf.decode(b"\x0a\x011", info.schema)
    with pytest.raises(pbf.PbfError, match="wire type"):
        pbf.decode(b"\x0b\x00", info.schema)
    assert issubclass(pbf.PbfError, ArcGISError)


# --------------------------------------------------------------------------- hand-made messages


def _key(number: int, wire: int) -> bytes:
    return bytes(server_pbf._varint((number << 3) | wire))


def _msg(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + server_pbf._varint(len(payload)) + payload


def _zz(values: list[int]) -> bytes:
    return b"".join(server_pbf._varint((v << 1) ^ (v >> 63)) for v in values)


def test_koop_style_points_and_lower_left_origin(tmp_path: Path) -> None:
    """Koop: fields sorted by name, points with ``lengths: [2]``, attributes in field order;
    Esri: points without lengths. Lower-left origin adds Y."""
    from ags_etl.schema import Field, LayerSchema

    schema = LayerSchema(
        fields=(Field("OBJECTID", "esriFieldTypeOID"), Field("NAME", "esriFieldTypeString"),
                Field("WHEN", "esriFieldTypeDate")),
        oid_field="OBJECTID", geometry_type="esriGeometryPoint", crs=None,
    )
    fields = b"".join(_msg(13, _msg(1, n.encode())) for n in (b"NAME".decode(), "OBJECTID", "WHEN"))
    transform = _msg(12, _key(1, 0) + b"\x01" + _msg(2, _key(1, 1) + struct.pack("<d", 0.5) + _key(2, 1)
                     + struct.pack("<d", 0.25)) + _msg(3, _key(1, 1) + struct.pack("<d", 100.0) + _key(2, 1)
                     + struct.pack("<d", -50.0)))

    def feature(name: str | None, oid: int, when: int, coords: list[int], lengths: bytes) -> bytes:
        values = _msg(1, b"" if name is None else _msg(1, name.encode())) + _msg(1, _key(5, 0) + server_pbf._varint(oid))
        values += _msg(1, _key(8, 0) + _zz([when]))
        return _msg(15, values + _msg(2, lengths + _msg(3, _zz(coords))))

    body = fields + transform
    body += feature("a", 7, -86_400_000, [4, 8], _msg(2, b"\x02"))  # Koop's lengths [2]
    body += feature(None, 9, 0, [-2, 0], b"")  # Esri: no lengths
    message = _msg(1, b"1") + _msg(2, _msg(1, body))
    batch, exceeded = pbf.decode_features(message, schema)
    assert not exceeded
    assert batch.attributes.to_pylist()[0]["NAME"] == "a" and batch.attributes.to_pylist()[1]["NAME"] is None
    assert batch.column("OBJECTID").to_pylist() == [7, 9]
    assert batch.column("WHEN").cast("int64").to_pylist() == [-86_400_000, 0]
    assert [(g.x, g.y) for g in batch.geometry] == [(102.0, -48.0), (99.0, -50.0)]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=50))
def test_vectorised_varints_round_trip(values: list[int]) -> None:
    encoded = server_pbf._packed_varints(server_pbf._zigzag_array(np.array(values, dtype=np.int64)))
    decoded, _ = pbf.varints(encoded)
    assert pbf.zigzag_array(decoded).tolist() == values
    assert encoded == _zz(values)  # the same bytes as one varint at a time
