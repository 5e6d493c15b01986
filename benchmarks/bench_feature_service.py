"""feature_service loader throughput: upsert generated points into `ags-etl serve --editable`.

Two servers with ``--latency-ms 20`` (every request sleeps 20 ms first): a read-only source
serving N points (EPSG:4326, GeoParquet) and an editable target of the same schema holding one
other feature. Run:

    .venv/bin/python benchmarks/bench_feature_service.py             # 50,000 points
    .venv/bin/python benchmarks/bench_feature_service.py --n 5000    # a quick run

Prints, for each phase, the seconds, the edits sent, edits per second and the requests each
server received (from its access log):

* ``upsert``: the first upsert into the target (N adds); goal ≥ 5,000 edits/s;
* ``idle sync``: the same upsert again — the target already holds everything, so 0 edits are
  expected; what it costs is reading both layers (seconds, requests).

Peak memory is this process's maximum resident set size (source, target index and edits).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pyproj import CRS
from serve_bench import make_parquet  # sibling script: run this file from anywhere

from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.loaders.feature_service import FeatureServiceLoader
from ags_etl.pipeline import Pipeline
from ags_etl.server.testing import run_server


def make_target(path: Path) -> None:
    """One feature with the source's schema; its NAME as long as any source NAME can be."""
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {"geometry": {"encoding": "WKB", "geometry_types": ["Point"], "crs": CRS.from_epsg(4326).to_json_dict()}},
    }
    table = pa.table(
        {
            "OBJECTID": pa.array([1], pa.int64()),
            "NAME": pa.array(["seed feature, not in the source"]),
            "CATEGORY": pa.array([0], pa.int32()),
            "VALUE": pa.array([0.5]),
            "CREATED": pa.array([1_600_000_000_000], pa.timestamp("ms")),
            "geometry": pa.array([shapely.to_wkb(shapely.Point(0, 0))], pa.binary()),
        }
    )
    pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), path)


def requests_in(log: Path) -> int:
    return sum(1 for line in log.read_text().splitlines() if '"GET ' in line or '"POST ' in line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--latency-ms", type=int, default=20)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        (d / "src").mkdir()
        (d / "tgt").mkdir()
        make_parquet(d / "src" / "points.parquet", args.n)
        make_target(d / "tgt" / "target.parquet")
        latency = ("--latency-ms", str(args.latency_ms))
        src_log, tgt_log = d / "src.log", d / "tgt.log"
        with (
            run_server(d / "src", *latency, "--max-record-count", "2000", log_path=src_log) as src,
            run_server(d / "tgt", *latency, "--max-record-count", "2000", "--editable", "--store", str(d / "store"),
                       log_path=tgt_log) as tgt,
        ):
            source = f"{src}/arcgis/rest/services/points/FeatureServer/0"
            target = f"{tgt}/arcgis/rest/services/target/FeatureServer/0"
            print(f"{args.n:,} points, {args.latency_ms} ms latency per request")
            for phase in ("upsert", "idle sync"):
                before = requests_in(src_log), requests_in(tgt_log)
                loader = FeatureServiceLoader(target, mode="upsert", key="NAME")
                start = time.perf_counter()
                result = Pipeline(FeatureLayerExtractor(source, concurrency=4), [], loader).run()
                seconds = time.perf_counter() - start
                time.sleep(0.5)  # the servers log each request after answering it
                stats = result.load
                edits = stats.added + stats.updated + stats.deleted  # type: ignore[attr-defined]
                src_requests = requests_in(src_log) - before[0]
                tgt_requests = requests_in(tgt_log) - before[1]
                print(
                    f"{phase:9s}: {seconds:6.2f} s, {edits:,} edits ({edits / seconds:,.0f} edits/s), "
                    f"{stats.unchanged:,} unchanged, {stats.requests} applyEdits; "  # type: ignore[attr-defined]
                    f"requests: source {src_requests}, target {tgt_requests}"
                )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MB")


if __name__ == "__main__":
    main()
