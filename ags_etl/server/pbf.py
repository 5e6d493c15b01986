"""``f=pbf`` answers of the local FeatureServer: Esri's FeatureCollection protocol buffers.

Written from the same rows and geometries as the JSON answer (see query.py), with the
field numbers listed in :mod:`ags_etl.arcgis.pbf`. What is sent:

* features: a FeatureResult with objectIdFieldName, uniqueIdField, geometryType,
  spatialReference, exceededTransferLimit (when true), the transform, the fields and one
  Feature per row. Attribute Values by field type: OID ``uint64``, integers ``sint64``,
  Single and Double ``double`` (a float would not equal the JSON answer), dates
  ``sint64`` epoch milliseconds, the rest ``string``; null values are empty Values.
* geometry: quantised as ``quantizationParameters`` asks (``tolerance``, ``extent``,
  ``originPosition``; ``mode`` is taken as "edit": every vertex is kept). Without it the
  origin is the upper-left corner of the page's geometries and the tolerance 1e-9 of their
  extent. Polygons are oriented as in Esri JSON (outer rings clockwise). The first vertex
  of each part is absolute, the rest are deltas. Points carry no ``lengths``.
* ``returnCountOnly`` → CountResult, ``returnIdsOnly`` → ObjectIdsResult.

Z values are not written: a ``returnZ`` request with ``f=pbf`` is refused (HTTP 400).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import shapely

from ags_etl.schema import Field
from ags_etl.server.protocol import Params, RestError, invalid_parameter

PBF_TYPE = "application/x-protobuf"
_GEOMETRY_CODES = {
    "esriGeometryPoint": 0,
    "esriGeometryMultipoint": 1,
    "esriGeometryPolyline": 2,
    "esriGeometryPolygon": 3,
    "esriGeometryMultiPatch": 4,
    "esriGeometryEnvelope": 5,
}
_FIELD_CODES = {
    "esriFieldTypeSmallInteger": 0,
    "esriFieldTypeInteger": 1,
    "esriFieldTypeSingle": 2,
    "esriFieldTypeDouble": 3,
    "esriFieldTypeString": 4,
    "esriFieldTypeDate": 5,
    "esriFieldTypeOID": 6,
    "esriFieldTypeGeometry": 7,
    "esriFieldTypeBlob": 8,
    "esriFieldTypeRaster": 9,
    "esriFieldTypeGUID": 10,
    "esriFieldTypeGlobalID": 11,
    "esriFieldTypeXML": 12,
}
_INTEGER_TYPES = frozenset({"esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeBigInteger"})
_FLOAT_TYPES = frozenset({"esriFieldTypeSingle", "esriFieldTypeDouble"})


# --------------------------------------------------------------------------- wire format


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zigzag(n: int) -> int:
    return (n << 1) ^ (n >> 63)


def _key(number: int, wire: int) -> bytes:
    return _varint((number << 3) | wire)


def _message(number: int, payload: bytes) -> bytes:
    return _key(number, 2) + _varint(len(payload)) + payload


def _uint(number: int, value: int) -> bytes:
    return _key(number, 0) + _varint(value)


def _double(number: int, value: float) -> bytes:
    return _key(number, 1) + struct.pack("<d", value)


def _string(number: int, value: str) -> bytes:
    return _message(number, value.encode("utf-8"))


def _packed_varints(values: np.ndarray) -> bytes:
    """uint64 values → their varints, concatenated (vectorised)."""
    v = np.asarray(values, dtype=np.uint64)
    if len(v) == 0:
        return b""
    chunks = np.empty((len(v), 10), dtype=np.uint8)
    sizes = np.ones(len(v), dtype=np.int64)
    rest = v.copy()
    for k in range(10):
        group = (rest & np.uint64(0x7F)).astype(np.uint8)
        rest = rest >> np.uint64(7)
        more = rest > 0
        chunks[:, k] = group | (more.astype(np.uint8) << 7)
        sizes += more
    keep = np.arange(10)[None, :] < sizes[:, None]
    return chunks[keep].tobytes()


def _zigzag_array(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.int64)
    return ((v << 1) ^ (v >> 63)).astype(np.uint64)


# --------------------------------------------------------------------------- parameters


def quantization(params: Params) -> dict[str, Any] | None:
    """``quantizationParameters`` checked: a positive finite tolerance, an extent of four numbers."""
    value = params.json("quantizationParameters")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid_parameter("quantizationParameters", "expected a JSON object")
    tolerance = value.get("tolerance", 1)
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not (
        math.isfinite(tolerance) and tolerance > 0
    ):
        raise invalid_parameter("quantizationParameters", f"tolerance {tolerance!r} is not a positive number")
    origin = str(value.get("originPosition", "upperLeft")).replace("-", "").lower()
    if origin not in ("upperleft", "lowerleft"):
        raise invalid_parameter("quantizationParameters", f"originPosition {value.get('originPosition')!r}")
    extent = value.get("extent")
    box = None
    if extent is not None:
        try:
            box = tuple(float(extent[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, KeyError, ValueError) as exc:
            raise invalid_parameter("quantizationParameters", f"extent {extent!r} is not an envelope") from exc
    return {"tolerance": float(tolerance), "upper_left": origin == "upperleft", "extent": box}


def check_request(params: Params, return_z: bool, statistics: bool, extent_only: bool) -> None:
    """Refuse what this server does not write as PBF (Z values, statistics, extents)."""
    if return_z:
        raise RestError(400, "Invalid or missing input parameters.", ["f=pbf does not carry Z values; use f=json"])
    if statistics or extent_only:
        raise RestError(
            400, "Invalid or missing input parameters.", ["statistics and extents are answered with f=json only"]
        )
    quantization(params)


# --------------------------------------------------------------------------- answers


def _wrap(result_number: int, payload: bytes) -> bytes:
    return _string(1, "1") + _message(2, _message(result_number, payload))


def count_result(count: int) -> bytes:
    """CountResult."""
    return _wrap(2, _uint(1, count))


def ids_result(oid_field: str, ids: Sequence[int]) -> bytes:
    """ObjectIdsResult."""
    payload = _string(1, oid_field) + _message(3, _packed_varints(np.asarray(ids, dtype=np.int64).astype(np.uint64)))
    return _wrap(3, payload)


def _value(field: Field, value: Any) -> bytes:
    """One attribute → a Value message (empty for null)."""
    if value is None:
        return b""
    kind = field.esri_type
    if isinstance(value, bool):
        return _uint(9, int(value))
    if kind == "esriFieldTypeOID" and isinstance(value, int) and value >= 0:
        return _uint(7, value)
    if isinstance(value, int) and (kind in _INTEGER_TYPES or kind in ("esriFieldTypeDate", "esriFieldTypeOID")):
        return _uint(8, _zigzag(value))
    if isinstance(value, (int, float)) and kind in _FLOAT_TYPES:
        return _double(3, float(value))
    if isinstance(value, float):
        return _double(3, value)
    if isinstance(value, int):
        return _uint(8, _zigzag(value))
    if isinstance(value, bytes):
        return _string(1, value.decode("utf-8", "replace"))
    return _string(1, str(value))


def _field(field: Field) -> bytes:
    return (
        _string(1, field.name)
        + _uint(2, _FIELD_CODES.get(field.esri_type, 4))
        + _string(3, field.alias or field.name)
    )


def _parts(geom: shapely.Geometry) -> list[np.ndarray]:
    """Vertex arrays of a geometry's parts, polygons oriented as in Esri JSON (outer clockwise)."""
    kind = geom.geom_type
    if kind in ("Point", "MultiPoint"):
        return [shapely.get_coordinates(geom)]
    if kind == "LineString":
        return [shapely.get_coordinates(geom)]
    if kind == "MultiLineString":
        return [shapely.get_coordinates(p) for p in geom.geoms]
    if kind in ("Polygon", "MultiPolygon"):
        oriented = shapely.orient_polygons(geom, exterior_cw=True)
        polys = [oriented] if kind == "Polygon" else list(oriented.geoms)
        rings: list[np.ndarray] = []
        for p in polys:
            rings.append(shapely.get_coordinates(p.exterior))
            rings.extend(shapely.get_coordinates(h) for h in p.interiors)
        return rings
    raise RestError(500, f"cannot write a {kind} as PBF")


