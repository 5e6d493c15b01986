"""Esri JSON decoding: geometry rules, attribute types, and agreement with GDAL on real pages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyogrio
import pytest
import shapely
from pyproj import CRS

from ags_etl.arcgis.esrijson import (
    decode_features,
    decode_geojson_features,
    decode_geometry,
    encode_geometry,
    organize_rings,
)
from ags_etl.arcgis.layer import parse_layer
from ags_etl.errors import GeometryError
from ags_etl.schema import Field, LayerSchema

DATA = Path(__file__).parent.parent / "data" / "real-servers"


def square(x0: float, y0: float, size: float, clockwise: bool) -> list[list[float]]:
    ring = [[x0, y0], [x0 + size, y0], [x0 + size, y0 + size], [x0, y0 + size], [x0, y0]]
    return ring[::-1] if clockwise else ring


def test_point_at_zero_is_kept_and_nan_is_null() -> None:
    assert decode_geometry({"x": 0, "y": 0}).equals(shapely.Point(0, 0))
    assert decode_geometry({"x": 0.0, "y": 5}).equals(shapely.Point(0, 5))
    assert decode_geometry({"x": "NaN", "y": "NaN"}) is None
    assert decode_geometry({"x": None, "y": 1}) is None
    assert decode_geometry(None) is None
    assert decode_geometry({"rings": []}) is None
    assert decode_geometry({"paths": [[]]}) is None
    assert decode_geometry({"points": []}) is None


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
@pytest.mark.parametrize("hole_clockwise", [False, True])
def test_hole_assigned_by_containment_whatever_order_or_winding(order: tuple[int, int], hole_clockwise: bool) -> None:
    rings = [square(0, 0, 10, True), square(2, 2, 2, hole_clockwise)]
    geom = decode_geometry({"rings": [rings[i] for i in order]})
    assert geom.geom_type == "Polygon"
    assert len(geom.interiors) == 1
    assert geom.area == pytest.approx(100 - 4)


def test_multipolygon_with_holes_listed_before_shells() -> None:
    # Koop 9.3 lists each hole before its exterior.
    rings = [square(1, 1, 1, False), square(0, 0, 10, True), square(21, 21, 1, False), square(20, 20, 5, True)]
    geom = decode_geometry({"rings": rings})
    assert geom.geom_type == "MultiPolygon"
    assert sorted(len(p.interiors) for p in geom.geoms) == [1, 1]
    assert geom.area == pytest.approx(100 - 1 + 25 - 1)
    assert geom.is_valid


def test_island_inside_hole_is_a_shell() -> None:
    rings = [square(0, 0, 10, True), square(2, 2, 6, False), square(4, 4, 2, True)]
    geom = organize_rings([np.asarray(r, dtype=float) for r in rings])
    assert geom.geom_type == "MultiPolygon" and len(geom.geoms) == 2
    assert geom.area == pytest.approx(100 - 36 + 4)


def test_all_counter_clockwise_rings_still_nest() -> None:
    # pyesridump produced a MultiPolygon with empty coordinates here.
    geom = decode_geometry({"rings": [square(0, 0, 10, False), square(2, 2, 2, False)]})
    assert geom.geom_type == "Polygon" and len(geom.interiors) == 1


def test_z_kept_m_dropped() -> None:
    line = decode_geometry({"paths": [[[0, 0, 5, 9], [1, 1, 6, 9]]]}, has_z=True, has_m=True)
    assert shapely.get_coordinates(line, include_z=True).tolist() == [[0, 0, 5], [1, 1, 6]]
    line_m = decode_geometry({"paths": [[[0, 0, 9], [1, 1, 9]]]}, has_z=False, has_m=True)
    assert not line_m.has_z
    pt = decode_geometry({"x": 1, "y": 2, "z": 0}, has_z=True)
    assert pt.has_z and pt.z == 0


def test_multipart_lines_and_multipoints() -> None:
    assert decode_geometry({"paths": [[[0, 0], [1, 1]]]}).geom_type == "LineString"
    assert decode_geometry({"paths": [[[0, 0], [1, 1]], [[2, 2], [3, 3]]]}).geom_type == "MultiLineString"
    assert decode_geometry({"points": [[0, 0], [1, 1]]}).geom_type == "MultiPoint"


def test_curves_are_refused_with_the_fix() -> None:
    with pytest.raises(GeometryError, match="returnTrueCurves=false"):
        decode_geometry({"curveRings": [[[0, 0], {"c": [[1, 1], [0.5, 0.5]]}]]})


def test_encode_winding_is_esri_and_round_trips() -> None:
    poly = shapely.Polygon(square(0, 0, 10, False), [square(2, 2, 2, True)])
    esri = encode_geometry(poly)
    ext, hole = esri["rings"]
    assert shapely.LinearRing(ext).is_ccw is False  # exterior clockwise
    assert shapely.LinearRing(hole).is_ccw is True
    assert decode_geometry(esri).equals(poly)
    assert encode_geometry(shapely.Point(0, 0)) == {"x": 0.0, "y": 0.0}
    assert encode_geometry(None) is None


def test_attributes_follow_field_types() -> None:
    schema = LayerSchema(
        fields=(
            Field("OBJECTID", "esriFieldTypeOID"),
            Field("N", "esriFieldTypeSmallInteger"),
            Field("D", "esriFieldTypeDate"),
            Field("S", "esriFieldTypeString"),
            Field("G", "esriFieldTypeGlobalID"),
            Field("F", "esriFieldTypeDouble"),
        ),
        oid_field="OBJECTID",
        geometry_type="esriGeometryPoint",
        crs=CRS.from_epsg(4326),
    )
    feats = [
        {"attributes": {"OBJECTID": 6.4579816e7, "N": 3, "D": -86400000, "S": "Ünïcode & <b>", "G": "{AB}", "F": 0},
         "geometry": {"x": 0, "y": 0}},
        {"attributes": {"OBJECTID": 2, "N": None, "D": None, "S": None, "G": None, "F": None}},
    ]
    batch = decode_features(feats, schema)
    t = batch.attributes
    assert t.schema.field("OBJECTID").type == pa.int64()
    assert t.column("OBJECTID").to_pylist() == [64579816, 2]
    assert t.schema.field("N").type == pa.int16()
    assert t.schema.field("D").type == pa.timestamp("ms", tz="UTC")
    assert str(t.column("D")[0].as_py()) == "1969-12-31 00:00:00+00:00"
    assert t.column("S").to_pylist() == ["Ünïcode & <b>", None]
    assert t.column("F").to_pylist() == [0.0, None]
    assert batch.geometry[0].equals(shapely.Point(0, 0)) and batch.geometry[1] is None


def test_qualified_or_recased_attribute_keys_are_matched() -> None:
    schema = LayerSchema(fields=(Field("SHAPE.fid", "esriFieldTypeOID"), Field("Name", "esriFieldTypeString")),
                         oid_field="SHAPE.fid")
    batch = decode_features([{"attributes": {"FID": 7, "NAME": "a"}}], schema)
    assert batch.attributes.column("SHAPE.fid").to_pylist() == [7]
    assert batch.attributes.column("Name").to_pylist() == ["a"]


def test_geojson_page_without_type_or_id() -> None:
    schema = LayerSchema(fields=(Field("OBJECTID", "esriFieldTypeOID"),), oid_field="OBJECTID",
                         geometry_type="esriGeometryPolygon", crs=CRS.from_epsg(4326))
    feats = [{"properties": {"OBJECTID": 1}, "geometry": {"type": "Polygon", "coordinates": [square(0, 0, 1, False)]}},
             {"id": 2, "properties": {}, "geometry": None}]
    batch = decode_geojson_features(feats, schema)
    assert batch.attributes.column("OBJECTID").to_pylist() == [1, 2]
    assert batch.geometry[0].area == 1 and batch.geometry[1] is None


def test_cook_county_parcels_agree_with_gdal(tmp_path: Path) -> None:
    """500 real parcels (EPSG:3435) with holes and multiparts: ours == GDAL's ESRIJSON reader."""
    page = json.loads((DATA / "us-il-cook" / "count-only.json").read_text())
    fields = [{"name": k, "type": "esriFieldTypeString" if k == "PIN14" else "esriFieldTypeDouble"}
              for k in page["features"][0]["attributes"]]
    schema = LayerSchema(fields=tuple(Field.from_esri(f) for f in fields), geometry_type="esriGeometryPolygon",
                         crs=CRS.from_epsg(3435))
    batch = decode_features(page["features"], schema)
    ours = batch.geometry
    path = tmp_path / "cook.json"
    path.write_text(json.dumps(page))
    gdal = pyogrio.read_dataframe(path)  # GDAL picks its ESRIJSON driver from the content
    assert len(gdal) == len(ours) == 500
    assert sum(1 for g in ours if g.geom_type == "MultiPolygon") > 0
    assert sum(len(g.interiors) for g in ours if g.geom_type == "Polygon") > 0
    for mine, theirs in zip(ours, gdal.geometry.values, strict=True):
        assert shapely.normalize(mine).equals_exact(shapely.normalize(theirs), 1e-6)


