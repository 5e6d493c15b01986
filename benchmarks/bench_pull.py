"""Pull throughput: a generated point layer served by `ags-etl serve --latency-ms 20`.

Each pull runs in its own process (`ags-etl pull`), so the peak memory printed is that
process's own maximum resident set size (ru_maxrss of the child). Run:

    .venv/bin/python benchmarks/bench_pull.py            # 200,000 points, concurrency 1 and 8
    .venv/bin/python benchmarks/bench_pull.py --n 20000  # a quick run

Also pulls a quarter of the layer (where OBJECTID <= n/4) to show that memory does not
grow with the number of features.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

from ags_etl.server.testing import run_server
from serve_bench import make_parquet  # sibling script: run this file from anywhere


def pull(url: str, out: Path, concurrency: int, where: str | None) -> tuple[float, int, float]:
    code = (
        "import resource, sys\n"
        "from ags_etl.cli import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code or 0\nelse:\n    rc = 0\n"
        "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
        "sys.exit(rc)\n"
    )
    args = [sys.executable, "-c", code, "pull", url, "-o", str(out), "--overwrite", "--concurrency", str(concurrency)]
    if where is not None:
        args += ["--where", where]
    start = time.perf_counter()
    proc = subprocess.run(args, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"pull failed: {proc.stderr}")
    rss_kb = int(next(line.split()[1] for line in proc.stderr.splitlines() if line.startswith("MAXRSS")))
    rows = pq.ParquetFile(out).metadata.num_rows if out.suffix == ".parquet" else -1
    return seconds, rows, rss_kb / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--format", default="parquet", choices=["parquet", "geojson"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data = d / "data"
        data.mkdir()
        make_parquet(data / "points.parquet", args.n)
        print(f"layer: {args.n} points; server --latency-ms {args.latency_ms}, maxRecordCount 1000; "
              f"output .{args.format}; machine: {os.cpu_count()} cores")
        with run_server(data, "--latency-ms", str(args.latency_ms)) as base:
            url = f"{base}/arcgis/rest/services/points/FeatureServer/0"
            for concurrency in (1, 8):
                for label, where in (("all", None), ("quarter", f"OBJECTID <= {args.n // 4}")):
                    out = d / f"out_{concurrency}_{label}.{args.format}"
                    seconds, rows, rss = pull(url, out, concurrency, where)
                    n = args.n if where is None else args.n // 4
                    print(f"concurrency {concurrency:>2} {label:>7}: {n:>7} features in {seconds:6.1f} s = "
                          f"{n / seconds:>8.0f} features/s, peak RSS {rss:6.0f} MB (rows written {rows})")


if __name__ == "__main__":
    main()
