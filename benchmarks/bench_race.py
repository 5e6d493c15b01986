"""Race: `ags-etl pull` against the parse floor (and peers) on one local server, in one run.

The **parse floor** fetches every page of the same plan as the pull (``returnIdsOnly``, then
the ids POSTed in chunks of the page size), at the same concurrency, with ``requests`` and
``orjson.loads`` — and does nothing else. A pull cannot be faster than that; the ratio
``pull / floor`` is what the extraction itself costs on top of the wire and the JSON parse.

Layers, generated and served by ``ags-etl serve --latency-ms 20 --max-record-count 2000``:
points (``--n``, default 200,000) and polygons of 49 vertices (``--polygons``, default 20,000).
Tools, each its own process, run round-robin ``--runs`` times (medians printed, so a machine
that drifts hurts every tool alike):

* ``floor``: this script with ``--floor URL`` (imports requests and orjson only);
* ``ags-etl pull`` to GeoJSON and to GeoParquet;
* ``ogr2ogr`` (GDAL's ESRIJSON driver) and pyesridump's ``esri2geojson`` when installed,
  else GDAL through pyogrio when that is importable (``--no-peers`` leaves them out).

Peak memory is each process's own maximum resident set size (``wait4`` rusage). Run::

    .venv/bin/python benchmarks/bench_race.py                      # the issue's setup
    .venv/bin/python benchmarks/bench_race.py --n 20000 --polygons 2000 --runs 1   # a quick look
    .venv/bin/python benchmarks/bench_race.py --memory             # peak RSS, 100,000 vs 1,000,000 points
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent


def floor(url: str, page: int, concurrency: int) -> None:
    """Fetch every page of the oid-list plan and parse it; print the feature count."""
    import orjson
    import requests

    local = threading.local()

    def session() -> requests.Session:
        s = getattr(local, "session", None)
        if s is None:
            s = local.session = requests.Session()
        return s

    ids = orjson.loads(session().post(url + "/query", data={"where": "1=1", "returnIdsOnly": "true", "f": "json"},
                                      timeout=120).content)["objectIds"]
    ids.sort()
    chunks = [ids[i: i + page] for i in range(0, len(ids), page)]

    def fetch(chunk: list[int]) -> int:
        data = {"where": "1=1", "outFields": "*", "returnGeometry": "true", "objectIds": ",".join(map(str, chunk)),
                "f": "json"}
        return len(orjson.loads(session().post(url + "/query", data=data, timeout=120).content)["features"])

    with ThreadPoolExecutor(concurrency) as pool:
        got = sum(pool.map(fetch, chunks))
    if got != len(ids):
        raise SystemExit(f"floor read {got} features of {len(ids)}")
    print(got)


def make_layers(data: Path, points: int, polygons: int) -> None:
    """``points.parquet`` (the serve_bench layer) and ``polygons.parquet`` (49-vertex circles)."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import shapely
    from pyproj import CRS

    sys.path.insert(0, str(HERE))
    from serve_bench import make_parquet

    make_parquet(data / "points.parquet", points)
    rng = np.random.default_rng(11)
    centres = shapely.points(rng.uniform(-123.0, -121.0, polygons), rng.uniform(37.0, 39.0, polygons))
    geoms = shapely.buffer(centres, 0.002, quad_segs=12)
    table = pa.table({
        "OBJECTID": pa.array(np.arange(1, polygons + 1), pa.int64()),
        "NAME": pa.array([f"parcel {i}" for i in range(polygons)]),
        "AREA": pa.array(shapely.area(geoms)),
        "geometry": pa.array(shapely.to_wkb(geoms), pa.binary()),
    })
    geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {
        "geometry": {"encoding": "WKB", "geometry_types": ["Polygon"], "crs": CRS.from_epsg(4326).to_json_dict()}}}
    pq.write_table(table.replace_schema_metadata({"geo": json.dumps(geo)}), data / "polygons.parquet")


