"""Esri JSON ⇄ shapely 2 and Arrow (pure functions, no I/O).

Decoding rules (the ArcGIS REST geometry objects):

* Points ``{x, y[, z][, m]}``: 0 is a valid coordinate. Following Esri, ``x`` or ``y``
  null, ``"NaN"`` (or ``"nan"``, ``""``) or a NaN number means an *empty point*, decoded
  as a null geometry. A coordinate that is ±infinity, not a number (``"abc"``, ``true``,
  a list) or beyond the float range raises GeometryError naming the feature. Numbers
  sent as strings (``"2.5"``) are read as numbers. A missing or NaN ``z`` (layer with Z)
  is 0.
* Vertices (``points``, ``paths``, ``rings``) are ``[x, y, z?, m?]`` lists of numbers.
  X and Y must be finite; a null/NaN Z stays NaN ("no Z"), an infinite Z is refused.
  ``[x, y, z, m]`` when the layer has Z and M, ``[x, y, m]`` when it has M only: Z is
  kept, M is dropped. A vertex without Z in a Z layer gets z = 0.
* Polygons: ``rings`` is a flat list. Esri draws exteriors clockwise and holes
  counter-clockwise, but nothing ties a hole to its exterior and real servers
  send rings in any order (Koop 9.3 lists each hole *before* its exterior). So
  rings are nested by containment, as GDAL's ``organizePolygons`` does: a ring
  inside an even number of other rings is an exterior, inside an odd number a hole
  of the smallest ring containing it. Orientation is not trusted. An open ring is
  closed; a ring with fewer than 3 distinct positions (1–2 points, or ``[a, b, a]``)
  is refused.
* Polylines: one path → LineString, several → MultiLineString; a path of one vertex
  is refused. Empty paths, rings and point lists are skipped.
* Empty and null geometries decode to ``None``; they are kept, never dropped.
* A geometry is decoded as what it is, whatever the layer's ``geometryType`` says: a
  polygon in a point layer's answer becomes a Polygon (writers that hold one
  geometry family, such as shapefile, then refuse it naming the feature).
* Malformed input — ``features`` not a list, a feature that is not an object, missing
  or non-object ``attributes``, a geometry that is not an object (a WKT string, a
  number), ragged or non-numeric vertex arrays, unknown geometry keys — raises
  ArcGISError or GeometryError naming the feature (its OID, else its index in the
  page), the offending value (truncated) and the fix. Nothing else escapes.

Attribute decoding follows the layer's field list (never the values): dates are
epoch milliseconds UTC → ``timestamp[ms, UTC]``; ids sent as floats
(``6.4579816E7``, Columbia MO 10.01) become integers.

Performance: a page of points is decoded with a handful of numpy conversions; type
checks run over whole columns (``set(map(type, …))``), and a per-value slow path runs
only once something is wrong, to name the feature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ArcGISError, GeometryError
from ags_etl.schema import LayerSchema

_NAN_STRINGS = frozenset({"NaN", "nan", ""})
_NONE = type(None)
_NUMBER_TYPES = frozenset({float, int, _NONE})
_OBJECT_TYPES = frozenset({dict, _NONE})
#: The fix every malformed-input message ends with.
FIX_GEOMETRY = "the server sent malformed geometry; report it, or exclude the feature with --where"
FIX_FEATURE = "the server sent a malformed feature; report it, or exclude the feature with --where"


class _Malformed(GeometryError):
    """A malformed geometry, with the index of its feature in the page once known.

    Raised by the geometry decoders; :func:`decode_features` turns it into a
    GeometryError that names the feature. Outside a page it is an ordinary GeometryError.
    """

    def __init__(self, detail: str, fix: str = FIX_GEOMETRY, index: int | None = None) -> None:
        super().__init__(f"{detail}; {fix}")
        self.detail = detail
        self.fix = fix
        self.index = index


def _show(value: Any, limit: int = 60) -> str:
    """``repr`` of a value, cut to ``limit`` characters (hostile values can be huge)."""
    try:
        text = repr(value)
    except (RecursionError, ValueError):  # deeply nested lists; ints beyond str()'s digit limit
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- geometry


def _is_missing(value: Any) -> bool:
    """True for a coordinate that marks an empty geometry (null, "NaN", NaN)."""
    if value is None:
        return True
    if isinstance(value, str):
        return value in _NAN_STRINGS
    return isinstance(value, float) and math.isnan(value)


def _number(value: Any, what: str) -> float:
    """One coordinate as a float: NaN for the empty markers; raises _Malformed otherwise.

    Accepts int, float and numeric strings; refuses booleans, other types, ±infinity and
    ints beyond the float range.
    """
    if _is_missing(value):
        return float("nan")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise _Malformed(f"{what} is {_show(value)}, not a number")
    try:
        number = float(value)
    except (ValueError, OverflowError) as exc:
        raise _Malformed(f"{what} is {_show(value)}, not a finite number") from exc
    if number in (float("inf"), float("-inf")):
        raise _Malformed(f"{what} is {_show(value)}, not a finite number")
    return number


def _vertex_array_slow(points: Any, what: str, has_z: bool) -> np.ndarray:
    """Vertex list → (n, 2|3) float array, checking every vertex (the careful path)."""
    if not isinstance(points, list):
        raise _Malformed(f"{what} is {_show(points)}, not a list of [x, y] vertices")
    width = 3 if has_z and any(isinstance(p, list) and len(p) >= 3 for p in points) else 2
    out = np.empty((len(points), width), dtype=float)
    for k, p in enumerate(points):
        if not isinstance(p, list) or len(p) < 2:
            raise _Malformed(f"vertex {k} of {what} is {_show(p)}, not an [x, y, …] list of numbers")
        for j in range(2):
            v = _number(p[j], f"vertex {k} of {what}: {'xy'[j]}")
            if math.isnan(v):
                raise _Malformed(f"vertex {k} of {what} is {_show(p)}: {'xy'[j]} is not a number")
            out[k, j] = v
        if width == 3:
            out[k, 2] = _number(p[2], f"vertex {k} of {what}: z") if len(p) >= 3 else 0.0
    return out


def _vertex_array(points: Any, what: str, has_z: bool) -> np.ndarray:
    """Vertex list → float array with 2 (xy) or 3 (xyz) columns; M is dropped.

    One numpy conversion when the list is a regular grid of numbers; anything else
    (ragged vertices, nulls, strings, other types) goes through the careful path, which
    pads a missing Z with 0 and names the first bad vertex.
    """
    try:
        raw = np.asarray(points)
    except (ValueError, TypeError, OverflowError):  # ragged, or objects numpy cannot lay out
        return _vertex_array_slow(points, what, has_z)
    if raw.ndim == 1 and raw.size == 0 and isinstance(points, list):
        return np.empty((0, 3 if has_z else 2))
    if raw.dtype.kind not in "fi" or raw.ndim != 2 or raw.shape[1] < 2:
        return _vertex_array_slow(points, what, has_z)
    arr = raw[:, : 3 if has_z else 2].astype(float)  # [x, y, m] (M without Z): xy only
    if not np.isfinite(arr[:, :2]).all() or (arr.shape[1] == 3 and np.isinf(arr[:, 2]).any()):
        k = int(np.argmin(np.isfinite(arr[:, :2]).all(axis=1) & ~np.isinf(arr[:, 2:]).any(axis=1)))
        raise _Malformed(f"vertex {k} of {what} is {_show(points[k])}, not finite")
    return arr


def _vertex_lists(value: Any, key: str, has_z: bool) -> list[np.ndarray]:
    """``rings``/``paths`` → one float array per part (empty parts skipped)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Malformed(f"{key} is {_show(value)}, not a list of vertex lists")
    parts = [p for p in (_vertex_array(p, f"{key}[{k}]", has_z) for k, p in enumerate(value)) if len(p)]
    if len({p.shape[1] for p in parts}) > 1:  # some parts with Z, some without: z = 0 where missing
        parts = [p if p.shape[1] == 3 else np.column_stack([p, np.zeros(len(p))]) for p in parts]
    return parts


