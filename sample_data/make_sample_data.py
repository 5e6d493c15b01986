"""Generate ags_etl's sample layers (deterministic, seeded, no network).

Run from the repository root with the project's venv::

    .venv/bin/python sample_data/make_sample_data.py [--out DIR] [--seed N]

It writes, for a fictional city on the San Francisco peninsula:

- ``parks.geojson``        polygons and multipolygons with holes, EPSG:4326 (RFC 7946)
- ``survey_marks.geojson`` points, EPSG:4326, incl. (0, 0), (0, 10) and (10, 0)
- ``hydrants.shp``         points, EPSG:2227 (US survey feet), with .prj and .cpg (UTF-8)
- ``streets.parquet``      GeoParquet 1.1.0, WKB, EPSG:3857 (PROJJSON), lines and multilines
- ``inspections.geojson``  a table: every feature has ``"geometry": null``

The same seed gives the same files (with the same GDAL/pyarrow versions). Every file is
written to a temporary folder beside the output folder and moved into place only when all
of them were written, so a failed run leaves the previous files as they were.
See ``sample_data/README.md`` for what each layer exercises.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import fiona
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from fiona.crs import CRS as FionaCRS
from pyproj import CRS, Geod, Transformer
from shapely.geometry import LineString, MultiLineString, MultiPolygon, Point, Polygon, mapping

DEFAULT_SEED = 20240611
UTC = dt.timezone.utc
#: Lower-left corner and cell size (degrees) of the grid the parks are placed on.
CITY_ORIGIN = (-122.500, 37.720)
CELL = (0.012, 0.009)  # about 1.05 km x 1.0 km at this latitude
GRID = (10, 8)  # columns x rows
METRES_PER_DEG_LAT = 111_320.0

OUTPUT_NAMES: tuple[str, ...] = (
    "parks.geojson",
    "survey_marks.geojson",
    "hydrants.shp",
    "hydrants.shx",
    "hydrants.dbf",
    "hydrants.prj",
    "hydrants.cpg",
    "streets.parquet",
    "inspections.geojson",
)

PARK_NAMES: tuple[str, ...] = (
    "Parc de l'Étoile",
    "公园",
    "🌳 Shady Oaks 🌳",
    "Smith & Sons Memorial Field",
    "<b>Bold</b> Meadow",
    'O\'Malley "Big" Lawn',
    "Ñandú Gardens",
    "Zoë Baker Playground",
    "Harbor View Park",
    "Mission Creek Greenway",
    "Lincoln Square",
    "Cypress Hollow",
    "Sunset Dunes",
    "Fisherman's Green",
    "Telegraph Terrace",
    "Bayshore Commons",
    "Juniper Ridge",
    "Alamo Overlook",
    "Dolores Heights Park",
    "Parque Río Azul",
    "Golden Poppy Field",
    "Marina Promenade",
    "Presidio Woods",
    "Noe Valley Courts",
    "Bernal Hilltop",
    "Twin Peaks Reserve",
    "Glen Canyon Trail",
    "Lake Merced Shore",
    "Candlestick Point",
    "India Basin Shoreline",
    "Hunters Point Commons",
    "Potrero Playfield",
    "Duboce Dog Run",
    "Corona Heights",
    "Buena Vista Grove",
    "Alta Plaza",
    "Lafayette Square",
    "Washington Green",
    "Kezar Triangle",
    "Stern Grove Annex",
)
PARK_STATUSES: tuple[str | None, ...] = ("OPEN", "OPEN", "OPEN", "CLOSED", "RENOVATION", None)

STREET_BASES: tuple[str, ...] = (
    "Market",
    "Mission",
    "Valencia",
    "Rue de l'Église",
    "Calle Peña",
    "Geary",
    "Folsom",
    "Howard",
    "Ocean",
    "Taraval",
    "Judah",
    "Irving",
    "Noriega",
    "Sloat",
    "Portola",
    "Bay",
    "Lombard",
    "Broadway",
    "Pine",
    "Bush",
)
STREET_SUFFIXES: tuple[str, ...] = ("St", "Ave", "Blvd", "Way")

INSPECTORS: tuple[str | None, ...] = (
    "A. Nguyen",
    "B. Okafor",
    "C. Müller",
    "D. García",
    "李 伟",
    None,
)
RESULTS: tuple[str | None, ...] = ("PASS", "PASS", "PASS", "FAIL", "FOLLOW-UP", None)


# --------------------------------------------------------------------------- helpers


def _oids_with_gaps(rng: random.Random, count: int) -> list[int]:
    """Return ``count`` increasing object ids starting 1, 2, 3 and then leaving random gaps."""
    oids = [1, 2, 3]
    while len(oids) < count:
        oids.append(oids[-1] + rng.choice((1, 1, 2, 3, 5)))
    return oids[:count]


def _metres_to_degrees(lat: float) -> tuple[float, float]:
    """Degrees of longitude and latitude per metre at latitude ``lat`` (small-area approximation)."""
    return 1.0 / (METRES_PER_DEG_LAT * math.cos(math.radians(lat))), 1.0 / METRES_PER_DEG_LAT


def _star_ring(
    rng: random.Random, centre: tuple[float, float], radius_m: float, jitter: float, n: int
) -> list[tuple[float, float]]:
    """A closed star-shaped ring (always simple) around ``centre`` with radii in [radius*(1-jitter), radius]."""
    dlon, dlat = _metres_to_degrees(centre[1])
    step = 2 * math.pi / n
    coords = []
    for i in range(n):
        angle = i * step + rng.uniform(-0.3, 0.3) * step
        r = radius_m * rng.uniform(1.0 - jitter, 1.0)
        coords.append(
            (
                round(centre[0] + r * math.cos(angle) * dlon, 6),
                round(centre[1] + r * math.sin(angle) * dlat, 6),
            )
        )
    coords.append(coords[0])
    return coords


def _park_part(rng: random.Random, centre: tuple[float, float], holes: int) -> Polygon:
    """One park parcel: an outer ring with ``holes`` holes (ponds, buildings) well inside it."""
    radius = rng.uniform(180.0, 400.0)
    shell = _star_ring(rng, centre, radius, 0.25, rng.randint(8, 22))
    dlon, dlat = _metres_to_degrees(centre[1])
    interiors = []
    # Holes sit on opposite sides of the centre, each within 0.45 * radius of it, while the
    # shell never comes closer than 0.75 * radius: holes are inside and do not touch.
    for k in range(holes):
        angle = math.pi * k + rng.uniform(-0.4, 0.4)
        offset = 0.22 * radius if holes > 1 else rng.uniform(0.0, 0.1) * radius
        hole_centre = (
            centre[0] + offset * math.cos(angle) * dlon,
            centre[1] + offset * math.sin(angle) * dlat,
        )
        interiors.append(_star_ring(rng, hole_centre, 0.2 * radius, 0.3, rng.randint(5, 9)))
    poly = Polygon(shell, interiors)
    if not poly.is_valid:
        raise RuntimeError(f"generated park parcel at {centre} is invalid: {shapely.is_valid_reason(poly)}")
    return poly


def _cell_centre(rng: random.Random, col: int, row: int) -> tuple[float, float]:
    return (
        CITY_ORIGIN[0] + (col + 0.5 + rng.uniform(-0.08, 0.08)) * CELL[0],
        CITY_ORIGIN[1] + (row + 0.5 + rng.uniform(-0.08, 0.08)) * CELL[1],
    )


def _utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def _random_datetime(rng: random.Random, first_year: int, last_year: int, with_time: bool) -> dt.datetime:
    day = dt.date(first_year, 1, 1) + dt.timedelta(
        days=rng.randrange((dt.date(last_year, 12, 31) - dt.date(first_year, 1, 1)).days)
    )
    seconds = rng.randrange(86_400) if with_time else 0
    return dt.datetime(day.year, day.month, day.day, tzinfo=UTC) + dt.timedelta(seconds=seconds)


def _feature(geometry: Any, properties: dict[str, Any]) -> fiona.Feature:
    return fiona.Feature.from_dict(
        {"type": "Feature", "geometry": None if geometry is None else mapping(geometry), "properties": properties}
    )


# --------------------------------------------------------------------------- layers


def make_parks(rng: random.Random, count: int = 40) -> tuple[list[Any], list[dict[str, Any]]]:
    """Parks: polygons (some with one or two holes) and multipolygons (some parts with holes).

    Parks occupy distinct cells of a grid, so no two parks overlap. Returns geometries and
    properties in file order.
    """
    cells = [(c, r) for c in range(GRID[0]) for r in range(GRID[1])]
    rng.shuffle(cells)
    free = set(cells)
    geod = Geod(ellps="WGS84")
    oids = _oids_with_gaps(rng, count)
    # Fixed dates first so that the quirks are always present, then random ones.
    fixed_dates: list[dt.datetime | None] = [
        _utc(1903, 7, 4),  # long before the epoch
        _utc(1965, 3, 1),
        _utc(1969, 12, 31, 23, 59, 59),  # one second before the epoch
        _utc(1970, 1, 1),  # exactly epoch 0: a falsy timestamp
        None,
        _utc(2011, 7, 15, 14, 30),
    ]
    geometries: list[Any] = []
    properties: list[dict[str, Any]] = []
    for i in range(count):
        cell = next(c for c in cells if c in free)
        free.discard(cell)
        kind = i % 5  # 0,1: simple polygon, 2: polygon with holes, 3: multipolygon, 4: multi with holes
        if i == 0:
            kind = 2  # the first feature has a hole (some readers sample only the first one)
        if kind in (0, 1):
            geom: Any = _park_part(rng, _cell_centre(rng, *cell), 0)
        elif kind == 2:
            geom = _park_part(rng, _cell_centre(rng, *cell), 1 if i % 2 else 2)
        else:
            parts = [cell]
            neighbours = [(cell[0] + dc, cell[1] + dr) for dc, dr in ((1, 0), (0, 1), (-1, 0), (0, -1))]
            for nb in neighbours:
                if nb in free and len(parts) < (3 if i % 3 == 0 else 2):
                    free.discard(nb)
                    parts.append(nb)
            if len(parts) == 1:  # no free neighbour: take any free cell
                extra = next(c for c in cells if c in free)
                free.discard(extra)
                parts.append(extra)
            polys = [
                _park_part(rng, _cell_centre(rng, *p), 1 if (kind == 4 and j == 0) else 0)
                for j, p in enumerate(parts)
            ]
            geom = MultiPolygon(polys)
        if not geom.is_valid:
            raise RuntimeError(f"park {i} is invalid: {shapely.is_valid_reason(geom)}")
        area_m2, _ = geod.geometry_area_perimeter(geom)
        area_ha: float | None = round(abs(area_m2) / 10_000.0, 3)
        if i % 7 == 5:
            area_ha = None
        opened = fixed_dates[i] if i < len(fixed_dates) else _random_datetime(rng, 1890, 2022, False)
        if i >= len(fixed_dates) and i % 9 == 4:
            opened = None
        geometries.append(geom)
        properties.append(
            {
                "OBJECTID": oids[i],
                "NAME": PARK_NAMES[i % len(PARK_NAMES)],
                "AREA_HA": area_ha,
                "OPENED": opened,
                "STATUS": PARK_STATUSES[i % len(PARK_STATUSES)],
            }
        )
    return geometries, properties


def make_survey_marks(rng: random.Random, count: int = 25) -> tuple[list[Any], list[dict[str, Any]]]:
    """Survey marks: mostly in the city, plus marks at exactly (0, 0), (0, 10) and (10, 0)."""
    special = {3: (0.0, 0.0), 11: (0.0, 10.0), 17: (10.0, 0.0)}
    geometries: list[Any] = []
    properties: list[dict[str, Any]] = []
    oids = _oids_with_gaps(rng, count)
    for i in range(count):
        if i in special:
            x, y = special[i]
            description: str | None = "placeholder coordinates (0 is a real value)"
        else:
            x = round(CITY_ORIGIN[0] + rng.uniform(0.0, GRID[0] * CELL[0]), 6)
            y = round(CITY_ORIGIN[1] + rng.uniform(0.0, GRID[1] * CELL[1]), 6)
            description = rng.choice(("brass disk", "chiseled cross", "rivet in curb", "Messingbolzen", None))
        installed: dt.datetime | None
        if i % 6 == 0:
            installed = None
        elif i % 3 == 1:
            installed = _random_datetime(rng, 1890, 1969, False)  # before the epoch
        else:
            installed = _random_datetime(rng, 1970, 2023, i % 2 == 0)
        elevation: float | None = round(rng.uniform(-2.0, 280.0), 3)
        if i == 3:
            elevation = 0.0  # a zero attribute next to the zero geometry
        elif i % 8 == 7:
            elevation = None
        geometries.append(Point(x, y))
        properties.append(
            {
                "OBJECTID": oids[i],
                "MARK_ID": f"SM-{i + 1:03d}",
                "ELEV_M": elevation,
                "INSTALLED": installed,
                "DESCRIPTION": description,
            }
        )
    return geometries, properties


def make_hydrants(rng: random.Random, count: int = 300) -> tuple[list[Any], list[dict[str, Any]]]:
    """Hydrants in EPSG:2227 (US survey feet), with dates before 1970 and null attributes."""
    to_2227 = Transformer.from_crs("EPSG:4326", "EPSG:2227", always_xy=True)
    lon = np.array([CITY_ORIGIN[0] + rng.uniform(0.0, GRID[0] * CELL[0]) for _ in range(count)])
    lat = np.array([CITY_ORIGIN[1] + rng.uniform(0.0, GRID[1] * CELL[1]) for _ in range(count)])
    x, y = to_2227.transform(lon, lat)
    oids = _oids_with_gaps(rng, count)
    geometries: list[Any] = []
    properties: list[dict[str, Any]] = []
    for i in range(count):
        installed: dt.date | None = None if i % 11 == 3 else _random_datetime(rng, 1905, 2023, False).date()
        flow: float | None = None if i % 13 == 6 else round(rng.uniform(500.0, 2500.0), 1)
        street = STREET_BASES[rng.randrange(len(STREET_BASES))]
        geometries.append(Point(round(float(x[i]), 2), round(float(y[i]), 2)))
        properties.append(
            {
                "OBJECTID": oids[i],
                "ASSET_ID": f"HYD-{i + 1:05d}",
                "FLOW_GPM": flow,
                "INSTALLED": installed,
                "STATUS": None if i % 10 == 9 else rng.choice(("IN SERVICE", "IN SERVICE", "OUT OF SERVICE")),
                "STREET": f"{street} {rng.choice(STREET_SUFFIXES)}",
            }
        )
    return geometries, properties


def make_streets(rng: random.Random, count: int = 150) -> tuple[list[Any], dict[str, list[Any]]]:
    """Streets in EPSG:3857: polylines across the city, every fifth one a multilinestring."""
    to_3857 = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    oids = _oids_with_gaps(rng, count)
    columns: dict[str, list[Any]] = {
        "OBJECTID": [],
        "STREET_NAME": [],
        "LANES": [],
        "SPEED_LIMIT": [],
        "LAST_EDIT": [],
    }
    geometries: list[Any] = []
    west, south = CITY_ORIGIN
    east, north = west + GRID[0] * CELL[0], south + GRID[1] * CELL[1]

    def polyline(start: tuple[float, float], end: tuple[float, float], n: int) -> list[tuple[float, float]]:
        lons = np.linspace(start[0], end[0], n) + np.array([0.0, *[rng.uniform(-4e-4, 4e-4) for _ in range(n - 2)], 0.0])
        lats = np.linspace(start[1], end[1], n) + np.array([0.0, *[rng.uniform(-4e-4, 4e-4) for _ in range(n - 2)], 0.0])
        xs, ys = to_3857.transform(lons, lats)
        return [(round(float(a), 2), round(float(b), 2)) for a, b in zip(xs, ys, strict=True)]

    for i in range(count):
        if i % 2 == 0:  # east-west street
            y = rng.uniform(south, north)
            x0, x1 = sorted((rng.uniform(west, east), rng.uniform(west, east)))
            start, end = (x0, y), (x1, y + rng.uniform(-0.002, 0.002))
        else:  # north-south street
            x = rng.uniform(west, east)
            y0, y1 = sorted((rng.uniform(south, north), rng.uniform(south, north)))
            start, end = (x, y0), (x + rng.uniform(-0.002, 0.002), y1)
        n = rng.randint(2, 9)
        if i % 5 == 3:  # a street interrupted by a park: two disjoint parts
            mid = ((start[0] + end[0]) / 2, (start[1] + end[1]) / 2)
            gap = (0.15 * (end[0] - start[0]), 0.15 * (end[1] - start[1]))
            part1 = polyline(start, (mid[0] - gap[0], mid[1] - gap[1]), max(2, n // 2))
            part2 = polyline((mid[0] + gap[0], mid[1] + gap[1]), end, max(2, n - n // 2))
            geom: Any = MultiLineString([part1, part2])
        else:
            geom = LineString(polyline(start, end, n))
        if geom.is_empty or geom.length == 0:
            raise RuntimeError(f"street {i} has no length: {geom.wkt}")
        geometries.append(geom)
        base = STREET_BASES[i % len(STREET_BASES)]
        name: str | None = f"{base} {STREET_SUFFIXES[i % len(STREET_SUFFIXES)]}"
        if i % 17 == 16:
            name = None
        edit = _random_datetime(rng, 2015, 2024, True) + dt.timedelta(milliseconds=rng.randrange(1000))
        columns["OBJECTID"].append(oids[i])
        columns["STREET_NAME"].append(name)
        columns["LANES"].append(None if i % 19 == 7 else rng.choice((1, 2, 2, 4, 6)))
        columns["SPEED_LIMIT"].append(None if i % 23 == 11 else float(rng.choice((25, 25, 30, 35, 40))))
        columns["LAST_EDIT"].append(None if i % 29 == 13 else edit)
    return geometries, columns


def make_inspections(
    rng: random.Random, park_oids: Sequence[int], count: int = 30
) -> list[dict[str, Any]]:
    """Park inspections: a table without geometry whose PARK_ID refers to parks' OBJECTID."""
    oids = _oids_with_gaps(rng, count)
    rows = []
    for i in range(count):
        inspected: dt.datetime | None = _random_datetime(rng, 2019, 2024, True)
        if i == 4:
            inspected = _utc(1968, 5, 20, 9, 15)  # an archived paper record before the epoch
        elif i % 12 == 10:
            inspected = None
        rows.append(
            {
                "OBJECTID": oids[i],
                "PARK_ID": None if i % 14 == 13 else park_oids[rng.randrange(len(park_oids))],
                "INSPECTOR": INSPECTORS[i % len(INSPECTORS)],
                "RESULT": RESULTS[rng.randrange(len(RESULTS))],
                "INSPECTED": inspected,
            }
        )
    return rows


