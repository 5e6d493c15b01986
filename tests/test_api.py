"""The Python API: the same validation and result objects as `ags-etl run`, from code."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyogrio
import pytest

import ags_etl
from ags_etl import (
    JobReport,
    PipelineFileError,
    RunReport,
    build_pipeline,
    load_pipeline,
    make_progress,
    parse_pipeline,
    run_pipeline,
)
from ags_etl.api import __all__ as api_names
from ags_etl.pipeline import Pipeline, RunResult
from ags_etl.server.testing import run_server
from tests.cli.helpers import url
from tests.layers import expected_rows, write_layer

N = 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("api-layers")
    write_layer(d / "points.geojson", "points", N)
    with run_server(d, "--max-record-count", "6") as base:
        yield base


def test_every_api_name_is_exported_lazily() -> None:
    assert sorted(api_names) == sorted(ags_etl._API)
    for name in api_names:
        assert getattr(ags_etl, name) is getattr(ags_etl.api, name)
    with pytest.raises(AttributeError, match="no_such_thing"):
        ags_etl.no_such_thing  # noqa: B018
    # `import ags_etl` alone does not pull in the runner (and its HTTP and GIS libraries)
    code = "import sys, ags_etl; print('ags_etl.runner' in sys.modules, 'pyarrow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_build_and_run_from_a_dict(server: str, tmp_path: Path) -> None:
    spec = parse_pipeline({
        "version": 1,
        "jobs": [{"name": "points", "source": {"url": url(server, "points"), "page_size": 4},
                  "sink": {"type": "geojson", "path": str(tmp_path / "points.geojson")}}],
    })
    stream = io.StringIO()
    with make_progress(quiet=False, stream=stream) as progress:
        report = run_pipeline(spec, progress=progress)
    assert isinstance(report, RunReport) and report.exit_code == 0
    (job,) = report.jobs
    assert isinstance(job, JobReport)
    assert (job.status, job.written, job.output) == ("ok", N, str(tmp_path / "points.geojson"))
    assert job.pages >= N // 4
    assert "points: done, 20 features" in stream.getvalue()
    found = pyogrio.read_dataframe(tmp_path / "points.geojson")["OBJECTID"]
    assert sorted(int(v) for v in found) == sorted(expected_rows("points", N))

    # one job, step by step: the Pipeline and its RunResult
    again = spec.jobs[0].model_copy(update={"sink": spec.jobs[0].sink.model_copy(update={"overwrite": True})})
    pipeline = build_pipeline(again)
    assert isinstance(pipeline, Pipeline)
    result = pipeline.run()
    assert isinstance(result, RunResult) and result.features == N


def test_load_a_file_with_its_own_variables(server: str, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("""\
version: 1
jobs:
  - name: a
    source: {url: "${BASE}/arcgis/rest/services/points/FeatureServer/0"}
    sink: {type: geoparquet, path: "${OUT:-.}/a.parquet"}
""")
    spec = load_pipeline(path, env={"BASE": server, "OUT": str(tmp_path)})
    assert spec.path == path
    report = run_pipeline(spec, job="a")
    assert report.jobs[0].written == N and report.to_dict()["pipeline"] == str(path)


def test_same_validation_as_the_command() -> None:
    with pytest.raises(PipelineFileError) as info:
        parse_pipeline({"version": 1, "jobs": [{"name": "a", "source": {"url": "http://127.0.0.1:9/x/0"},
                                                 "sink": {"type": "nope", "path": "x"}}]})
    assert info.value.problems and any("nope" in p for p in info.value.problems)
