"""Paging decisions (pure): which strategy, what page size, which pages.

The ladder (../shared/notes/design.md §4), chosen from layer metadata and cheap probes:

1. ``oid-list`` — ``returnIdsOnly`` (not capped by maxRecordCount, any version since
   10.0), ids sorted and cut into chunks sent as POSTed ``objectIds``. Every row
   belongs to exactly one chunk, so a chunk can be checked for completeness on its
   own and chunks can run concurrently in any order.
2. ``offset`` — ``resultOffset``/``resultRecordCount`` ordered by the OID field
   (10.3+ with ``supportsPagination``; the probe checks that page 2 differs from
   page 1, since some servers ignore ``resultOffset``).
3. ``oid-range`` — ``OID >= a AND OID <= b`` windows between the min and max OID from
   ``outStatistics``, checked against the count (Polk FL 10.22 and Madison MS 10.2
   return min/max that are not real ids).
4. ``spatial`` — a depth-bounded quadtree over the layer extent, last resort.

Nothing here does I/O; :mod:`ags_etl.extractors.feature_layer` runs the plan.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum

import numpy as np

from ags_etl.arcgis.layer import LayerInfo
from ags_etl.errors import ConfigError, PagingError

#: Page size used when a layer advertises no maxRecordCount (10.0 servers): the
#: lowest cap seen in the wild; larger caps are discovered when pages come back full.
DEFAULT_PAGE_SIZE = 1000
#: Depth limit of the spatial split: 4**12 boxes at most.
MAX_SPLIT_DEPTH = 12


class Strategy(str, Enum):
    OID_LIST = "oid-list"
    OFFSET = "offset"
    OID_RANGE = "oid-range"
    SPATIAL = "spatial"


@dataclass(frozen=True)
class Probes:
    """Results of the cheap requests the planner decides from.

    ``ids`` is the sorted, de-duplicated array of OIDs (None when returnIdsOnly
    failed or was not asked); ``offset_works`` is None when not probed.
    ``oid_min``/``oid_max`` come from outStatistics and ``range_count`` is the count
    of rows inside [oid_min, oid_max] (None when not probed).
    """

    count: int
    ids: np.ndarray | None = None
    ids_problem: str | None = None
    offset_works: bool | None = None
    oid_min: int | None = None
    oid_max: int | None = None
    range_count: int | None = None


@dataclass(frozen=True)
class Plan:
    strategy: Strategy
    page_size: int
    count: int
    reason: str


def page_size_for(info: LayerInfo, requested: int | None) -> int:
    """The page size to ask for: the user's, never above the server's advertised cap.

    The server's answers still win: runners shrink the page size when pages come
    back shorter than asked while more rows remain.
    """
    if requested is not None and requested < 1:
        raise ConfigError(f"--page-size must be at least 1, got {requested}")
    cap = info.max_record_count
    if requested is None:
        return cap if cap is not None else DEFAULT_PAGE_SIZE
    return requested if cap is None else min(requested, cap)


def normalise_ids(raw: list[object]) -> np.ndarray:
    """Ids as sent by a server → sorted unique int64 array.

    Columbia MO (10.01) sends ids as floats (``6.4579816E7``); any non-integral
    value is an error since it cannot be an OID.
    """
    if not raw:
        return np.empty(0, dtype=np.int64)
    arr = np.asarray(raw, dtype=np.float64)
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
        raise PagingError("the server sent object ids that are not integers; this layer cannot be paged by id")
    return np.unique(arr.astype(np.int64))


def choose_strategy(info: LayerInfo, probes: Probes, page_size: int, forced: Strategy | None = None) -> Plan:
    """Pick the strategy from metadata and probes; ``forced`` (from --strategy) is checked, not trusted."""
    count = probes.count
    has_oid = info.oid_field is not None
    ids_ok = probes.ids is not None and len(probes.ids) == count
    range_ok = (
        has_oid
        and not info.oid_is_hash
        and probes.oid_min is not None
        and probes.oid_max is not None
        and probes.range_count == count
    )
    offset_ok = bool(probes.offset_works) and has_oid

    if forced is not None:
        usable = {
            Strategy.OID_LIST: ids_ok,
            Strategy.OFFSET: offset_ok,
            Strategy.OID_RANGE: range_ok,
            Strategy.SPATIAL: info.has_geometry,
        }[forced]
        if not usable:
            raise ConfigError(
                f"--strategy {forced.value} cannot be used on {info.url}: {_why_not(forced, info, probes)}; "
                f"leave --strategy out to let ags-etl choose"
            )
        return Plan(forced, page_size, count, f"forced with --strategy {forced.value}")
    if count == 0:
        return Plan(Strategy.OID_LIST, page_size, 0, "the query matches no features")
    if ids_ok:
        return Plan(Strategy.OID_LIST, page_size, count, f"returnIdsOnly gave all {count} ids")
    if offset_ok:
        return Plan(Strategy.OFFSET, page_size, count, "pagination ordered by OID works (page 2 differs from page 1)")
    if range_ok:
        return Plan(Strategy.OID_RANGE, page_size, count, "min/max OID from statistics cover every feature")
    if info.has_geometry and info.extent is not None:
        return Plan(Strategy.SPATIAL, page_size, count, "no id, offset or range paging works; splitting the extent")
    raise PagingError(
        f"no way to page {info.url}: {_why_not(Strategy.OID_LIST, info, probes)}, "
        f"{_why_not(Strategy.OFFSET, info, probes)}, {_why_not(Strategy.OID_RANGE, info, probes)}, "
        f"and it has no extent to split; ask the server's administrator to enable returnIdsOnly or pagination"
    )


def _why_not(strategy: Strategy, info: LayerInfo, probes: Probes) -> str:
    if strategy is Strategy.OID_LIST:
        if probes.ids is None:
            return f"returnIdsOnly failed ({probes.ids_problem or 'not probed'})"
        return f"returnIdsOnly gave {len(probes.ids)} ids for a count of {probes.count}"
    if strategy is Strategy.OFFSET:
        if info.oid_field is None:
            return "the layer has no OID field to order pages by"
        if probes.offset_works is None:
            return "the layer does not advertise supportsPagination"
        return "the server ignores resultOffset (page 2 repeats page 1)"
    if strategy is Strategy.OID_RANGE:
        if info.oid_is_hash:
            return "its OIDs are hash values (OIDFieldContainsHashValue)"
        if probes.oid_min is None:
            return "outStatistics gave no min/max OID"
        return f"min/max OID {probes.oid_min}..{probes.oid_max} cover {probes.range_count} of {probes.count} features"
    return "the layer has no geometry"


# --------------------------------------------------------------------------- page generators


def id_chunks(ids: np.ndarray, size: Callable[[], int]) -> Iterator[np.ndarray]:
    """Consecutive chunks of ids, each as long as ``size()`` says when it is cut.

    ``size`` is asked again for every chunk, so chunks follow a page size that shrinks
    when the server turns out to cap pages lower than it advertised.
    """
    start = 0
    while start < len(ids):
        step = size()
        yield ids[start : start + step]
        start += step


def offset_pages(count: int, size: int) -> Iterator[tuple[int, int]]:
    """(resultOffset, resultRecordCount) pairs covering ``count`` rows."""
    for start in range(0, count, size):
        yield start, min(size, count - start)


def oid_windows(lo: int, hi: int, size: int) -> Iterator[tuple[int, int]]:
    """Inclusive OID windows [a, b] of width ``size`` covering [lo, hi]; each holds ≤ size rows."""
    a = lo
    while a <= hi:
        b = min(a + size - 1, hi)
        yield a, b
        a = b + 1


def split_window(window: tuple[int, int]) -> list[tuple[int, int]]:
    """Halve an inclusive OID window; a window of one id cannot be split."""
    a, b = window
    if a >= b:
        raise PagingError(f"OID window {a}..{b} still exceeds the transfer limit and cannot be split")
    mid = (a + b) // 2
    return [(a, mid), (mid + 1, b)]


BBox = tuple[float, float, float, float]


def split_envelope(box: BBox) -> list[BBox]:
    """Four quadrants of a box, each with min ≤ max (pyesridump inverted three of four)."""
    xmin, ymin, xmax, ymax = box
    if xmin > xmax or ymin > ymax:
        raise ValueError(f"inverted box {box}")
    mx = (xmin + xmax) / 2.0
    my = (ymin + ymax) / 2.0
    return [(xmin, ymin, mx, my), (mx, ymin, xmax, my), (xmin, my, mx, ymax), (mx, my, xmax, ymax)]


def where_and(where: str | None, clause: str) -> str:
    """Combine a user where clause with a paging clause."""
    if where is None or where.strip() in ("", "1=1"):
        return clause
    return f"({where}) AND {clause}"


def missing_ids(asked: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Ids asked for and not returned (sorted)."""
    return np.setdiff1d(asked, got, assume_unique=False)


def first_occurrence_mask(oids: np.ndarray) -> np.ndarray:
    """Mask keeping the first row of each OID within a page."""
    _, first = np.unique(oids, return_index=True)
    mask = np.zeros(len(oids), dtype=bool)
    mask[first] = True
    return mask
