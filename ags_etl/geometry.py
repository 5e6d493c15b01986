"""Pure, vectorised geometry helpers shared by the transformers (and usable by others).

Everything here works on 1-D numpy object arrays of shapely 2 geometries (``None``
allowed) and never modifies its input: shapely geometries are immutable, and arrays
are copied before any element is replaced.

* Geometry *families* — ``"point"``, ``"multipoint"``, ``"line"``, ``"polygon"`` — and
  :func:`coerce_to_family`, which keeps only the parts of a result that belong to a
  layer's family (the polygons of a GeometryCollection, say) so a layer's geometry
  types stay consistent after an overlay.
* :func:`transform_geometries` — coordinates through a :class:`pyproj.Transformer`,
  Z kept when present, M kept when present, non-finite results reported per feature.
* :func:`densified_box` — a bbox as a polygon with extra vertices along its edges, so
  that it keeps its shape when transformed into another CRS.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Literal

import numpy as np
import shapely
from pyproj import Transformer

__all__ = [
    "ESRI_FAMILY",
    "FAMILY_TYPES",
    "Family",
    "as_geometry_array",
    "coerce_to_family",
    "densified_box",
    "drop_m",
    "family_of",
    "transform_geometries",
]

Family = Literal["point", "multipoint", "line", "polygon"]

#: The geometry types (GeoJSON names) each family may hold after a transformation.
FAMILY_TYPES: dict[str, tuple[str, ...]] = {
    "point": ("Point",),
    "multipoint": ("MultiPoint",),
    "line": ("LineString", "MultiLineString"),
    "polygon": ("Polygon", "MultiPolygon"),
}

#: Esri geometry type → family.
ESRI_FAMILY: dict[str, str] = {
    "esriGeometryPoint": "point",
    "esriGeometryMultipoint": "multipoint",
    "esriGeometryPolyline": "line",
    "esriGeometryPolygon": "polygon",
    "esriGeometryEnvelope": "polygon",
}

_GEOJSON_FAMILY: dict[str, str] = {
    "Point": "point",
    "MultiPoint": "multipoint",
    "LineString": "line",
    "MultiLineString": "line",
    "Polygon": "polygon",
    "MultiPolygon": "polygon",
}

# shapely type ids
_POINT, _LINESTRING, _LINEARRING, _POLYGON = 0, 1, 2, 3
_MULTIPOINT, _MULTILINESTRING, _MULTIPOLYGON, _COLLECTION = 4, 5, 6, 7
_COMPOUND_IDS = (_MULTIPOINT, _MULTILINESTRING, _MULTIPOLYGON, _COLLECTION)

#: Family → (type ids kept as they are, the single-part type id parts are gathered from).
_FAMILY_IDS: dict[str, tuple[tuple[int, ...], int]] = {
    "point": ((_POINT,), _POINT),
    "multipoint": ((_MULTIPOINT,), _POINT),
    "line": ((_LINESTRING, _MULTILINESTRING), _LINESTRING),
    "polygon": ((_POLYGON, _MULTIPOLYGON), _POLYGON),
}


def family_of(geometry_type: str | None, geojson_types: Sequence[str] = ()) -> str | None:
    """The family of a layer from its Esri geometry type, else from its GeoJSON type names.

    Returns None for tables (no geometry type) and for type lists that mix families.
    """
    if geometry_type is not None and geometry_type in ESRI_FAMILY:
        return ESRI_FAMILY[geometry_type]
    families = {_GEOJSON_FAMILY.get(t) for t in geojson_types}
    if len(families) == 1:
        return families.pop()
    if families == {"point", "multipoint"}:
        return "multipoint"
    return None


def as_geometry_array(values: shapely.Geometry | np.ndarray | Sequence[shapely.Geometry | None]) -> np.ndarray:
    """A 1-D object array of geometries/None from an array, a list or a single geometry."""
    if isinstance(values, np.ndarray) and values.dtype == object and values.ndim == 1:
        return values
    items = [values] if isinstance(values, shapely.Geometry) else list(values)
    arr = np.empty(len(items), dtype=object)
    arr[:] = items
    return arr


def _explode_all(geoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Single-part geometries of every element, recursing into nested collections.

    Returns (parts, index of the element each part came from).
    """
    parts, index = shapely.get_parts(geoms, return_index=True)
    while True:
        compound = np.isin(shapely.get_type_id(parts), _COMPOUND_IDS)
        if not compound.any():
            return parts, index
        sub_parts, sub_index = shapely.get_parts(parts[compound], return_index=True)
        parts = np.concatenate([parts[~compound], sub_parts])
        index = np.concatenate([index[~compound], index[compound][sub_index]])


