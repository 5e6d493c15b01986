"""Throughput of the local FeatureServer (`ags-etl serve`) on a generated point layer.

Prints start-up time (GeoParquet and GeoJSON inputs) and the time to page through
the whole layer with plain `requests` threads (offset paging ordered by OID,
1000 rows a page), for f=json and f=geojson, at several concurrencies, with the
server sleeping --latency-ms per request. Run:

    .venv/bin/python benchmarks/serve_bench.py             # 200,000 points
    .venv/bin/python benchmarks/serve_bench.py --n 20000   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import shapely
from pyproj import CRS

from ags_etl.server.testing import run_server

PAGE = 1000


def make_parquet(path: Path, n: int) -> None:
    rng = np.random.default_rng(7)
    geoms = shapely.points(rng.uniform(-123.0, -121.0, n), rng.uniform(37.0, 39.0, n))
    table = pa.table(
        {
            "OBJECTID": pa.array(np.arange(1, n + 1), pa.int64()),
            "NAME": pa.array([f"feature {i}" for i in range(n)]),
            "CATEGORY": pa.array(rng.integers(0, 20, n).astype(np.int32)),
            "VALUE": pa.array(rng.normal(size=n)),
            "CREATED": pa.array((1_600_000_000_000 + rng.integers(0, 10**10, n)).astype("datetime64[ms]")),
            "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
        }
    )
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"], "crs": CRS.from_epsg(4326).to_json_dict()}},
    }
    pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), path)


def make_geojson(parquet: Path, path: Path) -> None:
    table = pq.read_table(parquet)
    geoms = shapely.from_wkb(table.column("geometry").to_numpy(zero_copy_only=False))
    xs, ys = shapely.get_x(geoms).tolist(), shapely.get_y(geoms).tolist()
    attrs = table.drop(["geometry", "CREATED"]).to_pylist()
    feats = [
        {"type": "Feature", "properties": a, "geometry": {"type": "Point", "coordinates": [x, y]}}
        for a, x, y in zip(attrs, xs, ys)
    ]
    path.write_bytes(orjson.dumps({"type": "FeatureCollection", "features": feats}))


def startup(data: Path) -> float:
    start = time.perf_counter()
    with run_server(data):
        return time.perf_counter() - start


def pull(layer: str, n: int, concurrency: int, fmt: str) -> tuple[float, int]:
    local = threading.local()

    def fetch(offset: int) -> int:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = requests.Session()
        params: dict[str, str | int] = {"where": "1=1", "outFields": "*", "orderByFields": "OBJECTID", "resultOffset": offset,
                  "resultRecordCount": PAGE, "f": fmt}
        body = orjson.loads(session.get(layer + "/query", params=params, timeout=120).content)
        return len(body["features"])

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        got = sum(pool.map(fetch, range(0, n, PAGE)))
    return time.perf_counter() - start, got


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--latency-ms", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pq_dir, gj_dir = Path(tmp, "pq"), Path(tmp, "gj")
        pq_dir.mkdir()
        gj_dir.mkdir()
        make_parquet(pq_dir / "points.parquet", args.n)
        make_geojson(pq_dir / "points.parquet", gj_dir / "points.geojson")
        print(f"{args.n} points, {os.cpu_count()} cores")
        print(f"start-up, GeoParquet: {startup(pq_dir):5.1f} s")
        print(f"start-up, GeoJSON:    {startup(gj_dir):5.1f} s")
        for latency in sorted({0, args.latency_ms}):
            with run_server(pq_dir, "--latency-ms", str(latency)) as base:
                layer = f"{base}/arcgis/rest/services/points/FeatureServer/0"
                for fmt in ("json", "geojson"):
                    for concurrency in (1, 8):
                        seconds, got = pull(layer, args.n, concurrency, fmt)
                        assert got == args.n, (got, args.n)
                        print(f"latency {latency:>3} ms  f={fmt:<7} concurrency {concurrency}: {seconds:6.2f} s "
                              f"= {got / seconds:>8.0f} features/s ({args.n // PAGE} pages)")


if __name__ == "__main__":
    main()
