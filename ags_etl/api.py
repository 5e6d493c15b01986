"""The Python API: load or build a pipeline and run it from code, with the same validation
and the same result objects as ``ags-etl run``.

::

    from ags_etl import load_pipeline, parse_pipeline, run_pipeline

    spec = load_pipeline("pipelines/demo.yaml", env={"AGS_ETL_DEMO_URL": url})   # or os.environ
    spec = parse_pipeline({"version": 1, "jobs": [{"name": "parks", "source": {"url": url},
                                                   "sink": {"type": "geoparquet", "path": "parks.parquet"}}]})
    report = run_pipeline(spec, job=None, fail_fast=False, progress=make_progress(quiet=False))
    report.exit_code, [(j.name, j.status, j.written) for j in report.jobs], report.to_json()

    # one layer job, step by step (the Pipeline object of ags_etl.pipeline):
    result = build_pipeline(spec.jobs[0]).run()     # RunResult: extract/load stats, counters

``load_pipeline``/``parse_pipeline`` raise :class:`PipelineFileError` listing every problem;
``run_pipeline`` raises :class:`ConfigError` only for an unknown ``job`` and records every
job's failure in the :class:`RunReport` instead of raising.
"""

from __future__ import annotations

from ags_etl.build import build_pipeline
from ags_etl.config import load_pipeline, parse_pipeline
from ags_etl.errors import AgsEtlError, ConfigError, PipelineFileError
from ags_etl.progress import JobProgress, ProgressFactory, make_progress
from ags_etl.report import JobReport, RunReport, summary_table
from ags_etl.runner import PipelineRun, run_pipeline
from ags_etl.spec import JobSpec, PipelineSpec

__all__ = [
    "AgsEtlError",
    "ConfigError",
    "JobProgress",
    "JobReport",
    "JobSpec",
    "PipelineFileError",
    "PipelineRun",
    "PipelineSpec",
    "ProgressFactory",
    "RunReport",
    "build_pipeline",
    "load_pipeline",
    "make_progress",
    "parse_pipeline",
    "run_pipeline",
    "summary_table",
]
