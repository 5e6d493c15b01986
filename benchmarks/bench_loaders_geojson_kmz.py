"""Write throughput and memory of the GeoJSON, GeoJSONL and KMZ loaders.

Data: ``--n`` points (default 200,000, batches of 5,000) and ``--n / 10`` polygons
(default 20,000, batches of 1,000) of 49 distinct vertices (50 with the closing one),
six attribute columns (OBJECTID, NAME, CATEGORY int32, VALUE double, CREATED date,
STATUS string), EPSG:4326. Run:

    .venv/bin/python benchmarks/bench_loaders_geojson_kmz.py           # full size
    .venv/bin/python benchmarks/bench_loaders_geojson_kmz.py --n 20000 # smoke run
    .venv/bin/python benchmarks/bench_loaders_geojson_kmz.py --only kmz --kmz-compresslevel 6

Method: every case (format × geometry) runs in its own Python process. Batches are
generated lazily, one at a time, from a per-batch seed, so the input never exists as a
whole; the clock covers only the loader (``open``, every ``write``, closing and the
rename), not the generation. Memory is the child's ``ru_maxrss`` (peak resident set
size, KiB on Linux) printed twice: the peak itself and its growth over the resident
size measured right before the loader opened (imports and one generated batch already
in). A flat-memory writer shows a growth of a few batches, whatever ``--n`` is.
Numbers are medians of ``--repeat`` runs (default 3), each in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.registry import load
from ags_etl.schema import Field, LayerSchema

CASES = [
    ("geojson", "points"),
    ("geojson", "polygons"),
    ("geojsonl", "points"),
    ("geojsonl", "polygons"),
    ("kmz", "points"),
    ("kmz", "polygons"),
]
SUFFIX = {"geojson": ".geojson", "geojsonl": ".geojsonl", "kmz": ".kmz"}
TARGETS = {("geojson", "points"): 200_000, ("kmz", "points"): 50_000}
STATUS = np.array(["open", "closed", "planned", "retired & <gone>"], dtype=object)


def schema(kind: str) -> LayerSchema:
    return LayerSchema(
        fields=(
            Field("OBJECTID", "esriFieldTypeOID"),
            Field("NAME", "esriFieldTypeString", length=50),
            Field("CATEGORY", "esriFieldTypeInteger"),
            Field("VALUE", "esriFieldTypeDouble"),
            Field("CREATED", "esriFieldTypeDate"),
            Field("STATUS", "esriFieldTypeString", length=20),
        ),
        oid_field="OBJECTID",
        geometry_type="esriGeometryPoint" if kind == "points" else "esriGeometryPolygon",
        crs=CRS.from_epsg(4326),
        name=f"bench_{kind}",
    )


def make_batch(kind: str, start: int, size: int) -> FeatureBatch:
    rng = np.random.default_rng(start)
    oids = np.arange(start + 1, start + size + 1)
    x = rng.uniform(-179.0, 179.0, size)
    y = rng.uniform(-85.0, 85.0, size)
    if kind == "points":
        geoms = shapely.points(x, y)
    else:
        angles = np.linspace(0.0, 2 * np.pi, 50)[:-1]  # counter-clockwise: Esri order is the opposite
        radii = 0.05 * rng.uniform(0.6, 1.0, (size, 49))
        ring = np.stack([x[:, None] + radii * np.cos(-angles), y[:, None] + radii * np.sin(-angles)], axis=-1)
        ring = np.concatenate([ring, ring[:, :1]], axis=1)
        geoms = shapely.polygons(ring)
    table = pa.Table.from_arrays(
        [
            pa.array(oids, pa.int64()),
            pa.array([f"feature {i}" for i in oids.tolist()], pa.string()),
            pa.array(rng.integers(0, 20, size).astype(np.int32)),
            pa.array(rng.normal(size=size)),
            pa.array(-10**12 + rng.integers(0, 2 * 10**12, size), pa.timestamp("ms", tz="UTC")),
            pa.array(STATUS[rng.integers(0, len(STATUS), size)].tolist(), pa.string()),
        ],
        schema=schema(kind).arrow_schema(),
    )
    return FeatureBatch(table, np.asarray(geoms, dtype=object), CRS.from_epsg(4326))


def batches(kind: str, n: int, size: int) -> Iterator[FeatureBatch]:
    for start in range(0, n, size):
        yield make_batch(kind, start, min(size, n - start))


def maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def current_rss_kib() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def child(fmt: str, kind: str, n: int, out_dir: str, kmz_level: int) -> None:
    loader_cls = load("loaders", fmt)
    size = 5000 if kind == "points" else 1000
    target = Path(out_dir) / f"{fmt}_{kind}{SUFFIX[fmt]}"
    make_batch(kind, 0, size)  # warm-up: imports, allocator pools
    base = current_rss_kib()
    spent = 0.0
    options = {"compresslevel": kmz_level} if fmt == "kmz" else {}
    loader = loader_cls(target, overwrite=True, **options)
    s = schema(kind)
    t0 = time.perf_counter()
    with loader.open(s) as writer:
        spent += time.perf_counter() - t0
        for batch in batches(kind, n, size):
            t1 = time.perf_counter()
            writer.write(batch)
            spent += time.perf_counter() - t1
        t0 = time.perf_counter()
    spent += time.perf_counter() - t0
    peak = maxrss_kib()
    print(json.dumps({"seconds": spent, "bytes": target.stat().st_size, "peak_kib": peak, "growth_kib": peak - base}))


def run_case(fmt: str, kind: str, n: int, repeat: int, kmz_level: int) -> dict[str, float]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeat):
            out = subprocess.run(
                [sys.executable, __file__, "--child", fmt, kind, "--n", str(n), "--out", tmp, "--kmz-compresslevel", str(kmz_level)],
                check=True,
                capture_output=True,
                text=True,
            )
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="points to write (polygons: n / 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per case (median printed)")
    parser.add_argument("--only", default=None, help="run only cases whose 'format/geometry' contains this")
    parser.add_argument("--kmz-compresslevel", type=int, default=1, help="KMZ deflate level (loader default 1)")
    parser.add_argument("--child", nargs=2, metavar=("FORMAT", "KIND"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        fmt, kind = args.child
        child(fmt, kind, args.n, args.out, args.kmz_compresslevel)
        return

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, shapely {shapely.__version__}, pyarrow {pa.__version__}")
    print(f"{'case':<20} {'features':>9} {'features/s':>11} {'MB out':>8} {'peak RSS MB':>12} {'growth MB':>10}  target")
    for fmt, kind in CASES:
        if args.only and args.only not in f"{fmt}/{kind}":
            continue
        count = args.n if kind == "points" else max(1, args.n // 10)
        r = run_case(fmt, kind, count, args.repeat, args.kmz_compresslevel)
        rate = count / r["seconds"]
        target = TARGETS.get((fmt, kind))
        verdict = "" if target is None else f"{target:,}/s {'met' if rate >= target else 'MISSED'}"
        print(
            f"{fmt + '/' + kind:<20} {count:>9,} {rate:>11,.0f} {r['bytes'] / 1e6:>8.1f} "
            f"{r['peak_kib'] / 1024:>12.1f} {r['growth_kib'] / 1024:>10.1f}  {verdict}"
        )


if __name__ == "__main__":
    main()
