"""Whole jobs of a pipeline as Dask cluster tasks: the worker reads, transforms, writes and commits.

A job with ``executor: dask`` whose sink is *not* a partitioned GeoParquet dataset (a single
GeoParquet, GeoJSON or GeoJSONL file, a shapefile, a KMZ, a ``feature_service``) cannot be
written in parts by many workers, so it runs as **one** cluster task, :func:`run_whole_job`:

* the worker builds the pipeline from the job's :class:`~ags_etl.spec.JobSpec` (picklable; its
  secrets are pydantic ``SecretStr``) with :func:`~ags_etl.build.build_pipeline`, runs it with
  the default thread executor and commits the output itself: the sink's path must be one the
  workers see (object storage, a shared file system, or this machine's disk when the cluster
  is a local one);
* with ``max_requests_per_host`` the extractor's client holds a lease of the same
  cluster-wide :class:`~ags_etl.cluster.HostLimit` semaphore page tasks hold, for each request;
* only a :class:`~ags_etl.report.JobReport` (counts, warnings, the redacted error message) and
  the worker's address come back (:class:`WholeJobResult`). The task never raises: an error
  of the job is its ``failed`` report, so Dask has no traceback with the task's arguments to
  log, and :class:`WholeJob`'s ``repr`` names the job only.

The driver (:class:`WholeJobs`) submits every such task before it runs the other jobs, so they
run concurrently on the cluster, then collects the reports. Stopping is cooperative, through two
named :class:`distributed.Event` of the run: *skip* (``--fail-fast`` after a failure) makes a
task that has not started yet report ``skipped`` without reading anything; *stop* (Ctrl-C,
SIGTERM) also makes a running job give up at its next page (checked at most once a second), so
its temp output is removed and nothing is committed. Dask cannot interrupt a running thread, so
a job past its last page still commits.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ags_etl.cluster import HostLimit, LimitedClient, host_of
from ags_etl.errors import AgsEtlError
from ags_etl.report import JobReport

if TYPE_CHECKING:
    from distributed import Client, Future

    from ags_etl.spec import JobSpec

__all__ = ["WholeJob", "WholeJobResult", "WholeJobs", "jobs_run", "run_whole_job", "runs_whole"]

log = logging.getLogger(__name__)

#: How often (seconds, at most) a running whole job asks the scheduler whether the run was stopped.
STOP_CHECK_INTERVAL = 1.0


def runs_whole(job: JobSpec) -> bool:
    """Whether ``job`` on ``executor: dask`` runs as one cluster task (its sink is not a
    partitioned GeoParquet dataset, which page tasks write in parts)."""
    sink = job.sink
    partitioned = sink.type == "geoparquet" and sink.path is not None and (
        sink.path.endswith("/") or bool(sink.options.get("partitioned"))
    )
    return not partitioned


@dataclass(frozen=True)
class WholeJob:
    """One whole-job task: the single-layer ``job``, the name of the job it came from in the
    pipeline file, the run's ``run_id`` (names its events) and the per-host ``limit``.
    Its ``repr`` names the job only: Dask may print a task's arguments."""

    job: JobSpec
    job_name: str
    run_id: str
    limit: HostLimit | None = None

    def __repr__(self) -> str:
        return f"WholeJob({self.job.name!r})"


@dataclass(frozen=True)
class WholeJobResult:
    """What a whole-job task sends back: the job's report and the address of its worker."""

    report: JobReport
    worker: str


class JobStopped(AgsEtlError):
    """The run was stopped (Ctrl-C, SIGTERM on the driver) while this job ran on a worker."""


def _event(run_id: str, which: str, client: Client | None = None) -> Any:
    from ags_etl.cluster import require_distributed

    return require_distributed().Event(f"ags-etl-{run_id}-{which}", client=client)


_counter_lock = threading.Lock()
_jobs_run = 0


def jobs_run() -> int:
    """Whole jobs this process has started as a worker (``client.run(jobs_run)`` per worker)."""
    return _jobs_run


class _StopCheck:
    """The pipeline's progress callback on a worker: raises :class:`JobStopped` once the run's
    *stop* event is set, asking the scheduler at most every :data:`STOP_CHECK_INTERVAL` s."""

    def __init__(self, run_id: str, job_name: str) -> None:
        self.event = _event(run_id, "stop")
        self.job_name = job_name
        self.next_check = time.monotonic() + STOP_CHECK_INTERVAL

    def __call__(self, done: int, total: int | None) -> None:
        now = time.monotonic()
        if now < self.next_check:
            return
        self.next_check = now + STOP_CHECK_INTERVAL
        if self.event.is_set():
            raise JobStopped(
                f"job {self.job_name!r} was stopped on its worker after {done} features because the run was "
                "interrupted; its output was not written"
            )


