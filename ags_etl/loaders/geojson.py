"""GeoJSON (RFC 7946) and newline-delimited GeoJSON loaders.

Both loaders take features in EPSG:4326 only (``capabilities.required_crs``; the
pipeline inserts a reprojection) and write what RFC 7946 asks for:

* no ``crs`` member (RFC 7946 §4 removed it; longitude/latitude WGS 84 is implied);
* the right-hand rule (§3.1.6): exterior rings counter-clockwise, holes clockwise.
  Esri JSON uses the opposite winding, so every polygon is re-oriented;
* coordinates rounded to ``precision`` decimals (default 7, about 1 cm; §11.2) and
  written in their shortest form (``12.5``, ``0.0``, ``1e-7``); values too large for
  that rounding to mean anything (``|v| * 10**precision >= 2**53``) are written as they
  are, up to the largest double (``1e+308``). NaN or infinite X/Y (or infinite Z) fail
  the run with a GeometryError naming the feature;
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

The batch-wide helpers both this loader and the KMZ loader use (geometry decomposition,
the numpy coordinate formatter, ISO timestamps, Arrow string assembly, option and CRS
checks) live in :mod:`ags_etl.loaders.text`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import IO, Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pydantic import BaseModel, ConfigDict, Field

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, GeometryError
from ags_etl.loaders.base import (
    WGS84,
    FileLoader,
    LoaderCapabilities,
    LoadStats,
    atomic_file,
    check_batch_crs,
)
from ags_etl.loaders.storage import atomic_output
from ags_etl.loaders.text import (
    LSTR,
    MAGNITUDE_LIMIT,
    decompose_geometries,
    describe_feature,
    iso_timestamps,
    join,
    join_runs,
    lit,
    locate_bad_coordinate,
    orient_right_hand,
    reject_unknown_options,
    reorder_parts,
    scatter,
    sequence_text,
    validate_precision,
    write_text,
)
from ags_etl.schema import LayerSchema

__all__ = [
    "GeoJSONLoader",
    "GeoJSONSeqLoader",
    "GeoJSONWriter",
    "geojson_geometry_text",
    "json_sequence_text",
    "json_value_text",
    "round_coordinates",
]

_WRITE_BUFFER = 1 << 20


# --------------------------------------------------------------------------- attributes


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


# --------------------------------------------------------------------------- geometry text


def round_coordinates(coords: np.ndarray, precision: int) -> np.ndarray:
    """``coords`` rounded to ``precision`` decimals, without ever overflowing; ``-0.0`` becomes ``0.0``.

    Only values with ``|value| * 10**precision < 2**53`` are rounded (there the decimal
    grid is finer than the value's own precision); larger ones — up to the largest
    double — are kept exactly as they are, since rounding them would change nothing but
    could overflow to infinity (``np.round(1e308, 7)`` is ``inf``). NaN stays NaN.
    """
    limit = MAGNITUDE_LIMIT / 10.0**precision
    with np.errstate(over="ignore", invalid="ignore"):
        rounded = np.round(coords, precision)
        small = np.abs(coords) < limit
    return np.where(small, rounded, coords) + 0.0


def json_sequence_text(coords: np.ndarray, seq_counts: np.ndarray, precision: int, wrap: np.ndarray) -> pa.Array:
    """JSON text per coordinate sequence: ``[x,y],[x,y]``, wrapped in ``[…]`` where ``wrap``.

    Numbers are the shortest round-trip form of the values rounded by
    :func:`round_coordinates` (``12.5``, ``0.0``, ``1e-7``, ``1e+308`` — all valid JSON
    numbers). All coordinates of the batch go through one ``orjson.dumps`` of the numpy
    array; in a batch that mixes 2D and 3D geometries the missing Z values (NaN) come out
    as ``,null]`` and are cut from the text (X and Y are checked finite first, so no
    other ``null`` can occur). The positions of the ``[`` that open each coordinate
    split the output into sequences without copying. Raises GeometryError ("NaN or
    infinite coordinates") for a non-finite X or Y or an infinite Z.
    """
    rows, dims = coords.shape
    if rows == 0:
        return sequence_text(coords, seq_counts, precision, strip=True, seq_open=b"[", seq_close=b"]", wrap=wrap)
    if not np.isfinite(coords[:, :2]).all() or (dims == 3 and np.isinf(coords[:, 2]).any()):
        raise GeometryError("a geometry has NaN or infinite coordinates; repair or drop it before writing")
    text = orjson.dumps(round_coordinates(coords, precision), option=orjson.OPT_SERIALIZE_NUMPY)  # "[[x,y],[x,y]]"
    if dims == 3:
        text = text.replace(b",null]", b"]")  # a 2D geometry in a batch with 3D ones: no Z
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
        collections = geoms[parts.collections]
        if not np.isfinite(shapely.get_coordinates(collections)).all():
            raise GeometryError("a geometry has NaN or infinite coordinates; repair or drop it before writing")
        for g in orient_right_hand(collections).tolist():
            rounded = shapely.transform(g, lambda c: round_coordinates(c, precision), include_z=g.has_z)
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

    def _name_bad_feature(self, batch: FeatureBatch, exc: GeometryError) -> GeometryError:
        """The geometry error again, naming the feature at fault (found by a second pass)."""
        found = None if batch.geometry is None else locate_bad_coordinate(batch.geometry)
        if found is None:
            return exc
        row, coordinate = found
        who = describe_feature(batch.attributes, row, self._oid_field, self.stats.features)
        return GeometryError(
            f"{self._loader}: {who} has the coordinate {coordinate} (NaN or infinite coordinates cannot be "
            f"written as GeoJSON); repair or drop it before writing, or exclude the feature with --where"
        )

    def write(self, batch: FeatureBatch) -> None:
        """Append the batch's features. Raises CapabilityError for a batch not in EPSG:4326,
        GeometryError naming the feature for NaN or infinite coordinates."""
        check_batch_crs(self._loader, batch, WGS84)
        if len(batch) == 0:
            return
        try:
            text = self.features_text(batch)
        except GeometryError as exc:
            raise self._name_bad_feature(batch, exc) from exc
        # The first feature of a FeatureCollection has no "," before it.
        skip = 1 if not self._seq and self.stats.features == 0 else 0
        write_text(self._fh, text, skip=skip)
        self.stats.features += len(batch)


class GeoJSONLoader(FileLoader):
    """RFC 7946 FeatureCollection in one file (``.geojson`` / ``.json``).

    Options: ``precision`` (decimals kept, 0–15, default 7). See the module docstring
    for what is written.
    """

    name: ClassVar[str] = "geojson"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".geojson", ".json"), required_crs=WGS84, supports_tables=True, object_storage=True
    )
    _options: ClassVar[tuple[str, ...]] = ("precision", "storage_options")

    class Options(BaseModel):
        """Pipeline-file sink keys besides type/path/overwrite."""

        model_config = ConfigDict(extra="forbid")
        precision: int = Field(7, ge=0, le=15)
        storage_options: dict[str, Any] | None = None

    def __init__(self, path: Any, *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(path, overwrite=overwrite, **options)
        reject_unknown_options(self.name, options, self._options)
        self.precision = validate_precision(self.name, options.get("precision", 7))

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[GeoJSONWriter]:
        """Write to a temp file beside the target (a URL: uploaded whole); rename on success, delete on error."""
        self.check(schema)
        header = b'{"type":"FeatureCollection","name":' + orjson.dumps(schema.name) + b',"features":['
        with atomic_output(self.location, self.overwrite) as tmp, tmp.open("wb", buffering=_WRITE_BUFFER) as fh:
            writer = GeoJSONWriter(fh, schema, loader=self.name, precision=self.precision, seq=False, rs=False)
            fh.write(header)
            yield writer
            fh.write(b"\n]}\n" if writer.stats.features else b"]}\n")
        writer.stats.outputs.append(self.path)


class GeoJSONSeqLoader(FileLoader):
    """One GeoJSON Feature per line (``.geojsonl``, ``.ndjson``; ``.geojsons`` = RFC 8142 with RS).

    Options: ``precision`` (0–15, default 7); ``rs`` (bool: put the RFC 8142 record
    separator 0x1E before each feature; default true only for ``.geojsons`` targets).
    """

    name: ClassVar[str] = "geojsonl"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".geojsonl", ".geojsons", ".ndjson"), required_crs=WGS84, supports_tables=True
    )
    _options: ClassVar[tuple[str, ...]] = ("precision", "rs")

    class Options(BaseModel):
        """Pipeline-file sink keys besides type/path/overwrite."""

        model_config = ConfigDict(extra="forbid")
        precision: int = Field(7, ge=0, le=15)
        rs: bool | None = None

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
