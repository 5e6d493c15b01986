"""Planners: one small state machine per paging strategy, deciding, never fetching.

A planner hands out page tasks (:meth:`Planner.take`) and reacts to what each page
reported (:meth:`Planner.record`): a short page is followed up, a page cut below the
size asked teaches the real cap, a failing page is halved, a window or box over the
transfer limit is split. Planners are pure — no I/O, no threads: the driver calls them
from one thread, so the page size and the learned caps need no lock. Follow-up tasks
are handed out before new ones.

``take()`` returning None means "nothing to ask until a result comes back" (the sparse
OID walk asks one window at a time); when nothing is in flight either, the plan is done.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator

import numpy as np
import shapely

from ags_etl.arcgis import paging
from ags_etl.arcgis.layer import LayerInfo
from ags_etl.arcgis.paging import Plan, Probes, Strategy
from ags_etl.errors import PagingError, TransientError
from ags_etl.extractors.tasks import (
    BBox,
    Box,
    IdChunk,
    OffsetPage,
    OidWindow,
    PageResult,
    PageTask,
    SpotCheck,
)

log = logging.getLogger(__name__)

#: Rounds of re-asking for ids a chunk did not return before giving up on them.
MAX_STALLED_ROUNDS = 2


class Planner(ABC):
    """Common state: the page size now in force, the fewest rows a page held, notes.

    ``record`` returns whether the page's rows are output (False for pages that are
    asked again in smaller pieces, and for spot checks).
    """

    strategy: Strategy

    def __init__(
        self,
        page_size: int,
        count: int | None,
        url: str,
        notes: list[str] | None = None,
    ) -> None:
        self.page_size = page_size
        self.count = count
        self.url = url
        self.notes: list[str] = notes if notes is not None else []
        #: Fewest rows a non-empty page held: servers that cut pages silently need more requests.
        self.min_rows = paging.MAX_PLAUSIBLE
        self._follow: deque[PageTask] = deque()

    def take(self) -> PageTask | None:
        """The next task to run: follow-ups first; None when none can be handed out now."""
        if self._follow:
            return self._follow.popleft()
        return self._next()

    @abstractmethod
    def _next(self) -> PageTask | None: ...

    def record(self, result: PageResult) -> bool:
        """React to one page; raises PagingError (or the page's failure) when the plan cannot go on."""
        if result.rows:
            self.min_rows = min(self.min_rows, result.rows)
        return self._record(result)

    @abstractmethod
    def _record(self, result: PageResult) -> bool: ...

    def budget(self) -> int | None:
        """The most requests this plan may make, at the page size now in force."""
        return paging.request_budget(
            self.strategy, self.count, min(self.page_size, self.min_rows), self.span()
        )

    def span(self) -> tuple[int, int] | None:
        return None

    def observe_cap(self, rows: int) -> None:
        """A page came back with fewer rows than asked while more remained: the real cap."""
        if 0 < rows < self.page_size:
            log.info(
                "server returned %d rows for a page of %d; using %d",
                rows,
                self.page_size,
                rows,
            )
            self.notes.append(f"server capped pages at {rows} (asked {self.page_size})")
            self.page_size = rows

    def halve(self, size: int, exc: TransientError) -> None:
        """A page of ``size`` failed after retries: ask for half as much (a page of one cannot shrink)."""
        if size <= 1:
            raise exc
        self.page_size = max(1, min(self.page_size, size // 2))
        self.notes.append(f"page size halved to {self.page_size} after: {exc}")
        log.warning(
            "page of %d failed (%s); retrying with %d", size, exc, self.page_size
        )


class IdListPlanner(Planner):
    """``oid-list``: sorted ids cut into chunks at the page size in force when each is cut.

    A chunk that comes back short is followed by a chunk of the ids it left out; ids that
    come back in no round twice in a row are left to the completeness check.
    """

    strategy = Strategy.OID_LIST

    def __init__(
        self,
        ids: np.ndarray,
        page_size: int,
        count: int | None,
        url: str,
        notes: list[str] | None = None,
    ):
        super().__init__(page_size, count, url, notes)
        self.ids = ids
        self._cursor = 0

    def _chunks(self, ids: np.ndarray, stalled: int) -> Iterator[IdChunk]:
        for start in range(0, len(ids), self.page_size):
            yield IdChunk(tuple(ids[start : start + self.page_size].tolist()), stalled)

    def _next(self) -> PageTask | None:
        if self._cursor >= len(self.ids):
            return None
        chunk = self.ids[self._cursor : self._cursor + self.page_size]
        self._cursor += len(chunk)
        return IdChunk(tuple(chunk.tolist()))

    def _record(self, result: PageResult) -> bool:
        task = result.task
        assert isinstance(task, IdChunk)
        asked = np.asarray(task.ids, dtype=np.int64)
        if result.failure is not None:
            self.halve(len(asked), result.failure)
            self._follow.extend(self._chunks(asked, task.stalled))
            return False
        got = result.oids if result.oids is not None else np.empty(0, dtype=np.int64)
        missing = paging.missing_ids(asked, got)
        if len(missing):
            if len(got) == 0:
                if task.stalled + 1 >= MAX_STALLED_ROUNDS:
                    log.warning(
                        "%d ids were not returned by the server; the count check will decide",
                        len(missing),
                    )
                else:
                    self._follow.extend(self._chunks(missing, task.stalled + 1))
            else:
                if result.exceeded or len(got) < len(asked):
                    self.observe_cap(len(got))
                self._follow.extend(self._chunks(missing, 0))
        return True


class OffsetPlanner(Planner):
    """``offset``: pages of ``resultOffset`` ordered by OID, up to the count.

    A short page is followed up from where it ended, flag or not (some servers, e.g.
    behind spatial-index filtering on 10.3+, send short pages mid-layer); an empty page
    below the count ends that page's range, and :data:`paging.MAX_EMPTY_PAGES` of them
    end the run.
    """

    strategy = Strategy.OFFSET

    def __init__(
        self,
        count: int,
        page_size: int,
        url: str,
        version: object = None,
        notes: list[str] | None = None,
    ):
        super().__init__(page_size, count, url, notes)
        self.total = count
        self.version = version
        self._cursor = 0
        self.empty_pages = 0

    def _pieces(self, offset: int, n: int) -> Iterator[OffsetPage]:
        end = offset + n
        while offset < end:
            step = min(self.page_size, end - offset)
            yield OffsetPage(offset, step)
            offset += step

    def _next(self) -> PageTask | None:
        if self._cursor >= self.total:
            return None
        page = OffsetPage(self._cursor, min(self.page_size, self.total - self._cursor))
        self._cursor += page.count
        return page

    def _record(self, result: PageResult) -> bool:
        task = result.task
        assert isinstance(task, OffsetPage)
        if result.failure is not None:
            self.halve(task.count, result.failure)
            self._follow.extend(self._pieces(task.offset, task.count))
            return False
        rows = result.rows
        if rows == 0:
            self.empty_pages += 1
            if self.empty_pages >= paging.MAX_EMPTY_PAGES:
                raise PagingError(
                    f"offset plan for {self.url}: {self.empty_pages} pages came back empty (the last at offset "
                    f"{task.offset}) although the server counts {self.total} features; the count or the paging "
                    f"does not work. Try --strategy oid-list or oid-range, or report the server version "
                    f"({self.version})"
                )
            return False  # nothing at this offset: the completeness check decides, unless it keeps happening
        if rows < task.count:
            if result.exceeded:
                self.observe_cap(rows)
            self._follow.extend(self._pieces(task.offset + rows, task.count - rows))
        return True


class OidRangePlanner(Planner):
    """``oid-range`` over a dense range: fixed windows; one over the transfer limit or failing is halved."""

    strategy = Strategy.OID_RANGE

    def __init__(
        self,
        lo: int,
        hi: int,
        page_size: int,
        count: int | None,
        url: str,
        notes: list[str] | None = None,
    ):
        super().__init__(page_size, count, url, notes)
        self.lo, self.hi = lo, hi
        self._windows = paging.oid_windows(lo, hi, page_size)

    def span(self) -> tuple[int, int] | None:
        return self.lo, self.hi

    def _next(self) -> PageTask | None:
        window = next(self._windows, None)
        return None if window is None else OidWindow(*window)

    def _split(self, task: OidWindow) -> None:
        self._follow.extend(
            OidWindow(a, b) for a, b in paging.split_window((task.lo, task.hi))
        )

    def _record(self, result: PageResult) -> bool:
        task = result.task
        assert isinstance(task, OidWindow)
        if result.failure is not None:
            if task.lo >= task.hi:
                raise result.failure
            log.warning(
                "window %d..%d failed (%s); splitting", task.lo, task.hi, result.failure
            )
            self._split(task)
            return False
        if result.exceeded:
            self.observe_cap(result.rows)
            self._split(task)
            return False
        return True


class SparseRangePlanner(OidRangePlanner):
    """``oid-range`` over a sparse range: adaptive windows, one at a time (see :class:`paging.WindowWalk`)."""

    def __init__(
        self,
        lo: int,
        hi: int,
        page_size: int,
        count: int | None,
        url: str,
        notes: list[str] | None = None,
    ):
        super().__init__(lo, hi, page_size, count, url, notes)
        self.walk = paging.WindowWalk(lo, hi, page_size)
        self._in_flight = False

    def _next(self) -> PageTask | None:
        if self._in_flight:
            return None
        window = self.walk.window()
        if window is None:
            return None
        self._in_flight = True
        return OidWindow(*window)

    def _record(self, result: PageResult) -> bool:
        task = result.task
        assert isinstance(task, OidWindow)
        self._in_flight = False
        if result.failure is not None:
            raise result.failure
        if result.exceeded:
            self.observe_cap(result.rows)
            self.walk.record((task.lo, task.hi), result.rows, True, self.page_size)
            return False
        self.walk.record((task.lo, task.hi), result.rows, False, self.page_size)
        return True


class BoxPlanner(Planner):
    """``spatial`` and ``box-split``: a quadtree over the extent, split while a box is not complete.

    A box is complete when it came back below the cap without the flag. A full page
    without the flag is not trusted (10.0 servers never set it); a flagged page teaches
    the real cap: the rows the server sent. A full box whose rows all lie at one point
    is checked with a tiny box around that point before it is split (``check_spots``;
    off when the server reprojects, then the depth limit decides): if that point alone
    fills a page, no split can separate its features.
    """

    def __init__(
        self,
        strategy: Strategy,
        extent: BBox,
        box_cap: int,
        page_size: int,
        count: int | None,
        url: str,
        *,
        check_spots: bool = True,
        notes: list[str] | None = None,
    ) -> None:
        super().__init__(page_size, count, url, notes)
        self.strategy = strategy
        self.box_cap = box_cap
        self.check_spots = check_spots
        self._boxes: Iterator[Box] = iter(
            [Box(b, 1) for b in paging.split_envelope(extent)]
        )

    def _next(self) -> PageTask | None:
        return next(self._boxes, None)

    def complete(self, rows: int, exceeded: bool) -> bool:
        if exceeded and 0 < rows < self.box_cap:
            log.info(
                "server cut a box at %d rows (cap was %d); using %d",
                rows,
                self.box_cap,
                rows,
            )
            self.notes.append(
                f"server capped boxes at {rows} (advertised {self.box_cap})"
            )
            self.box_cap = rows
        return not exceeded and rows < self.box_cap

    def _split(self, box: Box) -> None:
        if box.depth >= paging.MAX_SPLIT_DEPTH:
            raise PagingError(
                f"spatial split of {self.url} reached depth {box.depth} with box {box.bbox} still at the page cap "
                f"({self.box_cap}); the layer has too many features at one place for splitting by boxes. "
                f"Ask the server's administrator to enable returnIdsOnly or pagination"
            )
        self._follow.extend(
            Box(b, box.depth + 1) for b in paging.split_envelope(box.bbox)
        )

    def _record(self, result: PageResult) -> bool:
        task = result.task
        if isinstance(task, SpotCheck):
            if not self.complete(result.rows, result.exceeded):
                x, y = task.point
                raise PagingError(
                    f"{self.url} has more features at the single point ({x}, {y}) than it returns per request "
                    f"({self.box_cap}); no box can separate them, so splitting the extent cannot get them all. "
                    f"Ask the server's administrator to enable returnIdsOnly or pagination, or to raise "
                    f"maxRecordCount"
                )
            self._split(task.parent)
            return False
        assert isinstance(task, Box)
        if result.failure is not None:
            if task.depth >= paging.MAX_SPLIT_DEPTH:
                raise result.failure
            log.warning("box %s failed (%s); splitting it", task.bbox, result.failure)
            self._follow.extend(
                Box(b, task.depth + 1) for b in paging.split_envelope(task.bbox)
            )
            return False
        if self.complete(result.rows, result.exceeded):
            return True
        spot = one_spot(result.batch.geometry) if self.check_spots else None
        if spot is not None:
            x, y = spot
            eps = max(abs(x), abs(y), 1.0) * 1e-9
            self._follow.append(
                SpotCheck((x - eps, y - eps, x + eps, y + eps), spot, task)
            )
        else:
            self._split(task)
        return False


def one_spot(geoms: np.ndarray | None) -> tuple[float, float] | None:
    """The point when a page's geometries (two or more) are all the same point, else None."""
    if geoms is None or len(geoms) < 2:
        return None
    if shapely.get_type_id(geoms[0]) != 0 or not bool(
        np.all(shapely.equals_exact(geoms, geoms[0], 0.0))
    ):
        return None
    return float(shapely.get_x(geoms[0])), float(shapely.get_y(geoms[0]))


def planner_for(
    plan: Plan,
    probes: Probes,
    info: LayerInfo,
    *,
    check_spots: bool = True,
    notes: list[str] | None = None,
) -> Planner:
    """The planner that runs ``plan`` (made from ``probes`` of ``info``)."""
    url = info.url
    if plan.strategy is Strategy.OID_LIST:
        ids = probes.ids if probes.ids is not None else np.empty(0, dtype=np.int64)
        return IdListPlanner(ids, plan.page_size, plan.count, url, notes)
    if plan.strategy is Strategy.OFFSET:
        assert plan.count is not None
        return OffsetPlanner(
            plan.count, plan.page_size, url, info.current_version, notes
        )
    if plan.strategy is Strategy.OID_RANGE:
        lo, hi = probes.oid_min, probes.oid_max
        assert lo is not None and hi is not None
        if plan.count is not None and not paging.is_dense(
            lo, hi, plan.count, plan.page_size
        ):
            log.info(
                "OIDs %d..%d are sparse for %d features: adaptive windows",
                lo,
                hi,
                plan.count,
            )
            return SparseRangePlanner(lo, hi, plan.page_size, plan.count, url, notes)
        return OidRangePlanner(lo, hi, plan.page_size, plan.count, url, notes)
    if info.extent is None:
        raise PagingError(
            f"layer {url} advertises no usable extent to split; try another --strategy"
        )
    e = info.extent
    extent: BBox = (
        float(e["xmin"]),
        float(e["ymin"]),
        float(e["xmax"]),
        float(e["ymax"]),
    )
    cap = info.max_record_count or paging.DEFAULT_PAGE_SIZE
    return BoxPlanner(
        plan.strategy,
        extent,
        cap,
        plan.page_size,
        plan.count,
        url,
        check_spots=check_spots,
        notes=notes,
    )
