"""The Arrow buffer reads of the raw-page decoder agree with pyarrow's own (compute) methods."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ags_etl.arcgis.esrijson import _list_values, _valid

STRUCTS = pa.array(
    [{"x": 1.0}, None, {"x": None}, {"x": 4.0}, None, {"x": 6.0}, {"x": 7.0}, {"x": 8.0}, None, {"x": 10.0}],
    type=pa.struct([("x", pa.float64())]),
)


@pytest.mark.parametrize("start, length", [(0, 10), (1, 9), (3, 5), (8, 2), (4, 0), (9, 1)])
def test_valid_is_not_is_null_at_any_offset(start: int, length: int) -> None:
    column = STRUCTS.slice(start, length)
    expected = ~np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
    assert _valid(column).tolist() == expected.tolist()
    assert _valid(column.field("x")).tolist() == column.field("x").is_valid().to_pylist()


def test_valid_without_a_bitmap() -> None:
    assert _valid(pa.array([1, 2, 3])).tolist() == [True, True, True]


@pytest.mark.parametrize("start, length", [(0, 4), (1, 3), (2, 1), (3, 0)])
def test_list_values_is_flatten_at_any_offset(start: int, length: int) -> None:
    lists = pa.array([[1, 2], [], [3], [4, 5, 6]], type=pa.list_(pa.int64())).slice(start, length)
    assert _list_values(lists).to_pylist() == lists.flatten().to_pylist()
