"""Vectorised text building for text-based writers (the GeoJSON and KMZ/KML loaders).

Everything here works on a whole batch at once with numpy, shapely 2 array functions
and Arrow string kernels: no Python object is made per feature or per coordinate, and
nothing is kept between calls (memory stays at one batch). Format-specific pieces —
JSON string escaping and GeoJSON assembly (:mod:`ags_etl.loaders.geojson`), XML
escaping and KML elements (:mod:`ags_etl.loaders.kmz`) — stay in the loaders.

Contracts:

* **Text arrays** are Arrow ``large_string`` (:data:`LSTR`; int64 offsets, because one
  batch of big polygons may pass 2 GiB of text). :func:`lit` makes a scalar of that
  type; :func:`join` concatenates arrays/scalars element-wise and gives null when any
  part is null (callers ``fill_null`` to drop optional pieces); :func:`join_runs` joins
  consecutive runs of values; :func:`scatter` spreads per-row values back over a batch
  with a fill text; :func:`write_text` writes a null-free array straight from its Arrow
  data buffer and returns the bytes written.
* **Geometry structure**: :func:`decompose_geometries` takes a batch's geometries apart
  into flat numpy arrays (:class:`GeometryParts`). Polygons come out right-hand oriented
  (:func:`orient_right_hand`: exterior rings counter-clockwise, holes clockwise);
  missing and empty geometries and empty parts are left out; GeometryCollections are
  either flattened into their leaves or listed apart. Writers build text for the
  non-polygon parts and the polygon parts separately and restore part order with
  :func:`reorder_parts`.
* **Coordinates**: :func:`sequence_text` gives one string per coordinate sequence, each
  number in fixed notation with ``precision`` decimals (optionally without trailing
  zeros, never ``-0``), Z only where it is not NaN, with caller-chosen separators and
  brackets. It raises GeometryError for NaN/infinite coordinates and for values too
  large to round exactly (``|value| * 10**precision >= 2**53``).
* **Naming a bad feature**: once a batch's coordinates were refused,
  :func:`locate_bad_coordinate` finds the first row at fault (a second, slow pass that
  only runs on failure) and :func:`describe_feature` names it by OID for the message.
* **Values**: :func:`iso_timestamps` gives ISO 8601 UTC text for a timestamp column
  (``1965-03-01T00:00:00Z``, milliseconds only where a value has them); nulls stay null.
* **Options**: :func:`validate_precision` and :func:`reject_unknown_options`
  raise ConfigError naming the loader and the value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry.polygon import orient as _orient_one

from ags_etl.errors import ConfigError, GeometryError

__all__ = [
    "LSTR",
    "MAGNITUDE_LIMIT",
    "GeometryParts",
    "decompose_geometries",
    "describe_feature",
    "iso_timestamps",
    "join",
    "join_runs",
    "lit",
    "locate_bad_coordinate",
    "orient_right_hand",
    "reject_unknown_options",
    "reorder_parts",
    "scatter",
    "sequence_text",
    "validate_precision",
    "write_text",
]

LSTR = pa.large_string()  # int64 offsets: one batch of big polygons may pass 2 GiB of text
_POLYGONAL_IDS = (3, 6, 7)
#: |coordinate| limit so that value * 10**precision is an exact float64 integer (far beyond any
#: longitude, latitude or altitude in metres).
MAGNITUDE_LIMIT = 2.0**53
_MAGNITUDE_LIMIT = MAGNITUDE_LIMIT


# --------------------------------------------------------------------------- text arrays


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


def scatter(values: pa.Array, rows: np.ndarray, n: int, fill: str) -> pa.Array:
    """A length-``n`` array with ``values`` at ``rows`` and ``fill`` elsewhere."""
    where = np.full(n, -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    return pc.take(values, pa.array(where, mask=where < 0)).fill_null(lit(fill))


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


def locate_bad_coordinate(geoms: np.ndarray, magnitude_limit: float | None = None) -> tuple[int, list[float]] | None:
    """``(row, coordinate)`` of the first geometry with a NaN/infinite X or Y, an infinite Z
    or (when ``magnitude_limit`` is given) an ordinate with ``|value| >= magnitude_limit``;
    None when every coordinate is fine. For error messages: one pass over the batch.
    """
    coords, index = shapely.get_coordinates(geoms, include_z=True, return_index=True)
    if len(coords) == 0:
        return None
    bad = ~np.isfinite(coords[:, :2]).all(axis=1) | np.isinf(coords[:, 2])
    if magnitude_limit is not None:
        with np.errstate(invalid="ignore"):
            bad |= (np.abs(coords) >= magnitude_limit).any(axis=1)
    if not bad.any():
        return None
    k = int(np.argmax(bad))
    coordinate = coords[k] if not np.isnan(coords[k, 2]) else coords[k, :2]  # a 2D geometry: no Z to show
    return int(index[k]), coordinate.tolist()


def describe_feature(attributes: pa.Table, row: int, oid_field: str | None, rows_before: int) -> str:
    """``feature OBJECTID=17``, or ``feature 42 of the output`` (1-based) without an OID value."""
    if oid_field is not None and oid_field in attributes.column_names:
        oid = attributes.column(oid_field)[row].as_py()
        if oid is not None:
            return f"feature {oid_field}={oid}"
    return f"feature {rows_before + row + 1} of the output"


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


def reorder_parts(parts: GeometryParts, other_text: pa.Array, poly_text: pa.Array) -> pa.Array:
    """Part texts back in part order (they were built non-polygons first, then polygons)."""
    order = np.concatenate([parts.other_pos, parts.poly_pos])
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))
    return pc.take(pa.concat_arrays([other_text, poly_text]), pa.array(inverse))


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
