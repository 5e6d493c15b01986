"""``ags-etl run FILE``: run the jobs of a pipeline file, show progress, print a summary.

Exit codes: 0 every job succeeded; 1 a job failed (the others still ran unless
``--fail-fast``); 2 usage error (unknown ``--job``, report folder missing); 75 a sync job
could not run because another run holds its lock (and no job failed); 78 the file is
invalid or missing; 130 interrupted.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ags_etl.cli._common import EXIT_CONFIG, fail, handle_errors
from ags_etl.config import load_pipeline
from ags_etl.errors import ConfigError, PipelineFileError
from ags_etl.progress import make_progress
from ags_etl.report import summary_table
from ags_etl.runner import PipelineRun


@click.command("run")
@click.argument("file", type=click.Path(path_type=Path))  # a missing file is a PipelineFileError (78)
@click.option("--job", "job_name", metavar="NAME", help="Run only this job (its name as written in the file).")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed job; the rest are reported as skipped.")
@click.option(
    "--full-refresh",
    is_flag=True,
    help="Sync jobs: ignore their state, read everything, rewrite the output; the state is then replaced.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="feature_service sinks: print the adds, updates and deletes each job would send, and send nothing.",
)
@click.option(
    "--executor", type=click.Choice(["threads", "dask"]),
    help="Where page requests run, for every job: threads (this process) or dask (a cluster); "
    "default: each job's executor key, else threads.",
)
@click.option(
    "--scheduler", metavar="ADDRESS",
    help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: the file's scheduler key, DASK_SCHEDULER_ADDRESS, "
    "else a local cluster for the run).",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors (no progress, no summary).")
@click.option(
    "--report",
    "report_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the summary as JSON to this file (written even when jobs fail).",
)
@handle_errors
def run_cmd(
    file: Path,
    job_name: str | None,
    fail_fast: bool,
    full_refresh: bool,
    dry_run: bool,
    executor: str | None,
    scheduler: str | None,
    quiet: bool,
    report_path: Path | None,
) -> None:
    """Run the jobs of the pipeline file FILE (all of them, or only --job NAME).

    Each output appears only when its job completed. A progress bar per job is shown when
    stderr is a terminal, a line every 5 s or 10 % otherwise; a summary table ends the run.

    Exit codes: 0 every job succeeded; 1 a job failed; 2 usage error; 75 a sync job's lock
    is held by another run (nothing changed; 1 wins if a job failed); 78 invalid pipeline
    file; 130 interrupted.
    """
    if report_path is not None and not (report_path.parent if str(report_path.parent) else Path(".")).is_dir():
        raise ConfigError(f"--report folder {str(report_path.parent)!r} does not exist; create it first")
    try:
        spec = load_pipeline(file)
    except PipelineFileError as exc:
        fail(str(exc), EXIT_CONFIG)
        return
    with make_progress(quiet) as progress:
        run = PipelineRun(  # unknown --job: exit 2
            spec, job=job_name, fail_fast=fail_fast, progress=progress, full_refresh=full_refresh, dry_run=dry_run,
            executor=executor, scheduler=scheduler,
        )
        try:
            report = run.run()
        finally:  # also when interrupted: the report then says which job stopped and what was skipped
            if report_path is not None:
                run.report.write_json(report_path)
    if not quiet:
        click.echo(summary_table(report, errors=False))  # errors go to stderr below
    for j in report.jobs:
        if j.status in ("failed", "locked"):
            click.echo(f"ags-etl: error: job {j.name}: {j.error}", err=True)
    sys.exit(report.exit_code)
