"""Esri FeatureCollection protocol buffers (``f=pbf``) → FeatureBatch (pure functions, no I/O).

The message layout is Esri's ``FeatureCollection.proto`` (Apache-2.0, Esri/arcgis-pbf); this
module reads the protobuf wire format by hand (see docs/decisions/pbf-decoder.md). Field
numbers used here, by message:

* FeatureCollectionPBuffer: version 1 (string), queryResult 2.
* QueryResult (one of): featureResult 1, countResult 2 (count 1), idsResult 3
  (objectIdFieldName 1, objectIds 3 packed uint64).
* FeatureResult: objectIdFieldName 1, geometryType 7, spatialReference 8,
  exceededTransferLimit 9, hasZ 10, hasM 11, transform 12, fields 13, features 15.
* Field: name 1, fieldType 2. Feature: attributes 1 (Values in the order of ``fields``),
  geometry 2. Geometry: lengths 2 (packed uint32), coords 3 (packed zigzag sint).
* Value (one of): string 1, float 2, double 3, sint32 4, uint32 5, int64 6, uint64 7,
  sint64 8, bool 9; no member set is a null.
* Transform: quantizeOriginPostion 1 (0 upperLeft, 1 lowerLeft), scale 2 and translate 3
  (x 1, y 2, m 3, z 4 doubles).

Coordinates: ``lengths`` gives the vertices of each part; ``coords`` interleaves x, y (and
z, m when the result has them). The first vertex of each part is absolute, the rest are
deltas from the previous vertex. ``x = X·scale.x + translate.x``; with the upper-left origin
``y = translate.y − Y·scale.y`` (lower-left: ``+``). Without a transform the integers are
the coordinates. Point geometries may omit ``lengths`` (Esri) or give ``[2]`` (Koop): the
first vertex is the point.

Attribute values are read by what they are (the Value member set), then converted to the
layer schema's types by :func:`ags_etl.arcgis.esrijson.decode_attributes`, as JSON values
are: records are keyed by field name, so Koop's fields sorted by name are fine. Dates are
epoch milliseconds.

Results with Z or M are refused (Esri does not document how Z is quantised and Koop sends
it unquantised and drops zeros); the extractor uses JSON for such layers. Malformed input
(truncated varints, lengths beyond the message, coordinate counts that do not add up)
raises ArcGISError naming the feature and the fix.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import shapely

from ags_etl.arcgis.esrijson import decode_attributes, organize_rings
from ags_etl.arcgis.esrijson import decode_features as decode_json_features
from ags_etl.arcgis.layer import LayerInfo
from ags_etl.batch import FeatureBatch
from ags_etl.errors import ArcGISError, ConfigError
from ags_etl.schema import LayerSchema

#: Content type Esri and Koop send with ``f=pbf`` answers.
PBF_CONTENT_TYPE = "application/x-protobuf"
#: Geometry type enum of the proto → Esri JSON geometry type names.
GEOMETRY_TYPES = {
    0: "esriGeometryPoint",
    1: "esriGeometryMultipoint",
    2: "esriGeometryPolyline",
    3: "esriGeometryPolygon",
    4: "esriGeometryMultiPatch",
    5: "esriGeometryEnvelope",
    127: None,
}
FIX = "the server sent a malformed PBF answer; pull with --response-format json"

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5


class PbfError(ArcGISError):
    """A PBF answer that cannot be read."""


@dataclass(frozen=True)
class Transform:
    """Quantisation transform of a FeatureResult."""

    upper_left: bool = True
    scale: tuple[float, float] = (1.0, 1.0)
    translate: tuple[float, float] = (0.0, 0.0)


@dataclass(frozen=True)
class PbfFeatures:
    """A decoded FeatureResult."""

    batch: FeatureBatch
    exceeded: bool
    transform: Transform | None
    geometry_type: str | None
    spatial_reference: dict[str, Any]


@dataclass(frozen=True)
class PbfCount:
    count: int


@dataclass(frozen=True)
class PbfIds:
    oid_field: str
    ids: np.ndarray


# --------------------------------------------------------------------------- wire format


def _varint(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """One base-128 varint at ``pos`` → (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise PbfError(f"PBF answer: a number runs past the end of its message at byte {pos}; {FIX}")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise PbfError(f"PBF answer: a number longer than 10 bytes at byte {pos}; {FIX}")


def _fields(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """The fields of one message: (field number, wire type, a, b).

    Varint: ``a`` is the value. Length-delimited, fixed64 and fixed32: ``buf[a:b]`` is the payload.
    Unknown wire types (groups) raise PbfError.
    """
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == _VARINT:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, pos
        elif wire == _LEN:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise PbfError(f"PBF answer: field {number} claims {size} bytes beyond its message; {FIX}")
            yield number, wire, pos, pos + size
            pos += size
        elif wire in (_FIXED64, _FIXED32):
            size = 8 if wire == _FIXED64 else 4
            if pos + size > end:
                raise PbfError(f"PBF answer: field {number} runs past the end of its message; {FIX}")
            yield number, wire, pos, pos + size
            pos += size
        else:
            raise PbfError(f"PBF answer: wire type {wire} (field {number}) at byte {pos} is not supported; {FIX}")


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _signed64(n: int) -> int:
    return n - (1 << 64) if n >= (1 << 63) else n


def _double(buf: bytes, a: int, b: int) -> float:
    return float(struct.unpack_from("<d" if b - a == 8 else "<f", buf, a)[0])


def _text(buf: bytes, a: int, b: int) -> str:
    try:
        return bytes(buf[a:b]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PbfError(f"PBF answer: a string at byte {a} is not UTF-8; {FIX}") from exc


def _packed_uints(buf: bytes, a: int, b: int) -> list[int]:
    out = []
    pos = a
    while pos < b:
        value, pos = _varint(buf, pos, b)
        out.append(value)
    return out


def varints(data: bytes | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """All varints of a byte string, vectorised → (uint64 values, index of each value's last byte).

    Raises PbfError when the bytes end inside a varint or one is longer than 10 bytes.
    """
    raw = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray, memoryview)) else data
    if len(raw) == 0:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.int64)
    if raw[-1] >= 0x80:
        raise PbfError(f"PBF answer: packed coordinates end inside a number; {FIX}")
    ends = np.flatnonzero(raw < 0x80)
    starts = np.empty_like(ends)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    sizes = ends - starts + 1
    if int(sizes.max()) > 10:
        raise PbfError(f"PBF answer: a packed number longer than 10 bytes; {FIX}")
    # Position of each byte inside its varint → its 7-bit group's shift.
    position = np.arange(len(raw)) - np.repeat(starts, sizes)
    groups = (raw & 0x7F).astype(np.uint64) << (7 * position).astype(np.uint64)
    return np.bitwise_or.reduceat(groups, starts), ends


def zigzag_array(values: np.ndarray) -> np.ndarray:
    """Zigzag-decoded int64 from uint64 (sint32/sint64 wire values)."""
    v = values.astype(np.uint64)
    return ((v >> np.uint64(1)).astype(np.int64)) ^ -((v & np.uint64(1)).astype(np.int64))


# --------------------------------------------------------------------------- messages


def _transform(buf: bytes, a: int, b: int) -> Transform:
    upper_left = True
    scale = [1.0, 1.0]
    translate = [0.0, 0.0]
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _VARINT:
            upper_left = x == 0
        elif number in (2, 3) and wire == _LEN:
            target = scale if number == 2 else translate
            for n, w, p, q in _fields(buf, x, y):
                if n in (1, 2) and w == _FIXED64:
                    target[n - 1] = _double(buf, p, q)
    return Transform(upper_left, (scale[0], scale[1]), (translate[0], translate[1]))


def _spatial_reference(buf: bytes, a: int, b: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _VARINT and x:
            out["wkid"] = x
        elif number == 2 and wire == _VARINT and x:
            out["latestWkid"] = x  # "lastestWkid" in the proto
        elif number == 5 and wire == _LEN and y > x:
            out["wkt"] = _text(buf, x, y)
    return out


def _value(buf: bytes, a: int, b: int) -> Any:
    """One Value message → a Python value (None when no member is set)."""
    value: Any = None
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _LEN:
            value = _text(buf, x, y)
        elif number in (2, 3) and wire in (_FIXED32, _FIXED64):
            value = _double(buf, x, y)
        elif number in (4, 8) and wire == _VARINT:
            value = _zigzag(x)
        elif number in (5, 7) and wire == _VARINT:
            value = x
        elif number == 6 and wire == _VARINT:
            value = _signed64(x)
        elif number == 9 and wire == _VARINT:
            value = x != 0
    return value


@dataclass
class _RawGeometry:
    lengths: list[int]
    coords: tuple[int, int] | None  # span of the packed coords (or None)
    unpacked: list[int]  # coords sent unpacked (legal protobuf, rare)


def _geometry(buf: bytes, a: int, b: int) -> _RawGeometry:
    lengths: list[int] = []
    span: tuple[int, int] | None = None
    unpacked: list[int] = []
    for number, wire, x, y in _fields(buf, a, b):
        if number == 2:
            lengths.extend(_packed_uints(buf, x, y) if wire == _LEN else [x])
        elif number == 3:
            if wire == _LEN:
                span = (x, y)
            else:
                unpacked.append(x)
    return _RawGeometry(lengths, span, unpacked)


def _feature(buf: bytes, a: int, b: int) -> tuple[list[Any], _RawGeometry | None]:
    values: list[Any] = []
    geometry: _RawGeometry | None = None
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _LEN:
            values.append(_value(buf, x, y))
        elif number == 2 and wire == _LEN:
            geometry = _geometry(buf, x, y)
    return values, geometry


def _coords_of(buf: bytes, raws: list[_RawGeometry | None]) -> tuple[np.ndarray, np.ndarray]:
    """Every feature's coordinates, decoded in one pass → (int64 coords, count per feature)."""
    spans = [bytes(buf[g.coords[0] : g.coords[1]]) if g is not None and g.coords is not None else b"" for g in raws]
    joined = b"".join(spans)
    values, ends = varints(joined)
    # Count per feature: terminators inside each feature's span.
    bounds = np.cumsum([len(s) for s in spans])
    counts = np.diff(np.concatenate([[0], np.searchsorted(ends, bounds, side="left")]))
    coords = zigzag_array(values)
    extra = [i for i, g in enumerate(raws) if g is not None and g.unpacked]
    if extra:  # rare: unpacked coords; rebuild the arrays feature by feature
        parts = np.split(coords, np.cumsum(counts)[:-1])
        for i in extra:
            g = raws[i]
            assert g is not None
            parts[i] = np.concatenate([parts[i], zigzag_array(np.array(g.unpacked, dtype=np.uint64))])
        counts = np.array([len(p) for p in parts])
        coords = np.concatenate(parts) if parts else coords
    return coords, counts


def _label(oid_field: str | None, oid: Any, index: int) -> str:
    if oid_field is not None and oid is not None:
        return f"feature {oid_field}={oid} (index {index} of the page)"
    return f"feature at index {index} of the page"


def _geometries(
    raws: list[_RawGeometry | None],
    coords: np.ndarray,
    counts: np.ndarray,
    geometry_type: str | None,
    transform: Transform | None,
    labels: list[str],
) -> np.ndarray:
    """Quantised, delta-encoded coordinates → shapely geometries (None where absent)."""
    n = len(raws)
    out = np.full(n, None, dtype=object)
    sx, sy = transform.scale if transform is not None else (1.0, 1.0)
    tx, ty = transform.translate if transform is not None else (0.0, 0.0)
    ysign = -1.0 if transform is not None and transform.upper_left else 1.0
    if len(coords) % 2:
        raise PbfError(f"PBF answer: {len(coords)} coordinate numbers on the page, not x/y pairs; {FIX}")
    offsets = np.concatenate([[0], np.cumsum(counts)])
    if geometry_type == "esriGeometryPoint":
        has = counts >= 2
        first = offsets[:-1][has]
        out[has] = shapely.points(coords[first] * sx + tx, ty + ysign * coords[first + 1] * sy)
        return out
    for i, g in enumerate(raws):
        if g is None or counts[i] == 0:
            continue
        flat = coords[offsets[i] : offsets[i + 1]]
        if len(flat) % 2:
            raise PbfError(f"{labels[i]}: {len(flat)} coordinate numbers, not x/y pairs; {FIX}")
        xy = flat.reshape(-1, 2)
        lengths = g.lengths or [len(xy)]
        if sum(lengths) != len(xy):
            raise PbfError(
                f"{labels[i]}: parts of {lengths} vertices but {len(xy)} vertices were sent; {FIX}"
            )
        part_starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        summed = np.cumsum(xy, axis=0)
        # Restart the running sum at each part: subtract what came before the part.
        before = np.zeros_like(summed)
        prior = np.concatenate([np.zeros((1, 2), dtype=summed.dtype), summed[part_starts[1:] - 1]])
        before[:] = np.repeat(prior, lengths, axis=0)
        absolute = (summed - before).astype(float)
        verts = np.column_stack([absolute[:, 0] * sx + tx, ty + ysign * absolute[:, 1] * sy])
        parts = np.split(verts, np.cumsum(lengths)[:-1])
        parts = [p for p in parts if len(p)]
        if geometry_type == "esriGeometryMultipoint":
            out[i] = shapely.multipoints(verts)
        elif geometry_type == "esriGeometryPolyline":
            if any(len(p) < 2 for p in parts):
                raise PbfError(f"{labels[i]}: a path of one vertex; {FIX}")
            lines = [shapely.linestrings(p) for p in parts]
            out[i] = lines[0] if len(lines) == 1 else shapely.multilinestrings(lines)
        elif geometry_type == "esriGeometryPolygon":
            out[i] = organize_rings(parts)
        else:
            raise PbfError(f"{labels[i]}: geometry type {geometry_type} is not decoded from PBF; {FIX}")
    return out


def decode(data: bytes, schema: LayerSchema | None = None) -> PbfFeatures | PbfCount | PbfIds:
    """A whole ``f=pbf`` answer → its result. ``schema`` is needed for feature results.

    Raises PbfError (an ArcGISError) for malformed input, a result with Z or M, or a
    message without a query result.
    """
    buf = bytes(data)
    for number, wire, a, b in _fields(buf, 0, len(buf)):
        if number == 2 and wire == _LEN:
            for kind, w, x, y in _fields(buf, a, b):
                if kind == 1 and w == _LEN:
                    if schema is None:
                        raise PbfError("a PBF feature result needs the layer schema to be decoded")
                    return _feature_result(buf, x, y, schema)
                if kind == 2 and w == _LEN:
                    count = 0
                    for n, ww, v, _ in _fields(buf, x, y):
                        if n == 1 and ww == _VARINT:
                            count = v
                    return PbfCount(count)
                if kind == 3 and w == _LEN:
                    name, ids = "", []
                    for n, ww, v, e in _fields(buf, x, y):
                        if n == 1 and ww == _LEN:
                            name = _text(buf, v, e)
                        elif n == 3:
                            ids.extend(_packed_uints(buf, v, e) if ww == _LEN else [v])
                    return PbfIds(name, np.array(ids, dtype=np.int64))
    raise PbfError(f"PBF answer of {len(buf)} bytes holds no query result; {FIX}")


def _feature_result(buf: bytes, a: int, b: int, schema: LayerSchema) -> PbfFeatures:
    oid_field: str | None = None
    geometry_code: int | None = None
    sr: dict[str, Any] = {}
    exceeded = has_z = has_m = False
    transform: Transform | None = None
    names: list[str] = []
    rows: list[list[Any]] = []
    raws: list[_RawGeometry | None] = []
    for number, wire, x, y in _fields(buf, a, b):
        if number == 1 and wire == _LEN:
            oid_field = _text(buf, x, y) or None
        elif number == 7 and wire == _VARINT:
            geometry_code = x
        elif number == 8 and wire == _LEN:
            sr = _spatial_reference(buf, x, y)
        elif number == 9 and wire == _VARINT:
            exceeded = x != 0
        elif number == 10 and wire == _VARINT:
            has_z = x != 0
        elif number == 11 and wire == _VARINT:
            has_m = x != 0
        elif number == 12 and wire == _LEN:
            transform = _transform(buf, x, y)
        elif number == 13 and wire == _LEN:
            name = ""
            for n, w, p, q in _fields(buf, x, y):
                if n == 1 and w == _LEN:
                    name = _text(buf, p, q)
            names.append(name)
        elif number == 15 and wire == _LEN:
            values, raw = _feature(buf, x, y)
            rows.append(values)
            raws.append(raw)
    if has_z or has_m:
        raise PbfError(
            f"the PBF answer has {'Z' if has_z else 'M'} values, which this decoder does not read; "
            f"pull with --response-format json"
        )
    # proto3 leaves out zero values: a missing geometryType is 0, a point, or the layer has none.
    geometry_type = GEOMETRY_TYPES.get(geometry_code) if geometry_code is not None else None
    if geometry_type is None:
        geometry_type = schema.geometry_type
    for i, row in enumerate(rows):
        if len(row) > len(names):
            raise PbfError(
                f"feature at index {i} of the page has {len(row)} values for {len(names)} fields; {FIX}"
            )
    records = [dict(zip(names, row)) for row in rows]
    try:
        table = decode_attributes(records, schema)
    except ArcGISError as exc:
        index = getattr(exc, "index", None)
        where = "a feature" if index is None else _label(oid_field, None, index)
        raise PbfError(f"{where}: {exc}") from exc
    oid_key = None
    if schema.oid_field is not None:
        oid_key = next((n for n in names if n.lower() == schema.oid_field.lower()), None)
    labels = [_label(schema.oid_field, rec.get(oid_key) if oid_key else None, i) for i, rec in enumerate(records)]
    geoms: np.ndarray | None = None
    if schema.geometry_type is not None:
        coords, counts = _coords_of(buf, raws)
        geoms = _geometries(raws, coords, counts, geometry_type or schema.geometry_type, transform, labels)
        present = [g for g in geoms if g is not None]
        if present:
            xy = shapely.get_coordinates(np.array(present, dtype=object))
            if not np.isfinite(xy).all():
                raise PbfError(f"PBF answer: coordinates beyond the float range on the page; {FIX}")
    batch = FeatureBatch(table, geoms, schema.crs)
    return PbfFeatures(batch, exceeded, transform, geometry_type, sr)


def decode_features(data: bytes, schema: LayerSchema) -> tuple[FeatureBatch, bool]:
    """A feature page answered with ``f=pbf`` → (batch, exceededTransferLimit).

    Raises PbfError when the answer is not a feature result.
    """
    result = decode(data, schema)
    if not isinstance(result, PbfFeatures):
        raise PbfError(f"a feature query answered with a {type(result).__name__[3:].lower()} result; {FIX}")
    return result.batch, result.exceeded


# --------------------------------------------------------------------------- choice and checks

#: Values of ``response_format`` (``--response-format``): ``auto`` takes PBF when the layer lists it.
RESPONSE_FORMATS = ("json", "geojson", "pbf", "auto")


@dataclass(frozen=True)
class FormatChoice:
    """The response format a pull uses and why; ``check``: compare PBF with JSON on a sample page first."""

    format: str
    reason: str
    check: bool = False
    forced: bool = False
    tolerance: float | None = None


def choose_format(requested: str, info: LayerInfo) -> FormatChoice:
    """The format for ``requested`` (json, geojson, pbf or auto) on this layer, before any page.

    ``auto`` takes PBF when the layer lists it in ``supportedQueryFormats`` and has no Z or M
    (not decoded from PBF), and a geometry layer has an extent to quantise against; JSON
    otherwise. ``pbf`` forces it even when not listed. Either way PBF is checked against
    JSON on a sample page (``check``). Raises ConfigError for an unknown format, or ``pbf``
    on a layer with Z or M values.
    """
    if requested not in RESPONSE_FORMATS:
        raise ConfigError(f"--response-format {requested!r} is not one of {', '.join(RESPONSE_FORMATS)}")
    listed = "pbf" in info.query_formats
    schema = info.schema
    if requested in ("json", "geojson"):
        also = "; the layer also offers PBF (--response-format auto uses it)" if listed and requested == "json" else ""
        return FormatChoice(requested, f"{requested} as asked{also}")
    zm = "Z" if schema.has_z else "M" if schema.has_m else None
    if requested == "pbf":
        if zm is not None:
            raise ConfigError(
                f"--response-format pbf: layer {info.url} has {zm} values, which are not read from PBF answers; "
                f"use --response-format json"
            )
        note = "" if listed else " although the layer does not list PBF in supportedQueryFormats"
        return FormatChoice("pbf", f"pbf as asked{note}; checked against JSON on the first page", True, True)
    if not listed:
        return FormatChoice("json", "json: the layer does not list PBF in supportedQueryFormats")
    if zm is not None:
        return FormatChoice("json", f"json: the layer lists PBF but has {zm} values, which are not read from PBF")
    if schema.geometry_type is not None and info.extent is None:
        return FormatChoice("json", "json: the layer lists PBF but gives no extent to quantise coordinates against")
    return FormatChoice("pbf", "pbf: the layer lists PBF; checked against JSON on the first page", True)


def settle(choice: FormatChoice, difference: str | None, tolerance: float | None, url: str) -> FormatChoice:
    """The format after comparing a sample PBF page with JSON (``difference`` None: they agree).

    Agreement keeps PBF; a difference falls back to JSON, or, when PBF was forced, raises
    ArcGISError naming the difference.
    """
    within = f" within {tolerance:g}" if tolerance is not None else ""
    if difference is None:
        return FormatChoice("pbf", f"{choice.reason}: the first page agreed{within}", False, choice.forced, tolerance)
    if choice.forced:
        raise ArcGISError(
            f"{url}: the f=pbf answer differs from f=json on the first page ({difference}); "
            f"use --response-format json"
        )
    return FormatChoice("json", f"json: the first PBF page differed from JSON ({difference})", False, False, tolerance)


def sample_params(info: LayerInfo, rows: int = 100) -> dict[str, Any]:
    """Extra parameters of the sample page asked in both formats: the first ``rows`` by OID when
    the server pages, else whatever one page holds (the same rows in both answers)."""
    oid = info.schema.oid_field
    if info.supports_pagination and oid is not None:
        return {"resultRecordCount": rows, "orderByFields": f"{oid} ASC"}
    return {}


def quantization_parameters(extent: tuple[float, float, float, float], sr: dict[str, Any] | None) -> dict[str, Any]:
    """``quantizationParameters`` finer than the data: tolerance 1e-9 of the extent's larger side.

    The extent gives the upper-left origin (Koop uses 0, 0 without it, which overflows
    coordinates far from the origin).
    """
    xmin, ymin, xmax, ymax = extent
    span = max(xmax - xmin, ymax - ymin)
    tolerance = span * 1e-9 if span > 0 else 1e-9
    box: dict[str, Any] = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}
    if sr:
        box["spatialReference"] = sr
    return {"mode": "edit", "originPosition": "upperLeft", "tolerance": tolerance, "extent": box}


def _by_oid(batch: FeatureBatch, oid_field: str | None) -> FeatureBatch:
    if oid_field is None or oid_field not in batch.column_names or batch.column(oid_field).null_count:
        return batch
    return batch.take(np.argsort(batch.column(oid_field).to_numpy(zero_copy_only=False), kind="stable"))


def compare(pbf: FeatureBatch, json: FeatureBatch, tolerance: float, oid_field: str | None = None) -> str | None:
    """Where a PBF page differs from the JSON page of the same query, or None when they agree.

    Rows are matched by ``oid_field`` when given (else by position). Attributes must be
    exactly equal; geometries equal within ``tolerance`` per coordinate (quantisation is
    lossy), after normalising ring order and orientation.
    """
    if len(pbf) != len(json):
        return f"PBF sent {len(pbf)} features, JSON {len(json)}"
    pbf, json = _by_oid(pbf, oid_field), _by_oid(json, oid_field)
    if not pbf.attributes.equals(json.attributes):
        for name in json.column_names:
            a, b = pbf.column(name), json.column(name)
            if not a.equals(b):
                diff = pa.compute.not_equal(a, b).to_numpy(zero_copy_only=False)
                nulls = np.asarray(a.is_null().to_numpy(zero_copy_only=False)) != np.asarray(
                    b.is_null().to_numpy(zero_copy_only=False)
                )
                bad = np.flatnonzero(np.nan_to_num(diff.astype(float), nan=0.0).astype(bool) | nulls)
                row = int(bad[0]) if len(bad) else 0
                return f"field {name!r} differs at row {row}: PBF {a[row].as_py()!r}, JSON {b[row].as_py()!r}"
        return "attribute types differ"
    if (pbf.geometry is None) != (json.geometry is None):
        return "one answer has geometries, the other not"
    if pbf.geometry is None or json.geometry is None:
        return None
    g1 = shapely.normalize(pbf.geometry)
    g2 = shapely.normalize(json.geometry)
    missing1, missing2 = shapely.is_missing(g1), shapely.is_missing(g2)
    if (missing1 != missing2).any():
        row = int(np.argmax(missing1 != missing2))
        return f"row {row} has a geometry in one answer only"
    both = ~missing1
    same = np.ones(len(g1), dtype=bool)
    same[both] = shapely.equals_exact(g1[both], g2[both], tolerance)
    if not same.all():
        row = int(np.argmin(same))
        return f"row {row}: geometries differ by more than {tolerance:g} ({shapely.to_wkt(g1[row], rounding_precision=12)[:80]} vs {shapely.to_wkt(g2[row], rounding_precision=12)[:80]})"
    return None


def check_first_page(
    client: Any, url: str, params: dict[str, Any], info: LayerInfo, schema: LayerSchema, choice: FormatChoice
) -> FormatChoice:
    """Ask one sample page (:func:`sample_params`) as f=pbf and as f=json and settle the format.

    The only function here that makes requests, through ``client`` (an ArcGISClient);
    ``params`` are the pull's base query parameters, ``quantizationParameters`` included.
    The tolerance of the comparison is the one asked for (a server quantising coarser than
    asked is caught). Returns :func:`settle`'s choice; raises as it does.
    """
    form = {**params, **sample_params(info)}
    quant = form.get("quantizationParameters")
    tolerance = float(quant["tolerance"]) if isinstance(quant, dict) else 0.0
    got, _ = decode_features(client.post_binary(url + "/query", {**form, "f": "pbf"}), schema)
    answer = client.post(url + "/query", {**form, "f": "json"})
    want = decode_json_features(answer.get("features") or [], schema)
    difference = compare(got, want, tolerance, schema.oid_field)
    if difference is None and len(got) == 0:
        return FormatChoice("pbf", f"{choice.reason}: the sample page was empty", False, choice.forced, tolerance)
    return settle(choice, difference, tolerance if isinstance(quant, dict) else None, url)
