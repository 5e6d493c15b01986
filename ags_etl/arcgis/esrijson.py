"""Esri JSON ⇄ shapely 2 and Arrow (pure functions, no I/O).

Decoding rules (see ../shared/notes/arcgis-rest.md §9):

* Points ``{x, y[, z][, m]}``: 0 is a valid coordinate; ``x`` null or ``"NaN"``
  means an empty point, decoded as a null geometry.
* Polygons: ``rings`` is a flat list. Esri draws exteriors clockwise and holes
  counter-clockwise, but nothing ties a hole to its exterior and real servers
  send rings in any order (Koop 9.3 lists each hole *before* its exterior). So
  rings are nested by containment, as GDAL's ``organizePolygons`` does: a ring
  inside an even number of other rings is an exterior, inside an odd number a hole
  of the smallest ring containing it. Orientation is not trusted.
* Polylines: one path → LineString, several → MultiLineString.
* Empty and null geometries decode to ``None``; they are kept, never dropped.
* Coordinates: ``[x, y, z, m]`` when the layer has Z and M, ``[x, y, m]`` when
  it has M only. Z is kept, M is dropped.

Attribute decoding follows the layer's field list (never the values): dates are
epoch milliseconds UTC → ``timestamp[ms, UTC]``; ids sent as floats
(``6.4579816E7``, Columbia MO 10.01) become integers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import GeometryError
from ags_etl.schema import LayerSchema

_NAN_STRINGS = frozenset({"NaN", "nan", ""})


# --------------------------------------------------------------------------- geometry


def _is_missing(value: Any) -> bool:
    """True for a coordinate that marks an empty geometry (null, "NaN", NaN)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in _NAN_STRINGS
    return isinstance(value, float) and value != value


def _coord_array(points: Sequence[Sequence[float]], has_z: bool, has_m: bool) -> np.ndarray:
    """Vertex list → float array with 2 (xy) or 3 (xyz) columns; M is dropped."""
    try:
        arr = np.asarray(points, dtype=float)
    except ValueError:
        # Ragged vertices (some with z, some without): pad per vertex.
        width = 3 if has_z else 2
        arr = np.array([list(p[:width]) + [0.0] * (width - len(p[:width])) for p in points], dtype=float)
        return arr
    if arr.ndim != 2 or arr.shape[0] == 0:
        return arr.reshape(0, 3 if has_z else 2)
    if has_z and arr.shape[1] >= 3:
        return arr[:, :3]
    # [x, y, m] (M without Z) or plain [x, y]: keep xy only.
    return arr[:, :2]