def _check_rings(rings: list[np.ndarray]) -> None:
    for k, ring in enumerate(rings):
        distinct = len(ring) - 1 if len(ring) > 1 and np.array_equal(ring[0], ring[-1], equal_nan=True) else len(ring)
        if distinct < 3:
            raise _Malformed(
                f"rings[{k}] has {distinct} vertices besides the closing one ({_show(ring.tolist())}); a ring needs 3"
            )


def _point(geometry: dict[str, Any], has_z: bool) -> shapely.Geometry | None:
    x = _number(geometry.get("x"), "x")
    y = _number(geometry.get("y"), "y")
    if math.isnan(x) or math.isnan(y):
        return None
    z = _number(geometry.get("z"), "z") if has_z else float("nan")
    if not math.isnan(z):
        return shapely.Point(x, y, z)
    return shapely.Point(x, y)


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
        if not np.array_equal(ring[0], ring[-1], equal_nan=True):
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

    The shape is read from the keys present (``x``, ``rings``, ``paths``, ``points``,
    ``xmin``), so a geometry is decoded as what it is; ``geometry_type`` is only named in
    messages. Raises GeometryError for malformed or unknown geometries (see the module
    docstring).
    """
    if geometry is None:
        return None
    if not isinstance(geometry, dict):
        raise _Malformed(f"geometry is {_show(geometry)}, not an Esri JSON geometry object")
    if "x" in geometry:
        return _point(geometry, has_z)
    if "rings" in geometry:
        rings = _vertex_lists(geometry["rings"], "rings", has_z)
        _check_rings(rings)
        with np.errstate(all="ignore"):  # areas of rings near ±1e308 overflow; nesting still completes
            return organize_rings(rings)
    if "paths" in geometry:
        paths = _vertex_lists(geometry["paths"], "paths", has_z)
        for k, p in enumerate(paths):
            if len(p) < 2:
                raise _Malformed(f"paths[{k}] has one vertex ({_show(p.tolist())}); a path needs 2")
        if not paths:
            return None
        if len(paths) == 1:
            return shapely.LineString(paths[0])
        return shapely.MultiLineString(paths)
    if "points" in geometry:
        pts = _vertex_array(geometry["points"] if geometry["points"] is not None else [], "points", has_z)
        if len(pts) == 0:
            return None
        return shapely.multipoints(pts)
    if "xmin" in geometry:
        box = [_number(geometry.get(k), k) for k in ("xmin", "ymin", "xmax", "ymax")]
        if any(math.isnan(v) for v in box):
            return None
        return shapely.box(*box)
    if "curveRings" in geometry or "curvePaths" in geometry:
        raise _Malformed(
            "true curves (curveRings/curvePaths) are not decoded",
            "query with returnTrueCurves=false so the server densifies them",
        )
    if not geometry:
        return None
    raise _Malformed(f"unknown Esri JSON geometry with keys {_show(sorted(geometry)[:6])} (layer type {geometry_type})")


def _first(kinds_ok: np.ndarray) -> int:
    return int(np.argmin(kinds_ok))


def _coordinates(geoms: list[dict[str, Any] | None], key: str) -> np.ndarray:
    """One coordinate of every point as float64; null, "NaN" and missing become NaN.

    Raises _Malformed (with the index) for a value that is not a number, or infinite.
    """
    values = [None if g is None else g.get(key) for g in geoms]
    out: np.ndarray | None = None
    if set(map(type, values)) <= _NUMBER_TYPES:
        try:
            out = np.array(values, dtype=float)  # None → NaN
        except OverflowError:  # an int beyond the float range: the careful path names it
            out = None
    if out is None or np.isinf(out).any():
        out = np.empty(len(values), dtype=float)
        for i, v in enumerate(values):
            try:
                out[i] = _number(v, key)
            except _Malformed as exc:
                exc.index = i
                raise
    return out


def _decode_points(geoms: list[Any], has_z: bool, has_m: bool) -> np.ndarray:
    """Vectorised point decoding: one shapely.points call for the whole page.

    A point with x or y missing is a null geometry; a missing z (when the layer has Z)
    is 0. Rows that are not points (a polygon in a point layer's answer) are decoded
    one by one as what they are.
    """
    kinds = set(map(type, geoms))
    if not kinds <= _OBJECT_TYPES:
        bad = next(i for i, g in enumerate(geoms) if type(g) not in _OBJECT_TYPES)
        raise _Malformed(f"geometry is {_show(geoms[bad])}, not an Esri JSON geometry object", index=bad)
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
    for i in np.flatnonzero(~ok).tolist():
        g = geoms[i]
        if g and "x" not in g:  # not a point at all: decode it as what it is
            try:
                out[i] = decode_geometry(g, "esriGeometryPoint", has_z=has_z, has_m=has_m)
            except _Malformed as exc:
                exc.index = i
                raise
    return out


#: Layer geometry type → the key its geometries list parts under; keys earlier in
#: _KEY_ORDER win when a geometry has several (as in decode_geometry).
_PART_KEYS = {"esriGeometryPolygon": "rings", "esriGeometryPolyline": "paths", "esriGeometryMultipoint": "points"}
_KEY_ORDER = ("x", "rings", "paths", "points")
_EXACT_INT = 2**53


def _nested_coordinates(values: list[Any], levels: int, has_z: bool) -> tuple[list[np.ndarray], np.ndarray] | None:
    """Nested lists of numbers → (offsets of each list level, vertices as an (n, 2|3) array).

    ``levels`` is the number of list levels above the vertex lists (2 for rings/paths:
    geometry → parts → vertices; 1 for multipoint vertices). The whole page is converted
    by Arrow in one pass. Returns None when anything is irregular — nulls, booleans,
    strings, vertices of different widths, integers beyond 2**53, coordinates that are not
    finite, an empty page — so the caller takes the careful per-geometry path, which
    decides (and names) every such case exactly as before.
    """
    try:
        arr = pa.array(values)
    except _CONVERSION_ERRORS:
        return None
    return _nested_from_arrow(arr, levels, has_z)


def _nested_from_arrow(arr: pa.Array, levels: int, has_z: bool) -> tuple[list[np.ndarray], np.ndarray] | None:
    """:func:`_nested_coordinates` of nested lists already in Arrow (list of list … of numbers)."""
    offsets: list[np.ndarray] = []
    for _ in range(levels + 1):
        if not pa.types.is_list(arr.type) or arr.null_count or arr.offset:
            return None
        offsets.append(arr.offsets.to_numpy())
        arr = arr.values
    if arr.null_count or not (pa.types.is_float64(arr.type) or pa.types.is_int64(arr.type)):
        return None
    flat = arr.to_numpy()
    if flat.dtype.kind == "i":
        if len(flat) and int(np.abs(flat).max()) > _EXACT_INT:
            return None
        flat = flat.astype(float)
    widths = np.diff(offsets[-1])
    if len(widths) == 0 or widths[0] < 2 or not (widths == widths[0]).all():
        return None
    width = int(widths[0])
    coords = flat.reshape(-1, width)[:, : 3 if has_z and width >= 3 else 2]
    if not np.isfinite(coords).all():
        return None
    return offsets[:-1], np.ascontiguousarray(coords)


def _decode_parts_bulk(
    geoms: list[dict[str, Any] | None], geometry_type: str | None, has_z: bool, out: np.ndarray
) -> np.ndarray | None:
    """Decode the plain geometries of a polygon, polyline or multipoint page in bulk.

    Plain means: a polygon of one closed ring of at least 4 vertices, a polyline whose
    paths all have 2 or more vertices, a multipoint with at least one vertex — with every
    vertex of the page a list of the same number of finite numbers. Those are built with
    shapely's vectorised constructors from one coordinate array (results identical to
    :func:`decode_geometry`) and written into ``out``; returns the mask of rows done, or
    None when the page has nothing to do in bulk. Every other row (holes, several
    polygons, open rings, nulls, malformed input) is left to the per-geometry path.
    """
    key = _PART_KEYS.get(geometry_type or "")
    if key is None:
        return None
    earlier = _KEY_ORDER[: _KEY_ORDER.index(key)]
    rows = [
        i for i, g in enumerate(geoms)
        if type(g) is dict and type(g.get(key)) is list and not any(k in g for k in earlier)
    ]
    if not rows:
        return None
    found = _nested_coordinates([geoms[i][key] for i in rows], 1 if key == "points" else 2, has_z)  # type: ignore[index]
    if found is None:
        return None
    return _build_parts(key, np.asarray(rows), found, out)


def _build_parts(
    key: str, rows_arr: np.ndarray, found: tuple[list[np.ndarray], np.ndarray], out: np.ndarray
) -> np.ndarray | None:
    """Build the plain geometries of ``rows_arr`` (rows of ``out``) from their offsets and vertices.

    ``found`` is :func:`_nested_coordinates`' answer for those rows' ``key`` lists. Returns
    the mask (over ``out``) of rows built, or None when none is plain.
    """
    offsets, coords = found
    rows = rows_arr
    done = np.zeros(len(out), dtype=bool)
    if key == "points":
        counts = np.diff(offsets[0])
        ok = counts > 0
        owner = np.repeat(np.arange(len(rows)), counts)
        keep = ok[owner]
        out[rows_arr[ok]] = shapely.multipoints(coords[keep], indices=np.repeat(np.arange(int(ok.sum())), counts[ok]))
        done[rows_arr[ok]] = True
        return done
    part_counts = np.diff(offsets[0])  # parts per geometry
    starts, ends = offsets[1][:-1], offsets[1][1:]
    vertex_counts = ends - starts  # vertices per part
    part_owner = np.repeat(np.arange(len(rows)), part_counts)
    if key == "rings":
        first, last = coords[np.minimum(starts, len(coords) - 1)], coords[np.maximum(ends - 1, 0)]
        closed = (vertex_counts >= 4) & (first == last).all(axis=1)
        good_part = closed
        ok = part_counts == 1
        ok[part_owner[~good_part]] = False
    else:
        good_part = vertex_counts >= 2
        ok = part_counts > 0
        ok[part_owner[~good_part]] = False
    if not ok.any():
        return None
    part_ok = ok[part_owner]
    vertex_ok = np.repeat(part_ok, vertex_counts)
    ids = np.repeat(np.arange(int(part_ok.sum())), vertex_counts[part_ok])
    if key == "rings":
        out[rows_arr[ok]] = shapely.polygons(shapely.linearrings(coords[vertex_ok], indices=ids))
    else:
        lines = shapely.linestrings(coords[vertex_ok], indices=ids)
        kept_counts = part_counts[ok]
        single = kept_counts == 1
        line_owner = np.repeat(np.arange(int(ok.sum())), kept_counts)
        geoms_out = np.empty(int(ok.sum()), dtype=object)
        geoms_out[single] = lines[single[line_owner]]
        if not single.all():
            multi = ~single[line_owner]
            geoms_out[~single] = shapely.multilinestrings(
                lines[multi], indices=np.searchsorted(np.flatnonzero(~single), line_owner[multi])
            )
        out[rows_arr[ok]] = geoms_out
    done[rows_arr[ok]] = True
    return done


def decode_geometries(
    geoms: list[dict[str, Any] | None], geometry_type: str | None, *, has_z: bool = False, has_m: bool = False
) -> np.ndarray:
    """A page of Esri JSON geometries → numpy object array of shapely geometries / None.

    Raises GeometryError for a malformed geometry; its ``index`` attribute (when set)
    is the position in ``geoms``.
    """
    if geometry_type == "esriGeometryPoint":
        return _decode_points(geoms, has_z, has_m)
    out = np.full(len(geoms), None, dtype=object)
    done = _decode_parts_bulk(geoms, geometry_type, has_z, out)
    for i, g in enumerate(geoms):
        if done is not None and done[i]:
            continue
        try:
            out[i] = decode_geometry(g, geometry_type, has_z=has_z, has_m=has_m)
        except _Malformed as exc:
            exc.index = i
            raise
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


def _convert(values: list[Any], dtype: pa.DataType) -> pa.Array:
    """Values of one field → an Arrow array of ``dtype`` (raises Arrow/Python errors)."""
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


_CONVERSION_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError,
                      OverflowError)


class _BadValue(ArcGISError):
    """An attribute value that does not fit its field's type, with the row once known."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


