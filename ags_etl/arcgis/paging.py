"""Paging decisions (pure): which strategy, what page size, which pages.

The ladder (docs/reference/design.md §4), chosen from layer metadata and cheap probes:

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
5. ``box-split`` — the same quadtree for a layer that gives no count at all (it refuses
   ``returnCountOnly`` or answers it with features, as Cook County IL does) and refuses
   id lists, statistics and pagination: a box is complete when it comes back below the
   page cap without ``exceededTransferLimit``, and that is all completeness rests on.

Server answers are checked before anything is planned from them (:func:`as_count`,
:func:`as_oid`, :func:`normalise_ids`, :func:`check_probes`): counts, ids and offsets
are whole numbers in 0..2**53 (integral floats accepted: Columbia MO sends float ids)
that agree with one another. Every plan has a request bound (:func:`request_budget`),
so a server whose answers do not add up ends a run with a PagingError, never a loop.

Nothing here does I/O; :mod:`ags_etl.extractors.feature_layer` runs the plan.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from ags_etl.arcgis.layer import LayerInfo
from ags_etl.errors import ConfigError, PagingError

#: Page size used when a layer advertises no maxRecordCount (10.0 servers): the
#: lowest cap seen in the wild; larger caps are discovered when pages come back full.
DEFAULT_PAGE_SIZE = 1000
#: Depth limit of the spatial split (a box 2**-24 of the extent wide): boxes are split only
#: while full, so the requests stay near 4 × depth × features / cap.
MAX_SPLIT_DEPTH = 24
#: Largest count, id or offset taken as plausible: beyond 2**53 JSON numbers lose integers.
MAX_PLAUSIBLE = 2**53
#: Pages that may come back empty at offsets below the count before an offset plan gives up.
MAX_EMPTY_PAGES = 3
#: Requests a plan may make per page it expects (short pages, re-asked ids, splits) …
REQUESTS_PER_PAGE = 4
#: … plus this many, whatever the count.
REQUEST_SLACK = 16
#: An OID range is walked by fixed windows when it is at most this many times the count.
DENSE_RANGE_FACTOR = 4


class Strategy(str, Enum):
    OID_LIST = "oid-list"
    OFFSET = "offset"
    OID_RANGE = "oid-range"
    SPATIAL = "spatial"
    BOX_SPLIT = "box-split"


@dataclass(frozen=True)
class Probes:
    """Results of the cheap requests the planner decides from.

    ``count`` is the server's ``returnCountOnly`` (None when the server refused it or
    answered without a count; ``count_problem`` then says how). ``ids`` is the sorted,
    de-duplicated array of OIDs (None when returnIdsOnly failed or was not asked);
    ``offset_works`` is None when not probed. ``oid_min``/``oid_max`` come from
    outStatistics and ``range_count`` is the count of rows inside [oid_min, oid_max]
    (None when not probed).
    """

    count: int | None
    ids: np.ndarray | None = None
    ids_problem: str | None = None
    offset_works: bool | None = None
    oid_min: int | None = None
    oid_max: int | None = None
    range_count: int | None = None
    count_problem: str | None = None


@dataclass(frozen=True)
class Plan:
    """What to run. ``count`` is what the completeness check compares with; None only
    for ``box-split`` on a layer without a count, where ``unchecked`` says what
    completeness rests on instead."""

    strategy: Strategy
    page_size: int
    count: int | None
    reason: str
    unchecked: str | None = None


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


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _whole(value: Any) -> int | None:
    """``value`` as an int when it is a whole number in 0..MAX_PLAUSIBLE (integral floats too), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    else:
        return None
    return number if 0 <= number <= MAX_PLAUSIBLE else None


def as_count(value: Any, what: str, url: str) -> int:
    """A count the server sent (``what`` says which), checked: a whole number in 0..2**53.

    Raises PagingError naming the value and the server otherwise.
    """
    number = _whole(value)
    if number is None:
        raise PagingError(
            f"{url} answered {what} with {_short(value)}, which is not a whole number between 0 and 2**53; "
            f"the layer's count cannot be trusted, so nothing can be planned from it. Report the server's "
            f"answer to its administrator"
        )
    return number


def as_oid(value: Any, what: str, url: str) -> int:
    """An object id the server sent (``what`` says where), checked like :func:`as_count`."""
    number = _whole(value)
    if number is None:
        raise PagingError(
            f"{url} sent {what} {_short(value)}, which is not an object id (a whole number between 0 and "
            f"2**53); this layer cannot be paged by id. Try --strategy offset or spatial, or report the "
            f"server's answer to its administrator"
        )
    return number