def coerce_to_family(geoms: np.ndarray, family: str) -> np.ndarray:
    """Keep only what belongs to ``family``; None where nothing is left.

    Geometries already of the family's types (see :data:`FAMILY_TYPES`) and not empty
    are kept as they are. Others (GeometryCollections from an overlay, a Point where a
    line was cut at a corner, an empty result …) are broken into single parts; the
    parts of the family's single type that are not empty are kept, one part as itself,
    several gathered into the family's multi type. ``"multipoint"`` turns Points into
    one-part MultiPoints. Lower-dimension slivers are dropped, never converted.
    """
    if family not in _FAMILY_IDS:
        raise ValueError(f"unknown geometry family {family!r}; expected one of {sorted(_FAMILY_IDS)}")
    geoms = as_geometry_array(geoms)
    keep_ids, part_id = _FAMILY_IDS[family]
    out = np.full(len(geoms), None, dtype=object)
    present = ~shapely.is_missing(geoms)
    if not present.any():
        return out
    type_ids = shapely.get_type_id(geoms)
    nonempty = present & ~shapely.is_empty(geoms)
    ok = nonempty & np.isin(type_ids, keep_ids)
    out[ok] = geoms[ok]
    rest = np.flatnonzero(nonempty & ~ok)
    if len(rest) == 0:
        return out
    parts, index = _explode_all(geoms[rest])
    good = (shapely.get_type_id(parts) == part_id) & ~shapely.is_empty(parts)
    parts, index = parts[good], index[good]
    if len(parts) == 0:
        return out
    counts = np.bincount(index, minlength=len(rest))
    single = counts[index] == 1
    if family == "multipoint":
        single[:] = False  # a lone point still becomes a MultiPoint
    out[rest[index[single]]] = parts[single]
    multi_parts, multi_index = parts[~single], index[~single]
    if len(multi_parts):
        owners, dense = np.unique(multi_index, return_inverse=True)
        if family in ("point", "multipoint"):
            gathered = shapely.multipoints(multi_parts, indices=dense)
        elif family == "line":
            gathered = shapely.multilinestrings(multi_parts, indices=dense)
        else:
            gathered = shapely.multipolygons(multi_parts, indices=dense)
        out[rest[owners]] = gathered
    if family == "point":
        # A point layer cannot hold a MultiPoint: such results are left out (None).
        # (Clipping a Point never yields one; this only guards other callers.)
        is_multi = shapely.get_type_id(out) == _MULTIPOINT
        out[is_multi] = None
    return out


# --- coordinate transformation ------------------------------------------------


def _transform_xyz(
    transformer: Transformer, coords: np.ndarray, with_z: bool
) -> np.ndarray:
    """Transform an (n, 2|3[+]) coordinate array; only the first 2 (or 3) columns change.

    Rows whose Z is NaN are transformed in 2D (PROJ turns x/y into NaN when given a NaN z).
    """
    out = coords.copy()
    x, y = coords[:, 0], coords[:, 1]
    if not with_z:
        out[:, 0], out[:, 1] = transformer.transform(x, y)
        return out
    z = coords[:, 2]
    zok = np.isfinite(z)
    if zok.all():
        out[:, 0], out[:, 1], out[:, 2] = transformer.transform(x, y, z)
    else:
        if zok.any():
            out[zok, 0], out[zok, 1], out[zok, 2] = transformer.transform(x[zok], y[zok], z[zok])
        nz = ~zok
        out[nz, 0], out[nz, 1] = transformer.transform(x[nz], y[nz])
    return out


