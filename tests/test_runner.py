"""run_pipeline against real servers on 127.0.0.1, and the run report on its own.

Jobs run in this process (the Python API's path); ``tests/cli/test_run.py`` runs the same
through ``ags-etl run`` in a subprocess.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely

from ags_etl.config import parse_pipeline
from ags_etl.errors import ConfigError
from ags_etl.report import JobReport, RunReport, summary_table
from ags_etl.runner import run_pipeline
from ags_etl.server.testing import run_server
from tests.cli.helpers import url
from tests.layers import expected_rows, write_layer
from tests.loopback import JSONHandler, serving
from tests.misbehaving_proxy import Misbehaviour, misbehaving_proxy

N = 30
#: The clip mask: a triangle over half of the points' envelope (lon −123…−122, lat 37…38).
TRIANGLE = [(-123.0, 37.0), (-122.0, 37.0), (-123.0, 38.0), (-123.0, 37.0)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("runner-layers")
    write_layer(d / "points.geojson", "points", N)
    write_layer(d / "polygons.geojson", "polygons", N)
    return d


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    with run_server(data_dir, "--max-record-count", "7") as base:
        yield base


def spec(*jobs: dict[str, Any]) -> Any:
    return parse_pipeline({"version": 1, "jobs": list(jobs)})


def job(name: str, layer_url: str, path: Path, **extra: Any) -> dict[str, Any]:
    sink_type = {".geojson": "geojson", ".parquet": "geoparquet", ".shp": "shapefile"}[path.suffix]
    return {"name": name, "source": {"url": layer_url}, "sink": {"type": sink_type, "path": str(path)}, **extra}


def oids(path: Path) -> list[int]:
    if path.suffix == ".parquet":  # GeoParquet read with pyarrow (GDAL's Parquet driver may lack libduckdb)
        return sorted(pq.read_table(path, columns=["OBJECTID"]).column("OBJECTID").to_pylist())
    return sorted(int(v) for v in pyogrio.read_dataframe(path)["OBJECTID"])


def test_jobs_run_in_order_with_their_counts(server: str, tmp_path: Path) -> None:
    clip = {"type": "clip", "mask": {"type": "Polygon", "coordinates": [TRIANGLE]}}
    report = run_pipeline(spec(
        job("points", url(server, "points"), tmp_path / "points.parquet"),
        job("clipped", url(server, "points"), tmp_path / "clipped.geojson", transforms=[clip]),
        job("polygons", url(server, "polygons"), tmp_path / "polygons.geojson"),
    ))
    assert report.exit_code == 0
    assert [(j.name, j.job, j.status) for j in report.jobs] == [
        ("points", "points", "ok"), ("clipped", "clipped", "ok"), ("polygons", "polygons", "ok")]
    points, clipped, polygons = report.jobs
    assert (points.features_read, points.written, points.dropped_by_clip) == (N, N, 0)
    assert points.pages >= N // 7, "the server's page cap of 7 was followed"
    assert points.expected == N and points.error is None
    assert points.output == str(tmp_path / "points.parquet")
    assert oids(tmp_path / "points.parquet") == sorted(expected_rows("points", N))

    # The mask's envelope goes to the server; the clip drops what is in the envelope but not the triangle.
    rows = expected_rows("points", N)
    envelope = shapely.box(-123, 37, -122, 38)
    triangle = shapely.Polygon(TRIANGLE)
    in_envelope = [o for o, r in rows.items() if r["geometry"] is not None and envelope.intersects(r["geometry"])]
    in_triangle = [o for o in in_envelope if triangle.intersects(rows[o]["geometry"])]
    assert 0 < len(in_triangle) < len(in_envelope)
    assert clipped.features_read == len(in_envelope)
    assert clipped.dropped_by_clip == len(in_envelope) - len(in_triangle)
    assert clipped.written == len(in_triangle)
    assert oids(tmp_path / "clipped.geojson") == sorted(in_triangle)

    assert (polygons.features_read, polygons.written) == (N, N)
    assert report.seconds >= max(j.seconds for j in report.jobs)

    # run again: existing outputs without overwrite fail their jobs before any request; the files stay
    before = (tmp_path / "points.parquet").read_bytes()
    again = run_pipeline(spec(job("points", url(server, "points"), tmp_path / "points.parquet")))
    assert [(j.status, j.requests) for j in again.jobs] == [("failed", 0)]
    assert "exists" in (again.jobs[0].error or "") and (tmp_path / "points.parquet").read_bytes() == before


def test_a_failed_job_does_not_stop_the_next(server: str, tmp_path: Path) -> None:
    bad = job("bad", url(server, "points"), tmp_path / "bad.geojson")
    bad["source"]["where"] = "NO_SUCH_FIELD = 1"
    report = run_pipeline(spec(bad, job("good", url(server, "polygons"), tmp_path / "good.geojson")))
    assert report.exit_code == 1
    assert [(j.name, j.status) for j in report.jobs] == [("bad", "failed"), ("good", "ok")]
    assert report.jobs[0].error is not None and "NO_SUCH_FIELD" in report.jobs[0].error
    assert report.jobs[0].output is None
    assert oids(tmp_path / "good.geojson") == sorted(expected_rows("polygons", N))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.geojson"], "nothing of the failed job is left"

    fast = tmp_path / "fast"
    fast.mkdir()
    bad["sink"]["path"] = str(fast / "bad.geojson")
    report = run_pipeline(spec(bad, job("good", url(server, "polygons"), fast / "good.geojson")), fail_fast=True)
    assert [(j.name, j.status) for j in report.jobs] == [("bad", "failed"), ("good", "skipped")]
    assert report.exit_code == 1
    assert list(fast.iterdir()) == [], "a skipped job is never started"


def test_a_count_the_pages_never_reach_fails_the_job(server: str, tmp_path: Path) -> None:
    with misbehaving_proxy(server, Misbehaviour(count_extra=1)) as proxy:
        report = run_pipeline(spec(
            job("lying", url(proxy, "points"), tmp_path / "lying.parquet"),
            job("honest", url(server, "points"), tmp_path / "honest.parquet"),
        ))
    lying, honest = report.jobs
    assert lying.status == "failed"
    assert lying.error is not None and str(N + 1) in lying.error and str(N) in lying.error
    assert lying.features_read == N and lying.expected == N + 1, "counts reached before the failure are kept"
    assert not (tmp_path / "lying.parquet").exists()
    assert honest.status == "ok" and oids(tmp_path / "honest.parquet") == sorted(expected_rows("points", N))


class Recorder(JSONHandler):
    """Answers every request with an ArcGIS error body and records its path."""

    seen: ClassVar[list[str]] = []
    lock = threading.Lock()

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        with self.lock:
            self.seen.append(path)
        return 200, "application/json", b'{"error": {"code": 400, "message": "recording stub", "details": []}}'


def test_one_job_never_contacts_another_jobs_server(server: str, tmp_path: Path) -> None:
    Recorder.seen = []
    with serving(Recorder) as stub:
        pipeline = spec(
            job("elsewhere", url(stub, "points"), tmp_path / "elsewhere.geojson"),
            job("here", url(server, "points"), tmp_path / "here.geojson"),
        )
        report = run_pipeline(pipeline, job="here")
        assert [(j.name, j.status) for j in report.jobs] == [("here", "ok")]
        assert Recorder.seen == [], "the other job's server got no request"
        assert not (tmp_path / "elsewhere.geojson").exists()

        # the stub is reachable: running every job does contact it (so the check above can fail)
        (tmp_path / "here.geojson").unlink()
        report = run_pipeline(pipeline)
        assert [(j.name, j.status) for j in report.jobs] == [("elsewhere", "failed"), ("here", "ok")]
        assert Recorder.seen, "the stub was asked"
        assert "recording stub" in (report.jobs[0].error or "")

        with pytest.raises(ConfigError, match=r"no job named 'nope'.*elsewhere, here"):
            run_pipeline(pipeline, job="nope")


def test_multi_layer_job_expands_and_is_selected_by_its_written_name(server: str, tmp_path: Path) -> None:
    services = f"{server}/arcgis/rest/services"
    pipeline = spec({
        "name": "everything",
        "source": {"url": services, "layers": ["*"]},
        "sink": {"type": "geoparquet", "path": str(tmp_path / "{service}-{layer}.parquet")},
    })
    report = run_pipeline(pipeline, job="everything")
    assert report.exit_code == 0, report.to_json()
    assert sorted(j.job for j in report.jobs) == ["everything", "everything"]
    assert all(j.name.startswith("everything/") for j in report.jobs)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        Path(j.output or "").name for j in report.jobs)
    assert sum(j.written for j in report.jobs) == 2 * N


def make_report() -> RunReport:
    return RunReport(
        jobs=[
            JobReport(name="parks", job="parks", status="ok", features_read=40, dropped_by_clip=3, written=37,
                      pages=2, requests=5, retries=1, seconds=0.25, strategy="oid-list", expected=40,
                      output="out/parks.geojson", warnings=["field NAME truncated"]),
            JobReport(name="roads", job="roads", status="failed", features_read=7, pages=1,
                      seconds=1.5, error="server said no"),
            JobReport(name="rest", job="rest", status="skipped"),
        ],
        pipeline="p.yaml",
        started_at="2024-06-11T09:00:00Z",
        seconds=1.8,
    )


def test_summary_table() -> None:
    assert summary_table(make_report()).splitlines() == [
        "job    status   read  clipped  written  pages  retries  seconds  output",
        "parks  ok         40        3       37      2        1      0.2  out/parks.geojson",
        "roads  failed      7        0        0      1        0      1.5  -",
        "rest   skipped",
        "parks: warning: field NAME truncated",
        "roads: server said no",
        "3 jobs: 1 ok, 1 failed, 1 skipped in 1.8 s",
    ]
    assert "server said no" not in summary_table(make_report(), errors=False)


def test_json_report_and_its_atomic_write(tmp_path: Path) -> None:
    report = make_report()
    data = json.loads(report.to_json())
    assert data["report_version"] == 1
    assert (data["exit_code"], data["status"], data["counts"]) == (1, "failed", {"ok": 1, "failed": 1, "skipped": 1})
    assert data["jobs"][0] == {
        "name": "parks", "job": "parks", "status": "ok", "features_read": 40, "dropped_by_clip": 3,
        "written": 37, "pages": 2, "requests": 5, "retries": 1, "seconds": 0.25, "strategy": "oid-list",
        "expected": 40, "output": "out/parks.geojson", "error": None, "warnings": ["field NAME truncated"],
        "sync": None, "deleted": 0,
    }
    assert data["jobs"][2]["status"] == "skipped" and data["jobs"][2]["output"] is None
    target = tmp_path / "report.json"
    target.write_text("old")
    report.write_json(target)
    assert json.loads(target.read_text()) == data
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"], "no temp file left"
    with pytest.raises(FileNotFoundError):
        report.write_json(tmp_path / "missing" / "report.json")
    assert RunReport(jobs=[JobReport(name="a", job="a", status="ok")]).exit_code == 0
