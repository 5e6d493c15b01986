"""FeatureBatches for the shapefile and GeoParquet loader tests, built directly.

Every layer has the same attribute fields (one per Esri type, with nulls, unicode, emoji,
markup characters, a 10,000-character string, dates before 1970 with and without a time
of day, and long names that collide once cut to 10 characters) and one of these geometry
sets: points (the first at (0, 0)), polygons (holes, multipolygons whose parts have holes),
lines (LineString and MultiLineString), multipoints (with plain Points mixed in). Every
7th feature has no geometry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.schema import Field, LayerSchema

UTC = dt.timezone.utc
LONG_TEXT = "长" * 3 + "x" * 9_994 + "🌳🌳🌳"  # 10,000 characters, 1 emoji = 4 UTF-8 bytes
NAMES = ["Parc de l'Étoile", "公园", 'Smith & Sons <b>"q"</b>', "🌳 emoji", "plain", "a&<\"'b", None]

FIELDS: tuple[Field, ...] = (
    Field("OBJECTID", "esriFieldTypeOID", nullable=False),
    Field("NAME", "esriFieldTypeString", length=50),
    Field("NOTES", "esriFieldTypeString"),  # no declared length → 254
    Field("NAME_LONG_1", "esriFieldTypeString", length=20),
    Field("NAME_LONG_2", "esriFieldTypeString", length=20),
    Field("SHAPE_Length", "esriFieldTypeDouble"),
    Field("SMALL", "esriFieldTypeSmallInteger"),
    Field("COUNT", "esriFieldTypeInteger"),
    Field("BIG", "esriFieldTypeBigInteger"),
    Field("RATIO", "esriFieldTypeSingle"),
    Field("CREATED", "esriFieldTypeDate"),
    Field("DAY", "esriFieldTypeDateOnly"),
    Field("AT_TIME", "esriFieldTypeTimeOnly"),
    Field("GlobalID", "esriFieldTypeGlobalID"),
    Field("Shape", "esriFieldTypeGeometry"),  # no attribute value: left out of the table
)

GEOMETRY_TYPES = {
    "points": "esriGeometryPoint",
    "polygons": "esriGeometryPolygon",
    "lines": "esriGeometryPolyline",
    "multipoints": "esriGeometryMultipoint",
    "table": None,
}


def make_schema(kind: str, crs: CRS | None = None, *, has_z: bool = False) -> LayerSchema:
    """Schema of a ``kind`` layer ("points", "polygons", "lines", "multipoints", "table")."""
    geometry_type = GEOMETRY_TYPES[kind]
    override = ("Point", "MultiPoint") if kind == "multipoints" else None
    return LayerSchema(
        FIELDS,
        oid_field="OBJECTID",
        geometry_type=geometry_type,
        crs=(crs if crs is not None else CRS.from_epsg(4326)) if geometry_type is not None else None,
        has_z=has_z,
        name=f"test_{kind}",
        geometry_types_override=override,
    )


def _polygon(i: int) -> shapely.Geometry:
    x0, y0 = -122.5 + (i % 20) * 0.01, 37.7 + (i // 20) * 0.01
    shell = shapely.box(x0, y0, x0 + 0.008, y0 + 0.008)
    hole = shapely.box(x0 + 0.002, y0 + 0.002, x0 + 0.004, y0 + 0.004)
    other = shapely.box(x0 + 0.0085, y0, x0 + 0.0095, y0 + 0.001)
    other_hole = shapely.box(x0 + 0.0087, y0 + 0.0002, x0 + 0.0089, y0 + 0.0004)
    kind = i % 4
    if kind == 0:
        return shell
    if kind == 1:
        return shell.difference(hole)
    if kind == 2:
        return shapely.MultiPolygon([shell.difference(hole), other])
    return shapely.MultiPolygon([shell.difference(hole), other.difference(other_hole)])


def make_geometry(kind: str, i: int, has_z: bool = False) -> shapely.Geometry | None:
    """Geometry of feature ``i``; None for every 7th feature (not the first)."""
    if i % 7 == 6:
        return None
    if kind == "points":
        x, y = (0.0, 0.0) if i == 0 else (-122.0 - i * 0.001, 37.0 + i * 0.0007)
        return shapely.Point(x, y, float(i)) if has_z else shapely.Point(x, y)
    if kind == "polygons":
        return _polygon(i)
    if kind == "lines":
        a = shapely.LineString([(i, 0.0), (i + 0.5, 1.25), (i + 1.0, -0.5)])
        if i % 2:
            return shapely.MultiLineString([a, shapely.LineString([(i, 5.0), (i + 0.1, 6.0)])])
        return a
    if kind == "multipoints":
        if i % 3 == 0:
            return shapely.Point(i * 0.5, -i * 0.25)
        return shapely.MultiPoint([(i, i), (i + 0.5, i - 0.5)])
    raise ValueError(kind)


def _created(i: int) -> int | None:
    if i % 5 == 4:
        return None
    day = dt.datetime(1931, 3, 1, tzinfo=UTC) + dt.timedelta(days=1_777 * i)
    if i % 3 == 1:
        day += dt.timedelta(hours=13, minutes=7, seconds=5, milliseconds=250)  # a time of day
    return int(day.timestamp() * 1000)


def attribute_rows(start: int, n: int) -> dict[str, list[object]]:
    """Columns of rows ``start … start+n-1`` as Python values (Arrow ``from_pydict`` input)."""
    idx = range(start, start + n)
    return {
        "OBJECTID": [i + 1 for i in idx],
        "NAME": [NAMES[i % len(NAMES)] for i in idx],
        "NOTES": [LONG_TEXT if i % 9 == 2 else (None if i % 9 == 5 else f"note {i}") for i in idx],
        "NAME_LONG_1": [f"first {i}" for i in idx],
        "NAME_LONG_2": [None if i % 4 == 3 else f"second {i}" for i in idx],
        "SHAPE_Length": [None if i % 6 == 5 else i * 1234.5678 - 5000.25 for i in idx],
        "SMALL": [None if i % 8 == 7 else (-32768 if i % 8 == 0 else i % 32767) for i in idx],
        "COUNT": [None if i % 10 == 9 else (i * 7919) * (-1) ** i for i in idx],
        "BIG": [None if i % 11 == 10 else 2**40 + i for i in idx],
        "RATIO": [None if i % 12 == 11 else i / 8.0 for i in idx],
        "CREATED": [_created(i) for i in idx],
        "DAY": [None if i % 7 == 3 else dt.date(1899, 12, 31) + dt.timedelta(days=4_001 * i) for i in idx],
        "AT_TIME": [None if i % 5 == 2 else (i * 3_723_001) % 86_400_000 for i in idx],
        "GlobalID": [None if i % 13 == 12 else f"{{{i:08X}-0000-4000-8000-{i:012X}}}" for i in idx],
    }


def make_batch(schema: LayerSchema, kind: str, start: int, n: int) -> FeatureBatch:
    """Rows ``start … start+n-1`` of a ``kind`` layer as one FeatureBatch."""
    table = pa.Table.from_pydict(attribute_rows(start, n), schema=schema.arrow_schema())
    if schema.geometry_type is None:
        return FeatureBatch(table, None, None)
    geoms = np.empty(n, dtype=object)
    geoms[:] = [make_geometry(kind, i, schema.has_z) for i in range(start, start + n)]
    return FeatureBatch(table, geoms, schema.crs)


def make_batches(schema: LayerSchema, kind: str, n: int, batch_size: int) -> Iterator[FeatureBatch]:
    for start in range(0, n, batch_size):
        yield make_batch(schema, kind, start, min(batch_size, n - start))


def promote(geom: shapely.Geometry | None) -> shapely.Geometry | None:
    """Single → Multi (shapefiles do not record the difference), then normalized."""
    if geom is None or geom.is_empty:
        return None
    type_id = shapely.get_type_id(geom)
    if type_id == 0:
        geom = shapely.MultiPoint([geom])
    elif type_id == 1:
        geom = shapely.MultiLineString([geom])
    elif type_id == 3:
        geom = shapely.MultiPolygon([geom])
    return shapely.normalize(geom)
