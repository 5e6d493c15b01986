"""Run the jobs of a pipeline file, one after another, and report what each did.

:func:`run_pipeline` is what ``ags-etl run`` and the Python API call::

    spec = load_pipeline("pipelines/demo.yaml")
    report = run_pipeline(spec, job=None, fail_fast=False, progress=make_progress(quiet=False))
    report.exit_code, report.jobs[0].written, report.to_json()

    run = PipelineRun(spec, progress=...)   # the same, keeping run.report if the run is stopped
    run.run()

Contract:

* ``job`` selects the job of that name (as written in the file) and nothing else is
  touched: no other job is expanded, built or sent a request. An unknown name raises
  :class:`~ags_etl.errors.ConfigError` listing the jobs, before any network call.
* Each job is expanded into one job per layer (a service, folder or portal item with
  ``layers:`` selectors), then each layer job is built and run through
  :class:`~ags_etl.pipeline.Pipeline`, whose loader writes the output only when complete.
* A job that fails is reported as ``failed`` with its error message and the counts it
  reached; the others still run. With ``fail_fast`` every job after the first failure is
  reported as ``skipped`` and not started.
* Only ``KeyboardInterrupt`` (and other non-``Exception`` exits such as the CLI's SIGTERM)
  stop the run; any error of a job, ours or a library's, becomes that job's ``failed``
  entry. A stopped :class:`PipelineRun` keeps its partial report (the running job
  ``failed`` as interrupted, the rest ``skipped``) before the exception goes on.
* Error messages are redacted (``token=…``, ``password=…``) before they reach the report.
* A job with a ``sync:`` block (see :mod:`ags_etl.sync`) runs under its lock
  (:class:`ags_etl.state.JobLock`); when another process holds it the job is reported
  ``locked``, nothing is read or written, and the run's exit code is 75 unless a job failed
  (then 1). Its state is written only after its sink committed; ``full_refresh`` ignores the
  state. File sinks other than GeoParquet keep their merged data in a GeoParquet shadow in
  ``data/`` beside the state file. Once the lock is held, temp outputs a killed run left beside the sink's target are
  removed (each named in the job's warnings).
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ags_etl.arcgis.catalog import expand_job
from ags_etl.arcgis.client import ArcGISClient, redact
from ags_etl.batch import FeatureBatch
from ags_etl.build import (
    build_auth,
    build_extractor,
    build_pipeline,
    dry_run_job,
    network_options,
)
from ags_etl.cluster import Clusters, ExecutorSettings, resolve_settings
from ags_etl.cluster_jobs import WholeJobs, runs_whole
from ags_etl.errors import AgsEtlError, ConfigError, JobLockedError
from ags_etl.extractors.feature_layer import ExtractStats
from ags_etl.loaders.base import FileLoader, stale_temp_outputs
from ags_etl.pipeline import Pipeline, RunResult
from ags_etl.progress import JobProgress, NullProgress, ProgressFactory
from ags_etl.report import JobReport, RunReport
from ags_etl.spec import JobSpec, PipelineSpec
from ags_etl.state import JobLock, JobState, StateStore, now_text, state_path
from ags_etl.sync import (
    MERGEABLE_FILE_SINKS,
    DeletingSink,
    MergingLoader,
    SyncOutcome,
    batch_cursor,
    later,
    pending_shadow,
    plan_sync,
    previous_output,
    remove_tree,
    shadow_path,
    source_identity,
    source_keys,
)

log = logging.getLogger(__name__)


def select_jobs(spec: PipelineSpec, job: str | None) -> list[JobSpec]:
    """The jobs to run: all of them, or the one named ``job`` (ConfigError listing the names if none is)."""
    if job is None:
        return list(spec.jobs)
    chosen = [j for j in spec.jobs if j.name == job]
    if not chosen:
        where = f" in {spec.path}" if spec.path is not None else ""
        raise ConfigError(
            f"no job named {job!r}{where}; give one of: {', '.join(j.name for j in spec.jobs)}"
        )
    return chosen


def error_message(exc: BaseException) -> str:
    """One line for the report: our errors as they are (they name the fix), others with their type."""
    text = str(exc) if isinstance(exc, AgsEtlError) else f"{type(exc).__name__}: {exc}"
    return redact(" ".join(text.split()))


_message = error_message


def failed_report(layer_job: JobSpec, job_name: str, pipeline: Pipeline | None, exc: Exception, seconds: float) -> JobReport:
    """The ``failed`` report of ``layer_job`` (of ``job_name`` in the file): the redacted error
    and the extractor's counts so far (``pipeline`` None: it was not even built)."""
    report = JobReport(name=layer_job.name, job=job_name, status="failed", seconds=seconds, error=error_message(exc))
    stats = getattr(pipeline.extractor, "stats", None) if pipeline is not None else None
    if isinstance(stats, ExtractStats):
        report.features_read, report.pages = stats.features, stats.pages
        report.requests, report.retries = stats.requests, stats.retries
        report.strategy, report.expected = stats.strategy or None, stats.expected
    return report


