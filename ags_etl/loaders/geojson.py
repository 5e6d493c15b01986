"""GeoJSON (RFC 7946) and newline-delimited GeoJSON loaders.

Both loaders take features in EPSG:4326 only (``capabilities.required_crs``; the
pipeline inserts a reprojection) and write what RFC 7946 asks for:

* no ``crs`` member (RFC 7946 §4 removed it; longitude/latitude WGS 84 is implied);
* the right-hand rule (§3.1.6): exterior rings counter-clockwise, holes clockwise.
  Esri JSON uses the opposite winding, so every polygon is re-oriented;
* coordinates rounded to ``precision`` decimals (default 7, about 1 cm; §11.2) and
  written in their shortest form (``12.5``, ``0.0``, ``1e-7``);
* ``"id"`` is the OID value when the schema has an OID field (the OID also stays a
  property); a null OID gives a feature without ``"id"``;
* properties: dates (``timestamp``) as ISO 8601 UTC strings ``"1965-03-01T00:00:00Z"``
  (``".123Z"`` milliseconds only when a value has them), date-only values as
  ``"YYYY-MM-DD"``, time-only values as ``"HH:MM:SS.mmm"``, doubles in their shortest
  round-trip form (always with a ``.`` or exponent, so readers keep them real), nulls
  and NaN/±Infinity as ``null``;
* missing *or empty* geometries are written as ``"geometry": null``; a table without
  geometry gives features whose geometry is null. Z is written when a geometry has it;
  M is dropped (GeoJSON has no M).

The FeatureCollection carries the foreign member ``"name"`` (the layer name; GDAL takes
it as the layer name). Output is streamed — header, each batch's features (one per
line), footer — through :func:`~ags_etl.loaders.base.atomic_file`, so memory stays at
one batch and a failed run leaves no file (and any earlier output untouched).

GeoJSONSeqLoader writes one Feature per line (newline-delimited GeoJSON, as read by
GDAL's GeoJSONSeq driver, ``jq`` and most "ndjson" tools). RFC 8142 puts an ASCII
record separator (0x1E) before every record; that is written only when the target ends
in ``.geojsons`` (GDAL's convention for RFC 8142 files) or the option ``rs=True`` is
given. ``.geojsonl`` and ``.ndjson`` get plain newline-delimited records.

How it is fast: no Python object is made per feature or per coordinate. All
coordinates of a batch go through one ``orjson.dumps`` of a numpy array, which is cut
into sequences by offset (:func:`json_sequence_text`); the rest of each feature is
assembled with Arrow string kernels over whole columns, and a finished batch is written
straight from the Arrow data buffer. Measured on 2 cores (shapely 2.2, pyarrow 26,
orjson 3.13): ``orjson.dumps`` of one dict per feature ran ~210k points/s and ~60k
50-vertex polygons/s, ``shapely.to_geojson`` ~60k polygons/s; numbers for this writer
are printed by ``benchmarks/bench_loaders_geojson_kmz.py``. (Calling ``orjson.dumps``
once per feature and keeping the results for a ``b",".join`` was 5× slower than
writing each at once — page faults on thousands of live buffers.)

:func:`decompose_geometries`, :func:`sequence_text`, :func:`iso_timestamps` and the
option checks are shared with the KMZ loader.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry.polygon import orient as _orient_one

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, GeometryError
from ags_etl.loaders.base import WGS84, Loader, LoaderCapabilities, LoadStats, atomic_file
from ags_etl.schema import LayerSchema

__all__ = [
    "GeoJSONLoader",
    "GeoJSONSeqLoader",
    "GeoJSONWriter",
    "GeometryParts",
    "check_batch_crs",
    "decompose_geometries",
    "geojson_geometry_text",
    "iso_timestamps",
    "json_sequence_text",
    "json_value_text",
    "orient_right_hand",
    "reject_unknown_options",
    "sequence_text",
    "validate_precision",
    "write_text",
]

LSTR = pa.large_string()  # int64 offsets: one batch of big polygons may pass 2 GiB of text
_WRITE_BUFFER = 1 << 20
_POLYGONAL_IDS = (3, 6, 7)
#: |coordinate| limit so that value * 10**precision is an exact float64 integer (far beyond any
#: longitude, latitude or altitude in metres).
_MAGNITUDE_LIMIT = 2.0**53


def lit(text: str) -> pa.Scalar:
    """A large_string scalar (Arrow string kernels want all arguments of one type)."""
    return pa.scalar(text, LSTR)


def join(*parts: pa.Array | pa.Scalar) -> pa.Array:
    """Element-wise concatenation of large_string arrays/scalars (null if any part is null)."""
    return pc.binary_join_element_wise(*parts, lit(""))


def join_runs(counts: np.ndarray, values: pa.Array, sep: str) -> pa.Array:
    """Join consecutive runs of ``values`` (run lengths ``counts``) with ``sep``."""
    offsets = pa.array(np.concatenate(([0], np.cumsum(counts, dtype=np.int64))), pa.int64())
    return pc.binary_join(pa.LargeListArray.from_arrays(offsets, values), lit(sep))


def write_text(fh: IO[bytes], text: pa.Array | pa.ChunkedArray, skip: int = 0) -> int:
    """Write the concatenation of a null-free string array from its data buffer; return bytes written.

    ``skip`` leaves out that many leading bytes (used to drop a leading separator).
    """
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    if len(text) == 0:
        return 0
    _, offsets_buf, data = text.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64 if pa.types.is_large_string(text.type) else np.int32)
    start, end = int(offsets[text.offset]) + skip, int(offsets[text.offset + len(text)])
    fh.write(memoryview(data)[start:end])
    return end - start


# --------------------------------------------------------------------------- options / checks


def validate_precision(loader: str, precision: object) -> int:
    """Return ``precision`` as an int in 0..15, or raise ConfigError naming the value."""
    if isinstance(precision, bool) or not isinstance(precision, (int, np.integer)) or not 0 <= int(precision) <= 15:
        raise ConfigError(
            f"{loader}: option precision={precision!r} is not a whole number of decimals from 0 to 15; "
            f"use 7 (about 1 cm, the RFC 7946 recommendation) unless you need more"
        )
    return int(precision)


def reject_unknown_options(loader: str, options: dict[str, Any], known: tuple[str, ...]) -> None:
    """Raise ConfigError when ``options`` holds a key this loader does not know."""
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(
            f"{loader}: unknown option(s) {', '.join(map(repr, unknown))}; "
            f"this loader takes {', '.join(known) if known else 'no options'}"
        )


def check_batch_crs(loader: str, batch: FeatureBatch) -> None:
    """Refuse a batch with geometries in a CRS other than EPSG:4326 (CapabilityError).

    ``batch.crs is None`` is accepted: the schema was checked when the writer opened.
    """
    if batch.geometry is None or batch.crs is None or batch.crs is WGS84:
        return
    if not batch.crs.equals(WGS84, ignore_axis_order=True):
        raise CapabilityError(
            f"{loader}: a batch arrived in {batch.crs.to_string()}, the output needs EPSG:4326; "
            f"reproject to EPSG:4326 before this loader"
        )


# --------------------------------------------------------------------------- attributes


def iso_timestamps(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """ISO 8601 UTC strings for a timestamp column: ``1965-03-01T00:00:00Z``.

    Values with a sub-second part get milliseconds (``…T00:00:00.250Z``); finer units
    are floored to milliseconds. Tz-aware values are printed as the UTC instant they
    hold, naive values are taken to be UTC already. Nulls stay null.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    unit = column.type.unit
    naive = column.cast(pa.timestamp(unit))  # keeps the stored UTC instant, drops the zone label
    if unit in ("us", "ns"):
        # Floor to milliseconds here: Arrow's unsafe cast truncates towards zero, which
        # moves a pre-1970 instant forward (…09.123456 → "…09.124").
        ticks = naive.cast(pa.int64()).fill_null(0).to_numpy()
        millis = np.floor_divide(ticks, 1_000 if unit == "us" else 1_000_000)
        naive = pa.array(millis, pa.timestamp("ms"), mask=naive.is_null().to_numpy(zero_copy_only=False))
        unit = "ms"
    text = naive.cast(pa.timestamp("s"), safe=False).cast(pa.string())
    if unit != "s":
        ticks = naive.cast(pa.int64()).fill_null(0).to_numpy()
        fraction = (ticks % 1_000) != 0
        if fraction.any():
            # Only these rows need the long form; a cast of a negative sub-second value to
            # seconds rounds towards zero, so their whole-second text is discarded.
            fine = naive.cast(pa.string())
            text = pc.if_else(pa.array(fraction), fine, text)
    text = pc.replace_substring(text, " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")


