"""executor: dask — page tasks on a real Dask cluster (scheduler and workers in their own
processes on 127.0.0.1), parts written by the workers, duplicates and completeness on the driver.

Skipped only when ``distributed`` is not importable (the ``test`` extra installs it).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely

from ags_etl.config import parse_pipeline
from ags_etl.runner import run_pipeline
from ags_etl.server.app import serve_in_thread
from ags_etl.server.options import ServerOptions
from tests.layers import expected_rows, write_layer

distributed = pytest.importorskip("distributed")

pa_dataset = pytest.importorskip("pyarrow.dataset")

from ags_etl.extractors.dask_executor import tasks_run

#: The big layer: 2,400 points at 100 per page, so at least 24 page tasks.
BIG = 2400
PAGE = 100
LAYERS = {"big": ("points", BIG), "shapes": ("polygons", 60), "plain": ("table", 40)}


def _cluster() -> Any:
    """A scheduler and two worker processes (2 threads each), all on loopback."""
    return distributed.LocalCluster(
        n_workers=2, threads_per_worker=2, processes=True, host="127.0.0.1", dashboard_address=":0"
    )


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("dask-layers")
    for name, (kind, n) in LAYERS.items():
        write_layer(folder / f"{name}.geojson", kind, n)
    return folder


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[Any, Any]]:
    with _cluster() as c, distributed.Client(c) as client:
        yield c, client


def _server(data_dir: Path, latency_ms: int = 0) -> Any:
    return serve_in_thread(data_dir, ServerOptions(port=0, max_record_count=PAGE, latency_ms=latency_ms))


def _stats(base: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/ags-etl/stats") as answer:
        stats: dict[str, int] = json.loads(answer.read())
    return stats


def _pipeline(base: str, out: Path, *, names: tuple[str, ...] = tuple(LAYERS), **top: Any) -> dict[str, Any]:
    jobs = []
    for name in names:
        job: dict[str, Any] = {
            "name": name,
            "source": {"url": f"{base}/arcgis/rest/services/{name}/FeatureServer/0", "concurrency": 2},
            "sink": {"type": "geoparquet", "path": f"{out}/{name}/", "overwrite": True},
        }
        if name == "shapes":  # a transform, run on the workers
            job["transforms"] = [{"type": "fields", "rename": {"NAME": "LABEL"}}]
        jobs.append(job)
    return {"version": 1, **top, "jobs": jobs}


def _check_output(folder: Path, kind: str, n: int, name_column: str = "NAME") -> None:
    """The dataset holds every source feature once, attributes and geometry exact."""
    rows = pa_dataset.dataset(folder, format="parquet").to_table().to_pylist()
    oids = [r["OBJECTID"] for r in rows]
    assert len(oids) == len(set(oids)) == n
    expected = expected_rows(kind, n)
    assert set(oids) == set(expected)
    for row in rows:
        want = expected[row["OBJECTID"]]
        assert row[name_column] == want["NAME"]
        assert row["COUNT"] == want["COUNT"]
        assert row["VALUE"] == want["VALUE"]
        if kind != "table":
            got = None if row["geometry"] is None else shapely.from_wkb(row["geometry"])
            if want["geometry"] is None:
                assert got is None
            else:
                assert got is not None
                assert shapely.equals_exact(shapely.normalize(got), shapely.normalize(want["geometry"]), 1e-9)
    manifest = json.loads((folder / "_manifest.json").read_text())
    assert manifest["rows"] == n
    assert sorted(p["path"] for p in manifest["parts"]) == sorted(p.name for p in folder.glob("part-*.parquet"))


def _task_counts(client: Any) -> dict[str, int]:
    counts: dict[str, int] = client.run(tasks_run)
    return counts


def test_pipeline_runs_on_both_workers_and_every_output_is_exact(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, client = cluster
    before = _task_counts(client)
    with _server(data_dir) as base:
        spec = parse_pipeline(_pipeline(base, tmp_path, executor="dask", scheduler=c.scheduler_address))
        report = run_pipeline(spec)
    assert [(j.name, j.status, j.written) for j in report.jobs] == [
        ("big", "ok", BIG), ("shapes", "ok", 60), ("plain", "ok", 40)
    ], [j.error for j in report.jobs]
    assert report.jobs[0].pages is not None and report.jobs[0].pages >= BIG // PAGE
    _check_output(tmp_path / "big", "points", BIG)
    _check_output(tmp_path / "shapes", "polygons", 60, name_column="LABEL")
    _check_output(tmp_path / "plain", "table", 40)
    # Each part is one page task's rows, named after the task: many parts for the big layer.
    assert len(list((tmp_path / "big").glob("part-p*.parquet"))) >= BIG // PAGE
    after = _task_counts(client)
    ran = {worker: after[worker] - before.get(worker, 0) for worker in after}
    assert len(ran) == 2 and all(n > 0 for n in ran.values()), ran
    assert sum(ran.values()) >= BIG // PAGE


def test_at_most_n_requests_per_host_across_the_cluster(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, _ = cluster
    (tmp_path / "free").mkdir()
    (tmp_path / "polite").mkdir()
    # Without a limit, four worker threads and eight tasks in flight overlap on a slow server.
    with _server(data_dir, latency_ms=40) as base:
        spec = parse_pipeline(_pipeline(base, tmp_path / "free", names=("big",), executor="dask",
                                        scheduler=c.scheduler_address))
        free = run_pipeline(spec)
        assert free.exit_code == 0, [j.error for j in free.jobs]
        assert _stats(base)["max_in_flight"] > 2
    with _server(data_dir, latency_ms=40) as base:
        spec = parse_pipeline(_pipeline(base, tmp_path / "polite", names=("big",), executor="dask",
                                        scheduler=c.scheduler_address, max_requests_per_host=2))
        report = run_pipeline(spec)
        stats = _stats(base)
    assert report.exit_code == 0, [j.error for j in report.jobs]
    assert stats["max_in_flight"] <= 2, stats
    _check_output(tmp_path / "polite" / "big", "points", BIG)


def test_a_worker_killed_mid_run_costs_only_its_tasks(data_dir: Path, tmp_path: Path) -> None:
    with _cluster() as c, distributed.Client(c) as client, _server(data_dir, latency_ms=30) as base:
        pids = client.run(os.getpid)
        victim = min(pids.values())
        killed_at: list[int] = []

        def kill_when_pages_flow() -> None:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                done = _stats(base)["requests"]
                if done >= 12:  # metadata and probes are done; pages are being read
                    os.kill(victim, signal.SIGKILL)
                    killed_at.append(done)
                    return
                time.sleep(0.01)

        watcher = threading.Thread(target=kill_when_pages_flow)
        watcher.start()
        spec = parse_pipeline(_pipeline(base, tmp_path, names=("big",), executor="dask",
                                        scheduler=c.scheduler_address))
        report = run_pipeline(spec)
        watcher.join()
        total = _stats(base)["requests"]
    assert killed_at and killed_at[0] < total, (killed_at, total)  # the kill came while pages were read
    assert report.exit_code == 0, [j.error for j in report.jobs]
    assert report.jobs[0].written == BIG
    _check_output(tmp_path / "big", "points", BIG)


def _ags(*args: str, env: dict[str, str] | None = None, hide_distributed: bool = False) -> subprocess.CompletedProcess[str]:
    prelude = "import sys; sys.modules['distributed'] = None; " if hide_distributed else ""
    return subprocess.run(
        [sys.executable, "-c", prelude + "from ags_etl.cli import main; main()", *args],
        check=False, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})},
    )


def test_run_on_the_cluster_named_by_dask_scheduler_address(
    data_dir: Path, cluster: tuple[Any, Any], tmp_path: Path
) -> None:
    c, client = cluster
    before = sum(_task_counts(client).values())
    with _server(data_dir) as base:
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(json.dumps(_pipeline(base, tmp_path / "out", names=("big", "plain"))))
        (tmp_path / "out").mkdir()
        proc = _ags("run", str(pipeline), "--executor", "dask", "--quiet",
                    env={"DASK_SCHEDULER_ADDRESS": c.scheduler_address})
    assert proc.returncode == 0, proc.stderr
    assert sum(_task_counts(client).values()) - before >= BIG // PAGE  # the pages ran on this cluster
    _check_output(tmp_path / "out" / "big", "points", BIG)
    _check_output(tmp_path / "out" / "plain", "table", 40)


def test_pull_without_a_scheduler_starts_and_stops_a_local_cluster(data_dir: Path, tmp_path: Path) -> None:
    env = {"DASK_SCHEDULER_ADDRESS": ""}
    with _server(data_dir) as base:
        proc = _ags("pull", f"{base}/arcgis/rest/services/big/FeatureServer/0", "-o", f"{tmp_path}/big/",
                    "--executor", "dask", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {BIG} features" in proc.stderr
    _check_output(tmp_path / "big", "points", BIG)


def test_executor_dask_without_the_extra_is_one_clear_error(data_dir: Path, tmp_path: Path) -> None:
    with _server(data_dir) as base:
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(json.dumps(_pipeline(base, tmp_path, names=("plain",), executor="dask")))
        proc = _ags("run", str(pipeline), "--quiet", hide_distributed=True)
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ags-etl: error:")]
    assert len(errors) == 1, proc.stderr
    assert "pip install 'ags_etl[dask]'" in errors[0] and "executor threads" in errors[0]
    assert not (tmp_path / "plain").exists()