def _bad_rows(before: np.ndarray, after: np.ndarray, ncols: int) -> np.ndarray:
    """Rows where a finite input ordinate became non-finite (x/y: any non-finite result)."""
    bad = ~np.isfinite(after[:, 0]) | ~np.isfinite(after[:, 1])
    if ncols > 2:
        bad |= np.isfinite(before[:, 2]) & ~np.isfinite(after[:, 2])
    return bad


def transform_geometries(geoms: np.ndarray, transformer: Transformer) -> tuple[np.ndarray, np.ndarray]:
    """Geometries with every coordinate passed through ``transformer``.

    Returns ``(new_geometries, bad)`` where ``bad`` is a boolean array marking features
    with at least one coordinate that came out non-finite (outside the projection's
    domain); their geometries in the result are not meaningful. None stays None, empty
    geometries stay empty, 2D stays 2D, Z is transformed with X/Y (a NaN Z stays NaN and
    its X/Y are still transformed), M values are carried over unchanged.
    """
    geoms = as_geometry_array(geoms)
    result = np.array(geoms, dtype=object, copy=True)
    bad = np.zeros(len(geoms), dtype=bool)
    present = ~shapely.is_missing(geoms)
    if not present.any():
        return result, bad
    has_z = shapely.has_z(geoms)
    has_m = shapely.has_m(geoms) if hasattr(shapely, "has_m") else np.zeros(len(geoms), dtype=bool)
    for z in (False, True):
        sel = np.flatnonzero(present & (has_z == z) & ~has_m)
        if len(sel) == 0:
            continue
        sub = geoms[sel]
        coords, index = shapely.get_coordinates(sub, include_z=z, return_index=True)
        if len(coords) == 0:
            continue
        new = _transform_xyz(transformer, coords, z)
        bad_rows = _bad_rows(coords, new, coords.shape[1])
        if bad_rows.any():
            bad[sel[np.unique(index[bad_rows])]] = True
        if len(coords) == len(sub) and (shapely.get_type_id(sub) == _POINT).all():
            # all non-empty Points: building new points is ~1.6x faster than set_coordinates
            result[sel] = shapely.points(new)
        else:
            result[sel] = shapely.set_coordinates(np.array(sub, dtype=object, copy=True), new)
    m_sel = np.flatnonzero(present & has_m)
    if len(m_sel):
        result[m_sel], m_bad = _transform_measured(geoms[m_sel], transformer)
        bad[m_sel] |= m_bad
    return result, bad


def _transform_measured(geoms: np.ndarray, transformer: Transformer) -> tuple[np.ndarray, np.ndarray]:
    """Transform geometries that carry M values, keeping the M values.

    shapely's set_coordinates takes 2 or 3 ordinates only (shapely 2.1/2.2), so these go
    through ISO WKB: coordinates are written back into the WKB bytes in place. Slower
    than the plain path (a Python loop per geometry), used only for measured data.
    """
    out = np.empty(len(geoms), dtype=object)
    bad = np.zeros(len(geoms), dtype=bool)
    for i, geom in enumerate(geoms):
        z = bool(shapely.has_z(geom))
        coords = shapely.get_coordinates(geom, include_z=z)
        new = _transform_xyz(transformer, coords, z) if len(coords) else coords
        bad[i] = bool(_bad_rows(coords, new, coords.shape[1]).any()) if len(coords) else False
        buf = bytearray(shapely.to_wkb(geom, flavor="iso", output_dimension=4))
        _, used = _rewrite_wkb(buf, 0, new, 0)
        if used != len(new):
            raise AssertionError(f"WKB walk consumed {used} of {len(new)} coordinates")  # pragma: no cover
        out[i] = shapely.from_wkb(bytes(buf))
    return out, bad