# --------------------------------------------------------------------------- writers


def _write_fiona(
    path: Path,
    driver: str,
    crs: str,
    schema: dict[str, Any],
    features: Iterator[fiona.Feature],
    **options: Any,
) -> None:
    with fiona.open(
        path, "w", driver=driver, crs=FionaCRS.from_user_input(crs), schema=schema, encoding="utf-8", **options
    ) as sink:
        sink.writerecords(features)


def write_geoparquet(path: Path, geometries: Sequence[Any], columns: dict[str, list[Any]], crs: CRS) -> None:
    """Write a GeoParquet 1.1.0 file: WKB ``geometry`` column, PROJJSON CRS, bbox, small row groups."""
    geom_array = np.asarray(geometries, dtype=object)
    bounds = shapely.total_bounds(geom_array)
    types = sorted({g.geom_type for g in geometries})
    table = pa.table(
        {
            "OBJECTID": pa.array(columns["OBJECTID"], pa.int64()),
            "STREET_NAME": pa.array(columns["STREET_NAME"], pa.string()),
            "LANES": pa.array(columns["LANES"], pa.int32()),
            "SPEED_LIMIT": pa.array(columns["SPEED_LIMIT"], pa.float64()),
            "LAST_EDIT": pa.array(columns["LAST_EDIT"], pa.timestamp("ms", tz="UTC")),
            "geometry": pa.array(shapely.to_wkb(geom_array, byte_order=1, flavor="iso"), pa.binary()),
        }
    )
    geo = {
        "version": "1.1.0",
        "primary_column": "geometry",
        "columns": {
            "geometry": {
                "encoding": "WKB",
                "geometry_types": types,
                "crs": crs.to_json_dict(),
                "bbox": [round(float(v), 2) for v in bounds],
            }
        },
    }
    table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode("utf-8")})
    # Row groups of 64 rows: three groups, so streaming readers see more than one.
    pq.write_table(table, path, row_group_size=64, compression="zstd")


