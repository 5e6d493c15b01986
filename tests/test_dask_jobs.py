"""executor: dask with sinks that are one file — each job is one whole-job task on a real Dask
cluster (scheduler and two worker processes on 127.0.0.1): the worker reads, writes and commits,
the driver gets the job's report.

Skipped only when ``distributed`` is not importable (the ``test`` extra installs it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely
from lxml import etree

from ags_etl.config import parse_pipeline
from ags_etl.runner import PipelineRun, run_pipeline
from ags_etl.server.app import serve_in_thread
from ags_etl.server.options import ServerOptions
from tests.layers import expected_rows, write_layer

distributed = pytest.importorskip("distributed")

from ags_etl.cluster_jobs import jobs_run
from ags_etl.extractors.dask_executor import tasks_run

PAGE = 100
#: name → (kind of layer, features, sink type, output file)
LAYERS = {
    "pts_json": ("points", 300, "geojson", "pts.geojson"),
    "polys_shp": ("polygons", 120, "shapefile", "polys.shp"),
    "pts_kmz": ("points", 250, "kmz", "pts.kmz"),
    "table_parquet": ("table", 80, "geoparquet", "table.parquet"),
}
#: A layer read slowly enough to be stopped half-way (one request at a time).
BIG = 2400
KML = {"k": "http://www.opengis.net/kml/2.2"}
USER, PASSWORD = "etl-user", "s3cret-Pa55word-xyz"


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dask-jobs-layers")
    for name, (kind, n, _, _) in LAYERS.items():
        write_layer(folder / f"{name}.geojson", kind, n)
    write_layer(folder / "big.geojson", "points", BIG)
    return folder


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any]]:
    """A scheduler and two worker processes (2 threads each), all on loopback."""
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=":0"
    ) as c, distributed.Client(c) as client:
        yield c, client


def _server(data_dir: Path, latency_ms: int = 0, **options: Any) -> Any:
    return serve_in_thread(data_dir, ServerOptions(port=0, max_record_count=PAGE, latency_ms=latency_ms, **options))


def _stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/ags-etl/stats") as answer:
        stats: dict[str, int] = json.loads(answer.read())
    return stats


def _job(base: str, name: str, out: Path, *, layer: str | None = None, **source: Any) -> dict[str, Any]:
    sink_type, file_name = LAYERS[layer or name][2:]
    return {
        "name": name,
        "source": {"url": f"{base}/arcgis/rest/services/{layer or name}/FeatureServer/0", **source},
        "sink": {"type": sink_type, "path": str(out / file_name), "overwrite": True},
    }


def _same(got: shapely.Geometry | None, want: shapely.Geometry | None) -> bool:
    if got is None or want is None:
        return got is None and want is None
    return bool(shapely.equals_exact(shapely.normalize(got), shapely.normalize(want), 1e-7) or got.equals(want))


def _check_geojson(path: Path, kind: str, n: int) -> None:
    expected = expected_rows(kind, n)
    features = json.loads(path.read_text(encoding="utf-8"))["features"]
    oids = [f["properties"]["OBJECTID"] for f in features]
    assert len(oids) == len(set(oids)) == n and set(oids) == set(expected)
    for f in features:
        props, want = f["properties"], expected[f["properties"]["OBJECTID"]]
        assert (props["NAME"], props["COUNT"], props["VALUE"]) == (want["NAME"], want["COUNT"], want["VALUE"])
        got = None if f["geometry"] is None else shapely.from_geojson(json.dumps(f["geometry"]))
        assert _same(got, want["geometry"]), f


def _check_shapefile(path: Path, kind: str, n: int) -> None:
    expected = expected_rows(kind, n)
    _, table = pyogrio.read_arrow(str(path))
    rows = table.to_pylist()
    oids = [r["OBJECTID"] for r in rows]
    assert len(oids) == len(set(oids)) == n and set(oids) == set(expected)
    for r in rows:
        want = expected[r["OBJECTID"]]
        assert (r["NAME"] or "") == (want["NAME"] or "")  # a DBF cannot tell an empty string from null
        assert (r["COUNT"], r["VALUE"]) == (want["COUNT"], want["VALUE"])
        got = None if r["wkb_geometry"] is None else shapely.from_wkb(r["wkb_geometry"])
        assert _same(got, want["geometry"]), r["OBJECTID"]


def _check_kmz(path: Path, kind: str, n: int) -> None:
    expected = expected_rows(kind, n)
    with zipfile.ZipFile(path) as zf:
        root = etree.fromstring(zf.read("doc.kml"))
    placemarks = root.findall("k:Document/k:Placemark", KML)
    seen = set()
    for pm in placemarks:
        data = {d.get("name"): d.findtext("k:value", namespaces=KML) or "" for d in pm.findall("k:ExtendedData/k:Data", KML)}
        oid = int(data["OBJECTID"])
        assert oid not in seen
        seen.add(oid)
        want = expected[oid]
        assert data.get("NAME", "") == (want["NAME"] or "")
        assert data.get("COUNT") == (None if want["COUNT"] is None else str(want["COUNT"]))
        assert (None if "VALUE" not in data else float(data["VALUE"])) == want["VALUE"]
        point = pm.findtext("k:Point/k:coordinates", namespaces=KML)
        got = None if point is None else shapely.Point(*[float(v) for v in point.split(",")])
        assert _same(got, want["geometry"]), oid
    assert seen == set(expected) and len(placemarks) == n


def _check_geoparquet(path: Path, kind: str, n: int) -> None:
    expected = expected_rows(kind, n)
    rows = pq.read_table(path).to_pylist()
    oids = [r["OBJECTID"] for r in rows]
    assert len(oids) == len(set(oids)) == n and set(oids) == set(expected)
    for r in rows:
        want = expected[r["OBJECTID"]]
        assert (r["NAME"], r["COUNT"], r["VALUE"]) == (want["NAME"], want["COUNT"], want["VALUE"])


CHECKS = {"geojson": _check_geojson, "shapefile": _check_shapefile, "kmz": _check_kmz, "geoparquet": _check_geoparquet}


def _check_outputs(out: Path, names: tuple[str, ...] = tuple(LAYERS)) -> None:
    for name in names:
        kind, n, sink_type, file_name = LAYERS[name]
        CHECKS[sink_type](out / file_name, kind, n)


def _counts(client: Any, fn: Any) -> dict[str, int]:
    counts: dict[str, int] = client.run(fn)
    return counts


def test_jobs_to_single_files_run_as_tasks_on_both_workers_outputs_exact_a_failure_stops_none(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, client = cluster
    before = _counts(client, jobs_run)
    pages_before = sum(_counts(client, tasks_run).values())
    # One request at a time per job: more than one in flight means jobs overlapped on the cluster.
    with _server(data_dir, latency_ms=20) as base:
        jobs = [_job(base, name, tmp_path, concurrency=1) for name in LAYERS]
        rejected = _job(base, "rejected", tmp_path, layer="pts_json", where="NAME ==== 'x'")
        rejected["sink"]["path"] = str(tmp_path / "rejected.geojson")
        jobs.insert(1, rejected)
        spec = parse_pipeline({"version": 1, "executor": "dask", "scheduler": c.scheduler_address, "jobs": jobs})
        report = run_pipeline(spec)
        stats = _stats(base)
    assert [(j.name, j.status, j.written) for j in report.jobs] == [
        ("pts_json", "ok", 300), ("rejected", "failed", 0), ("polys_shp", "ok", 120), ("pts_kmz", "ok", 250),
        ("table_parquet", "ok", 80),
    ], [j.error for j in report.jobs]
    assert report.exit_code == 1
    failed = report.jobs[1]
    assert failed.error is not None and "NAME ==== 'x'" in failed.error and "where" in failed.error
    assert not (tmp_path / "rejected.geojson").exists()
    ok = [j for j in report.jobs if j.status == "ok"]
    assert all(j.features_read == j.written and j.pages >= 1 and j.requests > j.pages for j in ok), ok
    assert [j.output for j in ok] == [str(tmp_path / LAYERS[j.name][3]) for j in ok]
    _check_outputs(tmp_path)
    after = _counts(client, jobs_run)
    ran = {worker: after[worker] - before.get(worker, 0) for worker in after}
    assert len(ran) == 2 and all(n > 0 for n in ran.values()) and sum(ran.values()) == 5, ran
    assert sum(_counts(client, tasks_run).values()) == pages_before  # no page tasks: whole jobs only
    assert stats["max_in_flight"] > 1, stats


def test_max_requests_per_host_holds_for_whole_job_tasks_and_page_tasks_together(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, _ = cluster

    def pipeline(base: str, out: Path, **top: Any) -> dict[str, Any]:
        out.mkdir()
        jobs = [_job(base, name, out, concurrency=4) for name in LAYERS]
        dataset = _job(base, "dataset", out, layer="pts_json", concurrency=4)  # page tasks
        dataset["sink"] = {"type": "geoparquet", "path": f"{out}/dataset/", "overwrite": True}
        return {"version": 1, "executor": "dask", "scheduler": c.scheduler_address, **top, "jobs": [*jobs, dataset]}

    with _server(data_dir, latency_ms=30) as base:  # without a limit, jobs and their threads overlap
        free = run_pipeline(parse_pipeline(pipeline(base, tmp_path / "free")))
        assert free.exit_code == 0, [j.error for j in free.jobs]
        assert _stats(base)["max_in_flight"] > 2
    with _server(data_dir, latency_ms=30) as base:
        polite = run_pipeline(parse_pipeline(pipeline(base, tmp_path / "polite", max_requests_per_host=2)))
        stats = _stats(base)
    assert polite.exit_code == 0, [j.error for j in polite.jobs]
    assert stats["max_in_flight"] <= 2, stats
    _check_outputs(tmp_path / "polite")
    rows = pq.read_table(tmp_path / "polite" / "dataset").num_rows
    assert rows == 300


def test_fail_fast_skips_whole_jobs_not_started_and_they_write_nothing(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, _ = cluster
    with _server(data_dir, latency_ms=40) as base:
        rejected = _job(base, "rejected", tmp_path, layer="pts_json", where="NAME ==== 'x'")
        rejected["sink"]["path"] = str(tmp_path / "rejected.geojson")
        jobs = [rejected]
        for i in range(10):
            job = _job(base, f"copy{i}", tmp_path, layer="pts_kmz", concurrency=1)
            job["sink"]["path"] = str(tmp_path / f"copy{i}.kmz")
            jobs.append(job)
        spec = parse_pipeline({"version": 1, "executor": "dask", "scheduler": c.scheduler_address, "jobs": jobs})
        report = run_pipeline(spec, fail_fast=True)
    statuses = {j.name: j.status for j in report.jobs}
    assert statuses["rejected"] == "failed" and report.exit_code == 1
    skipped = [name for name, status in statuses.items() if status == "skipped"]
    assert skipped, statuses  # the 4 worker threads were busy when the failure came: later jobs never started
    for j in report.jobs[1:]:
        assert (tmp_path / f"{j.name}.kmz").exists() == (j.status == "ok"), j
        if j.status == "ok":
            _check_kmz(tmp_path / f"{j.name}.kmz", "points", 250)
    assert [j.name for j in report.jobs] == [j["name"] for j in jobs]


def test_sync_jobs_stay_refused_and_single_file_sinks_are_accepted_with_executor_dask(tmp_path: Path) -> None:
    from ags_etl.errors import PipelineFileError

    job: dict[str, Any] = {
        "name": "roads",
        "source": {"url": "http://127.0.0.1:9/arcgis/rest/services/roads/FeatureServer/0"},
        "sink": {"type": "geojson", "path": str(tmp_path / "roads.geojson")},
    }
    assert parse_pipeline({"version": 1, "executor": "dask", "jobs": [job]}).jobs[0].executor == "dask"
    with pytest.raises(PipelineFileError) as caught:
        parse_pipeline({"version": 1, "executor": "dask", "jobs": [{**job, "sync": {"cursor_field": "EDITED"}}]})
    assert "job 'roads': executor:" in str(caught.value) and "sync jobs" in str(caught.value)
    assert "executor threads" in str(caught.value)


def _token(base: str) -> str:
    body = urllib.parse.urlencode({"username": USER, "password": PASSWORD, "client": "requestip", "f": "json"})
    with urllib.request.urlopen(f"{base}/arcgis/tokens/generateToken", data=body.encode()) as answer:
        return str(json.loads(answer.read())["token"])


def test_secrets_of_whole_jobs_never_reach_the_workers_output(data_dir: Path, tmp_path: Path) -> None:
    """``ags-etl run`` starts its own local cluster: the worker processes write to the same stderr,
    with Dask's debug logging on; neither the password nor a token shows anywhere."""
    with _server(data_dir, token_user=USER, token_password=PASSWORD) as base:
        token = _token(base)
        by_password = {"username": "${ETL_USER}", "password": "${ETL_PASSWORD}"}
        jobs = [
            _job(base, "pts_json", tmp_path, auth=by_password),
            _job(base, "pts_kmz", tmp_path, auth={"token": "${ETL_TOKEN}"}),
            {**_job(base, "rejected", tmp_path, layer="pts_json", where="NAME ==== 'x'", auth={"token": "${ETL_TOKEN}"}),
             "sink": {"type": "geojson", "path": str(tmp_path / "rejected.geojson")}},
        ]
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(json.dumps({"version": 1, "executor": "dask", "jobs": jobs}))
        env = {
            **os.environ, "ETL_USER": USER, "ETL_PASSWORD": PASSWORD, "ETL_TOKEN": token,
            "DASK_SCHEDULER_ADDRESS": "", "DASK_LOGGING__DISTRIBUTED": "debug",
        }
        proc = subprocess.run(
            [sys.executable, "-c", "from ags_etl.cli import main; main()", "-vv", "run", str(pipeline),
             "--report", str(tmp_path / "report.json")],
            check=False, capture_output=True, text=True, timeout=120, env=env,
        )
    output = proc.stdout + proc.stderr + (tmp_path / "report.json").read_text()
    assert proc.returncode == 1, proc.stderr
    assert "distributed.worker" in output or "distributed.nanny" in output  # the workers' logs are in it
    assert "rejected" in output and "NAME ==== 'x'" in output
    assert PASSWORD not in output and token not in output
    assert not re.search(r"(?i)token=(?!<redacted>)\w", output)
    _check_geojson(tmp_path / "pts.geojson", "points", 300)
    _check_kmz(tmp_path / "pts.kmz", "points", 250)


