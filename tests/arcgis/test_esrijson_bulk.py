"""Bulk decoding of polygon, polyline and multipoint pages gives exactly what decoding each
geometry on its own gives, for plain and irregular geometries mixed in one page."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import shapely

from ags_etl.arcgis.esrijson import decode_geometries, decode_geometry
from ags_etl.errors import GeometryError

SQUARE = [[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]
HOLE = [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4], [0.2, 0.2]]


def same(page: list[Any], geometry_type: str, has_z: bool = False) -> np.ndarray:
    got = decode_geometries(page, geometry_type, has_z=has_z)
    want = [decode_geometry(g, geometry_type, has_z=has_z) for g in page]
    assert len(got) == len(want)
    for g, w in zip(got, want):
        if w is None:
            assert g is None
        else:
            assert g is not None and g.geom_type == w.geom_type
            assert bool(shapely.has_z(g)) == bool(shapely.has_z(w))
            assert shapely.equals_exact(g, w, tolerance=0.0), (g, w)
            assert np.array_equal(shapely.get_coordinates(g, include_z=True),
                                  shapely.get_coordinates(w, include_z=True), equal_nan=True)
    return got


def shifted(ring: list[list[float]], dx: float) -> list[list[float]]:
    return [[x + dx, y] + rest for x, y, *rest in ring]


def test_polygon_page_plain_and_irregular() -> None:
    page = [{"rings": [shifted(SQUARE, i)]} for i in range(50)]
    page += [
        {"rings": [SQUARE[:-1]]},  # open ring
        {"rings": [SQUARE, HOLE]},  # a hole
        {"rings": [shifted(SQUARE, 5), SQUARE]},  # two polygons
        {"rings": []},
        {"rings": None},
        None,
        {},
        {"x": 1, "y": 2, "rings": [SQUARE]},  # x wins, as decode_geometry reads it
    ]
    got = same(page, "esriGeometryPolygon")
    assert got[0].geom_type == "Polygon" and got[52].geom_type == "MultiPolygon"


def test_polygon_page_with_z_and_m() -> None:
    ring_z = [[x, y, 7.5] for x, y in SQUARE]
    same([{"rings": [ring_z]}] * 5, "esriGeometryPolygon", has_z=True)
    same([{"rings": [ring_z]}] * 5, "esriGeometryPolygon", has_z=False)  # [x, y, m]: m dropped
    ring_zm = [[x, y, 7.5, 3.0] for x, y in SQUARE]
    got = same([{"rings": [ring_zm]}] * 5, "esriGeometryPolygon", has_z=True)
    assert shapely.get_coordinates(got[0], include_z=True)[0].tolist() == [0, 0, 7.5]


def test_exact_coordinates() -> None:
    ring = [[1e308, -1e308], [5e-324, -1e308], [5e-324, 2.5], [1e308, -1e308]]
    got = same([{"rings": [ring]}] * 3, "esriGeometryPolygon")
    assert shapely.get_coordinates(got[0]).tolist() == [[x, y] for x, y in ring]


def test_polyline_page() -> None:
    page: list[Any] = [{"paths": [[[0, 0], [i, 1]]]} for i in range(20)]
    page += [
        {"paths": [[[0, 0], [1, 1]], [[2, 2], [3, 3], [4, 4]]]},
        {"paths": [[[0, 0], [1, 1]], []]},  # an empty path is skipped
        {"paths": []},
        {"paths": [[[0, 0], [1, 1]]], "rings": [SQUARE]},  # rings win
        None,
    ]
    got = same(page, "esriGeometryPolyline")
    assert got[20].geom_type == "MultiLineString" and got[21].geom_type == "LineString"


def test_multipoint_page() -> None:
    page: list[Any] = [{"points": [[i, 0], [i, 1]]} for i in range(10)] + [{"points": []}, None]
    got = same(page, "esriGeometryMultipoint")
    assert got[0].geom_type == "MultiPoint" and got[10] is None


@pytest.mark.parametrize(
    "bad",
    [
        [[0, 0], [0, True], [1, 1], [0, 0]],
        [[0, 0], [0, "1"], [1, 1], [0, 0]],
        [[0, 0], [0, None], [1, 1], [0, 0]],
        [[0, 0], [0, 1e400], [1, 1], [0, 0]],
        [[0, 0], [0, 2**80], [1, 1], [0, 0]],
        [[0, 0], [0, 1, 2], [1, 1], [0, 0]],
        [[0, 0], [0, 1], [1, 1], [0, 0], 5],
    ],
)
def test_irregular_vertices_take_the_careful_path(bad: list[Any]) -> None:
    page = [{"rings": [SQUARE]}] * 3 + [{"rings": [bad]}]
    try:
        want = [decode_geometry(g, "esriGeometryPolygon") for g in page]
    except GeometryError as exc:
        with pytest.raises(GeometryError) as info:
            decode_geometries(page, "esriGeometryPolygon")
        assert getattr(info.value, "index", None) == 3
        assert str(exc) == str(info.value)
        return
    got = decode_geometries(page, "esriGeometryPolygon")
    assert [None if g is None else g.wkb for g in got] == [None if w is None else w.wkb for w in want]