def normalise_ids(raw: Any, url: str = "the server") -> np.ndarray:
    """Ids as sent by a server (``returnIdsOnly``) → sorted unique int64 array.

    Columbia MO (10.01) sends ids as floats (``6.4579816E7``): integral floats are
    taken. Anything else — strings, nested lists, fractions, negative ids, ids above
    2**53, a list that is not a list — raises PagingError naming the first bad value.
    """
    if not isinstance(raw, list):
        raise PagingError(
            f"{url} sent objectIds {_short(raw)}, which is not a list; this layer cannot be paged by id. "
            f"Try --strategy offset or spatial"
        )
    if not raw:
        return np.empty(0, dtype=np.int64)
    try:
        arr = np.asarray(raw)
    except (ValueError, OverflowError):  # ragged nested lists, ints beyond 64 bits
        arr = np.asarray([None])
    if arr.ndim != 1 or arr.dtype.kind not in "iuf":
        bad = next((v for v in raw if _whole(v) is None), raw[0])
        as_oid(bad, "object id", url)
    numbers = arr.astype(np.float64) if arr.dtype.kind == "f" else arr
    ok = (numbers >= 0) & (numbers <= MAX_PLAUSIBLE)
    if arr.dtype.kind == "f":
        ok &= np.isfinite(numbers) & (numbers == np.floor(numbers))
    if not ok.all():
        as_oid(raw[int(np.argmin(ok))], "object id", url)
    return np.unique(numbers.astype(np.int64))


def check_probes(probes: Probes, url: str) -> None:
    """Raise PagingError when probe answers contradict one another.

    A range [oid_min, oid_max] holds at most ``oid_max - oid_min + 1`` ids and no more
    rows than the whole query; min above max is no range. (An id list longer or shorter
    than the count is not an error: the layer may have changed in between, and the
    planner then does not use the list.)
    """
    lo, hi, in_range, count = probes.oid_min, probes.oid_max, probes.range_count, probes.count
    if lo is not None and hi is not None:
        if lo > hi:
            raise PagingError(
                f"{url} gave min OID {lo} above max OID {hi} in outStatistics; its statistics are broken. "
                f"Try --strategy offset or spatial"
            )
        if in_range is not None and in_range > hi - lo + 1:
            raise PagingError(
                f"{url} counts {in_range} features between OID {lo} and {hi}, more than the {hi - lo + 1} ids "
                f"that range holds; its counts cannot be trusted. Report it to the server's administrator"
            )
    if in_range is not None and count is not None and in_range > count:
        raise PagingError(
            f"{url} counts {in_range} features in an OID range but only {count} in the whole query; its counts "
            f"cannot be trusted. Retry (the layer may be changing), or report it to the server's administrator"
        )


def is_dense(lo: int, hi: int, count: int, page_size: int) -> bool:
    """True when fixed OID windows of ``page_size`` cover [lo, hi] in few requests."""
    return hi - lo + 1 <= DENSE_RANGE_FACTOR * count + page_size