def test_an_interrupted_run_stops_its_whole_jobs_on_the_workers_and_nothing_is_committed(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, _ = cluster
    with _server(data_dir, latency_ms=60) as base:  # 60 pages of 40, one at a time: about 4 s in all
        job = {
            "name": "big",
            "source": {"url": f"{base}/arcgis/rest/services/big/FeatureServer/0", "concurrency": 1, "page_size": 40},
            "sink": {"type": "geojson", "path": str(tmp_path / "big.geojson")},
        }
        run = PipelineRun(parse_pipeline({"version": 1, "executor": "dask", "scheduler": c.scheduler_address,
                                          "jobs": [job]}))

        def interrupt_when_pages_flow() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and _stats(base)["requests"] < 8:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C on the driver

        watcher = threading.Thread(target=interrupt_when_pages_flow)
        watcher.start()
        with pytest.raises(KeyboardInterrupt):
            run.run()
        watcher.join()
        stopped_at = _stats(base)["requests"]
        deadline = time.monotonic() + 15  # the worker looks at the stop event once a second
        while time.monotonic() < deadline and list(tmp_path.glob(".big*")):
            time.sleep(0.1)
        later = _stats(base)["requests"]
    assert run.report.interrupted
    assert [(j.name, j.status) for j in run.report.jobs] == [("big", "failed")]
    assert "told to stop" in (run.report.jobs[0].error or "")
    assert list(tmp_path.iterdir()) == []  # no output, and the worker removed its temp file
    assert later < BIG // 40, (stopped_at, later)  # it gave up well before its last page
