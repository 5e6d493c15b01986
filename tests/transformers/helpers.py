"""Small builders for transformer tests: schemas and batches from plain Python values."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.schema import Field, LayerSchema


def geoms(values: Sequence[shapely.Geometry | str | None]) -> np.ndarray:
    """A 1-D object array from geometries, WKT strings and Nones."""
    arr = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        arr[i] = shapely.from_wkt(v) if isinstance(v, str) else v
    return arr


def layer(
    geometry_type: str | None,
    crs: CRS | str | int | None,
    *,
    extra_fields: Sequence[Field] = (),
    has_z: bool = False,
    has_m: bool = False,
    name: str = "test_layer",
) -> LayerSchema:
    """A schema with OBJECTID (OID) and NAME (string) plus ``extra_fields``."""
    fields = (Field("OBJECTID", "esriFieldTypeOID"), Field("NAME", "esriFieldTypeString", length=20), *extra_fields)
    return LayerSchema(
        fields=tuple(fields),
        oid_field="OBJECTID",
        geometry_type=geometry_type,
        crs=None if crs is None else CRS.from_user_input(crs),
        has_z=has_z,
        has_m=has_m,
        name=name,
    )


def batch(schema: LayerSchema, geometry: np.ndarray | None, start_oid: int = 1) -> FeatureBatch:
    """A batch for ``schema``: OBJECTIDs from ``start_oid``, NAME "f<oid>", other columns null."""
    n = 0 if geometry is None else len(geometry)
    columns = []
    for f in schema.attribute_fields:
        if f.name == "OBJECTID":
            columns.append(pa.array(np.arange(start_oid, start_oid + n), type=pa.int64()))
        elif f.name == "NAME":
            columns.append(pa.array([f"f{start_oid + i}" for i in range(n)], type=pa.string()))
        else:
            columns.append(pa.nulls(n, type=f.arrow_type))
    table = pa.Table.from_arrays(columns, schema=schema.arrow_schema())
    return FeatureBatch(table, geometry, schema.crs)


def random_polygons(rng: np.random.Generator, n: int, bounds: tuple[float, float, float, float], size: float) -> np.ndarray:
    """``n`` star-ish polygons (some with a hole, every 5th a 2-part MultiPolygon) inside ``bounds``."""
    xmin, ymin, xmax, ymax = bounds
    out = np.empty(n, dtype=object)
    for i in range(n):
        cx, cy = rng.uniform(xmin + size, xmax - size), rng.uniform(ymin + size, ymax - size)
        k = 12
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(0.4, 1.0, k) * size
        shell = np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])
        poly = shapely.make_valid(shapely.Polygon(shell))
        if i % 3 == 1:
            poly = poly.difference(shapely.Point(cx, cy).buffer(size * 0.2, 8))
        if i % 5 == 4:
            poly = poly.union(shapely.box(cx + size * 1.1, cy, cx + size * 1.4, cy + size * 0.3))
        polys = [p for p in shapely.get_parts(poly) if p.geom_type == "Polygon"]
        out[i] = polys[0] if len(polys) == 1 else shapely.MultiPolygon(polys)
    return out


def random_lines(rng: np.random.Generator, n: int, bounds: tuple[float, float, float, float], size: float) -> np.ndarray:
    """``n`` wiggly LineStrings (every 4th a 2-part MultiLineString) inside ``bounds``."""
    xmin, ymin, xmax, ymax = bounds
    out = np.empty(n, dtype=object)
    for i in range(n):
        x0, y0 = rng.uniform(xmin + size, xmax - size), rng.uniform(ymin + size, ymax - size)
        steps = rng.normal(0, size / 4, (8, 2))
        coords = np.cumsum(np.vstack([[x0, y0], steps]), axis=0)
        line = shapely.LineString(coords)
        if i % 4 == 3:
            line = shapely.MultiLineString([line, shapely.LineString(coords[::-1] + size * 0.5)])
        out[i] = line
    return out