def ok_report(layer_job: JobSpec, job_name: str, pipeline: Pipeline, result: RunResult, seconds: float) -> JobReport:
    """The ``ok`` report of ``layer_job`` from what its run did."""
    ex = result.extract
    return JobReport(
        name=layer_job.name,
        job=job_name,
        status="ok",
        features_read=ex.features,
        dropped_by_clip=result.transform_counters.get("clip_dropped", 0),
        written=result.load.features,
        pages=ex.pages,
        requests=ex.requests,
        retries=ex.retries,
        seconds=seconds,
        strategy=ex.strategy or None,
        expected=ex.expected,
        output=pipeline.loader.target,
        warnings=[redact(w) for w in result.load.warnings],
    )


@dataclass(frozen=True)
class _Submitted:
    """A layer job sent to a Dask cluster as one whole-job task, and where its report comes from."""

    job: JobSpec
    job_name: str
    future: Any
    whole: WholeJobs
    bar: JobProgress


class PipelineRun:
    """One run of a pipeline; :meth:`run` fills :attr:`report` job by job.

    The report is kept even when the run is stopped (Ctrl-C, SIGTERM): the job that was
    running is reported ``failed`` with an "interrupted" error and the jobs not started as
    ``skipped``, so ``ags-etl run --report`` can still write it before the exception goes on.
    """

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        job: str | None = None,
        fail_fast: bool = False,
        progress: ProgressFactory | None = None,
        full_refresh: bool = False,
        dry_run: bool = False,
        executor: str | None = None,
        scheduler: str | None = None,
    ) -> None:
        self.jobs = select_jobs(spec, job)
        # Where page tasks run: --executor/--scheduler, then the job's keys, then the file's (ags_etl.cluster).
        self.cluster_options = (executor, scheduler, None)
        self.pipeline_cluster = (spec.executor, spec.scheduler, spec.max_requests_per_host)
        self.clusters = Clusters()
        self.dry_run = dry_run  # feature_service sinks print their edits and send none
        self.full_refresh = full_refresh
        self.state = StateStore(state_path(spec.path, spec.state))
        self.fail_fast = fail_fast
        self.progress = progress if progress is not None else NullProgress()
        self.report = RunReport(jobs=[], pipeline=None if spec.path is None else str(spec.path))
        self._failed = False
        self._running: tuple[str, str, float] | None = None  # (name, job, start) of the layer job running
        # Whole-job tasks on Dask clusters: by index of the job, and the driver's side by scheduler.
        self._whole: dict[int, list[_Submitted]] = {}
        self._whole_jobs: dict[str | None, WholeJobs] = {}

    def run(self) -> RunReport:
        """Run the selected jobs; return :attr:`report` (jobs in file order).

        Jobs that run as whole-job tasks on a Dask cluster (:mod:`ags_etl.cluster_jobs`) are
        all submitted first; the other jobs then run one after another here (their pages on
        threads or page tasks), and the whole jobs' reports are collected last.
        """
        self.report.started_at = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        start = time.monotonic()
        done: dict[int, list[JobReport]] = {}  # reports by index of the job in self.jobs
        index = -1
        try:
            self._submit_whole_jobs(done)
            for index, job in enumerate(self.jobs):
                if index not in self._whole and index not in done:
                    done[index] = []
                    for report in self._run_job(job):
                        done[index].append(report)
            for index, submitted in self._whole.items():
                done[index] = []
                for report in self._collect(submitted):
                    done[index].append(report)
        except BaseException as exc:  # Ctrl-C / SIGTERM: record where the run stopped, then go on stopping
            self._interrupted(exc, index, done)
            raise
        finally:
            self.report.jobs = [r for i in range(len(self.jobs)) for r in done.get(i, [])]
            self.report.seconds = time.monotonic() - start
            for whole in self._whole_jobs.values():
                whole.close()
            self.clusters.close()  # a local cluster started for this run stops with it
        return self.report

    def _settings(self, job: JobSpec) -> ExecutorSettings:
        return resolve_settings(
            self.cluster_options, (job.executor, job.scheduler, job.max_requests_per_host), self.pipeline_cluster
        )

    def _run_pipeline(self, layer_job: JobSpec, pipeline: Pipeline) -> RunResult:
        """Run one layer job here (threads) or with its pages on a Dask cluster."""
        settings = self._settings(layer_job)
        if settings.executor == "threads":
            return pipeline.run()
        if runs_whole(layer_job):  # a dry run: its edits are printed here, so it runs here
            log.info("job %s: a dry run runs on this machine, not as a task on the Dask cluster", layer_job.name)
            return pipeline.run()
        from ags_etl.extractors.dask_executor import run_on_cluster

        client = self.clusters.client(settings.scheduler)
        return run_on_cluster(pipeline, layer_job, client, limit=settings.max_requests_per_host)

    # ------------------------------------------------------------------ whole jobs on a Dask cluster

    def _submit_whole_jobs(self, done: dict[int, list[JobReport]]) -> None:
        """Send every job that runs as whole-job tasks (executor dask, a sink not written in
        parts, not a sync job, not a dry run) to its cluster, one task per layer; fills
        :attr:`_whole`. A job whose layers cannot be listed gets its ``failed`` report in ``done``."""
        for index, job in enumerate(self.jobs):
            settings = self._settings(job)
            if settings.executor != "dask" or job.sync is not None or self.dry_run or not runs_whole(job):
                continue
            if self._failed and self.fail_fast:
                done[index] = [JobReport(name=job.name, job=job.name, status="skipped")]
                continue
            try:
                layer_jobs = self._expand(job)
                whole = self._whole_jobs.get(settings.scheduler)
                if whole is None:
                    whole = self._whole_jobs[settings.scheduler] = WholeJobs(self.clusters.client(settings.scheduler))
            except Exception as exc:  # a listing that fails, a cluster out of reach: this job's failure only
                log.debug("job %s: not submitted", job.name, exc_info=True)
                self._mark_failed()
                done[index] = [JobReport(name=job.name, job=job.name, status="failed", error=error_message(exc))]
                continue
            submitted = []
            for layer_job in layer_jobs:
                bar = self.progress.job(layer_job.name)
                future = whole.submit(layer_job, job.name, settings.max_requests_per_host)
                future.add_done_callback(self._whole_done)
                submitted.append(_Submitted(layer_job, job.name, future, whole, bar))
            self._whole[index] = submitted

    def _whole_done(self, future: Any) -> None:
        """Called by Dask when a whole-job task ends: a failure counts for ``--fail-fast`` now."""
        # "finished": the task returned its report (it never raises); "error": Dask lost it;
        # "cancelled": this run is being interrupted.
        if future.status == "error" or (future.status == "finished" and future.result().report.status == "failed"):
            self._mark_failed()

    def _mark_failed(self) -> None:
        """A job failed: with ``--fail-fast``, whole jobs not started yet are skipped."""
        self._failed = True
        if self.fail_fast:
            for whole in list(self._whole_jobs.values()):
                whole.skip_pending()

    def _collect(self, submitted: list[_Submitted]) -> Iterator[JobReport]:
        """The reports of one job's whole-job tasks, waiting for each."""
        for item in submitted:
            report = item.whole.report(item.future, item.job.name, item.job_name)
            item.bar.finish(ok=report.status == "ok")
            if report.status == "failed":
                self._mark_failed()
            yield report

    def _interrupted(self, exc: BaseException, index: int, done: dict[int, list[JobReport]]) -> None:
        """Stopped by ``exc`` while job ``index`` ran here (-1: none yet): that job ``failed``
        (interrupted), jobs not started ``skipped``; whole jobs that finished on the cluster
        keep their reports, the others are told to stop and reported ``failed``."""
        self.report.interrupted = True
        if index >= 0 and index not in self._whole:
            current = self.jobs[index]
            name, job_name, began = self._running if self._running is not None else (current.name, current.name, None)
            done.setdefault(index, []).append(JobReport(
                name=name, job=job_name, status="failed", seconds=0.0 if began is None else time.monotonic() - began,
                error=f"interrupted ({type(exc).__name__}); its output was not written",
            ))
        for i, job in enumerate(self.jobs):
            submitted = self._whole.get(i)
            if submitted is None:
                if i not in done:
                    done[i] = [JobReport(name=job.name, job=job.name, status="skipped")]
                continue
            reported = {r.name for r in done.get(i, [])}
            done[i] = done.get(i, []) + [
                item.whole.report(item.future, item.job.name, item.job_name) if item.future.done() else JobReport(
                    name=item.job.name, job=item.job_name, status="failed",
                    error=f"interrupted ({type(exc).__name__}) while it ran on the Dask cluster; it was told to "
                    "stop, and its output is written only if it had already finished",
                )
                for item in submitted if item.job.name not in reported
            ]
        for whole in self._whole_jobs.values():
            try:
                whole.stop()
            except Exception as stop_error:  # the cluster is gone too: nothing left to stop
                log.debug("could not stop the jobs on the Dask cluster: %s", stop_error, exc_info=True)

    def _expand(self, job: JobSpec) -> list[JobSpec]:
        """One job per layer. Needs the network only for service/folder/item sources."""
        source = job.source
        if source.type != "arcgis":
            return [job]  # another extractor's source names what it reads itself
        client_options = {k: getattr(source, k) for k in ("timeout", "retries") if getattr(source, k, None) is not None}
        with ArcGISClient(auth=build_auth(source.auth), **client_options, **network_options(source)) as client:
            return expand_job(job, client)

    def _run_layer(self, layer_job: JobSpec, job_name: str) -> JobReport:
        """Build and run one layer job; an ``Exception`` becomes its ``failed`` report."""
        start = time.monotonic()
        self._running = (layer_job.name, job_name, start)
        bar = self.progress.job(layer_job.name)
        pipeline: Pipeline | None = None
        sync: SyncOutcome | None = None
        try:
            pipeline = build_pipeline(dry_run_job(layer_job) if self.dry_run else layer_job, progress=bar)
            if layer_job.sync is not None:
                sync = self._prepare_sync(layer_job, pipeline)
            result = self._run_pipeline(layer_job, pipeline)
            if sync is not None:
                self._commit_sync(layer_job, job_name, pipeline, result, sync)
        except BaseException as exc:  # one job's failure, whatever its kind, must not stop the others
            bar.finish(ok=False)
            if not isinstance(exc, Exception):
                raise  # Ctrl-C, SIGTERM: run() records it
            self._running = None
            log.debug("job %s failed", layer_job.name, exc_info=True)
            return failed_report(layer_job, job_name, pipeline, exc, time.monotonic() - start)
        self._running = None
        bar.finish(ok=True)
        report = ok_report(layer_job, job_name, pipeline, result, time.monotonic() - start)
        if sync is not None:
            report.sync, report.deleted = sync.plan.mode, sync.merge.deleted
            report.warnings[:0] = sync.warnings
        return report

    # ------------------------------------------------------------------ sync jobs

    def _prepare_sync(self, job: JobSpec, pipeline: Pipeline) -> SyncOutcome:
        """Plan the run from the state (full or incremental), set the extractor's where clause,
        wrap a file sink in a :class:`MergingLoader` (with a shadow in the state folder unless
        the output is GeoParquet), tell any other sink which run this is, watch the cursor;
        remove stale temp outputs."""
        assert job.sync is not None and job.sync.cursor_field is not None
        stored = None if self.full_refresh else self.state.get(job.name)
        loader = pipeline.loader
        output = previous_output(loader)
        shadow = None
        if isinstance(loader, FileLoader) and loader.name not in MERGEABLE_FILE_SINKS:
            shadow = shadow_path(self.state.path.parent, job.name, loader.target)
        warnings = []
        for target in (output, None if shadow is None else pending_shadow(shadow)):
            for stale in [] if target is None else stale_temp_outputs(target):  # safe: this job's lock is held
                remove_tree(stale)
                warnings.append(f"removed {str(stale)!r}, a temp output left by an earlier run that was killed")
        if output is None:
            have_previous = True
        else:
            have_previous = output.exists() and (shadow is None or shadow.exists())
        plan = plan_sync(
            job,
            stored_cursor=None if stored is None else stored.cursor,
            stored_identity=None if stored is None else stored.source,
            previous_output=have_previous,
            full_refresh=self.full_refresh,
        )
        log.info("job %s: %s sync (%s)", job.name, plan.mode, plan.reason)
        sync = SyncOutcome(plan, warnings=warnings)
        extractor = pipeline.extractor
        extractor.where = plan.where.strip() if plan.where is not None and plan.where.strip() else "1=1"
        cursor_field = job.sync.cursor_field

        def observe(batch: FeatureBatch) -> None:
            sync.cursor = later(sync.cursor, batch_cursor(batch, cursor_field))

        pipeline.observers.append(observe)
        if isinstance(loader, FileLoader):
            where = job.source.where
            previous = output if shadow is None else shadow
            pipeline.loader = sync.loader = MergingLoader(
                loader,
                key=job.sync.key,
                previous=previous if plan.mode == "incremental" else None,
                source_keys=(lambda key: source_keys(extractor, where, key)) if job.sync.detect_deletes else None,
                shadow=shadow,
            )
        elif isinstance(loader, DeletingSink) and getattr(loader, "supports_sync", False):
            sync.key = loader.prepare_sync(full=plan.mode == "full", key=job.sync.key)
        else:
            raise ConfigError(
                f"job {job.name!r}: the {loader.name} sink cannot take part in a sync job (it neither merges "
                "nor upserts by key); write a file, or drop sync"
            )
        return sync

    def _commit_sync(self, job: JobSpec, job_name: str, pipeline: Pipeline, result: RunResult, sync: SyncOutcome) -> None:
        """After the sink committed: deletes for a sink that is not a file, then the state row
        (not in a dry run: nothing was sent, so the next run must read the same changes)."""
        assert job.sync is not None
        if sync.loader is not None:
            sync.merge = sync.loader.merge
        elif job.sync.detect_deletes:
            sync.merge.deleted = self._apply_deletes(job, pipeline, sync)
        if self.dry_run:
            return
        cursor = later(sync.plan.cursor, sync.cursor)
        self.state.put(JobState(
            name=job.name, job=job_name, cursor=cursor, source=source_identity(job), mode=sync.plan.mode,
            last_run=now_text(), features_read=result.extract.features, written=result.load.features,
            deleted=sync.merge.deleted, output=pipeline.loader.target,
        ))

    def _apply_deletes(self, job: JobSpec, pipeline: Pipeline, sync: SyncOutcome) -> int:
        """Keys the target holds and the source (its whole where clause) does not, deleted
        through the sink — after full runs too, which may follow a changed where clause."""
        loader = pipeline.loader
        assert isinstance(loader, DeletingSink) and sync.key is not None
        with build_extractor(job.source) as extractor:
            present = source_keys(extractor, job.source.where, sync.key)
        gone = sorted(loader.existing_keys(sync.key) - present, key=str)
        return loader.apply_deletes(sync.key, gone) if gone else 0

    def _run_job(self, job: JobSpec) -> Iterator[JobReport]:
        """Reports of one job as written in the file: one per layer, or one failed/skipped/locked entry."""
        if self._failed and self.fail_fast:
            yield JobReport(name=job.name, job=job.name, status="skipped")
            return
        if job.sync is None:
            yield from self._run_unlocked(job)
            return
        lock = JobLock(self.state.lock_dir, job.name)
        try:
            lock.acquire()
        except JobLockedError as exc:
            yield JobReport(name=job.name, job=job.name, status="locked", error=_message(exc))
            return
        except ConfigError as exc:
            self._mark_failed()
            yield JobReport(name=job.name, job=job.name, status="failed", error=_message(exc))
            return
        try:
            yield from self._run_unlocked(job)
        finally:
            lock.release()

    def _run_unlocked(self, job: JobSpec) -> Iterator[JobReport]:
        try:
            layer_jobs = self._expand(job)
        except Exception as exc:  # a listing that fails is this job's failure only
            log.debug("job %s: expansion failed", job.name, exc_info=True)
            self._mark_failed()
            yield JobReport(name=job.name, job=job.name, status="failed", error=_message(exc))
            return
        for layer_job in layer_jobs:
            if self._failed and self.fail_fast:
                yield JobReport(name=layer_job.name, job=job.name, status="skipped")
                continue
            report = self._run_layer(layer_job, job.name)
            if report.status == "failed":
                self._mark_failed()
            yield report


def run_pipeline(
    spec: PipelineSpec,
    *,
    job: str | None = None,
    fail_fast: bool = False,
    progress: ProgressFactory | None = None,
    full_refresh: bool = False,
    dry_run: bool = False,
    executor: str | None = None,
    scheduler: str | None = None,
) -> RunReport:
    """Run the jobs of ``spec`` (or only ``job``) in file order; return the :class:`RunReport`.

    ``progress`` shows per-job progress (see :func:`ags_etl.progress.make_progress`); the
    default shows nothing. Raises ConfigError only for an unknown ``job`` name; every failure
    of a job is recorded in the report instead (``report.exit_code`` is then 1).
    """
    return PipelineRun(
        spec, job=job, fail_fast=fail_fast, progress=progress, full_refresh=full_refresh, dry_run=dry_run,
        executor=executor, scheduler=scheduler,
    ).run()
