"""Planners react to page reports (pure, offline): short pages, real caps, halving, the exceeded flag.

Each test plays the server by hand: it takes tasks from a planner, answers them with
PageResults built here, and checks what the planner hands out next.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import shapely

from ags_etl.arcgis import paging
from ags_etl.arcgis.paging import Strategy
from ags_etl.batch import FeatureBatch
from ags_etl.errors import PagingError, TransientError
from ags_etl.extractors.plans import (
    BoxPlanner,
    IdListPlanner,
    OffsetPlanner,
    OidRangePlanner,
    Planner,
    SparseRangePlanner,
)
from ags_etl.extractors.tasks import Box, IdChunk, OffsetPage, OidWindow, PageResult, PageTask, SpotCheck

URL = "http://127.0.0.1:1/arcgis/rest/services/x/FeatureServer/0"


def batch_of(oids: list[int], points: list[tuple[float, float]] | None = None) -> FeatureBatch:
    table = pa.table({"OBJECTID": pa.array(oids, type=pa.int64())})
    geoms = np.array([shapely.Point(p) for p in points] if points is not None else [None] * len(oids), dtype=object)
    return FeatureBatch(table, geoms, None)


def answer(task: PageTask, oids: list[int], *, exceeded: bool = False, points=None) -> PageResult:
    return PageResult(task, batch_of(oids, points), exceeded, np.asarray(oids, dtype=np.int64))


def failed(task: PageTask) -> PageResult:
    return PageResult(task, batch_of([]), failure=TransientError("HTTP 504 three times"))


def drain(planner: Planner) -> list[PageTask]:
    out = []
    while (task := planner.take()) is not None:
        out.append(task)
    return out


# --------------------------------------------------------------------------- oid-list


def test_id_chunks_follow_a_short_page_with_the_missing_ids_and_learn_the_cap() -> None:
    planner = IdListPlanner(np.arange(1, 11, dtype=np.int64), 5, 10, URL)
    first = planner.take()
    assert first == IdChunk((1, 2, 3, 4, 5))
    assert planner.record(answer(first, [1, 2, 3])) is True  # the server sends 3 of 5: its real cap
    assert planner.page_size == 3
    assert any("capped pages at 3" in n for n in planner.notes)
    # Follow-up first (the missing ids), then new chunks cut at the learned size.
    assert drain(planner) == [IdChunk((4, 5)), IdChunk((6, 7, 8)), IdChunk((9, 10))]


def test_id_chunk_that_fails_is_halved_and_asked_again() -> None:
    planner = IdListPlanner(np.arange(1, 9, dtype=np.int64), 8, 8, URL)
    chunk = planner.take()
    assert planner.record(failed(chunk)) is False
    assert planner.page_size == 4 and any("halved to 4" in n for n in planner.notes)
    assert drain(planner) == [IdChunk((1, 2, 3, 4)), IdChunk((5, 6, 7, 8))]


def test_a_page_of_one_that_fails_raises_its_error() -> None:
    planner = IdListPlanner(np.array([7], dtype=np.int64), 1, 1, URL)
    with pytest.raises(TransientError, match="504"):
        planner.record(failed(planner.take()))


def test_ids_never_returned_are_given_up_after_two_rounds() -> None:
    planner = IdListPlanner(np.array([1, 2], dtype=np.int64), 2, 2, URL)
    planner.record(answer(planner.take(), []))
    again = planner.take()
    assert again == IdChunk((1, 2), stalled=1)
    planner.record(answer(again, []))
    assert planner.take() is None  # left to the completeness check


# --------------------------------------------------------------------------- offset


def test_short_offset_page_is_followed_up_flag_or_not() -> None:
    planner = OffsetPlanner(10, 5, URL)
    page = planner.take()
    assert page == OffsetPage(0, 5)
    planner.record(answer(page, [1, 2]))  # short without the flag: followed up, cap not learned
    assert planner.page_size == 5
    assert planner.take() == OffsetPage(2, 3)
    nxt = planner.take()
    assert nxt == OffsetPage(5, 5)
    planner.record(answer(nxt, [6, 7, 8, 9], exceeded=True))  # short with the flag: the real cap
    assert planner.page_size == 4
    assert drain(planner) == [OffsetPage(9, 1)]


def test_failing_offset_page_is_asked_again_in_halves() -> None:
    planner = OffsetPlanner(6, 6, URL)
    page = planner.take()
    planner.record(failed(page))
    assert drain(planner) == [OffsetPage(0, 3), OffsetPage(3, 3)]


def test_empty_offset_pages_end_the_run_after_a_few() -> None:
    planner = OffsetPlanner(100, 10, URL, version=10.91)
    for _ in range(paging.MAX_EMPTY_PAGES - 1):
        assert planner.record(answer(planner.take(), [])) is False
    with pytest.raises(PagingError, match=r"3 pages came back empty .* 100 features"):
        planner.record(answer(planner.take(), []))


# --------------------------------------------------------------------------- oid-range


def test_window_over_the_transfer_limit_is_split_and_its_rows_not_kept() -> None:
    planner = OidRangePlanner(1, 8, 8, 8, URL)
    window = planner.take()
    assert window == OidWindow(1, 8)
    assert planner.record(answer(window, [1, 2, 3, 4, 5], exceeded=True)) is False
    assert planner.page_size == 5
    assert drain(planner) == [OidWindow(1, 4), OidWindow(5, 8)]


def test_window_of_one_id_over_the_limit_cannot_be_split() -> None:
    planner = OidRangePlanner(3, 3, 1, 1, URL)
    with pytest.raises(PagingError, match="cannot be split"):
        planner.record(answer(planner.take(), [3], exceeded=True))


def test_sparse_walk_asks_one_window_at_a_time_and_widens_over_gaps() -> None:
    planner = SparseRangePlanner(1, 10**6, 4, 3, URL)
    first = planner.take()
    assert first == OidWindow(1, 4)
    assert planner.take() is None, "the next window depends on this answer"
    planner.record(answer(first, [1]))  # under half a page: the next window doubles
    assert planner.take() == OidWindow(5, 12)


def test_request_budget_follows_the_fewest_rows_a_page_held() -> None:
    planner = OffsetPlanner(100, 10, URL)
    before = planner.budget()
    planner.record(answer(planner.take(), [1, 2]))
    assert before is not None and planner.budget() is not None and planner.budget() > before


# --------------------------------------------------------------------------- boxes


def test_full_box_is_split_in_four_below_the_cap_it_is_kept() -> None:
    planner = BoxPlanner(Strategy.SPATIAL, (0.0, 0.0, 8.0, 8.0), 3, 3, 10, URL)
    quadrants = drain(planner)
    assert [q.depth for q in quadrants] == [1, 1, 1, 1]
    assert planner.record(answer(quadrants[0], [1, 2], points=[(1, 1), (2, 2)])) is True
    assert planner.record(answer(quadrants[1], [3, 4, 5], points=[(5, 1), (6, 1), (7, 1)])) is False
    children = drain(planner)
    assert len(children) == 4 and all(isinstance(c, Box) and c.depth == 2 for c in children)


def test_flagged_box_teaches_the_real_cap() -> None:
    planner = BoxPlanner(Strategy.BOX_SPLIT, (0.0, 0.0, 8.0, 8.0), 10, 10, None, URL)
    box = planner.take()
    assert planner.record(answer(box, [1, 2, 3], exceeded=True, points=[(1, 1), (2, 1), (3, 1)])) is False
    assert planner.box_cap == 3
    assert any("capped boxes at 3" in n for n in planner.notes)


def test_full_box_at_one_point_is_spot_checked_before_splitting() -> None:
    planner = BoxPlanner(Strategy.SPATIAL, (0.0, 0.0, 8.0, 8.0), 2, 2, 5, URL)
    box = drain(planner)[0]
    planner.record(answer(box, [1, 2], points=[(1, 1), (1, 1)]))
    spot = planner.take()
    assert isinstance(spot, SpotCheck) and spot.parent == box and spot.point == (1.0, 1.0)
    assert planner.take() is None, "no split before the spot check answers"
    with pytest.raises(PagingError, match=r"single point \(1.0, 1.0\)"):
        planner.record(answer(spot, [1, 2], points=[(1, 1), (1, 1)]))


def test_spot_below_the_cap_lets_the_box_split() -> None:
    planner = BoxPlanner(Strategy.SPATIAL, (0.0, 0.0, 8.0, 8.0), 2, 2, 5, URL)
    box = drain(planner)[0]
    planner.record(answer(box, [1, 2], points=[(1, 1), (1, 1)]))
    spot = planner.take()
    assert planner.record(answer(spot, [1], points=[(1, 1)])) is False  # spot rows are never output
    assert [t.depth for t in drain(planner)] == [2, 2, 2, 2]


def test_box_at_the_depth_limit_still_full_ends_the_run() -> None:
    planner = BoxPlanner(Strategy.SPATIAL, (0.0, 0.0, 8.0, 8.0), 2, 2, 5, URL, check_spots=False)
    deep = Box((0.0, 0.0, 1e-6, 1e-6), paging.MAX_SPLIT_DEPTH)
    with pytest.raises(PagingError, match=f"reached depth {paging.MAX_SPLIT_DEPTH}"):
        planner.record(answer(deep, [1, 2], points=[(0, 0), (1e-7, 1e-7)]))
