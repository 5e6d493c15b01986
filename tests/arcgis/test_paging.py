"""The pure paging planner: strategy choice, page size, windows, envelope split."""

from __future__ import annotations

import numpy as np
import pytest

from ags_etl.arcgis import paging
from ags_etl.arcgis.layer import parse_layer
from ags_etl.arcgis.paging import Probes, Strategy
from ags_etl.errors import ConfigError, PagingError


def layer(**extra: object):
    data = {
        "type": "Feature Layer",
        "geometryType": "esriGeometryPoint",
        "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID"}, {"name": "NAME", "type": "esriFieldTypeString"}],
        "extent": {"xmin": 0, "ymin": 0, "xmax": 10, "ymax": 10, "spatialReference": {"wkid": 4326}},
        "maxRecordCount": 1000,
    }
    data.update(extra)
    return parse_layer("http://x.test/s/FeatureServer/0", data)


def test_page_size_never_above_cap() -> None:
    assert paging.page_size_for(layer(), None) == 1000
    assert paging.page_size_for(layer(), 5000) == 1000
    assert paging.page_size_for(layer(), 7) == 7
    assert paging.page_size_for(layer(maxRecordCount=None), None) == paging.DEFAULT_PAGE_SIZE
    with pytest.raises(ConfigError):
        paging.page_size_for(layer(), 0)


def test_ids_preferred_when_complete() -> None:
    ids = np.arange(1, 11)
    plan = paging.choose_strategy(layer(), Probes(count=10, ids=ids), 3)
    assert plan.strategy is Strategy.OID_LIST and plan.count == 10


def test_ids_short_falls_back_to_offset_then_range_then_spatial() -> None:
    short = Probes(count=10, ids=np.arange(1, 6), offset_works=True)
    assert paging.choose_strategy(layer(), short, 3).strategy is Strategy.OFFSET
    rng = Probes(count=10, ids=None, ids_problem="timeout", offset_works=False, oid_min=1, oid_max=20, range_count=10)
    assert paging.choose_strategy(layer(), rng, 3).strategy is Strategy.OID_RANGE
    # Polk FL 10.22: min/max not real ids → range covers fewer rows than the count.
    bad_range = Probes(count=10, ids=None, offset_works=None, oid_min=5, oid_max=6, range_count=2)
    assert paging.choose_strategy(layer(), bad_range, 3).strategy is Strategy.SPATIAL


def test_nothing_works_for_a_table() -> None:
    table = parse_layer(
        "http://x.test/s/FeatureServer/1",
        {"type": "Table", "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID"}]},
    )
    with pytest.raises(PagingError, match="returnIdsOnly failed"):
        paging.choose_strategy(table, Probes(count=5, ids=None, ids_problem="HTTP 500"), 2)


def test_forced_strategy_is_checked() -> None:
    with pytest.raises(ConfigError, match="ignores resultOffset"):
        paging.choose_strategy(layer(), Probes(count=3, ids=np.arange(3), offset_works=False), 2, Strategy.OFFSET)
    plan = paging.choose_strategy(layer(), Probes(count=3, ids=np.arange(3)), 2, Strategy.SPATIAL)
    assert plan.strategy is Strategy.SPATIAL


def test_empty_query() -> None:
    assert paging.choose_strategy(layer(), Probes(count=0), 5).count == 0


def test_normalise_ids_floats_sorted_unique() -> None:
    # Columbia MO 10.01 sends ids as floats; some servers send them unsorted or repeated.
    out = paging.normalise_ids([6.4579816e7, 3.0, 3, 1.0])
    assert out.tolist() == [1, 3, 64579816] and out.dtype == np.int64
    with pytest.raises(PagingError):
        paging.normalise_ids([1.5])
    assert paging.normalise_ids([]).tolist() == []


def test_generators_cover_everything_once() -> None:
    ids = np.array([1, 2, 5, 9, 10, 11, 20])
    chunks = list(paging.id_chunks(ids, lambda: 3))
    assert [c.tolist() for c in chunks] == [[1, 2, 5], [9, 10, 11], [20]]
    sizes = iter([3, 1, 2, 5])  # the page size shrinks after the first chunk
    assert [c.tolist() for c in paging.id_chunks(ids, lambda: next(sizes))] == [[1, 2, 5], [9], [10, 11], [20]]
    assert list(paging.offset_pages(7, 3)) == [(0, 3), (3, 3), (6, 1)]
    assert list(paging.offset_pages(0, 3)) == []
    windows = list(paging.oid_windows(0, 9, 4))
    assert windows == [(0, 3), (4, 7), (8, 9)]
    assert paging.split_window((4, 7)) == [(4, 5), (6, 7)]
    with pytest.raises(PagingError):
        paging.split_window((4, 4))


