"""Schemas and FeatureBatches for the GeoJSON and KMZ loader tests, built from plain values.

Every value the tests compare against is kept here in Python form (``ROWS``), so the
tests check the written files against the input, not against our own conversion code.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.schema import Field, LayerSchema

WGS84 = CRS.from_epsg(4326)
UTC = dt.timezone.utc
LONG_TEXT = "".join(chr(0x41 + i % 26) for i in range(9_991)) + " & <end> "  # 10,000 characters
assert len(LONG_TEXT) == 10_000

FIELDS: tuple[Field, ...] = (
    Field("OBJECTID", "esriFieldTypeOID"),
    Field("NAME", "esriFieldTypeString", length=20_000),
    Field("CODE", "esriFieldTypeInteger"),
    Field("SMALL", "esriFieldTypeSmallInteger"),
    Field("VALUE", "esriFieldTypeDouble"),
    Field("RATIO", "esriFieldTypeSingle"),
    Field("CREATED", "esriFieldTypeDate"),
    Field("DAY", "esriFieldTypeDateOnly"),
    Field("NOTE", "esriFieldTypeString", length=50),
)

# Polygons are given in Esri winding (exterior clockwise, holes counter-clockwise), the
# opposite of RFC 7946, so the loaders have to re-orient them.
POLYGON_WITH_HOLE = shapely.Polygon(
    [(10, 10), (10, 20), (20, 20), (20, 10), (10, 10)],
    [[(12, 12), (14, 12), (14, 14), (12, 14), (12, 12)]],
)
MULTIPOLYGON_WITH_HOLES = shapely.MultiPolygon(
    [
        shapely.Polygon(
            [(-60, -30), (-60, -20), (-50, -20), (-50, -30), (-60, -30)],
            [[(-58, -28), (-56, -28), (-56, -26), (-58, -26), (-58, -28)], [(-54, -24), (-52, -24), (-52, -22), (-54, -24)]],
        ),
        shapely.Polygon([(100.1234567, 1), (100.1234567, 2), (101, 2), (101, 1), (100.1234567, 1)]),
    ]
)
LINESTRING = shapely.LineString([(-122.4194155, 37.7749295), (-122.2711137, 37.8043637), (-121.8863286, 37.3382082)])
MULTILINESTRING = shapely.MultiLineString([[(0.5, 0.5), (1.5, 1.5)], [(179.9999999, -89.9999999), (-179.9999999, 89.9999999)]])
POINT_ORIGIN = shapely.Point(0, 0)
POINT_ROUNDED = shapely.Point(-0.123456789, 51.987654321)  # more decimals than written
POLY_CW = shapely.Polygon([(0, 0), (0, 1), (1, 1), (1, 0), (0, 0)])  # exterior clockwise (Esri winding)

#: One dict per feature: every attribute in Python form, plus "geometry".
ROWS: list[dict[str, Any]] = [
    {
        "OBJECTID": 1,
        "NAME": "Null Island",
        "CODE": 0,
        "SMALL": 0,
        "VALUE": 0.0,
        "RATIO": 0.5,
        "CREATED": dt.datetime(1965, 3, 1, tzinfo=UTC),
        "DAY": dt.date(1965, 3, 1),
        "NOTE": "a & b < c > d \"double\" 'single'",
        "geometry": POINT_ORIGIN,
    },
    {
        "OBJECTID": 2,
        "NAME": "Zürich – 東京 – Ελλάδα",
        "CODE": -2147483648,
        "SMALL": -32768,
        "VALUE": float("nan"),
        "RATIO": None,
        "CREATED": dt.datetime(1901, 12, 13, 20, 45, 52, tzinfo=UTC),
        "DAY": dt.date(1900, 1, 1),
        "NOTE": None,
        "geometry": POLYGON_WITH_HOLE,
    },
    {
        "OBJECTID": 3,
        "NAME": "emoji 🗺️🚀 and ünïcödé",
        "CODE": 2147483647,
        "SMALL": 32767,
        "VALUE": -1234567.891,
        "RATIO": 0.1,
        "CREATED": dt.datetime(1969, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
        "DAY": None,
        "NOTE": "<![CDATA[ not cdata ]]> &amp; already escaped",
        "geometry": MULTIPOLYGON_WITH_HOLES,
    },
    {
        "OBJECTID": 4,
        "NAME": LONG_TEXT,
        "CODE": None,
        "SMALL": None,
        "VALUE": 1e-300,
        "RATIO": 3.5,
        "CREATED": None,
        "DAY": dt.date(2024, 2, 29),
        "NOTE": "",
        "geometry": LINESTRING,
    },
    {
        "OBJECTID": 5,
        "NAME": "line\nbreak\ttab\\backslash",
        "CODE": 5,
        "SMALL": 5,
        "VALUE": 100.0,
        "RATIO": -2.25,
        "CREATED": dt.datetime(2023, 6, 15, 12, 30, 45, 250000, tzinfo=UTC),
        "DAY": dt.date(1969, 12, 31),
        "NOTE": "quote \" apostrophe ' lt < gt > amp &",
        "geometry": MULTILINESTRING,
    },
    {
        "OBJECTID": 6,
        "NAME": None,
        "CODE": 6,
        "SMALL": 6,
        "VALUE": None,
        "RATIO": 1.0,
        "CREATED": dt.datetime(2000, 1, 1, tzinfo=UTC),
        "DAY": dt.date(2000, 1, 1),
        "NOTE": "no geometry",
        "geometry": None,
    },
    {
        "OBJECTID": 7,
        "NAME": "rounded point",
        "CODE": 7,
        "SMALL": 7,
        "VALUE": 2.5,
        "RATIO": 0.25,
        "CREATED": dt.datetime(1970, 1, 1, tzinfo=UTC),
        "DAY": dt.date(1970, 1, 1),
        "NOTE": "x",
        "geometry": POINT_ROUNDED,
    },
]

ALL_TYPES = ("Point", "LineString", "MultiLineString", "Polygon", "MultiPolygon")


def schema(
    *,
    fields: Sequence[Field] = FIELDS,
    geometry_type: str | None = "esriGeometryPolygon",
    crs: CRS | None = WGS84,
    name: str = "test layer & <friends>",
    oid_field: str | None = "OBJECTID",
) -> LayerSchema:
    """A schema over ``fields``; with geometry it admits every type in ``ROWS``."""
    return LayerSchema(
        fields=tuple(fields),
        oid_field=oid_field,
        geometry_type=geometry_type,
        crs=crs,
        name=name,
        geometry_types_override=ALL_TYPES if geometry_type is not None else None,
    )


def geometry_array(values: Sequence[shapely.Geometry | None]) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


def batch(
    rows: Sequence[dict[str, Any]] = ROWS,
    *,
    layer: LayerSchema | None = None,
    with_geometry: bool = True,
    crs: CRS | None = WGS84,
) -> FeatureBatch:
    """A FeatureBatch holding ``rows`` (attribute types from the schema, never guessed)."""
    layer = layer or schema()
    arrow = layer.arrow_schema()
    columns = [pa.array([r.get(f.name) for r in rows], type=arrow.field(f.name).type) for f in layer.attribute_fields]
    table = pa.Table.from_arrays(columns, schema=arrow)
    geometry = geometry_array([r.get("geometry") for r in rows]) if with_geometry else None
    return FeatureBatch(table, geometry, crs)


def shifted(rows: Sequence[dict[str, Any]], oid_offset: int) -> list[dict[str, Any]]:
    """Copies of ``rows`` with OBJECTID moved by ``oid_offset`` (for a second batch)."""
    return [{**r, "OBJECTID": r["OBJECTID"] + oid_offset} for r in rows]


def iso_utc(value: dt.datetime) -> str:
    """``1965-03-01T00:00:00Z`` (milliseconds only when present), computed independently."""
    text = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += f".{value.microsecond // 1000:03d}"
    return text + "Z"


def expected_json_value(field: str, value: Any) -> Any:
    """What a GeoJSON reader should get back for an input value."""
    if value is None:
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dt.datetime):
        return iso_utc(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    if field == "RATIO":  # float32: its shortest float32 decimal form
        return float(str(np.float32(value)))
    return value


def expected_text(field: str, value: Any) -> str | None:
    """What a KML ``<value>`` should hold for an input value (None: element omitted)."""
    v = expected_json_value(field, value)
    if v is None:
        return None
    if isinstance(v, float):
        return repr(v) if not v.is_integer() else str(int(v))
    return str(v)


def signed_area(ring: Sequence[Sequence[float]]) -> float:
    """Shoelace area: positive for counter-clockwise rings."""
    pts = np.asarray(ring, dtype=float)[:, :2]
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def rounded(geom: shapely.Geometry, decimals: int = 7) -> shapely.Geometry:
    return shapely.transform(geom, lambda c: np.round(c, decimals))


def same_shape(a: shapely.Geometry | None, b: shapely.Geometry | None, tolerance: float = 1e-7) -> bool:
    """Equal within ``tolerance`` whatever the ring orientation and start vertex."""
    if a is None or b is None:
        return a is None and b is None
    return bool(shapely.equals_exact(shapely.normalize(a), shapely.normalize(b), tolerance=tolerance))


def files_in(folder: Any) -> list[str]:
    """Every entry of a folder, hidden temp files included."""
    import os

    return sorted(os.listdir(folder))
