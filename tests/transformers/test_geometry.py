"""ags_etl.geometry: families, coercion to a family, coordinate transformation with Z/M, boxes."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Transformer

from ags_etl.geometry import (
    coerce_to_family,
    densified_box,
    drop_m,
    family_of,
    transform_geometries,
)

from .helpers import geoms


def test_family_of() -> None:
    assert family_of("esriGeometryPolygon") == "polygon"
    assert family_of("esriGeometryEnvelope") == "polygon"
    assert family_of("esriGeometryPolyline") == "line"
    assert family_of("esriGeometryPoint") == "point"
    assert family_of("esriGeometryMultipoint") == "multipoint"
    assert family_of(None, ("LineString", "MultiLineString")) == "line"
    assert family_of(None, ("Point", "MultiPoint")) == "multipoint"
    assert family_of(None, ()) is None
    assert family_of(None, ("Point", "Polygon")) is None


def test_coerce_polygon_family() -> None:
    g = geoms(
        [
            "POLYGON ((0 0, 1 0, 1 1, 0 0))",
            "GEOMETRYCOLLECTION (POLYGON ((0 0, 1 0, 1 1, 0 0)), LINESTRING (0 0, 5 5), POINT (3 3))",
            "GEOMETRYCOLLECTION (POLYGON ((0 0, 1 0, 1 1, 0 0)), GEOMETRYCOLLECTION (MULTIPOLYGON (((5 5, 6 5, 6 6, 5 5)))))",
            "LINESTRING (0 0, 1 1)",
            "MULTIPOLYGON EMPTY",
            None,
            "GEOMETRYCOLLECTION (LINESTRING (0 0, 1 1), POLYGON EMPTY)",
        ]
    )
    out = coerce_to_family(g, "polygon")
    assert out[0] is g[0]
    assert out[1].wkt == "POLYGON ((0 0, 1 0, 1 1, 0 0))"
    assert out[2].geom_type == "MultiPolygon" and len(out[2].geoms) == 2
    assert list(out[3:]) == [None, None, None, None]
    assert g[1].geom_type == "GeometryCollection"  # input untouched


def test_coerce_line_and_point_families() -> None:
    g = geoms(["GEOMETRYCOLLECTION (LINESTRING (0 0, 1 1), POINT (5 5), LINESTRING (2 2, 3 3))", "POINT (0 0)"])
    out = coerce_to_family(g, "line")
    assert out[0].geom_type == "MultiLineString" and out[1] is None
    pts = geoms(["POINT (0 0)", "MULTIPOINT (1 1, 2 2)", "GEOMETRYCOLLECTION (POINT (0 0), LINESTRING (0 0, 1 1))"])
    assert [x.wkt for x in coerce_to_family(pts, "multipoint")] == ["MULTIPOINT ((0 0))", "MULTIPOINT ((1 1), (2 2))", "MULTIPOINT ((0 0))"]
    single = coerce_to_family(pts, "point")
    assert single[0].wkt == "POINT (0 0)" and single[1] is None and single[2].wkt == "POINT (0 0)"
    with pytest.raises(ValueError, match="family"):
        coerce_to_family(pts, "surface")


def test_transform_geometries_keeps_structure_z_m_and_reports_bad_features() -> None:
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    g = geoms(
        [
            "POINT ZM (1 2 3 4)",
            "MULTIPOLYGON M (((0 0 2, 1 0 3, 1 1 4, 0 0 2)), ((5 5 1, 6 5 1, 6 6 1, 5 5 1)))",
            "GEOMETRYCOLLECTION ZM (POINT ZM (1 1 1 1), LINESTRING ZM (0 0 0 9, 1 1 1 8), POLYGON ZM ((0 0 0 1, 1 0 0 2, 1 1 0 3, 0 0 0 1)))",
            "LINESTRING Z (0 0 1, 1 1 NaN)",
            "POINT (0 0)",
            "POLYGON EMPTY",
            None,
            "POINT (0 100)",  # past the pole: non-finite in Mercator
        ]
    )
    out, bad = transform_geometries(g, t)
    assert list(bad) == [False] * 7 + [True]
    assert list(shapely.get_type_id(out)) == list(shapely.get_type_id(g))
    assert list(shapely.has_z(out)) == list(shapely.has_z(g))
    assert list(shapely.has_m(out)) == list(shapely.has_m(g))
    for i in (0, 1, 2, 3):
        before = shapely.get_coordinates(g[i], include_z=bool(shapely.has_z(g[i])), include_m=bool(shapely.has_m(g[i])))
        after = shapely.get_coordinates(out[i], include_z=bool(shapely.has_z(g[i])), include_m=bool(shapely.has_m(g[i])))
        want_xy = np.column_stack(t.transform(before[:, 0], before[:, 1]))
        np.testing.assert_allclose(after[:, :2], want_xy, atol=1e-6)
        np.testing.assert_array_equal(after[:, 2:], before[:, 2:])  # Z (horizontal-only op) and M unchanged
    assert out[4].equals(shapely.Point(0, 0))
    assert out[5].is_empty and out[6] is None


def test_transform_measured_point_with_empty_part() -> None:
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    g = geoms(["GEOMETRYCOLLECTION M (POINT M EMPTY, POINT M (1 2 3))"])
    out, bad = transform_geometries(g, t)
    assert not bad.any()
    m = shapely.get_coordinates(out[0], include_m=True)
    np.testing.assert_allclose(m[0, :2], t.transform(1, 2), atol=1e-6)
    assert m[0, 2] == 3


def test_drop_m() -> None:
    g = geoms(["POLYGON M ((0 0 1, 10 0 2, 10 10 3, 0 0 1))", "POINT ZM (1 2 3 4)", None, "POINT (0 0)"])
    out = drop_m(g)
    assert [x.wkt if x is not None else None for x in out] == [
        "POLYGON ((0 0, 10 0, 10 10, 0 0))",
        "POINT Z (1 2 3)",
        None,
        "POINT (0 0)",
    ]
    assert out[3] is g[3]


def test_densified_box() -> None:
    box = densified_box((0, 0, 4, 2), 4)
    assert box.equals(shapely.box(0, 0, 4, 2))
    assert shapely.get_num_coordinates(box) == 4 * 4 + 1
    assert box.exterior.is_ccw