def test_split_envelope_keeps_min_le_max() -> None:
    boxes = paging.split_envelope((-10.0, -5.0, 30.0, 15.0))
    assert len(boxes) == 4
    for xmin, ymin, xmax, ymax in boxes:
        assert xmin <= xmax and ymin <= ymax
    assert sum((b[2] - b[0]) * (b[3] - b[1]) for b in boxes) == pytest.approx(40 * 20)
    with pytest.raises(ValueError):
        paging.split_envelope((1, 0, 0, 1))


def test_where_and_and_helpers() -> None:
    assert paging.where_and("1=1", "OID > 3") == "OID > 3"
    assert paging.where_and("A = 1 OR B = 2", "OID > 3") == "(A = 1 OR B = 2) AND OID > 3"
    assert paging.missing_ids(np.array([1, 2, 3]), np.array([3, 1])).tolist() == [2]
    assert paging.first_occurrence_mask(np.array([5, 5, 6, 5])).tolist() == [True, False, True, False]


# --------------------------------------------------------------------------- plausibility and bounds


def test_counts_and_ids_are_checked() -> None:
    assert paging.as_count(5, "returnCountOnly", "http://x.test") == 5
    assert paging.as_count(5.0, "returnCountOnly", "http://x.test") == 5
    for bad in ("abc", "5", -1, 2.5, True, None, [5], 2**53 + 1, float("nan"), 1e18):
        with pytest.raises(PagingError, match="http://x.test answered returnCountOnly with"):
            paging.as_count(bad, "returnCountOnly", "http://x.test")
    for bad_ids in (["1"], [[1]], [1, [2]], [-1], [2**60], [float("inf")], "1,2", {"a": 1}, [True, False]):
        with pytest.raises(PagingError, match="http://x.test sent"):
            paging.normalise_ids(bad_ids, "http://x.test")
    assert paging.normalise_ids([2**53, 0]).tolist() == [0, 2**53]


def test_probes_that_contradict_each_other() -> None:
    with pytest.raises(PagingError, match="min OID 9 above max OID 2"):
        paging.check_probes(Probes(count=3, oid_min=9, oid_max=2, range_count=0), "u")
    with pytest.raises(PagingError, match="more than the 3 ids"):
        paging.check_probes(Probes(count=10, oid_min=1, oid_max=3, range_count=4), "u")
    with pytest.raises(PagingError, match="only 3 in the whole query"):
        paging.check_probes(Probes(count=3, oid_min=1, oid_max=10, range_count=4), "u")
    paging.check_probes(Probes(count=3, ids=np.arange(7), oid_min=1, oid_max=3, range_count=3), "u")


def test_request_budget() -> None:
    assert paging.request_budget(Strategy.OID_LIST, 100, 10) == 4 * 10 + 16
    assert paging.request_budget(Strategy.OFFSET, 0, 10) == 16
    assert paging.request_budget(Strategy.OID_RANGE, 100, 10, (1, 100)) == 4 * 10 + 16  # dense: fixed windows
    sparse = paging.request_budget(Strategy.OID_RANGE, 5, 10, (1, 10**12))
    assert sparse is not None and sparse < 1000  # not 10**11 windows
    assert paging.request_budget(Strategy.SPATIAL, 100, 10) is None
    assert paging.request_budget(Strategy.BOX_SPLIT, None, 10) is None


@pytest.mark.parametrize("ids", [[1, 2, 3, 4, 10**12], list(range(1, 200)) + [2**40], [7], list(range(0, 10**6, 997))])
def test_window_walk_covers_sparse_ranges_in_few_windows(ids: list[int]) -> None:
    cap = 10
    arr = np.array(ids)
    walk = paging.WindowWalk(int(arr.min()), int(arr.max()), cap)
    seen: list[int] = []
    windows = 0
    while (window := walk.window()) is not None:
        windows += 1
        inside = arr[(arr >= window[0]) & (arr <= window[1])]
        exceeded = len(inside) > cap
        if not exceeded:
            seen += inside.tolist()
        walk.record(window, min(len(inside), cap), exceeded, cap)
    assert sorted(seen) == sorted(ids)
    budget = paging.request_budget(Strategy.OID_RANGE, len(ids), cap, (int(arr.min()), int(arr.max())))
    assert budget is not None and windows <= budget


def test_no_count_plans() -> None:
    no_count = Probes(count=None, count_problem="returnCountOnly was refused (400)", ids_problem="400")
    plan = paging.choose_strategy(layer(), no_count, 10)
    assert plan.strategy is Strategy.BOX_SPLIT and plan.count is None
    assert plan.unchecked is not None and "no server count" in plan.unchecked
    assert "returnCountOnly was refused" in plan.reason and "returnIdsOnly failed" in plan.reason
    with_ids = paging.choose_strategy(layer(), Probes(count=None, ids=np.arange(1, 8)), 10)
    assert with_ids.strategy is Strategy.OID_LIST and with_ids.count == 7
    with pytest.raises(ConfigError, match="needs a count"):
        paging.choose_strategy(layer(), no_count, 10, Strategy.OFFSET)
    with pytest.raises(PagingError, match="no usable extent"):
        paging.choose_strategy(layer(extent={"xmin": "NaN"}), no_count, 10)
