"""Property-based tests of the ``f=geojson`` page decoder: arbitrary JSON gives only ags_etl's
own errors, and every valid feature round-trips with its coordinates bit for bit."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import pytest
import shapely
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyproj import CRS

from ags_etl.arcgis.esrijson import decode_geojson_features
from ags_etl.errors import AgsEtlError, GeometryError
from ags_etl.schema import Field, LayerSchema
from tests.arcgis.test_esrijson_fuzz import finite, hostile_numbers, json_values

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
#: Round trips build pages of several geometries each: fewer examples keep them near 5 s.
ROUND_TRIP = settings(SETTINGS, max_examples=100)
FIELDS = (Field("OBJECTID", "esriFieldTypeOID"), Field("NAME", "esriFieldTypeString"),
          Field("WHEN", "esriFieldTypeDate"), Field("VALUE", "esriFieldTypeDouble"))
SCHEMA = LayerSchema(FIELDS, "OBJECTID", "esriGeometryPolygon", CRS.from_epsg(4326))

hostile_position = st.lists(hostile_numbers, min_size=0, max_size=4)


def closed(ring: list[list[float]]) -> list[list[float]]:
    return ring + ring[:1]


@st.composite
def valid_geometry(draw: st.DrawFn) -> dict[str, Any]:
    """A GeoJSON geometry whose positions all have the same dimension (2 or 3)."""
    dims = draw(st.sampled_from([2, 3]))
    position = st.lists(finite, min_size=dims, max_size=dims)
    kind = draw(st.sampled_from(["Point", "MultiPoint", "LineString", "MultiLineString", "Polygon"]))
    if kind == "Point":
        coordinates: Any = draw(position)
    elif kind == "MultiPoint":
        coordinates = draw(st.lists(position, min_size=1, max_size=4))
    elif kind == "LineString":
        coordinates = draw(st.lists(position, min_size=2, max_size=5))
    elif kind == "MultiLineString":
        coordinates = draw(st.lists(st.lists(position, min_size=2, max_size=4), min_size=1, max_size=3))
    else:
        coordinates = [closed(r) for r in draw(st.lists(st.lists(position, min_size=3, max_size=5), min_size=1,
                                                            max_size=3))]
    return {"type": kind, "coordinates": coordinates}


def flatten(coordinates: Any) -> list[float]:
    """All numbers of a GeoJSON coordinates member, in order."""
    if isinstance(coordinates, list):
        return [v for c in coordinates for v in flatten(c)]
    return [coordinates]


near_valid_geometry = st.one_of(
    st.fixed_dictionaries({"type": st.sampled_from(["Point", "LineString", "Polygon", "MultiPoint",
                                                    "MultiPolygon", "GeometryCollection", "Nope", 5]),
                           "coordinates": st.one_of(hostile_position, st.lists(hostile_position, max_size=4),
                                                    st.lists(st.lists(hostile_position, max_size=4), max_size=3),
                                                    json_values)}),
    json_values,
)
near_valid_feature = st.one_of(
    st.fixed_dictionaries({"type": st.just("Feature"), "geometry": near_valid_geometry,
                           "properties": st.one_of(st.none(), json_values,
                                                   st.fixed_dictionaries({"OBJECTID": json_values,
                                                                          "WHEN": json_values}))},
                          optional={"id": json_values}),
    json_values,
)


def bits(values: Any) -> list[bytes]:
    return [struct.pack("<d", float(v)) for v in np.asarray(values, dtype=float).ravel()]


@SETTINGS
@given(features=st.one_of(json_values, st.lists(near_valid_feature, max_size=5)))
def test_arbitrary_json_gives_only_our_errors(features: Any) -> None:
    try:
        batch = decode_geojson_features(features, SCHEMA)
    except AgsEtlError:
        return
    assert len(batch) == len(features)


@ROUND_TRIP
@given(geometries=st.lists(st.one_of(st.none(), valid_geometry()), max_size=5), names=st.lists(st.text(max_size=5)))
def test_valid_features_round_trip_exactly(geometries: list[dict[str, Any] | None], names: list[str]) -> None:
    features = [{"type": "Feature", "id": i, "geometry": g, "properties": {"NAME": names[i] if i < len(names) else None}}
                for i, g in enumerate(geometries)]
    batch = decode_geojson_features(features, SCHEMA)
    assert batch.attributes.column("OBJECTID").to_pylist() == list(range(len(features)))
    for g, geom in zip(geometries, batch.geometry, strict=True):
        if g is None:
            assert geom is None
            continue
        has_z = len(flatten(g["coordinates"])) != 2 * len(shapely.get_coordinates(geom))
        assert bits(shapely.get_coordinates(geom, include_z=has_z)) == bits(flatten(g["coordinates"]))
        assert geom.geom_type == g["type"]


def test_non_finite_coordinates_are_refused_naming_the_feature() -> None:
    feats = [{"id": 1, "properties": {}, "geometry": {"type": "Point", "coordinates": [1.0, 2.0]}},
             {"id": 9, "properties": {}, "geometry": {"type": "Point", "coordinates": [float("inf"), 2.0]}}]
    with pytest.raises(GeometryError, match="OBJECTID=9 .*not finite.*--where"):
        decode_geojson_features(feats, SCHEMA)
    with pytest.raises(AgsEtlError, match="index 0 .*'POINT \\(1 2\\)'"):
        decode_geojson_features([{"properties": {}, "geometry": "POINT (1 2)"}], SCHEMA)
