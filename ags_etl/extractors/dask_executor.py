"""Page tasks on a Dask cluster: workers fetch, decode, transform and write parts; the driver decides.

Two ways to use a cluster:

* :class:`DaskExecutor` is an :class:`~ags_etl.extractors.executor.Executor` around a
  :class:`distributed.Client`: ``FeatureLayerExtractor(..., executor=DaskExecutor(client))``
  runs page requests on the workers and brings the decoded pages back to this process, like
  a process pool. Useful from Python; the pipeline runner does not use it for files.
* :func:`run_on_cluster` runs one layer job of a pipeline with **feature data never
  travelling through the driver**. The sink must be a partitioned GeoParquet dataset
  (``path`` ending in ``/`` or ``partitioned: true``), the one output that can be written in
  parts; ``ags-etl run`` runs a job with any other sink as one whole-job task instead
  (:mod:`ags_etl.cluster_jobs`). For each page task the driver submits three small cluster tasks:

  1. :func:`fetch_task` — on a worker: one request (under the cluster-wide per-host limit,
     :class:`~ags_etl.cluster.HostLimit`), decoded to a :class:`PageResult` that *stays on
     the worker*;
  2. :func:`summary_task` — the page's metadata only (row count, the ``exceededTransferLimit``
     flag, strays, a transient failure, the OIDs as one int64 numpy array) comes back to
     the driver, whose planner reacts to it and whose :class:`SeenIds` marks the rows seen in
     an earlier page;
  3. :func:`write_task` — on the worker holding the page: the duplicate rows dropped, the
     job's transforms applied (rebuilt once per worker thread from the job's specs), the
     rows written as one part of the dataset, named after the task's place in the plan
     (``p000017-<digest of the task>``). A retried or recomputed task writes the same name,
     replacing its part instead of adding one. Only the part's :class:`PartInfo` comes back.

  The driver keeps the plan, the request budget, duplicate removal by OID and the
  completeness check, and commits the dataset (the manifest lists the parts it accepted).
  A worker lost mid-run costs only the tasks whose results it held: the driver still holds
  their futures, so Dask runs them again elsewhere. A page fetched again must have the same
  OIDs as the first time (the write task compares a digest), else the job fails rather
  than write something the driver did not check.

Requests and retries made on the workers are not added to the job's request counts (they
count the driver's own requests: metadata and probes).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ags_etl.arcgis.client import ArcGISClient
from ags_etl.cluster import HostLimit, LimitedClient, host_of
from ags_etl.errors import ConfigError, LoadError, PagingError
from ags_etl.extractors.driver import SeenIds, account_page
from ags_etl.extractors.plans import planner_for
from ags_etl.extractors.tasks import (
    Box,
    ClientSpec,
    PageResult,
    PageTask,
    QueryContext,
    fetch_page,
    row_keys,
)
from ags_etl.loaders.base import LoadStats
from ags_etl.loaders.geoparquet_dataset import DatasetWriter, PartInfo
from ags_etl.schema import LayerSchema

if TYPE_CHECKING:
    from distributed import Client

    from ags_etl.pipeline import Pipeline, RunResult
    from ags_etl.spec import JobSpec, TransformSpec

__all__ = [
    "DaskExecutor",
    "LayerWork",
    "PageSummary",
    "PartOutcome",
    "fetch_task",
    "run_on_cluster",
    "sink_problem",
    "summary_task",
    "tasks_run",
    "write_task",
]

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- the generic executor


class DaskExecutor:
    """Runs callables on a Dask cluster: ``submit`` is ``client.submit(fn, task, pure=False)``.

    ``concurrency`` is the cluster's worker threads when it is made (the driver keeps twice
    as many tasks in flight). The client is not closed by :meth:`shutdown`; whoever made it
    owns it.
    """

    shares_memory = False

    def __init__(self, client: Client, concurrency: int | None = None) -> None:
        self.client = client
        self.concurrency = concurrency if concurrency is not None else max(1, sum(client.nthreads().values()))
        self._futures: set[Any] = set()

    def submit(self, fn: Callable[[Any], Any], task: Any) -> Future[Any]:
        future = self.client.submit(fn, task, pure=False)
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        return cast("Future[Any]", future)

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        """Cancel what is still pending when asked; Dask futures need no other cleanup."""
        pending, self._futures = list(self._futures), set()
        if cancel_futures and pending:
            self.client.cancel(pending)


# --------------------------------------------------------------------------- what workers get


@dataclass(frozen=True)
class LayerWork:
    """Everything the workers need for one layer job; picklable, sent with every task.

    ``schema`` is the extractor's output schema (the transforms' input); ``transforms`` the
    job's transform specs, rebuilt and bound on each worker thread; ``dataset`` the
    partitioned output; ``limit`` the per-host request limit (None: none).
    """

    key: str
    ctx: QueryContext
    schema: LayerSchema
    transforms: tuple[TransformSpec, ...]
    dataset: DatasetWriter
    limit: HostLimit | None = None


@dataclass(frozen=True)
class PageSummary:
    """What the driver learns of a page: no features, only what the planner and the duplicate
    check need. ``keys`` are the OIDs (or row digests on a layer without an OID field);
    ``batch`` is empty except for a box over the transfer limit (its rows are never written;
    the planner looks at them to tell a pile of identical points from a dense box)."""

    result: PageResult
    keys: np.ndarray


@dataclass(frozen=True)
class PartOutcome:
    """What a write task did: the part (None when no row was left to write), rows taken
    from the page, and the transforms' counters for those rows."""

    part: PartInfo | None
    source_rows: int
    counters: dict[str, int] = field(default_factory=dict)