def write_all(out_dir: Path, seed: int) -> dict[str, int]:
    """Write every sample layer into ``out_dir``; return feature counts by file name.

    Files are produced in a temporary folder inside ``out_dir`` and moved into place at the end.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    park_geoms, park_props = make_parks(rng)
    mark_geoms, mark_props = make_survey_marks(rng)
    hydrant_geoms, hydrant_props = make_hydrants(rng)
    street_geoms, street_cols = make_streets(rng)
    inspections = make_inspections(rng, [p["OBJECTID"] for p in park_props])

    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".make_sample_data-") as tmp_name:
        tmp = Path(tmp_name)
        _write_fiona(
            tmp / "parks.geojson",
            "GeoJSON",
            "EPSG:4326",
            {
                "geometry": "Unknown",
                "properties": {
                    "OBJECTID": "int",
                    "NAME": "str",
                    "AREA_HA": "float",
                    "OPENED": "datetime",
                    "STATUS": "str",
                },
            },
            (_feature(g, p) for g, p in zip(park_geoms, park_props, strict=True)),
            RFC7946="YES",  # right-hand-rule rings, no "crs" member
        )
        _write_fiona(
            tmp / "survey_marks.geojson",
            "GeoJSON",
            "EPSG:4326",
            {
                "geometry": "Point",
                "properties": {
                    "OBJECTID": "int",
                    "MARK_ID": "str",
                    "ELEV_M": "float",
                    "INSTALLED": "datetime",
                    "DESCRIPTION": "str",
                },
            },
            (_feature(g, p) for g, p in zip(mark_geoms, mark_props, strict=True)),
            RFC7946="YES",
        )
        _write_fiona(
            tmp / "hydrants.shp",
            "ESRI Shapefile",
            "EPSG:2227",
            {
                "geometry": "Point",
                "properties": {
                    "OBJECTID": "int:9",
                    "ASSET_ID": "str:12",
                    "FLOW_GPM": "float:8.1",
                    "INSTALLED": "date",
                    "STATUS": "str:16",
                    "STREET": "str:40",
                },
            },
            (_feature(g, p) for g, p in zip(hydrant_geoms, hydrant_props, strict=True)),
        )
        _write_fiona(
            tmp / "inspections.geojson",
            "GeoJSON",
            "EPSG:4326",
            {
                "geometry": "None",
                "properties": {
                    "OBJECTID": "int",
                    "PARK_ID": "int",
                    "INSPECTOR": "str",
                    "RESULT": "str",
                    "INSPECTED": "datetime",
                },
            },
            (_feature(None, p) for p in inspections),
            RFC7946="YES",
        )
        write_geoparquet(tmp / "streets.parquet", street_geoms, street_cols, CRS.from_epsg(3857))

        missing = [name for name in OUTPUT_NAMES if not (tmp / name).is_file()]
        if missing:
            raise RuntimeError(f"sample data generation did not produce {missing} in {tmp}")
        for name in OUTPUT_NAMES:
            os.replace(tmp / name, out_dir / name)
        leftovers = sorted(p.name for p in tmp.iterdir())
        if leftovers:  # the TemporaryDirectory context removes them
            raise RuntimeError(f"unexpected extra files from the writers: {leftovers}; add them to OUTPUT_NAMES")

    return {
        "parks.geojson": len(park_geoms),
        "survey_marks.geojson": len(mark_geoms),
        "hydrants.shp": len(hydrant_geoms),
        "streets.parquet": len(street_geoms),
        "inspections.geojson": len(inspections),
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"random seed (default {DEFAULT_SEED})")
    args = parser.parse_args(argv)
    counts = write_all(args.out, args.seed)
    for name, n in counts.items():
        print(f"{name}: {n} features")


if __name__ == "__main__":
    main()
