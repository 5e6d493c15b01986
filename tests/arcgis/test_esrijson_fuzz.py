"""Property-based tests of the Esri JSON decoder: arbitrary JSON gives only ags_etl's own
errors, and every valid feature round-trips with its coordinates bit for bit."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS

from ags_etl.arcgis.esrijson import decode_features, decode_geometry
from ags_etl.errors import AgsEtlError, GeometryError
from ags_etl.schema import Field, LayerSchema

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Round trips build pages of several geometries each: fewer examples keep them near 5 s.
ROUND_TRIP = settings(SETTINGS, max_examples=100)
GEOMETRY_TYPES = ["esriGeometryPoint", "esriGeometryMultipoint", "esriGeometryPolyline", "esriGeometryPolygon"]
FIELDS = (
    Field("OBJECTID", "esriFieldTypeOID"),
    Field("SMALL", "esriFieldTypeSmallInteger"),
    Field("COUNT", "esriFieldTypeInteger"),
    Field("VALUE", "esriFieldTypeDouble"),
    Field("NAME", "esriFieldTypeString"),
    Field("WHEN", "esriFieldTypeDate"),
)


def schema(geometry_type: str | None, has_z: bool = False) -> LayerSchema:
    return LayerSchema(FIELDS, "OBJECTID", geometry_type, CRS.from_epsg(4326), has_z=has_z)


# --------------------------------------------------------------------------- strategies

edge_floats = st.sampled_from([0.0, -0.0, 5e-324, -5e-324, 1e308, -1e308, 1.7976931348623157e308, 1e-7, 180.0])
finite = st.one_of(st.floats(allow_nan=False, allow_infinity=False), edge_floats)
hostile_numbers = st.one_of(
    st.floats(), st.integers(), st.integers(min_value=10**300, max_value=10**320), st.just(float("nan")),
    st.just(float("inf")), st.booleans(), st.none(), st.sampled_from(["NaN", "", "abc", "1.5", "inf", "1e999"]),
)
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8), hostile_numbers)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=20,
)


def vertex(values: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(values, min_size=2, max_size=4)


def ring(values: st.SearchStrategy[Any], closed: bool) -> st.SearchStrategy[list[Any]]:
    return st.lists(vertex(values), min_size=0, max_size=6).map(lambda r: r + r[:1] if closed and r else r)


near_valid_geometry = st.one_of(
    st.fixed_dictionaries({"x": hostile_numbers, "y": hostile_numbers}, optional={"z": hostile_numbers}),
    st.fixed_dictionaries({"points": st.lists(vertex(hostile_numbers), max_size=5)}),
    st.fixed_dictionaries({"paths": st.lists(st.lists(vertex(hostile_numbers), max_size=5), max_size=3)}),
    st.fixed_dictionaries({"rings": st.lists(ring(hostile_numbers, closed=True), max_size=3)}),
    st.fixed_dictionaries({"rings": st.lists(ring(finite, closed=False), max_size=3)}),
    json_values,
)
near_valid_attributes = st.one_of(
    st.fixed_dictionaries(
        {
            "OBJECTID": st.one_of(st.integers(-(2**70), 2**70), st.floats(), st.none(), st.text(max_size=3)),
            "SMALL": st.one_of(st.integers(-(2**20), 2**20), st.none(), st.text(max_size=3)),
            "COUNT": st.one_of(st.integers(-(2**40), 2**40), st.floats(), st.none()),
            "VALUE": st.one_of(st.floats(), st.integers(-(2**70), 2**70), st.none(), st.text(max_size=3)),
            "NAME": json_values,
            "WHEN": st.one_of(st.integers(-(2**66), 2**66), st.floats(), st.none(), st.text(max_size=5)),
        }
    ),
    json_values,
)
near_valid_feature = st.one_of(
    st.fixed_dictionaries({"attributes": near_valid_attributes, "geometry": near_valid_geometry}),
    st.fixed_dictionaries({}, optional={"attributes": near_valid_attributes, "geometry": near_valid_geometry}),
    json_values,
)


@st.composite
def valid_geometry(draw: st.DrawFn, geometry_type: str, has_z: bool) -> dict[str, Any] | None:
    width = 3 if has_z else 2
    coordinate = st.lists(finite, min_size=width, max_size=width)
    if draw(st.integers(0, 9)) == 0:
        return None
    if geometry_type == "esriGeometryPoint":
        xyz = draw(coordinate)
        return dict(zip("xyz", xyz, strict=False))
    if geometry_type == "esriGeometryMultipoint":
        return {"points": draw(st.lists(coordinate, min_size=1, max_size=5))}
    if geometry_type == "esriGeometryPolyline":
        return {"paths": draw(st.lists(st.lists(coordinate, min_size=2, max_size=5), min_size=1, max_size=3))}
    rings = draw(st.lists(st.lists(coordinate, min_size=3, max_size=6), min_size=1, max_size=3))
    return {"rings": [r + r[:1] for r in rings]}


@st.composite
def valid_page(draw: st.DrawFn) -> tuple[LayerSchema, list[dict[str, Any]]]:
    geometry_type = draw(st.sampled_from(GEOMETRY_TYPES))
    has_z = draw(st.booleans())
    features = []
    for oid in range(draw(st.integers(0, 6))):
        attributes = {
            "OBJECTID": oid,
            "SMALL": draw(st.one_of(st.none(), st.integers(-(2**15), 2**15 - 1))),
            "COUNT": draw(st.one_of(st.none(), st.integers(-(2**31), 2**31 - 1))),
            "VALUE": draw(st.one_of(st.none(), finite)),
            "NAME": draw(st.one_of(st.none(), st.text(max_size=10))),
            "WHEN": draw(st.one_of(st.none(), st.integers(-(2**45), 2**45))),
        }
        features.append({"attributes": attributes, "geometry": draw(valid_geometry(geometry_type, has_z))})
    return schema(geometry_type, has_z), features


# --------------------------------------------------------------------------- helpers


def bits(values: Any) -> list[bytes]:
    return [struct.pack("<d", float(v)) for v in np.asarray(values, dtype=float).ravel()]


def decoded_sequences(geom: shapely.Geometry, has_z: bool) -> list[list[bytes]]:
    """Every coordinate sequence of ``geom`` (points, lines, rings) as IEEE bytes."""
    parts = shapely.get_parts(geom)
    out = []
    for part in parts:
        seqs = shapely.get_rings(part) if part.geom_type == "Polygon" else [part]
        out.extend(bits(shapely.get_coordinates(s, include_z=has_z)) for s in seqs)
    return out


def expected_sequences(esri: dict[str, Any]) -> list[list[bytes]]:
    if "x" in esri:
        return [bits([esri[k] for k in "xyz" if k in esri])]
    if "points" in esri:
        return [bits([p]) for p in esri["points"]]
    return [bits(seq) for seq in esri.get("paths") or esri.get("rings")]


# --------------------------------------------------------------------------- properties


@SETTINGS
@given(features=json_values, geometry_type=st.sampled_from([*GEOMETRY_TYPES, None]))
def test_arbitrary_json_pages_give_only_our_errors(features: Any, geometry_type: str | None) -> None:
    try:
        decode_features(features, schema(geometry_type))
    except AgsEtlError:
        pass


@SETTINGS
@given(
    features=st.lists(near_valid_feature, max_size=5),
    geometry_type=st.sampled_from(GEOMETRY_TYPES),
    has_z=st.booleans(),
)
def test_near_valid_features_give_only_our_errors(features: list[Any], geometry_type: str, has_z: bool) -> None:
    try:
        batch = decode_features(features, schema(geometry_type, has_z))
    except AgsEtlError:
        return
    assert len(batch) == len(features)
    for g in batch.geometry:
        assert g is None or (isinstance(g, shapely.Geometry) and not g.is_empty)


@SETTINGS
@given(geometry=near_valid_geometry, has_z=st.booleans())
def test_single_geometries_give_only_geometry_errors(geometry: Any, has_z: bool) -> None:
    try:
        decode_geometry(geometry, has_z=has_z)
    except GeometryError:
        pass


@ROUND_TRIP
@given(page=valid_page())
def test_valid_features_round_trip_exactly(page: tuple[LayerSchema, list[dict[str, Any]]]) -> None:
    layer, features = page
    batch = decode_features(features, layer)
    assert len(batch) == len(features)
    for f, geom in zip(features, batch.geometry, strict=True):
        esri = f["geometry"]
        if esri is None:
            assert geom is None
            continue
        assert geom is not None
        got = decoded_sequences(geom, layer.has_z)
        want = expected_sequences(esri)
        if "rings" in esri:  # rings are regrouped into polygons by containment: compare as a multiset
            got, want = sorted(map(tuple, got)), sorted(map(tuple, want))
        assert got == want
    table = batch.attributes.to_pydict()
    for name in ("OBJECTID", "SMALL", "COUNT", "NAME"):
        assert table[name] == [f["attributes"][name] for f in features]
    assert bits([np.nan if v is None else v for v in table["VALUE"]]) == bits(
        [np.nan if f["attributes"]["VALUE"] is None else f["attributes"]["VALUE"] for f in features]
    )
    when = batch.attributes.column("WHEN").cast("int64").to_pylist()
    assert when == [f["attributes"]["WHEN"] for f in features]


# --------------------------------------------------------------------------- decided cases


def test_nan_and_null_coordinates_are_empty_points_infinity_is_refused() -> None:
    layer = schema("esriGeometryPoint")
    feats = [{"attributes": {"OBJECTID": i}, "geometry": g}
             for i, g in enumerate([{"x": float("nan"), "y": 1}, {"x": "NaN", "y": "NaN"}, {"x": None, "y": 2}])]
    assert list(decode_features(feats, layer).geometry) == [None, None, None]
    for bad in ({"x": float("inf"), "y": 1}, {"x": 10**400, "y": 1}, {"x": True, "y": 1}):
        with pytest.raises(GeometryError, match="OBJECTID=4 .*exclude the feature with --where"):
            decode_features([{"attributes": {"OBJECTID": 4}, "geometry": bad}], layer)
    with pytest.raises(GeometryError, match=r"vertex 1 of paths\[0\]"):
        decode_geometry({"paths": [[[0, 0], [float("nan"), 1]]]})