def _transform(geoms: np.ndarray, quant: dict[str, Any] | None) -> tuple[bool, float, float, float]:
    """(upper-left origin, tolerance, translate x, translate y)."""
    present = geoms[shapely.is_geometry(geoms) & ~shapely.is_empty(geoms)] if len(geoms) else geoms
    bounds = shapely.total_bounds(present) if len(present) else np.array([0.0, 0.0, 0.0, 0.0])
    upper_left = True if quant is None else bool(quant["upper_left"])
    if quant is not None and quant["extent"] is not None:
        xmin, ymin, xmax, ymax = quant["extent"]
    else:
        xmin, ymin, xmax, ymax = (float(b) for b in bounds)
    if quant is not None:
        tolerance = float(quant["tolerance"])
    else:
        span = max(xmax - xmin, ymax - ymin)
        tolerance = span * 1e-9 if span > 0 else 1e-9
    return upper_left, tolerance, xmin, (ymax if upper_left else ymin)


def _geometry(geom: Any, code: int, upper_left: bool, tolerance: float, tx: float, ty: float) -> bytes:
    if geom is None or geom.is_empty:
        return b""
    parts = _parts(geom)
    verts = np.vstack(parts)
    qx = np.rint((verts[:, 0] - tx) / tolerance)
    qy = np.rint(((ty - verts[:, 1]) if upper_left else (verts[:, 1] - ty)) / tolerance)
    if not (np.isfinite(qx).all() and np.isfinite(qy).all()) or max(np.abs(qx).max(), np.abs(qy).max()) >= 2**62:
        raise RestError(400, "Invalid or missing input parameters.", [
            "quantizationParameters: the tolerance is too fine for the data's extent; use a larger tolerance"
        ])
    q = np.column_stack([qx, qy]).astype(np.int64)
    lengths = [len(p) for p in parts]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    deltas = q.copy()
    deltas[1:] -= q[:-1]
    deltas[starts] = q[starts]  # each part starts with an absolute vertex
    body = b""
    if code != 0:  # Esri leaves lengths out for points
        body += _message(2, _packed_varints(np.asarray(lengths, dtype=np.uint64)))
    body += _message(3, _packed_varints(_zigzag_array(deltas.ravel())))
    return body


