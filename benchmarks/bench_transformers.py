"""Throughput and peak memory of the transformers on generated data.

Cases (each in its own process, so peak RSS is that case's own):

* reproject 200,000 points, EPSG:3857 → EPSG:4326
* reproject 20,000 polygons of 50 vertices, EPSG:3857 → EPSG:4326
* clip 20,000 polygons to a bbox (clip_by_rect path)
* clip 20,000 polygons to a 720-vertex polygon mask (prepared-mask path)
* for comparison: plain ``shapely.intersection`` of the same polygons with the mask

Batches of 2,000 features, as pages from a server would come. Prints features/s,
peak RSS of the process, and the peak above the RSS once the input was built.

    .venv/bin/python benchmarks/bench_transformers.py
"""

from __future__ import annotations

import multiprocessing as mp
import resource
import time
from collections.abc import Callable

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

BATCH = 2_000
REGION = (-13_700_000.0, 4_450_000.0, -13_500_000.0, 4_650_000.0)  # around San Francisco Bay, metres


def _rss_mb() -> float:
    # Linux: ru_maxrss is in KiB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _current_rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        pages = int(fh.read().split()[1])
    return pages * resource.getpagesize() / 2**20


def _points(n: int, rng: np.random.Generator) -> np.ndarray:
    xmin, ymin, xmax, ymax = REGION
    return shapely.points(rng.uniform([xmin, ymin], [xmax, ymax], (n, 2)))


def _polygons(n: int, rng: np.random.Generator, vertices: int = 50) -> np.ndarray:
    """n closed rings of ``vertices`` vertices (49 distinct + closing), radius 300–1,500 m."""
    xmin, ymin, xmax, ymax = REGION
    centres = rng.uniform([xmin, ymin], [xmax, ymax], (n, 2))
    radii = rng.uniform(300, 1_500, (n, 1))
    angles = np.linspace(0, 2 * np.pi, vertices - 1, endpoint=False)[None, :]
    wobble = rng.uniform(0.8, 1.0, (n, vertices - 1))
    x = centres[:, :1] + radii * wobble * np.cos(angles)
    y = centres[:, 1:] + radii * wobble * np.sin(angles)
    coords = np.stack([x, y], axis=-1)
    coords = np.concatenate([coords, coords[:, :1]], axis=1)
    return shapely.polygons(coords)


def _mask(vertices: int = 720) -> shapely.Polygon:
    xmin, ymin, xmax, ymax = REGION
    cx, cy = (xmin + xmax) / 2, (ymin + ymax) / 2
    r = 0.35 * (xmax - xmin)
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    radii = r * (1 + 0.15 * np.sin(12 * angles))  # a wavy, concave outline
    return shapely.Polygon(np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)]))


def _batches(geoms: np.ndarray, crs: CRS):  # type: ignore[no-untyped-def]
    from ags_etl.batch import FeatureBatch

    out = []
    for start in range(0, len(geoms), BATCH):
        part = np.asarray(geoms[start : start + BATCH], dtype=object)
        table = pa.table({"OBJECTID": pa.array(np.arange(start, start + len(part)), pa.int64())})
        out.append(FeatureBatch(table, part, crs))
    return out


def _schema(geometry_type: str, crs: CRS):  # type: ignore[no-untyped-def]
    from ags_etl.schema import Field, LayerSchema

    return LayerSchema(
        fields=(Field("OBJECTID", "esriFieldTypeOID"),), oid_field="OBJECTID", geometry_type=geometry_type, crs=crs
    )


def case_reproject_points() -> tuple[int, Callable[[], int]]:
    from ags_etl.transformers.reproject import Reproject

    merc = CRS.from_epsg(3857)
    batches = _batches(_points(200_000, np.random.default_rng(1)), merc)
    t = Reproject("EPSG:4326")
    t.bind(_schema("esriGeometryPoint", merc))
    return 200_000, lambda: sum(len(t(b)) for b in batches)


def case_reproject_polygons() -> tuple[int, Callable[[], int]]:
    from ags_etl.transformers.reproject import Reproject

    merc = CRS.from_epsg(3857)
    batches = _batches(_polygons(20_000, np.random.default_rng(2)), merc)
    t = Reproject("EPSG:4326")
    t.bind(_schema("esriGeometryPolygon", merc))
    return 20_000, lambda: sum(len(t(b)) for b in batches)


def case_clip_bbox() -> tuple[int, Callable[[], int]]:
    from ags_etl.transformers.clip import Clip

    merc = CRS.from_epsg(3857)
    batches = _batches(_polygons(20_000, np.random.default_rng(3)), merc)
    xmin, ymin, xmax, ymax = REGION
    w, h = xmax - xmin, ymax - ymin
    t = Clip(bbox=(xmin + 0.2 * w, ymin + 0.2 * h, xmin + 0.8 * w, ymin + 0.8 * h))
    t.bind(_schema("esriGeometryPolygon", merc))
    return 20_000, lambda: sum(len(t(b)) for b in batches)


def case_clip_mask() -> tuple[int, Callable[[], int]]:
    from ags_etl.transformers.clip import Clip

    merc = CRS.from_epsg(3857)
    batches = _batches(_polygons(20_000, np.random.default_rng(4)), merc)
    t = Clip(mask=_mask(720))
    t.bind(_schema("esriGeometryPolygon", merc))
    return 20_000, lambda: sum(len(t(b)) for b in batches)


def case_plain_intersection() -> tuple[int, Callable[[], int]]:
    geoms = _polygons(20_000, np.random.default_rng(4))
    mask = _mask(720)

    def run() -> int:
        kept = 0
        for start in range(0, len(geoms), BATCH):
            cut = shapely.intersection(geoms[start : start + BATCH], mask)
            kept += int((~shapely.is_empty(cut)).sum())
        return kept

    return 20_000, run


CASES: dict[str, Callable[[], tuple[int, Callable[[], int]]]] = {
    "reproject 200k points 3857->4326": case_reproject_points,
    "reproject 20k 50-vertex polygons 3857->4326": case_reproject_polygons,
    "clip 20k polygons, bbox": case_clip_bbox,
    "clip 20k polygons, 720-vertex mask": case_clip_mask,
    "(reference) shapely.intersection, same mask": case_plain_intersection,
}


def _run_case(name: str, queue: mp.Queue[tuple[str, int, int, float, float, float]]) -> None:
    n, run = CASES[name]()
    base = _current_rss_mb()
    run()  # warm-up (transformer cache, first-touch allocations)
    best = float("inf")
    kept = 0
    for _ in range(3):
        start = time.perf_counter()
        kept = run()
        best = min(best, time.perf_counter() - start)
    queue.put((name, n, kept, best, _rss_mb(), _rss_mb() - base))


def main() -> None:
    ctx = mp.get_context("spawn")
    print(f"{'case':<46} {'features':>9} {'kept':>8} {'best s':>8} {'features/s':>12} {'peak RSS MB':>12} {'above input':>12}")
    for name in CASES:
        queue = ctx.Queue()
        proc = ctx.Process(target=_run_case, args=(name, queue))
        proc.start()
        result = queue.get()
        proc.join()
        _, n, kept, secs, peak, above = result
        print(f"{name:<46} {n:>9,} {kept:>8,} {secs:>8.3f} {n / secs:>12,.0f} {peak:>12.0f} {above:>12.0f}")


if __name__ == "__main__":
    main()