_JSON_ESCAPES = (("\\", "\\\\"), ('"', '\\"'), ("\n", "\\n"), ("\r", "\\r"), ("\t", "\\t"))
_OTHER_CONTROL_RE2 = r"[\x00-\x1f]"
_NEEDS_ESCAPE_RE2 = r'[\x00-\x1f"\\]'


def _json_strings(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Quoted, escaped JSON strings (nulls stay null)."""
    raw = column.cast(LSTR)
    if isinstance(raw, pa.ChunkedArray):
        raw = raw.combine_chunks()
    text = raw
    if not pc.any(pc.match_substring_regex(raw, _NEEDS_ESCAPE_RE2)).as_py():
        return join(lit('"'), text, lit('"'))  # the common case: nothing to escape
    for char, escaped in _JSON_ESCAPES:
        text = pc.replace_substring(text, char, escaped)
    odd = pc.match_substring_regex(text, _OTHER_CONTROL_RE2).fill_null(False)
    if pc.any(odd).as_py():
        # Rare control characters (\b, \f, \x00 …): let orjson write those few values.
        mask = odd.to_numpy(zero_copy_only=False)
        fixed = [orjson.dumps(v).decode()[1:-1] for v in raw.filter(pa.array(mask)).to_pylist()]
        text = pc.replace_with_mask(text, pa.array(mask), pa.array(fixed, LSTR))
    return join(lit('"'), text, lit('"'))


def json_value_text(name: str, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """JSON text of every value of an attribute column (``null`` for nulls, NaN and ±Infinity).

    Raises CapabilityError for an Arrow type with no JSON form.
    """
    dtype = column.type
    if pa.types.is_dictionary(dtype):
        column = column.cast(dtype.value_type)
        dtype = column.type
    if pa.types.is_null(dtype):
        return pa.array(["null"] * len(column), LSTR)
    if pa.types.is_timestamp(dtype):
        text = _json_strings(iso_timestamps(column))
    elif pa.types.is_date(dtype) or pa.types.is_time(dtype):
        text = _json_strings(column.cast(pa.string()))
    elif pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        text = _json_strings(column)
    elif pa.types.is_boolean(dtype) or pa.types.is_integer(dtype):
        text = column.cast(LSTR)
    elif pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        if pa.types.is_decimal(dtype):
            column = column.cast(pa.float64())
        finite = pc.is_finite(column)
        # Arrow prints the shortest round-trip form (float32: the float32 one, 0.1 not
        # 0.10000000149011612); "100" gets ".0" so readers do not take the field as integer.
        text = pc.if_else(finite, column, pa.scalar(None, column.type)).cast(LSTR)
        plain = pc.invert(pc.match_substring_regex(text, r"[.eE]")).fill_null(False)
        text = pc.if_else(plain, join(text, lit(".0")), text)
    else:
        try:
            text = _json_strings(column.cast(pa.string()))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise CapabilityError(
                f"attribute {name!r} has Arrow type {dtype}, which has no JSON form; "
                f"drop the field with a fields transform"
            ) from exc
    return text.fill_null(lit("null"))


# --------------------------------------------------------------------------- geometry structure


def _orient_fallback(geoms: np.ndarray) -> np.ndarray:
    """Right-hand-rule orientation for shapely < 2.1 (no ``orient_polygons``): per polygon."""
    out = geoms.copy()
    type_ids = shapely.get_type_id(geoms)
    for i in np.flatnonzero(np.isin(type_ids, _POLYGONAL_IDS)).tolist():
        g = geoms[i]
        if g.is_empty:
            continue
        if type_ids[i] == 3:
            out[i] = _orient_one(g, 1.0)
        else:
            parts = list(_orient_fallback(shapely.get_parts(g)))
            out[i] = shapely.MultiPolygon(parts) if type_ids[i] == 6 else shapely.GeometryCollection(parts)
    return out


def orient_right_hand(geoms: np.ndarray) -> np.ndarray:
    """Exterior rings counter-clockwise, holes clockwise (RFC 7946 §3.1.6); other types unchanged.

    Uses ``shapely.orient_polygons`` (shapely ≥ 2.1, vectorised in GEOS) when present,
    else a per-polygon loop over ``shapely.geometry.polygon.orient``.
    """
    orient_polygons: Callable[..., np.ndarray] | None = getattr(shapely, "orient_polygons", None)
    if orient_polygons is not None:
        return orient_polygons(geoms, exterior_cw=False)
    return _orient_fallback(geoms)


def _flatten_collection(geom: shapely.Geometry) -> shapely.Geometry:
    """A GeometryCollection of the non-empty single-part leaves of ``geom``."""
    leaves: list[shapely.Geometry] = []
    stack = [geom]
    while stack:
        g = stack.pop()
        if shapely.get_type_id(g) >= 4:
            stack.extend(reversed(list(shapely.get_parts(g))))
        elif not g.is_empty:
            leaves.append(g)
    return shapely.GeometryCollection(leaves)


@dataclass(frozen=True)
class GeometryParts:
    """A batch's geometries taken apart into flat arrays (polygons already right-hand oriented).

    ``rows``: the batch rows that have a non-empty geometry, with their shapely type ids
    ``types``; ``part_counts``: parts per such row (a single geometry is its own one
    part); ``part_types``: type id of each part (0 Point, 1 LineString, 2 LinearRing,
    3 Polygon); ``other_pos`` / ``poly_pos``: positions of non-polygon and polygon parts;
    ``ring_counts``: rings per polygon part (exterior first); ``seq_counts``: coordinates
    per sequence, the non-polygon parts first, then all rings; ``coords``: (n, 2) or
    (n, 3) with NaN Z where a geometry has none. ``collections``: rows (indices into the
    batch) holding GeometryCollections that were *not* taken apart.
    """

    rows: np.ndarray
    types: np.ndarray
    part_counts: np.ndarray
    part_types: np.ndarray
    other_pos: np.ndarray
    poly_pos: np.ndarray
    ring_counts: np.ndarray
    seq_counts: np.ndarray
    coords: np.ndarray
    collections: np.ndarray


def decompose_geometries(geoms: np.ndarray, *, flatten_collections: bool) -> GeometryParts:
    """Take a batch's geometries apart for text building (vectorised shapely calls).

    Missing and empty geometries are left out (not in ``rows``), as are empty parts.
    GeometryCollections are flattened into their single-part leaves when
    ``flatten_collections``, else listed in ``collections`` and left out.
    """
    type_ids = shapely.get_type_id(geoms)
    present = (type_ids >= 0) & ~shapely.is_empty(geoms)
    collections = np.flatnonzero(present & (type_ids == 7)) if not flatten_collections else np.empty(0, np.int64)
    if not flatten_collections:
        present &= type_ids != 7
    rows = np.flatnonzero(present)
    sub = geoms[rows]
    types = type_ids[rows]
    if np.isin(types, _POLYGONAL_IDS).any():
        sub = orient_right_hand(sub)
    if flatten_collections:
        for k in np.flatnonzero(types == 7).tolist():
            sub[k] = _flatten_collection(sub[k])
    if (types >= 4).any():
        parts, part_row = shapely.get_parts(sub, return_index=True)  # single types: the geometry itself
        keep = ~shapely.is_empty(parts)
        parts, part_row = parts[keep], part_row[keep]
    else:  # all single-part and non-empty: skip get_parts, which copies every geometry
        parts, part_row = sub, np.arange(len(sub))
    part_types = shapely.get_type_id(parts)
    poly_pos = np.flatnonzero(part_types == 3)
    other_pos = np.flatnonzero(part_types != 3)
    rings, ring_poly = shapely.get_rings(parts[poly_pos], return_index=True)
    sequences = np.concatenate([parts[other_pos], rings])
    include_z = bool(shapely.has_z(sequences).any())
    coords, seq_of = shapely.get_coordinates(sequences, include_z=include_z, return_index=True)
    return GeometryParts(
        rows=rows,
        types=types,
        part_counts=np.bincount(part_row, minlength=len(rows)),
        part_types=part_types,
        other_pos=other_pos,
        poly_pos=poly_pos,
        ring_counts=np.bincount(ring_poly, minlength=len(poly_pos)),
        seq_counts=np.bincount(seq_of, minlength=len(sequences)),
        coords=coords,
        collections=collections,
    )


# --------------------------------------------------------------------------- coordinate text


#: Row j: the j-th character of "0000" … "9999" (a (4, 10000) table).
_DIGIT_ROWS = np.frombuffer("".join(f"{i:04d}" for i in range(10_000)).encode(), dtype=np.uint8).reshape(10_000, 4).T.copy()


def _fill_digits(chars: np.ndarray, values: np.ndarray) -> None:
    """Write whole numbers ≥ 0 (float64, exact) zero-padded into ``chars`` (width, n).

    One table lookup per character row; groups of four digits are split off with float
    arithmetic (exact below 2**53), which numpy vectorises — int64 ``//`` and ``%`` do
    not vectorise and cost about ten times as much.
    """
    row = chars.shape[0]
    rest = values
    while row > 0:
        size = min(4, row)
        higher = np.floor(rest * 1e-4)
        chunk = (rest - higher * 1e4).astype(np.intp)
        for j in range(size):
            np.take(_DIGIT_ROWS[4 - size + j], chunk, out=chars[row - size + j])
        rest = higher
        row -= size


def _number_width(values: np.ndarray, precision: int) -> int:
    """Characters needed for ``values`` in fixed notation: sign, whole digits, point, decimals."""
    largest = int(np.rint(np.abs(values).max(initial=0.0) * 10**precision)) // 10**precision
    return 1 + len(str(largest)) + (1 + precision if precision else 0)


def _fill_number(chars: np.ndarray, keep: np.ndarray, values: np.ndarray, precision: int, strip: bool) -> None:
    """Fixed-point text of ``values`` into ``chars``/``keep``, both (width, n) — one row per character.

    Column ``i`` of the kept characters spells ``'%.{precision}f' % values[i]``; with
    ``strip`` without trailing zeros, and without the point when nothing follows it.
    Values must be finite with ``|value| * 10**precision < 2**53`` (checked by the caller).
    """
    scale = float(10**precision)
    fixed = np.rint(values * scale)
    magnitude = np.abs(fixed)
    whole = np.floor(magnitude / scale)
    fraction = magnitude - whole * scale
    whole_width = chars.shape[0] - 1 - (1 + precision if precision else 0)
    chars[0] = ord("-")
    np.less(fixed, 0.0, out=keep[0])
    _fill_digits(chars[1 : 1 + whole_width], whole)
    keep[whole_width] = True  # the units digit is always written
    for j in range(whole_width - 1):
        np.greater_equal(whole, 10.0 ** (whole_width - 1 - j), out=keep[1 + j])
    if not precision:
        return
    point = 1 + whole_width
    chars[point] = ord(".")
    _fill_digits(chars[point + 1 :], fraction)
    if not strip:
        keep[point:] = True
        return
    # Decimals to keep: up to the last non-zero digit.
    kept = np.zeros(len(values), dtype=np.int8)
    for j in range(precision):
        kept[chars[point + 1 + j] != 48] = j + 1
    np.greater(kept, 0, out=keep[point])
    for j in range(precision):
        np.greater(kept, j, out=keep[point + 1 + j])


def sequence_text(
    coords: np.ndarray,
    seq_counts: np.ndarray,
    precision: int,
    *,
    strip: bool,
    tuple_open: bytes = b"",
    tuple_close: bytes = b"",
    between: bytes = b" ",
    seq_open: bytes = b"",
    seq_close: bytes = b"",
    wrap: np.ndarray | None = None,
) -> pa.Array:
    """One large_string per coordinate sequence, built in numpy without per-value Python work.

    Each coordinate is written ``tuple_open x,y[,z] tuple_close`` (numbers as in
    :func:`_fill_number`; Z only where it is not NaN), coordinates of a sequence are
    separated by ``between``, and sequences with ``wrap[i]`` true get ``seq_open`` /
    ``seq_close`` around them. All characters go into one (characters, coordinates)
    matrix with a keep mask — every fill is a contiguous row write — and the kept
    characters read column by column are the text of all sequences back to back.
    Raises GeometryError for non-finite or huge coordinates.
    """
    rows, dims = coords.shape
    if rows == 0:
        return pa.array([""] * len(seq_counts), LSTR)
    columns = [np.ascontiguousarray(coords[:, 0]), np.ascontiguousarray(coords[:, 1])]
    if not (np.isfinite(columns[0]).all() and np.isfinite(columns[1]).all()):
        raise GeometryError("a geometry has NaN or infinite coordinates; repair or drop it before writing")
    has_z: np.ndarray | None = None
    if dims == 3:
        has_z = ~np.isnan(coords[:, 2])
        columns.append(np.where(has_z, coords[:, 2], 0.0))
        if not np.isfinite(columns[2]).all():
            raise GeometryError("a geometry has an infinite Z value; repair or drop it before writing")
    largest = max(float(np.abs(c).max()) for c in columns)
    if largest * 10.0**precision >= _MAGNITUDE_LIMIT:
        raise GeometryError(
            f"a coordinate is too large to write with {precision} decimals (|value| {largest:.6g}); "
            f"check the CRS or drop the Z values"
        )
    starts = np.concatenate(([0], np.cumsum(seq_counts, dtype=np.int64)))
    nonempty = seq_counts > 0
    first = np.zeros(rows, dtype=bool)
    first[starts[:-1][nonempty]] = True
    last = np.zeros(rows, dtype=bool)
    last[starts[1:][nonempty] - 1] = True
    wrapped = np.repeat(wrap, seq_counts) if wrap is not None and (seq_open or seq_close) else None

    widths = [_number_width(c, precision) for c in columns]
    layout: list[tuple[bytes | int, np.ndarray | None]] = []  # (constant text or number index, keep or None=all)
    if seq_open and wrapped is not None:
        layout.append((seq_open, first & wrapped))
    if tuple_open:
        layout.append((tuple_open, None))
    layout += [(0, None), (b",", None), (1, None)]
    if has_z is not None:
        layout += [(b",", has_z), (2, has_z)]
    if tuple_close:
        layout.append((tuple_close, None))
    if seq_close and wrapped is not None:
        layout.append((seq_close, last & wrapped))
    if between:
        layout.append((between, ~last))
    total = sum(widths[item] if isinstance(item, int) else len(item) for item, _ in layout)
    chars = np.empty((total, rows), dtype=np.uint8)
    keep = np.empty((total, rows), dtype=bool)
    row = 0
    for item, item_keep in layout:
        if isinstance(item, int):
            width = widths[item]
            _fill_number(chars[row : row + width], keep[row : row + width], columns[item], precision, strip)
            if item_keep is not None:
                keep[row : row + width] &= item_keep
        else:
            width = len(item)
            chars[row : row + width] = np.frombuffer(item, dtype=np.uint8)[:, None]
            keep[row : row + width] = True if item_keep is None else item_keep
        row += width
    data = chars.T[keep.T]
    row_ends = np.concatenate(([0], np.cumsum(keep.sum(axis=0), dtype=np.int64)))
    return pa.LargeStringArray.from_buffers(len(seq_counts), pa.py_buffer(row_ends[starts]), pa.py_buffer(data))


def scatter(values: pa.Array, rows: np.ndarray, n: int, fill: str) -> pa.Array:
    """A length-``n`` array with ``values`` at ``rows`` and ``fill`` elsewhere."""
    where = np.full(n, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return pc.take(values, pa.array(where, mask=where < 0)).fill_null(lit(fill))


def reorder_parts(parts: GeometryParts, other_text: pa.Array, poly_text: pa.Array) -> pa.Array:
    """Part texts back in part order (they were built non-polygons first, then polygons)."""
    order = np.concatenate([parts.other_pos, parts.poly_pos])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return pc.take(pa.concat_arrays([other_text, poly_text]), pa.array(inverse))


def json_sequence_text(coords: np.ndarray, seq_counts: np.ndarray, precision: int, wrap: np.ndarray) -> pa.Array:
    """JSON text per coordinate sequence: ``[x,y],[x,y]``, wrapped in ``[…]`` where ``wrap``.

    Numbers are the shortest round-trip form of the rounded values (``12.5``, ``0.0``,
    ``1e-7`` — all valid JSON numbers). All coordinates of the batch go through one
    ``orjson.dumps`` of the numpy array (about 2× faster than the character-matrix
    route of :func:`sequence_text`, which is kept for batches that mix 2D and 3D
    geometries: orjson would write their missing Z as ``null``). The positions of the
    ``[`` that open each coordinate split the output into sequences without copying.
    """
    rows, dims = coords.shape
    if rows == 0 or (dims == 3 and np.isnan(coords[:, 2]).any()):
        return sequence_text(
            coords, seq_counts, precision, strip=True, tuple_open=b"[", tuple_close=b"]", between=b",",
            seq_open=b"[", seq_close=b"]", wrap=wrap,
        )
    if not np.isfinite(coords).all():
        raise GeometryError("a geometry has NaN or infinite coordinates; repair or drop it before writing")
    text = orjson.dumps(np.round(coords, precision) + 0.0, option=orjson.OPT_SERIALIZE_NUMPY)  # "[[x,y],[x,y]]"
    opens = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("["))[1:]  # numbers hold no "["
    # Sequence k runs from the "[" of its first coordinate to just before the "," (or the
    # final "]") that follows its last one; the offsets below include that one extra
    # character, which the slice drops.
    first_rows = np.concatenate(([0], np.cumsum(seq_counts, dtype=np.int64)))
    offsets = np.append(opens, len(text))[first_rows]
    raw = pa.LargeStringArray.from_buffers(len(seq_counts), pa.py_buffer(offsets.astype(np.int64)), pa.py_buffer(text))
    sequences = pc.utf8_slice_codeunits(raw, 0, -1)
    if wrap.any():
        sequences = pc.if_else(pa.array(wrap), join(lit("["), sequences, lit("]")), sequences)
    return sequences


_GEOJSON_TYPE_OPEN = pa.array(
    [
        '{"type":"Point","coordinates":',
        '{"type":"LineString","coordinates":',
        '{"type":"LineString","coordinates":',  # a LinearRing is written as a LineString
        '{"type":"Polygon","coordinates":',
        '{"type":"MultiPoint","coordinates":',
        '{"type":"MultiLineString","coordinates":',
        '{"type":"MultiPolygon","coordinates":',
    ],
    LSTR,
)


def geojson_geometry_text(geoms: np.ndarray, precision: int = 7) -> pa.Array:
    """GeoJSON geometry text for every row of a batch (``null`` for missing or empty ones).

    Polygons are right-hand oriented, coordinates rounded to ``precision`` decimals.
    GeometryCollections (rare in feature services) go through ``shapely.to_geojson``.
    """
    n = len(geoms)
    parts = decompose_geometries(geoms, flatten_collections=False)
    if len(parts.rows):
        point_part = parts.part_types[parts.other_pos] == 0
        wrap = np.concatenate([~point_part, np.ones(int(parts.ring_counts.sum()), dtype=bool)])
        seq_text = json_sequence_text(parts.coords, parts.seq_counts, precision, wrap)
        other_text = seq_text.slice(0, len(parts.other_pos))
        ring_text = seq_text.slice(len(parts.other_pos))
        poly_text = join(lit("["), join_runs(parts.ring_counts, ring_text, ","), lit("]"))
        part_text = reorder_parts(parts, other_text, poly_text)
        body = join_runs(parts.part_counts, part_text, ",")
        multi = parts.types >= 4
        if multi.any():
            body = pc.if_else(pa.array(multi), join(lit("["), body, lit("]")), body)
        text = join(pc.take(_GEOJSON_TYPE_OPEN, pa.array(parts.types)), body, lit("}"))
        full = scatter(text, parts.rows, n, "null")
    else:
        full = pa.array(["null"] * n, LSTR)
    if len(parts.collections):
        collection_json: list[str] = []
        for g in orient_right_hand(geoms[parts.collections]).tolist():
            rounded = shapely.transform(g, lambda c: np.round(c, precision) + 0.0, include_z=g.has_z)
            collection_json.append(str(shapely.to_geojson(rounded)))
        mask = np.zeros(n, dtype=bool)
        mask[parts.collections] = True
        full = pc.replace_with_mask(full, pa.array(mask), pa.array(collection_json, LSTR))
    return full


# --------------------------------------------------------------------------- writers


class GeoJSONWriter:
    """Writes batches into an open binary file; made by the loaders' ``open``."""

    def __init__(self, fh: IO[bytes], schema: LayerSchema, *, loader: str, precision: int, seq: bool, rs: bool) -> None:
        self._fh = fh
        self._oid_field = schema.oid_field
        self._loader = loader
        self._precision = precision
        self._seq = seq
        self._rs = rs
        self._keys: dict[str, str] = {}
        self.stats = LoadStats()

    def _key(self, field: str, first: bool) -> str:
        key = self._keys.get(field)
        if key is None:
            key = self._keys[field] = orjson.dumps(field).decode() + ":"
        return key if first else "," + key

    def features_text(self, batch: FeatureBatch) -> pa.Array:
        """One JSON text per feature, each starting with ``,\\n`` (Feature­Collection) or
        the record separator (sequence with RS) and, for sequences, ending in ``\\n``."""
        n = len(batch)
        props: list[pa.Array | pa.Scalar] = [lit("{")]
        for i, field in enumerate(batch.column_names):
            props.append(lit(self._key(field, i == 0)))
            props.append(json_value_text(field, batch.column(field).combine_chunks()))
        props.append(lit("}"))
        properties = join(*props) if len(props) > 2 else pa.array(["{}"] * n, LSTR)
        if batch.geometry is None:
            geometry: pa.Array | pa.Scalar = lit("null")
        else:
            geometry = geojson_geometry_text(batch.geometry, self._precision)
        if self._oid_field is not None and self._oid_field in batch.column_names:
            ids = join(lit('"id":'), batch.column(self._oid_field).cast(LSTR).combine_chunks(), lit(",")).fill_null(lit(""))
        else:
            ids = lit("")
        head = ("\x1e" if self._rs else "") if self._seq else ",\n"
        tail = "}\n" if self._seq else "}"
        return join(lit(head + '{"type":"Feature",'), ids, lit('"geometry":'), geometry, lit(',"properties":'), properties, lit(tail))

    def write(self, batch: FeatureBatch) -> None:
        """Append the batch's features. Raises CapabilityError for a batch not in EPSG:4326."""
        check_batch_crs(self._loader, batch)
        if len(batch) == 0:
            return
        text = self.features_text(batch)
        # The first feature of a FeatureCollection has no "," before it.
        skip = 1 if not self._seq and self.stats.features == 0 else 0
        write_text(self._fh, text, skip=skip)
        self.stats.features += len(batch)


class GeoJSONLoader(Loader):
    """RFC 7946 FeatureCollection in one file (``.geojson`` / ``.json``).

    Options: ``precision`` (decimals kept, 0–15, default 7). See the module docstring
    for what is written.
    """

    name: ClassVar[str] = "geojson"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".geojson", ".json"), required_crs=WGS84, supports_tables=True
    )
    _options: ClassVar[tuple[str, ...]] = ("precision",)

    def __init__(self, path: Any, *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(path, overwrite=overwrite, **options)
        reject_unknown_options(self.name, options, self._options)
        self.precision = validate_precision(self.name, options.get("precision", 7))

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[GeoJSONWriter]:
        """Write to a temp file beside the target; rename on success, delete on error."""
        self.check(schema)
        header = b'{"type":"FeatureCollection","name":' + orjson.dumps(schema.name) + b',"features":['
        with atomic_file(self.path, self.overwrite) as tmp, tmp.open("wb", buffering=_WRITE_BUFFER) as fh:
            writer = GeoJSONWriter(fh, schema, loader=self.name, precision=self.precision, seq=False, rs=False)
            fh.write(header)
            yield writer
            fh.write(b"\n]}\n" if writer.stats.features else b"]}\n")
        writer.stats.outputs.append(self.path)


class GeoJSONSeqLoader(Loader):
    """One GeoJSON Feature per line (``.geojsonl``, ``.ndjson``; ``.geojsons`` = RFC 8142 with RS).

    Options: ``precision`` (0–15, default 7); ``rs`` (bool: put the RFC 8142 record
    separator 0x1E before each feature; default true only for ``.geojsons`` targets).
    """

    name: ClassVar[str] = "geojsonl"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".geojsonl", ".geojsons", ".ndjson"), required_crs=WGS84, supports_tables=True
    )
    _options: ClassVar[tuple[str, ...]] = ("precision", "rs")

    def __init__(self, path: Any, *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(path, overwrite=overwrite, **options)
        reject_unknown_options(self.name, options, self._options)
        self.precision = validate_precision(self.name, options.get("precision", 7))
        rs = options.get("rs")
        if rs is None:
            rs = self.path.suffix.lower() == ".geojsons"
        if not isinstance(rs, bool):
            raise ConfigError(f"{self.name}: option rs={rs!r} must be true or false")
        self.rs = rs

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[GeoJSONWriter]:
        """Write to a temp file beside the target; rename on success, delete on error."""
        self.check(schema)
        with atomic_file(self.path, self.overwrite) as tmp, tmp.open("wb", buffering=_WRITE_BUFFER) as fh:
            writer = GeoJSONWriter(fh, schema, loader=self.name, precision=self.precision, seq=True, rs=self.rs)
            yield writer
        writer.stats.outputs.append(self.path)