_counter_lock = threading.Lock()
_tasks_run = 0
_clients: dict[ClientSpec, ArcGISClient] = {}
_chains: threading.local = threading.local()


def tasks_run() -> int:
    """Page requests this process has run as a worker (``client.run(tasks_run)`` per worker)."""
    return _tasks_run


def _client(spec: ClientSpec) -> ArcGISClient:
    with _counter_lock:
        found = _clients.get(spec)
        if found is None:
            found = _clients[spec] = spec.client()
        return found


def fetch_task(task: PageTask, work: LayerWork) -> PageResult:
    """On a worker: one request for ``task``, decoded; the result stays on the worker."""
    global _tasks_run
    http: Any = _client(work.ctx.client)
    if work.limit is not None:
        http = LimitedClient(http, work.limit)
    result = fetch_page(task, work.ctx, cast(ArcGISClient, http))
    with _counter_lock:
        _tasks_run += 1
    return result


def _keys(result: PageResult) -> np.ndarray:
    return result.oids if result.oids is not None else row_keys(result.batch)


def summary_task(result: PageResult) -> PageSummary:
    """On a worker: the metadata of a page (see :class:`PageSummary`)."""
    keys = _keys(result)
    keep_rows = isinstance(result.task, Box) and result.exceeded
    batch = result.batch if keep_rows else result.batch.filter(np.zeros(len(result.batch), dtype=bool))
    light = PageResult(result.task, batch, result.exceeded, result.oids, result.strays, result.failure)
    return PageSummary(light, keys)


def _digest(keys: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(keys, dtype=np.int64).tobytes(), digest_size=16).hexdigest()


def _chain(work: LayerWork) -> list[Any]:
    """This thread's transformers for ``work``, built from the specs and bound once."""
    from ags_etl.spec import make_plugin

    chains: dict[str, list[Any]] = getattr(_chains, "by_key", None) or {}
    _chains.by_key = chains
    found = chains.get(work.key)
    if found is None:
        found = [make_plugin("transformers", t.type, t.options) for t in work.transforms]
        schema = work.schema
        for t in found:
            schema = t.bind(schema)
        chains.clear()  # one job at a time per thread: drop the previous job's chain
        chains[work.key] = found
    return found