def feature_result(
    *,
    oid_field: str,
    fields: list[Field],
    rows: list[tuple[Any, ...]],
    geoms: np.ndarray | None,
    geometry_type: str | None,
    spatial_reference: dict[str, Any] | None,
    exceeded: bool,
    params: Params,
) -> bytes:
    """A FeatureResult for one page: ``rows`` hold the field values (in ``fields`` order),
    ``geoms`` the page's geometries in the output spatial reference (None without geometry)."""
    out = _string(1, oid_field)
    out += _message(2, _string(1, oid_field) + _uint(2, 1))
    code = _GEOMETRY_CODES.get(geometry_type or "", 127)
    out += _uint(7, code)
    if spatial_reference:
        sr = b""
        if "wkid" in spatial_reference:
            sr += _uint(1, int(spatial_reference["wkid"]))
        if "latestWkid" in spatial_reference:
            sr += _uint(2, int(spatial_reference["latestWkid"]))
        if "wkt" in spatial_reference:
            sr += _string(5, str(spatial_reference["wkt"]))
        out += _message(8, sr)
    if exceeded:
        out += _uint(9, 1)
    upper_left, tolerance, tx, ty = False, 1.0, 0.0, 0.0
    if geoms is not None:
        upper_left, tolerance, tx, ty = _transform(geoms, quantization(params))
        transform = _uint(1, 0 if upper_left else 1)
        transform += _message(2, _double(1, tolerance) + _double(2, tolerance))
        transform += _message(3, _double(1, tx) + _double(2, ty))
        out += _message(12, transform)
    out += b"".join(_message(13, _field(f)) for f in fields)
    n = len(fields)
    features = []
    for i, row in enumerate(rows):
        feature = b"".join(_message(1, _value(f, v)) for f, v in zip(fields, row[:n]))
        if geoms is not None:
            geometry = _geometry(geoms[i], code, upper_left, tolerance, tx, ty)
            if geometry:
                feature += _message(2, geometry)
        features.append(_message(15, feature))
    out += b"".join(features)
    return _wrap(1, out)

