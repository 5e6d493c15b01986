"""ags_etl: ETL for ArcGIS REST feature services.

Every feature exactly once or a loud error; outputs that appear only when complete.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type checkers see the real names; at run time they are imported on first use
    from ags_etl.api import (  # noqa: F401
        AgsEtlError,
        ConfigError,
        JobProgress,
        JobReport,
        JobSpec,
        PipelineFileError,
        PipelineRun,
        PipelineSpec,
        ProgressFactory,
        RunReport,
        build_pipeline,
        load_pipeline,
        make_progress,
        parse_pipeline,
        run_pipeline,
        summary_table,
    )

#: The Python API (``from ags_etl import load_pipeline, run_pipeline …``), imported on first use
#: so that ``import ags_etl`` stays light; see ags_etl.api.
_API = frozenset(
    {
        "AgsEtlError", "ConfigError", "JobProgress", "JobReport", "JobSpec", "PipelineFileError", "PipelineRun",
        "PipelineSpec", "ProgressFactory", "RunReport", "build_pipeline", "load_pipeline",
        "make_progress", "parse_pipeline", "run_pipeline", "summary_table",
    }
)  # fmt: skip


def __getattr__(name: str) -> object:
    if name in _API:
        from ags_etl import api

        return getattr(api, name)
    raise AttributeError(f"module 'ags_etl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