def _ring_signed_area(coords: np.ndarray) -> float:
    x, y = coords[:, 0], coords[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def organize_rings(rings: Sequence[np.ndarray]) -> shapely.Geometry | None:
    """Build a Polygon or MultiPolygon from rings given in any order and orientation.

    Nesting is decided by containment: a ring inside an even number of rings is an
    exterior; inside an odd number, a hole of the smallest ring that contains it.
    Degenerate rings (fewer than 4 vertices after closing) are ignored.
    """
    closed: list[np.ndarray] = []
    for ring in rings:
        if len(ring) == 0:
            continue
        if not np.array_equal(ring[0], ring[-1]):
            ring = np.vstack([ring, ring[:1]])
        if len(ring) >= 4:
            closed.append(ring)
    if not closed:
        return None
    if len(closed) == 1:
        return shapely.polygons(closed[0])

    areas = np.array([abs(_ring_signed_area(r)) for r in closed])
    order = np.argsort(-areas, kind="stable")  # larger rings first: a container precedes what it holds
    ordered = [closed[i] for i in order]
    ring_index = np.repeat(np.arange(len(ordered)), [len(r) for r in ordered])
    ring_polys = shapely.polygons(shapely.linearrings(np.vstack(ordered), indices=ring_index))
    shapely.prepare(ring_polys)
    bounds = shapely.bounds(ring_polys)
    parent = np.full(len(order), -1)
    depth = np.zeros(len(order), dtype=int)
    for k in range(1, len(order)):
        # A vertex of ring k that is not on a candidate's boundary decides containment;
        # use the representative point of ring k's own polygon (always inside it).
        probe = shapely.point_on_surface(ring_polys[k])
        px, py = shapely.get_x(probe), shapely.get_y(probe)
        for j in range(k - 1, -1, -1):  # smallest (latest) candidate first
            b = bounds[j]
            if not (b[0] <= px <= b[2] and b[1] <= py <= b[3]):
                continue
            if shapely.contains_xy(ring_polys[j], px, py) and areas[order[j]] >= areas[order[k]]:
                parent[k] = j
                depth[k] = depth[j] + 1
                break
    polygons: list[shapely.Geometry] = []
    for k in range(len(order)):
        if depth[k] % 2 == 1:
            continue
        holes = [closed[order[h]] for h in range(len(order)) if parent[h] == k and depth[h] % 2 == 1]
        polygons.append(shapely.Polygon(closed[order[k]], holes))
    if len(polygons) == 1:
        return polygons[0]
    return shapely.MultiPolygon(polygons)


def decode_geometry(
    geometry: dict[str, Any] | None, geometry_type: str | None = None, *, has_z: bool = False, has_m: bool = False
) -> shapely.Geometry | None:
    """One Esri JSON geometry → a shapely geometry, or None when null/empty.

    ``geometry_type`` (``esriGeometry*``) is used when given; otherwise the type is
    read from the keys present. Raises GeometryError for an unknown shape.
    """
    if geometry is None:
        return None
    if "x" in geometry:
        x, y = geometry.get("x"), geometry.get("y")
        if x is None or y is None or _is_missing(x) or _is_missing(y):
            return None
        z = geometry.get("z")
        if has_z and z is not None and not _is_missing(z):
            return shapely.Point(float(x), float(y), float(z))
        return shapely.Point(float(x), float(y))
    if "rings" in geometry:
        rings = [_coord_array(r, has_z, has_m) for r in geometry["rings"] or []]
        return organize_rings(rings)
    if "paths" in geometry:
        paths = [_coord_array(p, has_z, has_m) for p in geometry["paths"] or []]
        paths = [p for p in paths if len(p) >= 2]
        if not paths:
            return None
        if len(paths) == 1:
            return shapely.LineString(paths[0])
        return shapely.MultiLineString(paths)
    if "points" in geometry:
        pts = _coord_array(geometry["points"] or [], has_z, has_m)
        if len(pts) == 0:
            return None
        return shapely.multipoints(pts)
    if "xmin" in geometry:
        if any(_is_missing(geometry.get(k)) for k in ("xmin", "ymin", "xmax", "ymax")):
            return None
        return shapely.box(geometry["xmin"], geometry["ymin"], geometry["xmax"], geometry["ymax"])
    if "curveRings" in geometry or "curvePaths" in geometry:
        raise GeometryError(
            "true curves (curveRings/curvePaths) are not decoded; query with returnTrueCurves=false "
            "so the server densifies them"
        )
    if not geometry:
        return None
    raise GeometryError(f"unknown Esri JSON geometry with keys {sorted(geometry)[:6]} (type {geometry_type})")


def _coordinates(geoms: list[dict[str, Any] | None], key: str) -> np.ndarray:
    """One coordinate of every point as float64; null, "NaN" and missing become NaN."""
    values = [None if g is None else g.get(key) for g in geoms]
    try:
        return np.array(values, dtype=float)  # None → NaN, "NaN" → NaN
    except (TypeError, ValueError):
        return np.array([np.nan if v is None or _is_missing(v) else float(v) for v in values], dtype=float)


def _decode_points(geoms: list[dict[str, Any] | None], has_z: bool) -> np.ndarray:
    """Vectorised point decoding: one shapely.points call for the whole page.

    A point with x or y missing is a null geometry; a missing z (when the layer has Z) is 0.
    """
    out = np.full(len(geoms), None, dtype=object)
    xs = _coordinates(geoms, "x")
    ys = _coordinates(geoms, "y")
    ok = ~(np.isnan(xs) | np.isnan(ys))
    if ok.any():
        if has_z:
            zs = _coordinates(geoms, "z")
            zs[np.isnan(zs)] = 0.0
            out[ok] = shapely.points(xs[ok], ys[ok], zs[ok])
        else:
            out[ok] = shapely.points(xs[ok], ys[ok])
    return out


def decode_geometries(
    geoms: list[dict[str, Any] | None], geometry_type: str | None, *, has_z: bool = False, has_m: bool = False
) -> np.ndarray:
    """A page of Esri JSON geometries → numpy object array of shapely geometries / None."""
    if geometry_type == "esriGeometryPoint":
        return _decode_points(geoms, has_z)
    out = np.empty(len(geoms), dtype=object)
    for i, g in enumerate(geoms):
        out[i] = decode_geometry(g, geometry_type, has_z=has_z, has_m=has_m)
    return out


def encode_geometry(geom: shapely.Geometry | None, has_z: bool = False) -> dict[str, Any] | None:
    """A shapely geometry → Esri JSON (no spatialReference); None for null or empty.

    Polygon exteriors are written clockwise and holes counter-clockwise (Esri's rule).
    """
    if geom is None or geom.is_empty:
        return None
    kind = geom.geom_type
    z = has_z and shapely.has_z(geom)
    if kind == "Point":
        out: dict[str, Any] = {"x": geom.x, "y": geom.y}
        if z:
            out["z"] = geom.z
        return out
    if kind == "MultiPoint":
        return {"points": shapely.get_coordinates(geom, include_z=z).tolist()}
    if kind == "LineString":
        return {"paths": [shapely.get_coordinates(geom, include_z=z).tolist()]}
    if kind == "MultiLineString":
        return {"paths": [shapely.get_coordinates(p, include_z=z).tolist() for p in geom.geoms]}
    if kind in ("Polygon", "MultiPolygon"):
        oriented = shapely.orient_polygons(geom, exterior_cw=True)
        polys = [oriented] if kind == "Polygon" else list(oriented.geoms)
        rings: list[list[list[float]]] = []
        for p in polys:
            rings.append(shapely.get_coordinates(p.exterior, include_z=z).tolist())
            rings.extend(shapely.get_coordinates(h, include_z=z).tolist() for h in p.interiors)
        return {"rings": rings}
    if kind == "GeometryCollection":
        raise GeometryError("a GeometryCollection has no Esri JSON form; split it by type first")
    raise GeometryError(f"cannot encode geometry type {kind} as Esri JSON")


# --------------------------------------------------------------------------- attributes


def _column(values: list[Any], dtype: pa.DataType, name: str) -> pa.Array:
    """Values of one field → an Arrow array of the field's type (from the schema)."""
    try:
        if pa.types.is_timestamp(dtype):
            return pa.array(values, type=pa.int64()).cast(dtype)
        if pa.types.is_date32(dtype):
            # DateOnly comes as "yyyy-mm-dd" strings (11.2+) or epoch ms.
            if any(isinstance(v, str) for v in values):
                return pa.array(values, type=pa.string()).cast(pa.date32())
            return pa.array(values, type=pa.int64()).cast(pa.timestamp("ms")).cast(pa.date32())
        if pa.types.is_time32(dtype):
            if any(isinstance(v, str) for v in values):
                return pa.array(values, type=pa.string()).cast(pa.time32("s")).cast(dtype)
            return pa.array(values, type=pa.int32()).cast(dtype)
        if pa.types.is_string(dtype):
            return pa.array([v if v is None or isinstance(v, str) else str(v) for v in values], type=dtype)
        return pa.array(values, type=dtype)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
        sample = next((v for v in values if v is not None), None)
        raise GeometryError(
            f"field {name!r}: value {sample!r} does not fit its declared type {dtype}; "
            f"check the layer's field list or cast the field"
        ) from exc


def _attribute_lookup(attrs: dict[str, Any], names: list[str]) -> dict[str, str]:
    """Map schema field names to the keys a server used (qualified or differently cased)."""
    mapping: dict[str, str] = {}
    lower = {k.lower(): k for k in attrs}
    short = {k.rsplit(".", 1)[-1].lower(): k for k in attrs}
    for n in names:
        if n in attrs:
            mapping[n] = n
        elif n.lower() in lower:
            mapping[n] = lower[n.lower()]
        elif n.rsplit(".", 1)[-1].lower() in short:
            mapping[n] = short[n.rsplit(".", 1)[-1].lower()]
    return mapping


def decode_attributes(records: list[dict[str, Any]], schema: LayerSchema) -> pa.Table:
    """Attribute dicts → Arrow table with the schema's fields and types (missing keys → null)."""
    fields = schema.attribute_fields
    names = [f.name for f in fields]
    keymap: dict[str, str] = {}
    if records:
        keymap = _attribute_lookup(records[0], names)
    arrays = []
    for f in fields:
        key = keymap.get(f.name)
        if key is None:
            values: list[Any] = [None] * len(records)
        else:
            values = [r.get(key) for r in records]
        arrays.append(_column(values, f.arrow_type, f.name))
    return pa.Table.from_arrays(arrays, schema=schema.arrow_schema())


def decode_features(features: list[dict[str, Any]], schema: LayerSchema, crs: CRS | None = None) -> FeatureBatch:
    """A page of Esri JSON features → FeatureBatch (rows in the order given)."""
    table = decode_attributes([f.get("attributes") or {} for f in features], schema)
    if schema.geometry_type is None:
        return FeatureBatch(table, None, crs if crs is not None else schema.crs)
    geoms = decode_geometries(
        [f.get("geometry") for f in features], schema.geometry_type, has_z=schema.has_z, has_m=schema.has_m
    )
    return FeatureBatch(table, geoms, crs if crs is not None else schema.crs)


def decode_geojson_features(features: list[dict[str, Any]], schema: LayerSchema) -> FeatureBatch:
    """A page of an ``f=geojson`` answer → FeatureBatch.

    ArcGIS (10.8+) sends dates as epoch ms in properties and the OID as the feature
    ``id``; Koop 9.3 omits ``"type": "Feature"`` and ``id``, so neither is required.
    """
    records = []
    for f in features:
        props = dict(f.get("properties") or {})
        if schema.oid_field is not None and schema.oid_field not in props and f.get("id") is not None:
            props[schema.oid_field] = f["id"]
        records.append(props)
    table = decode_attributes(records, schema)
    if schema.geometry_type is None:
        return FeatureBatch(table, None, schema.crs)
    geoms = np.empty(len(features), dtype=object)
    for i, f in enumerate(features):
        g = f.get("geometry")
        if g is None:
            geoms[i] = None
            continue
        try:
            geom = shapely.geometry.shape(g)
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise GeometryError(f"feature {i} of a GeoJSON page has an unreadable geometry: {exc}") from exc
        geoms[i] = None if geom.is_empty else geom
    return FeatureBatch(table, geoms, schema.crs)
