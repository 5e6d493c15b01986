"""Shared text helpers of the text-based loaders: orientation and the numpy number formatter."""

from __future__ import annotations

import numpy as np
import pytest
import shapely

from ags_etl.errors import GeometryError
from ags_etl.loaders.text import _orient_fallback, orient_right_hand, sequence_text
from tests.loaders._data_geojson_kmz import POLY_CW, ROWS, geometry_array, signed_area


def test_orient_fallback_matches_orient_polygons() -> None:
    geoms = geometry_array([POLY_CW, ROWS[1]["geometry"], ROWS[2]["geometry"], None, shapely.Point(0, 0),
                            shapely.GeometryCollection([POLY_CW, shapely.Point(1, 1)]), shapely.from_wkt("POLYGON EMPTY")])
    fallback = _orient_fallback(geoms)
    main = orient_right_hand(geoms)
    for a, b in zip(fallback, main, strict=True):
        assert (a is None and b is None) or shapely.equals_exact(a, b, tolerance=0), (a, b)
    assert signed_area(shapely.get_coordinates(fallback[0].exterior)) > 0


@pytest.mark.parametrize("precision", [0, 1, 4, 7, 9])
@pytest.mark.parametrize("strip", [True, False])
def test_sequence_text_numbers_match_python_formatting(precision: int, strip: bool) -> None:
    """The numpy number formatter agrees with '%.Nf' (trailing zeros stripped when asked)."""
    rng = np.random.default_rng(precision)
    # Values away from decimal ties, so binary rounding cannot differ from decimal rounding.
    base = np.round(rng.uniform(-180, 180, 2000), precision + 2) + 10.0 ** -(precision + 3)
    values = np.concatenate([base, [0.0, -0.0, 1e-12, -1e-12, 0.5, -0.5, 10.0, -100.0, 999.25, 1234567.0]])
    coords = np.column_stack([values, values[::-1]])
    text = sequence_text(coords, np.ones(len(values), dtype=np.int64), precision, strip=strip).to_pylist()

    def fmt(v: float) -> str:
        s = f"{v:.{precision}f}"
        if strip and "." in s:
            s = s.rstrip("0").rstrip(".")
        return s[1:] if s.startswith("-") and float(s) == 0 else s  # no "-0"

    assert text == [f"{fmt(a)},{fmt(b)}" for a, b in coords]


def test_sequence_text_joins_and_wraps() -> None:
    coords = np.array([[1.0, 2.0], [3.5, -4.0], [5.0, 6.0], [7.0, 8.0, ]])
    got = sequence_text(coords, np.array([2, 0, 1, 1]), 7, strip=True, tuple_open=b"[", tuple_close=b"]",
                        between=b",", seq_open=b"[", seq_close=b"]", wrap=np.array([True, True, False, True])).to_pylist()
    assert got == ["[[1,2],[3.5,-4]]", "", "[5,6]", "[[7,8]]"]
    xyz = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, np.nan]])
    assert sequence_text(xyz, np.array([2]), 2, strip=False).to_pylist() == ["1.00,2.00,3.00 4.00,5.00"]
    with pytest.raises(GeometryError, match="too large"):
        sequence_text(np.array([[1e9, 0.0]]), np.array([1]), 7, strip=True)
