"""GeoJSON (RFC 7946) and newline-delimited GeoJSON loaders.

Both loaders take features in EPSG:4326 only (``capabilities.required_crs``; the
pipeline inserts a reprojection) and write what RFC 7946 asks for:

* no ``crs`` member (RFC 7946 §4 removed it; longitude/latitude WGS 84 is implied);
* the right-hand rule (§3.1.6): exterior rings counter-clockwise, holes clockwise.
  Esri JSON uses the opposite winding, so every polygon is re-oriented;
* coordinates rounded to ``precision`` decimals (default 7, about 1 cm; §11.2);
* ``"id"`` is the OID value when the schema has an OID field (the OID also stays a property);
* properties: dates (``timestamp``) as ISO 8601 UTC strings ``"1965-03-01T00:00:00Z"``
  (``".123Z"`` milliseconds only when a value has them), date-only values as
  ``"YYYY-MM-DD"``, time-only values as ``"HH:MM:SS.mmm"``, nulls and NaN/±Infinity as
  ``null``;
* missing *or empty* geometries are written as ``"geometry": null``; a table without
  geometry gives features whose geometry is null.

Output is streamed: the FeatureCollection header, then each batch's features (one per
line), then the footer, through :func:`~ags_etl.loaders.base.atomic_file`, so memory
stays at one batch and a failed run leaves no file (and any earlier output untouched).

GeoJSONSeqLoader writes one Feature per line (newline-delimited GeoJSON, as read by
GDAL's GeoJSONSeq driver, ``jq`` and most "ndjson" tools). RFC 8142 puts an ASCII
record separator (0x1E) before every record; that is written only when the target ends
in ``.geojsons`` (GDAL's convention for RFC 8142 files) or the option ``rs=True`` is
given. ``.geojsonl`` and ``.ndjson`` get plain newline-delimited records.

Speed: geometries are not passed through ``shapely.to_geojson`` (about 60k 50-vertex
polygons/s measured with shapely 2.2) but built from ``shapely.get_coordinates`` as
numpy views that orjson serialises natively (about 125k polygons/s); points take a
list fast path. Attributes go through Arrow casts and ``Table.to_pylist``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import IO, Any, ClassVar

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from shapely.geometry.polygon import orient as _orient_one

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, LoadError
from ags_etl.loaders.base import WGS84, Loader, LoaderCapabilities, LoadStats, atomic_file
from ags_etl.schema import LayerSchema

__all__ = [
    "GeoJSONLoader",
    "GeoJSONSeqLoader",
    "geojson_geometries",
    "iso_timestamps",
    "json_ready_table",
    "orient_right_hand",
    "check_batch_crs",
    "validate_precision",
]

#: shapely type id → GeoJSON type name (a LinearRing is written as a LineString).
_TYPE_NAMES: dict[int, str] = {
    0: "Point",
    1: "LineString",
    2: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
_POLYGONAL_IDS = (3, 6, 7)
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY
_WRITE_BUFFER = 1 << 20


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
    are truncated to milliseconds. Tz-aware values are printed as the UTC instant they
    hold, naive values are taken to be UTC already. Nulls stay null.
    """
    unit = column.type.unit
    naive = column.cast(pa.timestamp(unit))  # keeps the stored UTC instant, drops the zone label
    text = naive.cast(pa.timestamp("s"), safe=False).cast(pa.string())
    if unit != "s":
        per_second = {"ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[unit]
        ticks = naive.cast(pa.int64()).fill_null(0).to_numpy()
        fraction = (ticks % per_second) != 0
        if fraction.any():
            # Only these rows need the long form; a cast of a negative sub-second value to
            # seconds would round towards zero, so their whole-second text is discarded.
            fine = naive.cast(pa.timestamp("ms"), safe=False).cast(pa.string())
            text = pc.if_else(pa.array(fraction), fine, text)
    text = pc.replace_substring(text, " ", "T", max_replacements=1)
    return pc.binary_join_element_wise(text, "Z", "")


def _json_ready_column(name: str, column: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    dtype = column.type
    if pa.types.is_dictionary(dtype):
        column = column.cast(dtype.value_type)
        dtype = column.type
    if pa.types.is_timestamp(dtype):
        return iso_timestamps(column)
    if pa.types.is_date(dtype) or pa.types.is_time(dtype):
        return column.cast(pa.string())
    if pa.types.is_float16(dtype) or pa.types.is_float32(dtype):
        # Through text, so a float32 0.1 is written as 0.1, not 0.10000000149011612.
        return column.cast(pa.string()).cast(pa.float64())
    if pa.types.is_decimal(dtype):
        return column.cast(pa.float64())
    if (
        pa.types.is_boolean(dtype)
        or pa.types.is_integer(dtype)
        or pa.types.is_floating(dtype)
        or pa.types.is_string(dtype)
        or pa.types.is_large_string(dtype)
        or pa.types.is_null(dtype)
    ):
        return column
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CapabilityError(
            f"attribute {name!r} has Arrow type {dtype}, which has no JSON form; "
            f"drop the field with a fields transform"
        ) from exc


def json_ready_table(table: pa.Table) -> pa.Table:
    """The attribute table with every column in a type whose Python value orjson can write.

    Timestamps become ISO 8601 UTC strings, dates ``YYYY-MM-DD``, times ``HH:MM:SS.mmm``,
    float32 values float64 with their shortest decimal form. NaN doubles are left as
    NaN: orjson writes NaN and ±Infinity as ``null`` (orjson ≥ 3.0 behaviour).
    """
    columns = [_json_ready_column(name, table.column(i)) for i, name in enumerate(table.column_names)]
    return pa.Table.from_arrays(columns, names=table.column_names)


# --------------------------------------------------------------------------- geometry


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
            parts = _orient_fallback(shapely.get_parts(g))
            out[i] = type(g)(list(parts)) if type_ids[i] == 6 else shapely.geometrycollections(list(parts))
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


def _rounder(precision: int) -> Callable[[np.ndarray], np.ndarray]:
    def round_coords(coords: np.ndarray) -> np.ndarray:
        # "+ 0.0" turns -0.0 (from rounding tiny negatives) into 0.0.
        return np.round(coords, precision) + 0.0

    return round_coords


def _fill_points(out: list[Any], geoms: np.ndarray, rows: np.ndarray, precision: int, include_z: bool) -> None:
    coords = (np.round(shapely.get_coordinates(geoms[rows], include_z=include_z), precision) + 0.0).tolist()
    for i, xy in zip(rows.tolist(), coords):
        out[i] = {"type": "Point", "coordinates": xy}


def _fill_ragged(
    out: list[Any], geoms: np.ndarray, rows: np.ndarray, type_ids: np.ndarray, precision: int, include_z: bool
) -> None:
    """Lines, polygons and multi-geometries: coordinates as numpy views orjson writes as arrays."""
    parts, part_row = shapely.get_parts(geoms[rows], return_index=True)  # single types: the geometry itself
    keep = ~shapely.is_empty(parts)
    parts, part_row = parts[keep], part_row[keep]
    part_types = shapely.get_type_id(parts)
    poly_pos = np.flatnonzero(part_types == 3)
    other_pos = np.flatnonzero(part_types != 3)
    rings, ring_poly = shapely.get_rings(parts[poly_pos], return_index=True)
    sequences = np.concatenate([parts[other_pos], rings])
    coords, seq_of = shapely.get_coordinates(sequences, include_z=include_z, return_index=True)
    coords = np.round(coords, precision) + 0.0
    seq_arrays = np.split(coords, np.cumsum(np.bincount(seq_of, minlength=len(sequences)))[:-1])

    part_coords: list[Any] = [None] * len(parts)
    part_types_list = part_types.tolist()
    for k, pos in enumerate(other_pos.tolist()):
        arr = seq_arrays[k]
        part_coords[pos] = arr[0] if part_types_list[pos] == 0 else arr
    ring_arrays = seq_arrays[len(other_pos) :]
    ring_starts = np.concatenate(([0], np.cumsum(np.bincount(ring_poly, minlength=len(poly_pos))))).tolist()
    for k, pos in enumerate(poly_pos.tolist()):
        part_coords[pos] = ring_arrays[ring_starts[k] : ring_starts[k + 1]]

    part_starts = np.concatenate(([0], np.cumsum(np.bincount(part_row, minlength=len(rows))))).tolist()
    for k, (i, t) in enumerate(zip(rows.tolist(), type_ids.tolist())):
        a, b = part_starts[k], part_starts[k + 1]
        if t >= 4:
            out[i] = {"type": _TYPE_NAMES[t], "coordinates": part_coords[a:b]}
        elif b > a:
            out[i] = {"type": _TYPE_NAMES[t], "coordinates": part_coords[a]}


def geojson_geometries(geoms: np.ndarray, precision: int = 7) -> list[Any]:
    """GeoJSON geometry objects (dicts/orjson fragments, ``None`` for missing or empty) for a batch.

    Polygons are oriented by the right-hand rule and coordinates rounded to
    ``precision`` decimals. Within a batch, geometries with Z get 3-value positions and
    the others 2; M values are dropped (GeoJSON has no M). The result is meant for
    ``orjson.dumps(..., option=orjson.OPT_SERIALIZE_NUMPY)``.
    """
    out: list[Any] = [None] * len(geoms)
    type_ids = shapely.get_type_id(geoms)
    present = (type_ids >= 0) & ~shapely.is_empty(geoms)
    if not present.any():
        return out
    if np.isin(type_ids[present], _POLYGONAL_IDS).any():
        geoms = orient_right_hand(geoms)
    has_z = shapely.has_z(geoms)
    for include_z in (False, True):
        group = present & (has_z == include_z)
        if not group.any():
            continue
        points = np.flatnonzero(group & (type_ids == 0))
        if len(points):
            _fill_points(out, geoms, points, precision, include_z)
        for i in np.flatnonzero(group & (type_ids == 7)).tolist():
            # Collections are rare in feature services; GEOS writes them (nested ones too).
            rounded = shapely.transform(geoms[i], _rounder(precision), include_z=include_z)
            out[i] = orjson.Fragment(shapely.to_geojson(rounded))
        others = np.flatnonzero(group & (type_ids != 0) & (type_ids != 7))
        if len(others):
            _fill_ragged(out, geoms, others, type_ids[others], precision, include_z)
    return out


# --------------------------------------------------------------------------- writers


def _features(batch: FeatureBatch, oid_field: str | None, precision: int) -> list[dict[str, Any]]:
    props = json_ready_table(batch.attributes).to_pylist()
    geometries = [None] * len(batch) if batch.geometry is None else geojson_geometries(batch.geometry, precision)
    if oid_field is None or oid_field not in batch.column_names:
        return [{"type": "Feature", "geometry": g, "properties": p} for g, p in zip(geometries, props)]
    ids = batch.column(oid_field).to_pylist()
    features = [{"type": "Feature", "id": i, "geometry": g, "properties": p} for i, g, p in zip(ids, geometries, props)]
    if batch.column(oid_field).null_count:
        for f in features:
            if f["id"] is None:
                del f["id"]  # RFC 7946 §3.2: an id is a string or a number, never null
    return features


def _dump_all(loader: str, features: list[dict[str, Any]]) -> list[bytes]:
    dumps = orjson.dumps
    try:
        return [dumps(f, option=_DUMPS_OPTIONS) for f in features]
    except orjson.JSONEncodeError as exc:
        raise LoadError(f"{loader}: a feature could not be encoded as JSON ({exc}); check the attribute values") from exc


class GeoJSONWriter:
    """Writes batches into an open binary file; used inside :meth:`GeoJSONLoader.open`."""

    def __init__(self, fh: IO[bytes], schema: LayerSchema, *, loader: str, precision: int, seq: bool, rs: bool) -> None:
        self._fh = fh
        self._oid_field = schema.oid_field
        self._loader = loader
        self._precision = precision
        self._seq = seq
        self._rs = rs
        self.stats = LoadStats()

    def write(self, batch: FeatureBatch) -> None:
        """Append the batch's features. Raises CapabilityError for a batch not in EPSG:4326."""
        check_batch_crs(self._loader, batch)
        if len(batch) == 0:
            return
        encoded = _dump_all(self._loader, _features(batch, self._oid_field, self._precision))
        if self._seq:
            if self._rs:
                self._fh.write(b"\x1e" + b"\n\x1e".join(encoded) + b"\n")
            else:
                self._fh.write(b"\n".join(encoded) + b"\n")
        else:
            if self.stats.features:
                self._fh.write(b",\n")
            self._fh.write(b",\n".join(encoded))
        self.stats.features += len(encoded)


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

    def _header(self, schema: LayerSchema) -> bytes:
        # "name" is a foreign member (RFC 7946 §6.1); GDAL takes it as the layer name.
        return b'{"type":"FeatureCollection","name":' + orjson.dumps(schema.name) + b',"features":[\n'

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[GeoJSONWriter]:
        """Write to a temp file beside the target; rename on success, delete on error."""
        self.check(schema)
        with atomic_file(self.path, self.overwrite) as tmp, tmp.open("wb", buffering=_WRITE_BUFFER) as fh:
            writer = GeoJSONWriter(fh, schema, loader=self.name, precision=self.precision, seq=False, rs=False)
            fh.write(self._header(schema))
            yield writer
            fh.write(b"\n]}\n")
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