def write_task(result: PageResult, work: LayerWork, name: str, drop: np.ndarray | None, keys_digest: str) -> PartOutcome:
    """On the worker holding ``result``: drop the rows at positions ``drop`` (seen in earlier
    pages), apply the transforms, write part ``name``. ``keys_digest`` is the digest of the
    page's keys as the driver saw them: a page fetched again that differs raises."""
    if _digest(_keys(result)) != keys_digest:
        raise PagingError(
            f"page {name} of {work.ctx.url} came back different when it was fetched again (a worker was lost "
            "and the layer changed meanwhile); rerun the job"
        )
    batch = result.batch
    if drop is not None and len(drop):
        mask = np.ones(len(batch), dtype=bool)
        mask[drop] = False
        batch = batch.filter(mask)
    source_rows = len(batch)
    chain = _chain(work)
    before = [t.close() for t in chain]
    for t in chain:
        batch = t(batch)
    counters: dict[str, int] = {}
    for t, old in zip(chain, before, strict=True):
        for k, v in t.close().items():
            counters[k] = counters.get(k, 0) + v - old.get(k, 0)
    if len(batch) == 0:
        return PartOutcome(None, source_rows, counters)
    return PartOutcome(work.dataset.write_part(name, batch), source_rows, counters)


# --------------------------------------------------------------------------- the driver side


def sink_problem(job: JobSpec) -> str | None:
    """Why ``job`` cannot take ``executor: dask`` (None: it can). Any sink can: a partitioned
    GeoParquet dataset is written in parts by page tasks (:func:`run_on_cluster`), any other
    sink by one whole-job task (:mod:`ags_etl.cluster_jobs`). Sync jobs cannot: their state
    and lock are the driver's."""
    if job.sync is not None:
        return (
            "executor dask does not run sync jobs (their state, lock and merged output are the driver's); "
            "use executor threads for this job"
        )
    return None


def _part_name(index: int, task: PageTask) -> str:
    digest = hashlib.blake2b(repr(task).encode(), digest_size=4).hexdigest()
    return f"p{index:06d}-{digest}"


def run_on_cluster(
    pipeline: Pipeline,
    job: JobSpec,
    client: Client,
    *,
    limit: int | None = None,
    concurrency: int | None = None,
) -> RunResult:
    """Run ``pipeline`` (built from the single-layer ``job``) with its pages on the cluster of
    ``client``; see the module docstring. ``limit`` is ``max_requests_per_host``;
    ``concurrency`` the pages in flight (default: twice the cluster's worker threads).
    Raises ConfigError for a sink that cannot be written in parts, before any request."""
    from ags_etl.loaders.geoparquet import GeoParquetLoader
    from ags_etl.pipeline import RunResult

    problem = sink_problem(job)
    loader = pipeline.loader
    if problem is None and not (isinstance(loader, GeoParquetLoader) and loader.partitioned):
        problem = (
            f"page tasks on a cluster write a partitioned GeoParquet dataset, and the {loader.name} sink writes one "
            f"file; write a dataset (a path ending in '/', e.g. out/{job.name}/), run the job with ags-etl run "
            "(which runs it as one whole-job task on the cluster), or use executor threads"
        )
    if problem is not None:
        raise ConfigError(f"job {job.name!r}: {problem}")
    assert isinstance(loader, GeoParquetLoader)
    start = time.monotonic()
    loader.preflight()
    host_limit = None if limit is None else HostLimit(host_of(pipeline.extractor.url), limit)
    if host_limit is not None and isinstance(pipeline.extractor.client, ArcGISClient):
        # The driver's metadata and probe requests count too: whole-job tasks may be reading
        # from the same host meanwhile.
        pipeline.extractor.client = cast(ArcGISClient, LimitedClient(pipeline.extractor.client, host_limit))
    if pipeline.transformers:
        crs = pipeline.transformers[0].server_side_crs()
        if crs is not None:
            pipeline.extractor.out_crs = crs
    with pipeline.extractor as ext:
        info, in_schema = ext._require_open()
        schema = in_schema
        for t in pipeline.transformers:
            schema = t.bind(schema)
        loader.check(schema)
        for t in pipeline.transformers:
            sf = t.spatial_filter()
            if sf is not None:
                ext.spatial_filter = sf
                break
            if not t.keeps_geometry_position:
                break
        plan = ext.plan()
        dataset = DatasetWriter.begin(
            loader.location, schema, overwrite=loader.overwrite,
            row_group_size=loader.row_group_size, row_group_bytes=loader.row_group_bytes,
        )
        try:
            ctx = ext.context()
            work = LayerWork(
                key=ctx.client.key,
                ctx=ctx,
                schema=in_schema,
                transforms=tuple(job.transforms),
                dataset=dataset,
                limit=host_limit,
            )
            outcomes: list[PartOutcome] = []
            counters: dict[str, int] = {}
            if plan.count is None or plan.count > 0:
                _check_pageable(ext, plan)
                outcomes, counters = _drive_parts(pipeline, ext, plan, work, client, concurrency)
            ext._check_complete(plan)
            parts = [o.part for o in outcomes if o.part is not None]
            written = sum(p.rows for p in parts)
            if not parts:  # an empty layer still gives one empty part, so readers learn the schema
                parts = [dataset.write_part("empty", [])]
            dataset.commit(parts)
        except BaseException:
            dataset.abort()
            raise
    load = LoadStats(features=written, warnings=list(dataset.warnings), outputs=[loader.path])
    return RunResult(ext.stats, load, schema, time.monotonic() - start, counters)