def timed(cmd: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS MB, exit code) of one process; its output is discarded.

    Peak RSS comes from ``/usr/bin/time`` when present: a child forked from this (large)
    process would otherwise count the parent's pages in its own maximum until it execs.
    """
    time_bin = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
    full = [time_bin, "-f", "MAXRSS_KB %M", *cmd] if time_bin is not None else cmd
    start = time.perf_counter()
    proc = subprocess.run(full, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    seconds = time.perf_counter() - start
    err = proc.stderr.decode(errors="replace")
    lines = [line for line in err.splitlines() if line.startswith("MAXRSS_KB ")]
    rss_kb = int(lines[-1].split()[1]) if lines else resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    code = proc.returncode
    if code != 0:
        print(f"    {Path(cmd[0]).name} … exited {code}: {err.strip()[-300:]}")
    return seconds, rss_kb / 1024, code


def tools(url: str, out: Path, page: int, concurrency: int, peers: bool) -> dict[str, Callable[[], list[str]]]:
    py = sys.executable
    pull = [py, "-m", "ags_etl.cli", "pull", url, "--overwrite", "-q", "--concurrency", str(concurrency)]
    found: dict[str, Callable[[], list[str]]] = {
        "parse floor": lambda: [py, str(Path(__file__).resolve()), "--floor", url, "--page", str(page),
                                "--concurrency", str(concurrency)],
        "ags-etl pull → GeoJSON": lambda: [*pull, "-o", str(out / "pull.geojson")],
        "ags-etl pull → GeoParquet": lambda: [*pull, "-o", str(out / "pull.parquet")],
    }
    if not peers:
        return found
    esri = f"ESRIJSON:{url}/query?where=1%3D1&outFields=*&orderByFields=OBJECTID&f=json"
    ogr2ogr = shutil.which("ogr2ogr")
    if ogr2ogr is not None:
        found["ogr2ogr (GDAL ESRIJSON)"] = lambda: [ogr2ogr, "-overwrite", "-f", "GeoJSON", str(out / "ogr.geojson"),
                                                    esri]
    else:
        try:
            import pyogrio  # noqa: F401
        except ImportError:
            pass
        else:
            found["GDAL ESRIJSON via pyogrio"] = lambda: [
                py, "-c", "import sys, pyogrio; pyogrio.write_dataframe(pyogrio.read_dataframe(sys.argv[1]), sys.argv[2])",
                esri, str(out / "pyogrio.geojson")]
    esri2geojson = shutil.which("esri2geojson")
    if esri2geojson is not None:
        found["esri2geojson (pyesridump)"] = lambda: [esri2geojson, url, str(out / "esridump.geojson")]
    return found


def race(data: Path, layer: str, count: int, args: argparse.Namespace) -> None:
    from ags_etl.server.testing import run_server

    with tempfile.TemporaryDirectory() as tmp, run_server(
        data, "--latency-ms", str(args.latency_ms), "--max-record-count", str(args.page)
    ) as base:
        url = f"{base}/arcgis/rest/services/{layer}/FeatureServer/0"
        cases = tools(url, Path(tmp), args.page, args.concurrency, not args.no_peers)
        times: dict[str, list[float]] = {name: [] for name in cases}
        rss: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.runs):
            for name, cmd in cases.items():
                seconds, peak, code = timed(cmd())
                if code == 0:
                    times[name].append(seconds)
                    rss[name].append(peak)
        print(f"\n{layer}: {count:,} features, {args.page} a page, {args.latency_ms} ms a request, concurrency "
              f"{args.concurrency}, {os.cpu_count()} cores, median of {args.runs}")
        print(f"  {'tool':<28} {'seconds':>8} {'× floor':>8} {'features/s':>11} {'peak RSS':>9}")
        base_time = statistics.median(times["parse floor"]) if times["parse floor"] else float("nan")
        for name in cases:
            if not times[name]:
                print(f"  {name:<28} {'failed':>8}")
                continue
            t = statistics.median(times[name])
            print(f"  {name:<28} {t:8.2f} {t / base_time:8.2f} {count / t:11,.0f} {statistics.median(rss[name]):6.0f} MB")


def memory(data_root: Path, args: argparse.Namespace) -> None:
    """Peak RSS of a GeoParquet pull at 100,000 and 1,000,000 points."""
    from ags_etl.server.testing import run_server

    print(f"\npeak RSS of `ags-etl pull` to GeoParquet ({args.page} a page, concurrency {args.concurrency})")
    modules = "ags_etl.cli.pull, ags_etl.extractors.feature_layer, ags_etl.loaders.geoparquet, pyarrow.json, pyarrow.parquet"
    imports = [sys.executable, "-c", f"import {modules}"]
    floor_rss = statistics.median(timed(imports)[1] for _ in range(args.runs))
    print(f"  the modules a pull imports, nothing else: {floor_rss:5.0f} MB")
    for n in (100_000, 1_000_000):
        data = data_root / f"mem{n}"
        data.mkdir()
        sys.path.insert(0, str(HERE))
        from serve_bench import make_parquet

        make_parquet(data / "points.parquet", n)
        with tempfile.TemporaryDirectory() as tmp, run_server(
            data, "--max-record-count", str(args.page), "--query-timeout", "120"
        ) as base:
            url = f"{base}/arcgis/rest/services/points/FeatureServer/0"
            cmd = [sys.executable, "-m", "ags_etl.cli", "pull", url, "-o", str(Path(tmp, "m.parquet")), "-q",
                   "--overwrite", "--concurrency", str(args.concurrency)]
            runs = [timed(cmd) for _ in range(args.runs)]
            peaks = [peak for _, peak, code in runs if code == 0]
            if peaks:
                secs = statistics.median(s for s, _, code in runs if code == 0)
                print(f"  {n:>9,} points: peak RSS {statistics.median(peaks):5.0f} MB (max {max(peaks):.0f}), "
                      f"{secs:5.1f} s")
            for p in Path(tmp).glob("*"):
                p.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="points in the point layer")
    ap.add_argument("--polygons", type=int, default=20_000, help="polygons (49 vertices) in the polygon layer; 0: none")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--page", type=int, default=2000, help="the server's maxRecordCount")
    ap.add_argument("--latency-ms", type=int, default=20)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--no-peers", action="store_true", help="race the floor and ags-etl only")
    ap.add_argument("--memory", action="store_true", help="only the peak-RSS comparison, 100,000 vs 1,000,000 points")
    ap.add_argument("--floor", metavar="URL", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.floor is not None:
        floor(args.floor, args.page, args.concurrency)
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if args.memory:
            memory(root, args)
            return
        data = root / "data"
        data.mkdir()
        make_layers(data, args.n, args.polygons)
        points, polygons = data / "p", data / "g"
        points.mkdir()
        polygons.mkdir()
        (data / "points.parquet").rename(points / "points.parquet")
        (data / "polygons.parquet").rename(polygons / "polygons.parquet")
        race(points, "points", args.n, args)
        if args.polygons:
            race(polygons, "polygons", args.polygons, args)


if __name__ == "__main__":
    main()