def request_budget(
    strategy: Strategy, count: int | None, page_size: int, oid_span: tuple[int, int] | None = None
) -> int | None:
    """The most requests a plan may make (None: bounded by the split depth instead).

    ``page_size`` is the current one: the budget grows when the server turns out to cap
    pages lower. oid-list and offset get ``4 × pages + 16``; oid-range over a dense range
    the same per fixed window; over a sparse range, whose adaptive windows double across
    gaps and halve at the cap, ``4 × (pages + 1) × (bits of the span + 1) + 16``. The
    spatial plans are bounded by :data:`MAX_SPLIT_DEPTH`.
    """
    if strategy in (Strategy.SPATIAL, Strategy.BOX_SPLIT) or count is None:
        return None
    size = max(1, page_size)
    pages = -(-count // size)
    if strategy is Strategy.OID_RANGE and oid_span is not None:
        lo, hi = oid_span
        if is_dense(lo, hi, count, size):
            pages = max(pages, -(-(hi - lo + 1) // size))
        else:
            return REQUESTS_PER_PAGE * (pages + 1) * ((hi - lo + 1).bit_length() + 1) + REQUEST_SLACK
    return REQUESTS_PER_PAGE * pages + REQUEST_SLACK


class WindowWalk:
    """Adaptive OID windows over a sparse range [lo, hi] (pure state; one window at a time).

    The first window is ``width`` ids wide. A window that comes back with the transfer
    limit exceeded is halved and asked again; one that comes back with fewer than half
    a page (none at all included) doubles the next window, so a gap of ``g`` ids costs
    about ``log2(g)`` requests, not ``g / width``. Ids {1, 2, 3, 4, 10**12} take ~40
    windows instead of 10**9.
    """

    def __init__(self, lo: int, hi: int, width: int) -> None:
        if lo > hi or width < 1:
            raise ValueError(f"bad walk {lo}..{hi} width {width}")
        self.next_id = lo
        self.hi = hi
        self.width = width

    def window(self) -> tuple[int, int] | None:
        """The next window to ask for, or None when [lo, hi] is covered."""
        if self.next_id > self.hi:
            return None
        return self.next_id, min(self.next_id + self.width - 1, self.hi)

    def record(self, window: tuple[int, int], rows: int, exceeded: bool, page_size: int) -> None:
        """Take the answer to ``window``: ``rows`` features kept, ``exceeded`` the flag."""
        a, b = window
        if exceeded:
            if a >= b:
                raise PagingError(f"OID window {a}..{b} still exceeds the transfer limit and cannot be split")
            self.width = max(1, (b - a + 1) // 2)
            return
        self.next_id = b + 1
        if 2 * rows < page_size:
            self.width = min(self.width * 2, MAX_PLAUSIBLE)


def choose_strategy(info: LayerInfo, probes: Probes, page_size: int, forced: Strategy | None = None) -> Plan:
    """Pick the strategy from metadata and probes; ``forced`` (from --strategy) is checked, not trusted."""
    check_probes(probes, info.url)
    if probes.count is None:
        return _choose_without_count(info, probes, page_size, forced)
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
            Strategy.SPATIAL: info.has_geometry and info.extent is not None,
            Strategy.BOX_SPLIT: info.has_geometry and info.extent is not None,
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
        f"and {_why_not(Strategy.SPATIAL, info, probes)}; ask the server's administrator to enable "
        f"returnIdsOnly or pagination"
    )


def box_split_unchecked(page_size: int) -> str:
    """What completeness rests on when the server gives no count."""
    return (
        f"no server count was available; completeness rests on every box having come back below the "
        f"page cap ({page_size}, or the lower cap the server turned out to have) without exceededTransferLimit; "
        f"features without geometry or outside the layer's advertised extent cannot be seen this way"
    )


def _choose_without_count(info: LayerInfo, probes: Probes, page_size: int, forced: Strategy | None) -> Plan:
    """No count: an id list is a count of its own; else only boxes are left."""
    problem = probes.count_problem or "returnCountOnly gave no count"
    ids = probes.ids
    if forced in (None, Strategy.OID_LIST) and ids is not None and info.oid_field is not None:
        reason = f"{problem}; returnIdsOnly gave {len(ids)} ids, which serve as the count"
        return Plan(Strategy.OID_LIST, page_size, len(ids), reason if forced is None else f"forced; {reason}")
    if forced in (None, Strategy.BOX_SPLIT) and info.has_geometry and info.extent is not None:
        ids_part = f"; {_why_not(Strategy.OID_LIST, info, probes)}" if forced is None else ""
        reason = (
            f"{problem}{ids_part}; without a count neither offsets nor OID ranges can be checked, so the "
            f"extent is split into boxes until each comes back below the page cap"
        )
        cap = info.max_record_count or DEFAULT_PAGE_SIZE
        return Plan(Strategy.BOX_SPLIT, page_size, None, reason, unchecked=box_split_unchecked(cap))
    if forced is not None:
        raise ConfigError(
            f"--strategy {forced.value} cannot be used on {info.url}: {problem}, and "
            f"{forced.value} needs a count; leave --strategy out to let ags-etl choose"
        )
    raise PagingError(
        f"no way to page {info.url}: {problem}, {_why_not(Strategy.OID_LIST, info, probes)}, and "
        f"{_why_not(Strategy.BOX_SPLIT, info, probes)}; ask the server's administrator to enable "
        f"returnCountOnly and returnIdsOnly"
    )


def _why_not(strategy: Strategy, info: LayerInfo, probes: Probes) -> str:
    if strategy is Strategy.OID_LIST:
        if info.oid_field is None:
            return "the layer has no OID field to list"
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
    if not info.has_geometry:
        return "the layer has no geometry to split by boxes"
    return "the layer advertises no usable extent to split"


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