def _column(values: list[Any], dtype: pa.DataType, name: str) -> pa.Array:
    """Values of one field → an Arrow array of the field's type (from the schema).

    Raises _BadValue (an ArcGISError) naming the field, the first value that does not
    fit and its row.
    """
    try:
        return _convert(values, dtype)
    except _CONVERSION_ERRORS as exc:
        index, bad = 0, next((v for v in values if v is not None), None)
        for i, v in enumerate(values):  # the careful path: find the value to name
            try:
                _convert([v], dtype)
            except _CONVERSION_ERRORS:
                index, bad = i, v
                break
        raise _BadValue(
            f"field {name!r}: value {_show(bad)} does not fit its declared type {dtype}; {FIX_FEATURE}, "
            f"or leave the field out with --fields",
            index,
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
    """Attribute dicts → Arrow table with the schema's fields and types (missing keys → null).

    Raises ArcGISError for a value that does not fit its field's type; its ``index``
    attribute is the row.
    """
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


# --------------------------------------------------------------------------- pages


def _feature_label(feature: Any, index: int, schema: LayerSchema, key: str = "attributes") -> str:
    """``feature OBJECTID=17 (index 3 of the page)``, or ``feature at index 3 of the page``."""
    oid = None
    attrs = feature.get(key) if isinstance(feature, dict) else None
    if schema.oid_field is not None and isinstance(attrs, dict):
        found = _attribute_lookup(attrs, [schema.oid_field]).get(schema.oid_field)
        oid = None if found is None else attrs.get(found)
    if oid is None and key == "properties" and isinstance(feature, dict):
        oid = feature.get("id")
    if oid is not None and schema.oid_field is not None:
        return f"feature {schema.oid_field}={_show(oid, 30)} (index {index} of the page)"
    return f"feature at index {index} of the page"


def _check_page(features: Any, what: str) -> list[dict[str, Any]]:
    """``features`` must be a list of objects; raises ArcGISError naming the first bad one."""
    if not isinstance(features, list):
        raise ArcGISError(f"the {what} answer's features member is {_show(features)}, not a list; {FIX_FEATURE}")
    if not set(map(type, features)) <= {dict}:
        bad = next(i for i, f in enumerate(features) if type(f) is not dict)
        raise ArcGISError(
            f"feature at index {bad} of the page is {_show(features[bad])}, not a JSON object; {FIX_FEATURE}"
        )
    return features


def _decode_page(
    features: list[dict[str, Any]], records: list[dict[str, Any]], schema: LayerSchema, label_key: str
) -> pa.Table:
    try:
        return decode_attributes(records, schema)
    except _BadValue as exc:
        raise ArcGISError(f"{_feature_label(features[exc.index], exc.index, schema, label_key)}: {exc}") from exc


def decode_features(features: list[dict[str, Any]], schema: LayerSchema, crs: CRS | None = None) -> FeatureBatch:
    """A page of Esri JSON features → FeatureBatch (rows in the order given).

    Raises ArcGISError for a malformed page or feature (not a list, not an object,
    ``attributes`` missing or not an object, a value that does not fit its field) and
    GeometryError for a malformed geometry, each naming the feature (OID, else index),
    the value and the fix.
    """
    features = _check_page(features, "query")
    records = [f.get("attributes", _MISSING) for f in features]
    if not set(map(type, records)) <= {dict}:
        bad = next(i for i, r in enumerate(records) if type(r) is not dict)
        got = "no attributes member" if records[bad] is _MISSING else f"attributes {_show(records[bad])}"
        raise ArcGISError(
            f"feature at index {bad} of the page has {got}, not an object of field values; {FIX_FEATURE}"
        )
    table = _decode_page(features, records, schema, "attributes")
    if schema.geometry_type is None:
        return FeatureBatch(table, None, crs if crs is not None else schema.crs)
    try:
        geoms = decode_geometries(
            [f.get("geometry") for f in features], schema.geometry_type, has_z=schema.has_z, has_m=schema.has_m
        )
    except _Malformed as exc:
        where = "a feature" if exc.index is None else _feature_label(features[exc.index], exc.index, schema)
        raise GeometryError(f"{where}: {exc.detail}; {exc.fix}") from exc
    return FeatureBatch(table, geoms, crs if crs is not None else schema.crs)


# --------------------------------------------------------------------------- raw pages in bulk

#: Fields whose JSON values the Arrow reader may take as they are (any other type: careful path).
_WIRE_TYPES = {
    pa.int16(): pa.int16(), pa.int32(): pa.int32(), pa.int64(): pa.int64(), pa.float32(): pa.float32(),
    pa.float64(): pa.float64(), pa.string(): pa.string(), pa.timestamp("ms", tz="UTC"): pa.int64(),
}
#: Layer geometry type → how its geometries read from JSON (points: x/y/z; others: one nested list).
_WIRE_GEOMETRY = {
    "esriGeometryPolygon": ("rings", 3),
    "esriGeometryPolyline": ("paths", 3),
    "esriGeometryMultipoint": ("points", 2),
}


def _wire_schema(schema: LayerSchema) -> pa.Schema | None:
    """The Arrow schema a query answer of ``schema``'s layer is read with; None when no bulk read fits."""
    attrs = []
    for f in schema.attribute_fields:
        wire = _WIRE_TYPES.get(f.arrow_type)
        if wire is None:
            return None
        attrs.append(pa.field(f.name, wire))
    feature = [pa.field("attributes", pa.struct(attrs))]
    kind = schema.geometry_type
    if kind == "esriGeometryPoint":
        xyz = ("x", "y", "z") if schema.has_z else ("x", "y")
        feature.append(pa.field("geometry", pa.struct([pa.field(k, pa.float64()) for k in xyz])))
    elif kind in _WIRE_GEOMETRY:
        key, depth = _WIRE_GEOMETRY[kind]
        nested: pa.DataType = pa.float64()
        for _ in range(depth):
            nested = pa.list_(nested)
        feature.append(pa.field("geometry", pa.struct([pa.field(key, nested)])))
    elif kind is not None:
        return None
    return pa.schema([pa.field("features", pa.list_(pa.struct(feature))), pa.field("exceededTransferLimit", pa.bool_())])


_NOT_PLAIN = (b"NaN", b"Inf")  # literals orjson refuses and the Arrow reader takes: the careful path decides


def decode_raw_page(body: bytes, schema: LayerSchema) -> tuple[FeatureBatch, bool] | None:
    """A query answer's raw JSON → (batch, exceededTransferLimit), or None to take the careful path.

    The page is read by Arrow's JSON reader straight into typed columns (with the GIL
    released, so page threads decode in parallel) and the geometries are built with
    shapely's vectorised constructors. This is only a faster road to what
    :func:`decode_features` gives: anything it cannot vouch for — a field type that needs
    converting (dates as strings, numbers as strings, floats for integers), an attribute
    column entirely null (a server may name fields differently), a feature without
    attributes, a geometry that is not plain (NaN, a polygon in a point layer, curves,
    rings the bulk path does not build), malformed JSON, several documents — returns None,
    and the caller decodes the page with :func:`decode_features`, which decides and names
    every such case.
    """
    wire = _wire_schema(schema)
    if wire is None or any(marker in body for marker in _NOT_PLAIN):
        return None
    import pyarrow.json as pa_json  # only a pull reads pages; the server never does

    try:
        table = pa_json.read_json(
            pa.py_buffer(body),
            read_options=pa_json.ReadOptions(block_size=len(body) + 64, use_threads=False),
            parse_options=pa_json.ParseOptions(explicit_schema=wire, unexpected_field_behavior="ignore"),
        )
    except (pa.ArrowException, UnicodeDecodeError, ValueError):
        return None
    if table.num_rows != 1:
        return None
    features = table.column("features").combine_chunks()
    if features.null_count:
        return None
    exceeded = bool(table.column("exceededTransferLimit")[0].as_py())
    rows = _list_values(features)  # StructArray of the page's features
    n = len(rows)
    if n == 0:
        return None
    attributes = rows.field("attributes")
    if attributes.null_count:
        return None
    arrays = []
    for f, column in zip(schema.attribute_fields, attributes.flatten()):
        if column.null_count == n:
            return None
        if column.type != f.arrow_type:
            column = column.view(f.arrow_type)  # epoch milliseconds → timestamp[ms, UTC], no copy
        arrays.append(column)
    table = pa.Table.from_arrays(arrays, schema=schema.arrow_schema())
    if schema.geometry_type is None:
        return FeatureBatch(table, None, schema.crs), exceeded
    geoms = _raw_geometries(rows.field("geometry"), schema)
    if geoms is None:
        return None
    return FeatureBatch(table, geoms, schema.crs), exceeded


# The two helpers below read Arrow buffers directly where pyarrow's own methods
# (ListArray.flatten, Array.is_null) would import pyarrow.compute: 13 MB resident that a
# pull of points otherwise never needs.


def _list_values(column: pa.ListArray) -> pa.Array:
    """The values of a list array without null lists, as ``column.flatten()`` gives them."""
    offsets = column.offsets
    start, end = offsets[0].as_py(), offsets[-1].as_py()
    return column.values.slice(start, end - start)


def _valid(column: pa.Array) -> np.ndarray:
    """Which rows of ``column`` are not null (``~column.is_null()``), from its validity bitmap."""
    n = len(column)
    bitmap = column.buffers()[0]
    if column.null_count == 0 or bitmap is None:
        return np.ones(n, dtype=bool)
    bits = np.unpackbits(np.frombuffer(bitmap, dtype=np.uint8), bitorder="little")
    return bits[column.offset : column.offset + n].astype(bool)


def _raw_geometries(column: pa.StructArray, schema: LayerSchema) -> np.ndarray | None:
    """The geometry column read by :func:`decode_raw_page` → shapely geometries; None: careful path."""
    n = len(column)
    present = _valid(column)
    out = np.full(n, None, dtype=object)
    if not present.any():
        return out
    if schema.geometry_type == "esriGeometryPoint":
        children = column.flatten()
        xs = children[0].to_numpy(zero_copy_only=False)
        ys = children[1].to_numpy(zero_copy_only=False)
        if not (np.isfinite(xs[present]).all() and np.isfinite(ys[present]).all()):
            return None  # null, NaN or infinite x/y, or not a point at all
        if schema.has_z:
            zs = np.array(children[2].to_numpy(zero_copy_only=False), dtype=float)
            if np.isinf(zs[present]).any():
                return None
            zs[np.isnan(zs)] = 0.0
            out[present] = shapely.points(xs[present], ys[present], zs[present])
        else:
            out[present] = shapely.points(xs[present], ys[present])
        return out
    key, depth = _WIRE_GEOMETRY[schema.geometry_type or ""]
    rows = np.flatnonzero(present)
    parts = column.field(key).take(pa.array(rows))
    if parts.null_count:
        return None  # another kind of geometry, curves, or an empty object
    found = _nested_from_arrow(parts, depth - 1, schema.has_z)
    done = None if found is None else _build_parts(key, rows, found, out)
    rest = rows if done is None else np.flatnonzero(present & ~done)
    for i in rest.tolist():  # holes, several parts, open rings: one by one, as decode_geometry does
        try:
            out[i] = decode_geometry({key: column.field(key)[i].as_py()}, schema.geometry_type, has_z=schema.has_z)
        except _Malformed:
            return None  # the careful path names the feature
    return out


_MISSING: Any = object()
_SHAPE_ERRORS = (
    ValueError, TypeError, AttributeError, KeyError, IndexError, OverflowError, shapely.errors.ShapelyError
)


def _geojson_geometry(g: Any) -> shapely.Geometry | None:
    """One GeoJSON geometry object → shapely (None when empty); raises _Malformed."""
    if not isinstance(g, dict):
        raise _Malformed(f"geometry is {_show(g)}, not a GeoJSON geometry object")
    try:
        geom = shapely.geometry.shape(g)
    except _SHAPE_ERRORS as exc:
        raise _Malformed(f"geometry {_show(g)} is not readable GeoJSON ({_show(str(exc), 80)})") from exc
    if not isinstance(geom, shapely.Geometry):
        raise _Malformed(f"geometry {_show(g)} is not readable GeoJSON")
    return None if geom.is_empty else geom


def decode_geojson_features(features: list[dict[str, Any]], schema: LayerSchema) -> FeatureBatch:
    """A page of an ``f=geojson`` answer → FeatureBatch.

    ArcGIS (10.8+) sends dates as epoch ms in properties and the OID as the feature
    ``id``; Koop 9.3 omits ``"type": "Feature"`` and ``id``, so neither is required.
    Null ``properties`` are allowed (RFC 7946). Malformed pages, features, properties
    and geometries (including NaN or infinite coordinates) raise ArcGISError or
    GeometryError naming the feature, the value and the fix.
    """
    features = _check_page(features, "f=geojson query")
    records = []
    for i, f in enumerate(features):
        props = f.get("properties")
        if props is not None and not isinstance(props, dict):
            raise ArcGISError(
                f"{_feature_label(f, i, schema, 'properties')}: properties {_show(props)} is not an object; "
                f"{FIX_FEATURE}"
            )
        props = dict(props or {})
        if schema.oid_field is not None and schema.oid_field not in props and f.get("id") is not None:
            props[schema.oid_field] = f["id"]
        records.append(props)
    table = _decode_page(features, records, schema, "properties")
    if schema.geometry_type is None:
        return FeatureBatch(table, None, schema.crs)
    geoms = np.empty(len(features), dtype=object)
    for i, f in enumerate(features):
        g = f.get("geometry")
        try:
            geoms[i] = None if g is None else _geojson_geometry(g)
        except _Malformed as exc:
            raise GeometryError(f"{_feature_label(f, i, schema, 'properties')}: {exc.detail}; {exc.fix}") from exc
    coords, index = shapely.get_coordinates(geoms, include_z=True, return_index=True)
    finite = np.isfinite(coords[:, :2]).all(axis=1) & ~np.isinf(coords[:, 2])
    if not finite.all():
        i = int(index[np.argmin(finite)])
        raise GeometryError(
            f"{_feature_label(features[i], i, schema, 'properties')}: geometry has the coordinate "
            f"{_show(coords[np.argmin(finite)].tolist())}, not finite; {FIX_GEOMETRY}"
        )
    return FeatureBatch(table, geoms, schema.crs)
