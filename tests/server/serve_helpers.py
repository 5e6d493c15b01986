"""Data writers and HTTP helpers for the local FeatureServer tests (imported by the test modules).

Data files are small and written with fiona/pyarrow/json so each value is known.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import fiona
import pyarrow as pa
import pyarrow.parquet as pq
import requests
import shapely
from pyproj import CRS


# OIDs with gaps; the point at (0, 0) is OID 1.
POINT_ROWS: list[dict[str, Any]] = [
    {"OBJECTID": 1, "name": "origin", "pop": 0, "ratio": 0.0, "born": "1901-02-03T04:05:06Z", "xy": (0.0, 0.0)},
    {"OBJECTID": 2, "name": "Zürich", "pop": 400000, "ratio": 1.5, "born": "1960-01-01T00:00:00Z", "xy": (8.54, 47.37)},
    {"OBJECTID": 3, "name": "東京", "pop": 14000000, "ratio": 2.25, "born": "1969-12-31T23:59:59Z", "xy": (139.69, 35.69)},
    {"OBJECTID": 5, "name": "O'Hare", "pop": None, "ratio": None, "born": None, "xy": (-87.9, 41.97)},
    {"OBJECTID": 8, "name": None, "pop": 12, "ratio": -3.5, "born": "2020-06-15T12:30:00Z", "xy": (-0.5, -0.5)},
    {"OBJECTID": 13, "name": "Null Island East", "pop": 1, "ratio": 10.0, "born": "1970-01-01T00:00:00Z", "xy": (1.0, 0.0)},
    {"OBJECTID": 21, "name": "no geometry", "pop": 7, "ratio": 7.0, "born": "1999-12-31T00:00:00Z", "xy": None},
    {"OBJECTID": 34, "name": "Sydney", "pop": 5000000, "ratio": 3.0, "born": "1788-01-26T00:00:00Z", "xy": (151.2, -33.87)},
]
POINT_OIDS = [r["OBJECTID"] for r in POINT_ROWS]

SHELL = [(0.0, 0.0), (10.0, 0.0), (10.0, 10.0), (0.0, 10.0), (0.0, 0.0)]
HOLE = [(4.0, 4.0), (6.0, 4.0), (6.0, 6.0), (4.0, 6.0), (4.0, 4.0)]
HOLED = shapely.Polygon(SHELL, [HOLE])
MULTI = shapely.MultiPolygon(
    [
        shapely.Polygon([(20, 0), (30, 0), (30, 10), (20, 10), (20, 0)], [[(22, 2), (24, 2), (24, 4), (22, 4), (22, 2)]]),
        shapely.Polygon([(40, 0), (45, 0), (45, 5), (40, 5), (40, 0)]),
    ]
)
PLAIN = shapely.box(100, 50, 101, 51)


def _iso_ms(text: str | None) -> int | None:
    if text is None:
        return None
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) // dt.timedelta(milliseconds=1)


POINT_BORN_MS = {r["OBJECTID"]: _iso_ms(r["born"]) for r in POINT_ROWS}


def write_geojson(path: Path, features: list[dict[str, Any]]) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, ensure_ascii=False), "utf-8")
    return path


def feature(props: dict[str, Any], geom: shapely.Geometry | None) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": props,
        "geometry": None if geom is None else json.loads(shapely.to_geojson(geom)),
    }


def write_points(path: Path) -> Path:
    feats = []
    for r in POINT_ROWS:
        props = {k: v for k, v in r.items() if k != "xy"}
        feats.append(feature(props, None if r["xy"] is None else shapely.Point(r["xy"])))
    return write_geojson(path, feats)


def write_polygons(path: Path) -> Path:
    return write_geojson(
        path,
        [
            # "stamp" has no time zone (read as UTC); "day" is a date without time
            feature({"OBJECTID": 1, "kind": "holed", "stamp": "1955-07-04T10:00:00", "day": "1969-07-20"}, HOLED),
            feature({"OBJECTID": 2, "kind": "multi", "stamp": None, "day": None}, MULTI),
            feature({"OBJECTID": 3, "kind": "plain", "stamp": "2001-09-09T01:46:40", "day": "1970-01-02"}, PLAIN),
        ],
    )


def write_table(path: Path) -> Path:
    return write_geojson(
        path, [feature({"code": f"C{i}", "value": i * 10}, None) for i in range(4)]
    )


def write_count_layer(path: Path, n: int) -> Path:
    """``n`` points without an OBJECTID field: OIDs 1..n are assigned."""
    return write_geojson(path, [feature({"seq": i}, shapely.Point(i, i)) for i in range(n)])


def write_shapefile(path: Path, epsg: int) -> Path:
    schema = {"geometry": "Polygon", "properties": {"NAME": "str:20", "AREA": "float", "CODE": "int", "SURVEYED": "date"}}
    with fiona.open(path, "w", driver="ESRI Shapefile", schema=schema, crs=f"EPSG:{epsg}") as dst:
        for i in range(3):
            x0 = 500000 + i * 1000
            ring = [(x0, 5000000), (x0 + 500, 5000000), (x0 + 500, 5000500), (x0, 5000500), (x0, 5000000)]
            dst.write({"geometry": {"type": "Polygon", "coordinates": [ring]},
                       "properties": {"NAME": f"lot {i}", "AREA": 250000.0, "CODE": i,
                                      "SURVEYED": None if i == 2 else f"19{50 + i * 30}-03-0{i + 1}"}})
    return path


def write_geoparquet(path: Path, crs: CRS | None, with_geo: bool = True, unknown_crs: bool = False) -> Path:
    """Three rows (the last without geometry). ``crs`` None omits the key (= OGC:CRS84);
    ``unknown_crs`` writes ``"crs": null`` (CRS unknown)."""
    geoms = [shapely.Point(1, 2), shapely.Point(3, 4), None]
    table = pa.table(
        {
            "label": pa.array(["a", "b", None]),
            "when": pa.array(
                [dt.datetime(1965, 5, 5, 5, 5, 5), dt.datetime(2021, 1, 1), None], type=pa.timestamp("us", tz="UTC")
            ),
            "day": pa.array([dt.date(1950, 1, 2), None, dt.date(2000, 2, 29)], type=pa.date32()),
            "flag": pa.array([True, False, None]),
            "count": pa.array([1, None, 3], type=pa.int64()),
            "geometry": pa.array(shapely.to_wkb(geoms).tolist(), type=pa.binary()),
        }
    )
    if with_geo:
        column: dict[str, Any] = {"encoding": "WKB", "geometry_types": ["Point"]}
        if crs is not None:
            column["crs"] = crs.to_json_dict()
        if unknown_crs:
            column["crs"] = None
        geo = {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}
        table = table.replace_schema_metadata({b"geo": json.dumps(geo).encode()})
    else:
        table = table.drop(["geometry"])
    pq.write_table(table, path)
    return path


def layer_url(base: str, name: str) -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


def get_json(url: str, **params: Any) -> Any:
    params.setdefault("f", "json")
    response = requests.get(url, params=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def post_json(url: str, **params: Any) -> Any:
    params.setdefault("f", "json")
    response = requests.post(url, data=params, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()
