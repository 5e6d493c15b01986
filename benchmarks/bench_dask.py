"""Features per second of a pipeline of point layers: threads vs Dask on 1 and 2 workers.

Serves ``--layers`` generated GeoParquet layers of ``--n`` points each with ``ags-etl serve``
(its own process, 1000 rows a page), then runs one pipeline reading every layer into a
partitioned GeoParquet dataset (``--sink dataset``: page tasks on the workers), or into one
GeoParquet file per layer (``--sink file``: each job one whole-job task on a worker), three ways:

* ``threads``: the default executor, each job with ``concurrency`` 4 in this process;
* ``dask 1 worker``: a LocalCluster of one worker process with 4 threads;
* ``dask 2 workers``: a LocalCluster of two worker processes with 2 threads each.

Run (the default is 10 layers × 200,000 points; a few minutes on 2 cores):

    .venv/bin/python benchmarks/bench_dask.py
    .venv/bin/python benchmarks/bench_dask.py --layers 3 --n 20000   # quick
    .venv/bin/python benchmarks/bench_dask.py --sink file             # whole-job tasks
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import distributed
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS

from ags_etl.config import parse_pipeline
from ags_etl.runner import run_pipeline
from ags_etl.server.testing import run_server


def make_layer(path: Path, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    geoms = shapely.points(rng.uniform(-123.0, -121.0, n), rng.uniform(37.0, 39.0, n))
    table = pa.table({
        "OBJECTID": pa.array(np.arange(1, n + 1), pa.int64()),
        "NAME": pa.array([f"feature {i}" for i in range(n)]),
        "CATEGORY": pa.array(rng.integers(0, 20, n).astype(np.int32)),
        "VALUE": pa.array(rng.normal(size=n)),
        "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
    })
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"], "crs": CRS.from_epsg(4326).to_json_dict()}},
    }
    pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), path)


def pipeline(base: str, names: list[str], out: Path, sink: str = "dataset", **top: Any) -> dict[str, Any]:
    return {
        "version": 1,
        **top,
        "jobs": [
            {
                "name": name,
                "source": {"url": f"{base}/arcgis/rest/services/{name}/FeatureServer/0", "concurrency": 4},
                "sink": {
                    "type": "geoparquet",
                    "path": f"{out}/{name}/" if sink == "dataset" else f"{out}/{name}.parquet",
                    "overwrite": True,
                },
            }
            for name in names
        ],
    }


def timed(spec: dict[str, Any], total: int) -> float:
    for job in spec["jobs"]:
        Path(job["sink"]["path"]).parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = run_pipeline(parse_pipeline(spec))
    seconds = time.perf_counter() - start
    bad = [(j.name, j.error) for j in report.jobs if j.status != "ok" or j.written is None]
    if bad or sum(j.written or 0 for j in report.jobs) != total:
        raise SystemExit(f"run failed: {bad}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=10)
    parser.add_argument("--n", type=int, default=200_000)
    parser.add_argument("--sink", choices=("dataset", "file"), default="dataset",
                        help="a partitioned dataset per layer (page tasks) or one file per layer (whole-job tasks)")
    args = parser.parse_args()
    total = args.layers * args.n
    with tempfile.TemporaryDirectory(prefix="bench-dask.") as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "out"
        data.mkdir()
        out.mkdir()
        names = [f"points{i}" for i in range(args.layers)]
        for i, name in enumerate(names):
            make_layer(data / f"{name}.parquet", args.n, seed=i)
        print(f"{args.layers} layers x {args.n:,} points = {total:,} features, 1000 per page, sink {args.sink}")
        with run_server(data, "--max-record-count", "1000", timeout=600) as base:
            rows = []
            seconds = timed(pipeline(base, names, out / "threads", args.sink), total)
            rows.append(("threads (concurrency 4)", seconds))
            for workers, threads in ((1, 4), (2, 2)):
                with distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=threads, processes=True, host="127.0.0.1", dashboard_address=":0"
                ) as cluster:
                    spec = pipeline(
                        base, names, out / f"dask{workers}", args.sink, executor="dask", scheduler=cluster.scheduler_address
                    )
                    seconds = timed(spec, total)
                rows.append((f"dask, {workers} worker(s) x {threads} threads", seconds))
        for label, seconds in rows:
            print(f"{label:32s} {seconds:7.1f} s  {total / seconds:10,.0f} features/s")


if __name__ == "__main__":
    main()
