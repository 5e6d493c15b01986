"""The driver: runs a planner's tasks on an executor, removes duplicates, counts.

The driver is the one place that removes duplicates (by OID, or by a digest of
attributes and geometry on a layer without an OID field) and the one place that
counts pages against the plan's request budget. Its per-feature state is a
:class:`SeenIds`: runs of consecutive ids, so the usual dense OIDs cost a few bytes
for the whole layer and scattered ids at most 16 bytes each — never a Python set.
The completeness check itself (distinct features read against the server's count)
is made by the extractor once the driver is done.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from ags_etl.arcgis import paging
from ags_etl.batch import FeatureBatch
from ags_etl.errors import PagingError
from ags_etl.extractors.executor import Executor
from ags_etl.extractors.plans import Planner
from ags_etl.extractors.tasks import PageResult, PageTask, row_keys

if TYPE_CHECKING:
    from ags_etl.extractors.staging import StagingStore

log = logging.getLogger(__name__)


@dataclass
class ExtractStats:
    strategy: str = ""
    expected: int | None = None
    features: int = 0
    pages: int = 0
    duplicates_dropped: int = 0
    strays_dropped: int = 0
    page_size: int = 0
    requests: int = 0
    retries: int = 0
    notes: list[str] = field(default_factory=list)
    #: Set when no server count was available: what completeness rests on instead.
    unchecked: str | None = None
    #: The response format pages used and why (json, geojson or pbf; see ags_etl.arcgis.pbf).
    response_format: str = ""
    #: Pages read back from the staging folder of a resumed run instead of fetched.
    resumed: int = 0


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique ids → (starts, ends) of their runs of consecutive values."""
    breaks = np.nonzero(np.diff(values) != 1)[0]
    starts = values[np.concatenate(([0], breaks + 1))]
    ends = values[np.concatenate((breaks, [len(values) - 1]))]
    return starts, ends


