"""Throughput and memory of the shapefile and GeoParquet loaders.

Cases: 200,000 points and 20,000 polygons of 49 vertices (``buffer(quad_segs=12)``), six
attribute columns (OID, two strings, an integer, a double, a date), in batches of 5,000,
written by each loader. Every case runs in its own process:

* **time**: wall-clock of ``open()`` + every ``write()`` + closing (the rename onto the
  target included); building the input is not timed. Each case runs ``--repeat`` times
  (default 3, each in a fresh process) and the median is printed, with the CPU time
  (user + sys) rate beside it: on a shared 2-core machine the wall-clock rate drops
  when other processes compete, the CPU rate much less.
* **memory**: the child's peak resident set size (``ru_maxrss``) after writing, and its
  growth over the peak before writing (imports and the input already in memory). The
  input is a pool of four distinct batches written round-robin (OIDs repeat; loaders do
  not care), so the input's memory does not grow with N either.
* Each case runs at N and N/4: if a loader's memory grew with the number of features,
  the growth at N would be about 4× that at N/4. GeoParquet buffers up to one row group
  (65,536 rows by default) before writing, so below that size its memory grows with N by
  design; ``--row-group-size`` lowers the bound to show it flat at small N.

Targets (2 cores): GeoParquet 500,000 points/s, shapefile 30,000 points/s.

    .venv/bin/python benchmarks/bench_loaders_shp_parquet.py            # full run
    .venv/bin/python benchmarks/bench_loaders_shp_parquet.py --n 20000  # smoke run (points; polygons N/10)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 5_000
TARGETS = {("geoparquet", "points"): 500_000, ("shapefile", "points"): 30_000}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _pool(kind: str, n_batches: int = 4) -> tuple[object, list[object]]:
    import numpy as np
    import pyarrow as pa
    import shapely
    from pyproj import CRS

    from ags_etl.batch import FeatureBatch
    from ags_etl.schema import Field, LayerSchema

    crs = CRS.from_epsg(3857)
    fields = (
        Field("OBJECTID", "esriFieldTypeOID"),
        Field("NAME", "esriFieldTypeString", length=40),
        Field("CATEGORY", "esriFieldTypeInteger"),
        Field("VALUE", "esriFieldTypeDouble"),
        Field("CREATED", "esriFieldTypeDate"),
        Field("CODE", "esriFieldTypeString", length=8),
    )
    geometry_type = "esriGeometryPoint" if kind == "points" else "esriGeometryPolygon"
    schema = LayerSchema(fields, "OBJECTID", geometry_type, crs, name=f"bench_{kind}")
    rng = np.random.default_rng(7)
    batches = []
    for b in range(n_batches):
        oid = np.arange(b * BATCH + 1, (b + 1) * BATCH + 1)
        x = rng.uniform(-13_700_000, -13_500_000, BATCH)
        y = rng.uniform(4_500_000, 4_600_000, BATCH)
        pts = shapely.points(x, y)
        geoms = pts if kind == "points" else shapely.buffer(pts, 150.0, quad_segs=12)
        table = pa.table(
            {
                "OBJECTID": pa.array(oid, pa.int64()),
                "NAME": pa.array([f"feature {i} é" for i in oid]),
                "CATEGORY": pa.array(rng.integers(0, 20, BATCH), pa.int32()),
                "VALUE": pa.array(rng.normal(size=BATCH) * 1000),
                "CREATED": pa.array(
                    (1_600_000_000_000 + rng.integers(0, 10**10, BATCH)), pa.timestamp("ms", tz="UTC")
                ),
                "CODE": pa.array([f"C{i % 997:04d}" for i in oid]),
            },
            schema=schema.arrow_schema(),
        )
        batches.append(FeatureBatch(table, np.asarray(geoms, dtype=object), crs))
    return schema, batches


def child(loader_name: str, kind: str, n: int, out_dir: str, row_group_size: int) -> None:
    """Run one case and print a JSON line."""
    from ags_etl.loaders.geoparquet import GeoParquetLoader
    from ags_etl.loaders.shapefile import ShapefileLoader

    schema, pool = _pool(kind)
    before = _rss_mb()
    if loader_name == "shapefile":
        loader = ShapefileLoader(Path(out_dir) / f"{kind}.shp")
    else:
        loader = GeoParquetLoader(Path(out_dir) / f"{kind}.parquet", row_group_size=row_group_size)
    loader.check(schema)  # type: ignore[arg-type]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    written = 0
    with loader.open(schema) as writer:  # type: ignore[arg-type]
        i = 0
        while written < n:
            batch = pool[i % len(pool)]
            if written + len(batch) > n:  # type: ignore[arg-type]
                batch = batch.take(list(range(n - written)))  # type: ignore[attr-defined]
            writer.write(batch)  # type: ignore[arg-type]
            written += len(batch)  # type: ignore[arg-type]
            i += 1
    seconds = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    size = sum(p.stat().st_size for p in Path(out_dir).iterdir())
    print(json.dumps({"seconds": seconds, "cpu": cpu, "features": writer.stats.features, "rss_before": before,
                      "rss_peak": _rss_mb(), "bytes": size}))


def run_case(loader_name: str, kind: str, n: int, row_group_size: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(
            [sys.executable, __file__, "--child", loader_name, kind, str(n), out, str(row_group_size)],
            capture_output=True, text=True, check=False,
        )
    if proc.returncode != 0:
        raise SystemExit(f"case {loader_name}/{kind}/{n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="points per full case (polygons: n/10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is printed")
    parser.add_argument("--row-group-size", type=int, default=65_536, help="GeoParquet row_group_size")
    parser.add_argument("--child", nargs=5, metavar=("LOADER", "KIND", "N", "DIR", "RGS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        loader_name, kind, n, out, rgs = args.child
        child(loader_name, kind, int(n), out, int(rgs))
        return
    print(f"median of {args.repeat} runs per case, each in its own process; growth = peak RSS while "
          "writing minus peak RSS before")
    print(f"{'loader':<11} {'kind':<9} {'features':>9} {'seconds':>8} {'features/s':>11} {'(range)':>19} "
          f"{'per CPU-s':>10} {'peak RSS MB':>12} {'growth MB':>10} {'output MB':>10}  target")
    for loader_name in ("geoparquet", "shapefile"):
        for kind, full in (("points", args.n), ("polygons", max(args.n // 10, 1))):
            for n in (full, max(full // 4, 1)):
                runs = sorted(
                    (run_case(loader_name, kind, n, args.row_group_size) for _ in range(args.repeat)),
                    key=lambda r: r["features"] / r["seconds"],
                )
                r = runs[len(runs) // 2]
                rates = [x["features"] / x["seconds"] for x in runs]
                rate = rates[len(runs) // 2]
                target = TARGETS.get((loader_name, kind))
                verdict = "" if target is None or n != full else (
                    f"{target:,}/s {'ok' if rate >= target else 'BELOW'}")
                span = f"{rates[0]:,.0f}–{rates[-1]:,.0f}"
                print(f"{loader_name:<11} {kind:<9} {r['features']:>9,} {r['seconds']:>8.2f} {rate:>11,.0f} "
                      f"{span:>19} {r['features'] / max(r['cpu'], 1e-9):>10,.0f} {r['rss_peak']:>12.1f} "
                      f"{r['rss_peak'] - r['rss_before']:>10.1f} {r['bytes'] / 1e6:>10.1f}  {verdict}", flush=True)


if __name__ == "__main__":
    main()
