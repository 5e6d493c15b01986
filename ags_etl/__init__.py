"""ags_etl: ETL for ArcGIS REST feature services.

Every feature exactly once or a loud error; outputs that appear only when complete.
"""

__version__ = "0.1.0"

import os as _os
from typing import TYPE_CHECKING

# Arrow's C++ default memory pool is picked once, from ARROW_DEFAULT_MEMORY_POOL, when Arrow
# first needs it. pyarrow.set_memory_pool (ags_etl.batch.use_malloc_for_arrow) changes only
# the pool of pyarrow's own calls: Parquet's column writers still took theirs from the C++
# default (mimalloc), which kept about 20 MB more resident in a GeoParquet pull. Naming
# malloc here, before anything of ags_etl imports pyarrow, covers both; a pool the
# environment already names wins.
_os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

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