@pytest.mark.parametrize(
    "server, page, nulls",
    [("us-esri-test", "us-esri-test-0.json", 162), ("us-ca-carson", "us-ca-carson-0.json", 1)],
)
def test_real_pages_keep_features_without_geometry(server: str, page: str, nulls: int) -> None:
    meta_file = next((DATA / server).glob("*metadata.json"))
    info = parse_layer("http://x.test/s/MapServer/0", json.loads(meta_file.read_text()))
    data = json.loads((DATA / server / page).read_text())
    batch = decode_features(data["features"], info.schema)
    assert len(batch) == len(data["features"])
    assert sum(1 for g in batch.geometry if g is None) == nulls
    oids = batch.attributes.column(info.oid_field).to_pylist()
    assert None not in oids  # (the Carson recording repeats OID 1: dedupe is the extractor's job)


def test_point_pages_decode_like_single_points() -> None:
    geoms = [{"x": 0, "y": 0}, None, {"x": "NaN", "y": 1}, {"x": "", "y": 2}, {"x": None, "y": 3},
             {"x": 1.5, "y": "2.5"}, {}, {"x": -0.0, "y": 7}]
    schema = LayerSchema(fields=(Field("OBJECTID", "esriFieldTypeOID"),), oid_field="OBJECTID",
                         geometry_type="esriGeometryPoint", crs=CRS.from_epsg(4326))
    feats = [{"attributes": {"OBJECTID": i}, "geometry": g} for i, g in enumerate(geoms)]
    page = decode_features(feats, schema).geometry
    one_by_one = [decode_geometry(g) if g else None for g in geoms]
    assert [None if g is None else g.wkt for g in page] == [None if g is None else g.wkt for g in one_by_one]
    assert page[0].equals(shapely.Point(0, 0)) and page[5].equals(shapely.Point(1.5, 2.5))