def _merge(
    a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Union of two disjoint interval lists, adjacent intervals joined."""
    starts = np.concatenate((a[0], b[0]))
    ends = np.concatenate((a[1], b[1]))
    order = np.argsort(starts, kind="stable")
    starts, ends = starts[order], ends[order]
    # Disjoint and sorted by start, so sorted by end too: a new run begins after a gap.
    first = np.concatenate(([True], starts[1:] > ends[:-1] + 1))
    heads = np.nonzero(first)[0]
    tails = np.concatenate((heads[1:] - 1, [len(starts) - 1]))
    return starts[heads], ends[tails]


class SeenIds:
    """A set of non-negative int64 ids, stored as sorted runs ``[start, end]``.

    Memory is 16 bytes per run: one run for a layer whose OIDs are 1..N, however large N;
    16 bytes per id at worst (ids with gaps between all of them). Runs live in a few
    levels of geometrically growing size (log-structured), so adding a page costs
    ``O(page × log(runs))``, not a pass over everything seen.
    """

    def __init__(self) -> None:
        self._levels: list[tuple[np.ndarray, np.ndarray]] = []
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes + e.nbytes for s, e in self._levels)

    @property
    def runs(self) -> int:
        return sum(len(s) for s, _ in self._levels)

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """Mask of ``ids`` already in the set."""
        ids = np.asarray(ids, dtype=np.int64)
        hit = np.zeros(len(ids), dtype=bool)
        for starts, ends in self._levels:
            i = np.searchsorted(starts, ids, side="right") - 1
            hit |= (i >= 0) & (ids <= ends[np.maximum(i, 0)])
        return hit

    def add(self, ids: np.ndarray) -> np.ndarray:
        """Add ``ids``; returns the mask of rows that are new (first of their id, not seen before)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros(0, dtype=bool)
        if int(ids.min()) < 0:
            raise ValueError(f"SeenIds holds non-negative ids; got {int(ids.min())}")
        fresh = paging.first_occurrence_mask(ids) & ~self.contains(ids)
        new = np.sort(ids[fresh])
        if len(new):
            self._count += len(new)
            self._levels.append(_runs(new))
            while len(self._levels) >= 2 and len(self._levels[-2][0]) <= 2 * len(
                self._levels[-1][0]
            ):
                top = self._levels.pop()
                self._levels[-1] = _merge(self._levels[-1], top)
        return fresh


def account_page(planner: Planner, result: PageResult, stats: ExtractStats, pages: int, version: object) -> bool:
    """Hand ``result`` (the ``pages``-th page of the run) to its planner and count it in ``stats``.

    Returns the planner's verdict (keep the page's rows or not). Raises PagingError once the
    plan needs more requests than its budget: the server's answers do not add up. Shared by
    every executor's driver loop (threads here, Dask in ``dask_executor``).
    """
    stats.pages += 1
    keep = planner.record(result)
    stats.page_size = planner.page_size
    stats.strays_dropped += result.strays
    budget = planner.budget()
    if budget is not None and pages > budget:
        raise PagingError(
            f"plan {planner.strategy.value} for {planner.url} needed more than {budget} requests for "
            f"{planner.count} features at {planner.page_size} per page; the server's answers do not add "
            f"up (a count too high, or pages shorter than they say). Retry; if it repeats, try another "
            f"--strategy, and report the server version ({version})"
        )
    return keep


def drive(
    planner: Planner,
    fetch: Callable[[PageTask], PageResult],
    executor: Executor,
    stats: ExtractStats,
    *,
    oid_field: str | None,
    version: object = None,
    staging: StagingStore | None = None,
) -> Iterator[FeatureBatch]:
    """Run ``planner``'s tasks through ``fetch`` on ``executor``; yield new rows, in task order.

    At most ``2 × executor.concurrency`` tasks are in flight. Pages come back in the
    order their tasks were handed out; each is recorded with the planner (which may
    hand out follow-ups or raise), counted against the plan's request budget, and its
    rows, when the planner keeps them, are yielded without the ones seen before. On
    Ctrl-C, SIGTERM or an abandoned iteration the executor is shut down without
    waiting for requests in flight.

    With ``staging`` (a resumed run), a task whose page is staged is not submitted: its
    staged result takes its place in the window, and is recorded, counted and
    de-duplicated like a fetched one; every fetched page the planner accepted (did
    not raise on) is staged, failed requests are not.
    """
    seen = SeenIds()
    window: deque[tuple[Future[PageResult], bool]] = deque()
    limit = 2 * max(1, executor.concurrency)
    pages = 0
    try:
        while True:
            while len(window) < limit and (task := planner.take()) is not None:
                staged = staging.load(task) if staging is not None else None
                if staged is None:
                    window.append((executor.submit(fetch, task), False))
                else:
                    done: Future[PageResult] = Future()
                    done.set_result(staged)
                    window.append((done, True))
                    stats.resumed += 1
            if not window:
                break
            future, from_staging = window.popleft()
            result = future.result()
            pages += 1
            keep = account_page(planner, result, stats, pages, version)
            if staging is not None and not from_staging and result.failure is None:
                # Pages the planner splits or spot-checks are staged too: replayed, they
                # lead the planner to the same follow-ups without asking again.
                staging.save(result)
            if not keep or result.rows == 0:
                continue
            keys = (
                result.oids
                if oid_field is not None and result.oids is not None
                else row_keys(result.batch)
            )
            fresh = seen.add(keys)
            batch = result.batch
            dropped = int((~fresh).sum())
            if dropped:
                stats.duplicates_dropped += dropped
                batch = batch.filter(fresh)
            if len(batch):
                yield batch
    except BaseException as exc:
        executor.shutdown(wait=isinstance(exc, Exception), cancel_futures=True)
        raise
    executor.shutdown()
    log.debug(
        "%s: %d pages, %d distinct ids in %d runs (%d bytes)",
        planner.url,
        pages,
        len(seen),
        seen.runs,
        seen.nbytes,
    )