def _rewrite_wkb(buf: bytearray, pos: int, coords: np.ndarray, ci: int) -> tuple[int, int]:
    """Overwrite X/Y(/Z) of the ISO WKB geometry at ``pos`` with ``coords[ci:]``.

    Returns (position after the geometry, next coordinate index). M ordinates are left
    as they are.
    """
    order = "<" if buf[pos] == 1 else ">"
    (code,) = struct.unpack_from(order + "I", buf, pos + 1)
    pos += 5
    base, dim = code % 1000, code // 1000
    nd = 2 + (dim in (1, 3)) + (dim in (2, 3))
    kz = 3 if dim in (1, 3) else 2

    def block(n: int, pos: int, ci: int) -> tuple[int, int]:
        view = np.frombuffer(buf, dtype=order + "f8", count=n * nd, offset=pos).reshape(n, nd)
        view[:, :kz] = coords[ci : ci + n, :kz]
        return pos + 8 * n * nd, ci + n

    def count(pos: int) -> tuple[int, int]:
        return struct.unpack_from(order + "I", buf, pos)[0], pos + 4

    if base == 1:  # Point; an empty one is written as NaN ordinates and has no coordinate
        view = np.frombuffer(buf, dtype=order + "f8", count=nd, offset=pos)
        if np.isnan(view[0]) and np.isnan(view[1]):
            return pos + 8 * nd, ci
        return block(1, pos, ci)
    if base == 2:
        n, pos = count(pos)
        return block(n, pos, ci)
    if base == 3:
        rings, pos = count(pos)
        for _ in range(rings):
            n, pos = count(pos)
            pos, ci = block(n, pos, ci)
        return pos, ci
    if base in (4, 5, 6, 7):
        n, pos = count(pos)
        for _ in range(n):
            pos, ci = _rewrite_wkb(buf, pos, coords, ci)
        return pos, ci
    raise ValueError(f"unsupported WKB geometry type code {code}")


# --- boxes -------------------------------------------------------------------


def densified_box(bbox: Sequence[float], segments_per_edge: int = 64) -> shapely.Polygon:
    """The bbox ``(xmin, ymin, xmax, ymax)`` as a polygon with ``segments_per_edge`` segments a side."""
    xmin, ymin, xmax, ymax = (float(v) for v in bbox)
    t = np.linspace(0.0, 1.0, segments_per_edge + 1)[:-1]
    bottom = np.column_stack([xmin + (xmax - xmin) * t, np.full_like(t, ymin)])
    right = np.column_stack([np.full_like(t, xmax), ymin + (ymax - ymin) * t])
    top = np.column_stack([xmax - (xmax - xmin) * t, np.full_like(t, ymax)])
    left = np.column_stack([np.full_like(t, xmin), ymax - (ymax - ymin) * t])
    ring = np.vstack([bottom, right, top, left, [[xmin, ymin]]])
    return shapely.Polygon(ring)


def drop_m(geoms: np.ndarray) -> np.ndarray:
    """The geometries without M values (X/Y/Z kept); a new array, input untouched.

    Used where an overlay would keep M on some features and lose it on others (GEOS
    overlays drop or NaN M ordinates), so a stream stays consistent.
    """
    geoms = as_geometry_array(geoms)
    out = np.array(geoms, dtype=object, copy=True)
    if not hasattr(shapely, "has_m"):
        return out
    measured = shapely.has_m(geoms)
    for z in (False, True):
        sel = np.flatnonzero(measured & (shapely.has_z(geoms) == z))
        if len(sel) == 0:
            continue
        # Through ISO WKB: shapely 2.2's set_coordinates/force_3d garble ZM geometries
        # (Z becomes NaN or 0), while the WKB writer drops M cleanly.
        wkb = shapely.to_wkb(geoms[sel], flavor="iso", output_dimension=3 if z else 2)
        out[sel] = shapely.from_wkb(wkb)
    return out