def run_whole_job(work: WholeJob) -> WholeJobResult:
    """On a worker: build, run and commit ``work.job``; never raises (see the module docstring)."""
    global _jobs_run
    from distributed import get_worker

    from ags_etl.build import build_pipeline
    from ags_etl.runner import failed_report, ok_report

    job = work.job
    worker = str(get_worker().address)
    if _event(work.run_id, "skip").is_set() or _event(work.run_id, "stop").is_set():
        return WholeJobResult(JobReport(name=job.name, job=work.job_name, status="skipped"), worker)
    with _counter_lock:
        _jobs_run += 1
    start = time.monotonic()
    pipeline = None
    try:
        pipeline = build_pipeline(job, progress=_StopCheck(work.run_id, job.name))
        if work.limit is not None:
            _limit_requests(pipeline.extractor, work.limit)
        result = pipeline.run()
    except Exception as exc:  # the job's failure is its report; the task itself must not fail
        log.debug("job %s failed on worker %s", job.name, worker, exc_info=True)
        return WholeJobResult(failed_report(job, work.job_name, pipeline, exc, time.monotonic() - start), worker)
    return WholeJobResult(ok_report(job, work.job_name, pipeline, result, time.monotonic() - start), worker)


def _limit_requests(extractor: Any, limit: HostLimit) -> None:
    """Route every request of an ArcGIS extractor's client through ``limit``'s semaphore."""
    from ags_etl.arcgis.client import ArcGISClient

    client = getattr(extractor, "client", None)
    if isinstance(client, ArcGISClient):
        limit.semaphore()  # made and bound in this task's thread; the extractor's threads reuse it
        extractor.client = LimitedClient(client, limit)


class WholeJobs:
    """The driver's side: whole-job tasks of one run on the cluster of ``client``.

    :meth:`submit` sends a task (returns its future); :meth:`report` waits for one and gives its
    :class:`JobReport`; :meth:`skip_pending` (``--fail-fast``) makes tasks not started yet
    report ``skipped``; :meth:`stop` (interrupt) also stops running ones and cancels every
    future. :attr:`workers` counts the whole jobs each worker ran. :meth:`close` forgets the
    run's events on the scheduler.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.run_id = uuid.uuid4().hex
        self.futures: list[Future] = []
        self.workers: dict[str, int] = {}
        self.stopped = False
        self._skip = _event(self.run_id, "skip", client)
        self._stop = _event(self.run_id, "stop", client)

    def submit(self, job: JobSpec, job_name: str, max_requests_per_host: int | None) -> Future:
        """Send ``job`` (one layer) to the cluster as one task."""
        limit = None
        if max_requests_per_host is not None and job.source.type == "arcgis" and job.source.url is not None:
            limit = HostLimit(host_of(job.source.url), max_requests_per_host)
        work = WholeJob(job, job_name, self.run_id, limit)
        future = self.client.submit(run_whole_job, work, pure=False, key=f"ags-etl-job-{self.run_id}-{len(self.futures)}")
        self.futures.append(future)
        return future

    def report(self, future: Future, name: str, job_name: str) -> JobReport:
        """The report of ``future``'s job (``name``, from ``job_name`` of the pipeline file),
        waiting for it. A task Dask itself gave up on (its worker died while running it, more
        than ``distributed.scheduler.allowed-failures`` times) becomes a ``failed`` report."""
        try:
            result: WholeJobResult = future.result()
        except Exception as exc:  # the task never raises; this is Dask's own failure (a lost worker)
            from ags_etl.runner import error_message

            log.debug("whole-job task of %s failed in Dask", name, exc_info=True)
            return JobReport(
                name=name, job=job_name, status="failed",
                error=f"the Dask cluster could not run job {name!r} ({error_message(exc)}); rerun the job",
            )
        self.workers[result.worker] = self.workers.get(result.worker, 0) + (result.report.status != "skipped")
        return result.report

    def skip_pending(self) -> None:
        """Tasks not started yet report ``skipped`` (``--fail-fast`` after a failure)."""
        self._skip.set()

    def stop(self) -> None:
        """The run is interrupted: running jobs give up at their next page; futures are cancelled."""
        self.stopped = True
        try:
            self._stop.set()
        finally:
            self.client.cancel(self.futures)

    def close(self) -> None:
        """Remove the run's events from the scheduler — unless the run was stopped: jobs still
        running on workers must go on seeing *stop* (a few bytes the scheduler keeps)."""
        if self.stopped:
            return
        for event in (self._skip, self._stop):
            try:
                event.clear()
            except (OSError, RuntimeError) as exc:  # the scheduler went away: nothing left to clear
                log.debug("could not clear event %s: %s", event.name, exc)
