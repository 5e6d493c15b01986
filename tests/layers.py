"""Small generated layers for extraction tests, written as GeoJSON the local server and Koop read.

Every layer has an integer OBJECTID with gaps, unicode and markup in strings, dates before
and after 1970, nulls, and geometry quirks: the point at (0, 0), polygons with holes,
multipolygons whose parts have holes, features without geometry.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from pathlib import Path
from typing import Any

import shapely

from tests.servers_koop import write_koop_geojson

NAMES = ["Parc de l'Étoile", "公园", "Smith & Sons <b>", 'Quote "q"', "🌳 emoji", "plain", "", None]


def _date(rng: random.Random) -> str | None:
    if rng.random() < 0.15:
        return None
    day = dt.datetime(1950, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=rng.randrange(0, 365 * 70))
    return day.strftime("%Y-%m-%dT%H:%M:%SZ")


def _polygon(rng: random.Random, i: int) -> shapely.Geometry:
    x0, y0 = -122.5 + (i % 20) * 0.01, 37.7 + (i // 20) * 0.01
    shell = shapely.box(x0, y0, x0 + 0.008, y0 + 0.008)
    kind = i % 4
    if kind == 0:
        return shell
    hole = shapely.box(x0 + 0.002, y0 + 0.002, x0 + 0.004, y0 + 0.004)
    holed = shell.difference(hole)
    if kind == 1:
        return holed
    other = shapely.box(x0 + 0.0085, y0, x0 + 0.0095, y0 + 0.001)
    if kind == 2:
        return shapely.MultiPolygon([holed, other])
    return shapely.MultiPolygon([shell.difference(hole), other.difference(shapely.box(
        x0 + 0.0087, y0 + 0.0002, x0 + 0.0089, y0 + 0.0004))])


def make_features(kind: str, n: int, seed: int = 7) -> list[dict[str, Any]]:
    """``kind`` is "points", "polygons" or "table". OIDs skip every 7th number."""
    rng = random.Random(seed)
    feats = []
    oid = 0
    for i in range(n):
        oid += 2 if i % 7 == 6 else 1
        if kind == "points":
            if i == 0:
                geom: shapely.Geometry | None = shapely.Point(0, 0)
            elif i % 11 == 5:
                geom = None
            else:
                geom = shapely.Point(round(rng.uniform(-123, -122), 6), round(rng.uniform(37, 38), 6))
        elif kind == "polygons":
            geom = None if i % 13 == 12 else _polygon(rng, i)
        else:
            geom = None
        props = {
            "OBJECTID": oid,
            "NAME": NAMES[i % len(NAMES)],
            "COUNT": None if i % 9 == 4 else rng.randrange(-1000, 1000),
            "VALUE": None if i % 10 == 3 else round(rng.uniform(-1e6, 1e6), 3),
            "WHEN": _date(rng),
        }
        feats.append({
            "type": "Feature",
            "properties": props,
            "geometry": None if geom is None else json.loads(shapely.to_geojson(geom)),
        })
    return feats


def write_layer(path: Path, kind: str, n: int, *, koop_max_record_count: int | None = None) -> Path:
    """Write a FeatureCollection; with ``koop_max_record_count``, in the form Koop needs
    (``metadata`` with the id field, the page cap and declared field types)."""
    features = make_features(kind, n)
    if koop_max_record_count is not None:
        return write_koop_geojson(
            features,
            path,
            max_record_count=koop_max_record_count,
            date_fields=["WHEN"],
            field_types={"NAME": "String", "COUNT": "Integer", "VALUE": "Double"},
        )
    fc: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    path.write_text(json.dumps(fc, ensure_ascii=False), encoding="utf-8")
    return path


def expected_rows(kind: str, n: int) -> dict[int, dict[str, Any]]:
    """OID → {"geometry": shapely | None, attributes…} as the source holds them."""
    out = {}
    for f in make_features(kind, n):
        props = dict(f["properties"])
        g = f["geometry"]
        props["geometry"] = None if g is None else shapely.from_geojson(json.dumps(g))
        out[props["OBJECTID"]] = props
    return out
