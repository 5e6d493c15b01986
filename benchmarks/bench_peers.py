"""ags-etl against peer tools on the same local server: time, and features actually received.

Peers: GDAL's ESRIJSON driver (through pyogrio, with ``orderByFields`` added as GDAL's docs
ask) and pyesridump's ``esri2geojson`` (``pip install esridump``; skipped when absent).
Each tool runs as its own process and writes GeoJSON; the output is read back with pyogrio
and its distinct OBJECTIDs are counted. Server modes: a modern layer with 20 ms latency, and
the same layer behaving like a 10.0 server (``--no-pagination``: resultOffset ignored).

    .venv/bin/python benchmarks/bench_peers.py [--n 50000]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyogrio

from ags_etl.server.testing import run_server
from serve_bench import make_parquet  # sibling script: run this file from anywhere


def run(cmd: list[str], out: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return seconds, f"exit {proc.returncode}: {last[:90]}"
    if not out.exists():
        return seconds, "no output"
    df = pyogrio.read_dataframe(out, columns=["OBJECTID"], read_geometry=False)
    return seconds, f"{len(df)} rows, {df['OBJECTID'].nunique()} distinct"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    args = ap.parse_args()
    esri2geojson = shutil.which("esri2geojson") or str(Path(sys.executable).parent / "esri2geojson")
    have_esridump = Path(esri2geojson).exists()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        data = d / "data"
        data.mkdir()
        make_parquet(data / "points.parquet", args.n)
        print(f"layer: {args.n} points, maxRecordCount 1000, server latency 20 ms")
        for mode, flags in (("modern (10.81-like)", []), ("no pagination (10.0-like)", ["--no-pagination"])):
            with run_server(data, "--latency-ms", "20", *flags) as base:
                url = f"{base}/arcgis/rest/services/points/FeatureServer/0"
                print(f"\n{mode}:")
                cases = {
                    "ags-etl pull --concurrency 8": (
                        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url, "-o",
                         "{out}", "--concurrency", "8", "-q"]),
                    "ags-etl pull --concurrency 1": (
                        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url, "-o",
                         "{out}", "--concurrency", "1", "-q"]),
                    "GDAL ESRIJSON (pyogrio)": (
                        [sys.executable, "-c",
                         "import sys, pyogrio; df = pyogrio.read_dataframe('ESRIJSON:' + sys.argv[1]); "
                         "pyogrio.write_dataframe(df, sys.argv[2])",
                         f"{url}/query?where=1%3D1&outFields=*&orderByFields=OBJECTID&f=json", "{out}"]),
                }
                if have_esridump:
                    cases["pyesridump esri2geojson 1.13"] = [esri2geojson, url, "{out}"]
                for i, (name, cmd) in enumerate(cases.items()):
                    out = d / f"out_{len(flags)}_{i}.geojson"
                    seconds, got = run([c.replace("{out}", str(out)) for c in cmd], out)
                    print(f"  {name:<30} {seconds:6.1f} s  {args.n / seconds:>8.0f} features/s  {got}")
        if not have_esridump:
            print("\n(pyesridump not installed: `pip install esridump` to include it)")


if __name__ == "__main__":
    main()