def _check_pageable(ext: Any, plan: Any) -> None:
    """A layer without an OID field can only be read by boxes (as the extractor says too)."""
    from ags_etl.arcgis.paging import Strategy

    info, schema = ext._require_open()
    if schema.oid_field is None and plan.strategy not in (Strategy.SPATIAL, Strategy.BOX_SPLIT):
        raise PagingError(
            f"layer {info.url} has no OID field and {plan.strategy.value} pages by OID; use --strategy spatial"
        )


def _drive_parts(
    pipeline: Pipeline,
    ext: Any,
    plan: Any,
    work: LayerWork,
    client: Client,
    concurrency: int | None,
) -> tuple[list[PartOutcome], dict[str, int]]:
    """The driver loop: submit fetch + summary per task, react in task order, submit writes.

    Mirrors :func:`ags_etl.extractors.driver.drive` (budget, strays, page size) with the
    rows left on the workers. Returns the write outcomes (gathered) and summed counters.
    """
    info, schema = ext._require_open()
    stats = ext.stats
    planner = planner_for(plan, ext.probe(), info, check_spots=ext.out_crs is None, notes=stats.notes)
    threads = max(1, sum(client.nthreads().values()))
    limit = concurrency if concurrency is not None else 2 * threads
    seen = SeenIds()
    window: deque[tuple[Any, Any]] = deque()
    writes: list[Any] = []
    pages = 0
    kept = 0
    index = 0
    try:
        while True:
            while len(window) < limit and (task := planner.take()) is not None:
                fetched = client.submit(fetch_task, task, work, pure=False, key=f"ags-etl-fetch-{work.key}-{index}")
                summarised = client.submit(summary_task, fetched, pure=False, key=f"ags-etl-summary-{work.key}-{index}")
                window.append((fetched, summarised))
                index += 1
            if not window:
                break
            page, summary_future = window.popleft()
            summary = cast(PageSummary, summary_future.result())
            result = summary.result
            pages += 1
            keep = account_page(planner, result, stats, pages, info.current_version)
            if keep and len(summary.keys):
                fresh = seen.add(summary.keys)
                dropped = int((~fresh).sum())
                stats.duplicates_dropped += dropped
                drop = np.nonzero(~fresh)[0] if dropped else None
                if dropped < len(fresh):
                    name = _part_name(pages, result.task)
                    writes.append(client.submit(
                        write_task, page, work, name, drop, _digest(summary.keys), pure=False,
                        key=f"ags-etl-write-{work.key}-{name}",
                    ))
                    kept += len(fresh) - dropped
                    stats.features = kept
                    if pipeline.progress is not None:
                        pipeline.progress(kept, plan.count)
        outcomes: list[PartOutcome] = client.gather(writes)
    except BaseException:
        client.cancel([f for pair in window for f in pair] + writes)
        raise
    stats.features = len(seen)
    got = sum(o.source_rows for o in outcomes)
    if got != len(seen):
        raise LoadError(
            f"the parts of {info.url} hold {got} rows but {len(seen)} distinct features were read; rerun the job"
        )
    counters: dict[str, int] = {}
    for o in outcomes:
        for k, v in o.counters.items():
            counters[k] = counters.get(k, 0) + v
    log.debug("%s: %d pages on the cluster, %d parts, schema %s", info.url, pages, len(writes), schema.name)
    return outcomes, counters
