"""Shapefile loader (fiona): ``.shp`` sets, split into parts below 2 GB, or one ``.zip``.

What a shapefile can hold, and what this loader does about it (details and the full type
table in ``docs/type-mapping.md``):

* **Field names** are at most 10 bytes. Names are cut deterministically at a character
  boundary and made unique case-insensitively (``SHAPE_Length`` → ``SHAPE_Leng``;
  ``NAME_LONG_1``, ``NAME_LONG_2`` → ``NAME_LONG_``, ``NAME_LON_1``). Names that already
  fit are kept and reserved first, so a short name is never renamed because a long one
  was cut onto it. The mapping is in :attr:`LoadStats.renamed_fields` and a warning.
* **Types** (DBF ``N``/``C``/``D``): integers → ``N`` with a width holding the type's range,
  Single/Double → ``N(24,15)``, String → ``C`` of the declared length (max 254), Esri
  dates → a real ``D`` field holding the UTC calendar date (the time of day is lost; one
  warning per run says so when a value had one), DateOnly → ``D``, TimeOnly/GUID/
  GlobalID/XML → ``C``. Values over 254 bytes are cut at a character boundary (counted per
  field in a warning). A value longer than its field's declared width (multi-byte UTF-8
  text) makes GDAL widen the field (it rewrites the ``.dbf``), so nothing within 254
  bytes is lost. Numbers that a DBF ``N(24,15)`` field cannot hold (NaN, ±inf,
  ``|v| >= 1e22``) are written as null and counted in a warning. Empty strings read back
  as null (DBF has no null for ``C``).
* **Encoding**: UTF-8, declared in the ``.cpg`` sidecar; the CRS goes to ``.prj`` as Esri
  WKT (GDAL converts our WKT). A stream without a CRS gets no ``.prj`` (and a warning).
* **One geometry family per file**: Point; MultiPoint (Points promoted); LineString and
  MultiLineString in one PolyLine file; Polygon and MultiPolygon in one Polygon file.
  For lines and polygons the fiona schema is ``LineString``/``Polygon``: the shapefile
  shape type (3 or 5) is the same as for the Multi names, GDAL accepts both kinds of
  feature without any per-feature promotion, and reads each back as the single or multi
  type its rings/parts make (``read_info`` reports ``Polygon``/``LineString``).
  A schema spanning families (or with no geometry) is refused with a CapabilityError.
  Missing and empty geometries are written as null shapes. GDAL writes rings in
  shapefile order (exterior clockwise), whatever the input winding.
* **Size**: ``.shp`` and ``.dbf`` must each stay below 2 GB. Their sizes are computed per
  row as batches arrive (shape record sizes from vertex/part counts; DBF record width
  including GDAL's field widening). When the next row would push either file past
  ``max_part_bytes`` the output is split into ``name_1.shp``, ``name_2.shp`` … (``split=True``,
  default) or a LoadError is raised (``split=False``). One part keeps the plain name.
* **Atomic**: parts are written into a hidden temp folder beside the target and moved
  into place only when the run succeeds (per part: sidecars first, the ``.shp`` last). On
  an exception the temp folder is removed and any earlier output stays byte-identical.
  With ``overwrite=True``, sidecars of a replaced set that the new one lacks (a stale
  ``.prj``, ``.qix``/``.sbn`` spatial indexes) are removed, and so is ``name.*`` when the new
  output is split into ``name_N`` parts; other ``name_N.shp`` files are only reported
  (they may be the user's own files).
  A ``.zip`` target (``name.zip`` or ``name.shp.zip``) gets the whole set zipped into a
  temp file that is renamed onto the target.

Speed: fiona 1.10.1 builds OGR features in Python; its ``Properties`` mapping rebuilds a
dict on every field lookup, so records are passed as thin subclasses of fiona's
``Feature``/``Geometry``/``Properties`` (see :func:`_feature`), which doubles throughput.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import fiona
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pydantic
import shapely
from fiona.model import Feature, Geometry, Properties
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, LoadError, OutputExistsError
from ags_etl.loaders.base import (
    FileLoader,
    LoaderCapabilities,
    LoadStats,
    atomic_file,
    check_batch_crs,
    check_target,
)
from ags_etl.schema import Field, LayerSchema

__all__ = ["DEFAULT_MAX_PART_BYTES", "ShapefileLoader", "shapefile_field_names"]

log = logging.getLogger(__name__)

#: Default size limit per ``.shp``/``.dbf`` (the format's 2 GB limit, with a margin).
DEFAULT_MAX_PART_BYTES = 2_000_000_000
#: Hard ceiling for ``max_part_bytes``: shapefile offsets are signed 32-bit words in many readers.
_MAX_PART_CEILING = 2**31 - 1
#: DBF field names: 10 bytes (11 with the terminating NUL).
MAX_FIELD_NAME_BYTES = 10
#: DBF ``C`` fields hold at most 254 bytes.
MAX_STRING_BYTES = 254
#: Reals are written as ``N(24,15)`` (GDAL's default for OFTReal); GDAL formats them with
#: ``%24.15f`` and cuts the text at 24 characters, which only ever drops digits beyond a
#: double's precision while the integer part has at most 22 digits.
_REAL_WIDTH, _REAL_DECIMALS, _REAL_LIMIT = 24, 15, 1e22
#: Sidecars a shapefile set may have; ``.shp`` is listed last so it is moved last.
_SET_EXTENSIONS = (".shx", ".dbf", ".prj", ".cpg", ".qix", ".sbn", ".sbx", ".shp.xml", ".shp")
_WRITTEN_EXTENSIONS = (".shx", ".dbf", ".prj", ".cpg", ".shp")

#: shapely type ids.
_POINT, _LINESTRING, _POLYGON, _MULTIPOINT, _MULTILINESTRING, _MULTIPOLYGON = 0, 1, 3, 4, 5, 6
_TYPE_NAMES = {
    -1: "null",
    0: "Point",
    1: "LineString",
    2: "LinearRing",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}


# --------------------------------------------------------------------------- field names


def _cut_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding has at most ``limit`` bytes."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    # Only the last character can be split by the cut; "ignore" drops that partial one.
    return data[:limit].decode("utf-8", errors="ignore")


def shapefile_field_names(names: Sequence[str], limit: int = MAX_FIELD_NAME_BYTES) -> dict[str, str]:
    """Map each field name to a unique DBF field name of at most ``limit`` UTF-8 bytes.

    Deterministic (depends only on the names and their order). Names that already fit and
    do not clash (case-insensitively) with an earlier fitting name keep their spelling and
    are reserved first. The others are cut to ``limit`` bytes; if the cut name is taken,
    ``_1``, ``_2`` … replaces the end of the name, still within ``limit`` bytes. Returns a
    dict in the order of ``names``.
    """
    used: set[str] = set()
    out: dict[str, str] = {}
    pending: list[str] = []
    for name in names:
        if name and len(name.encode("utf-8")) <= limit and name.upper() not in used:
            out[name] = name
            used.add(name.upper())
        else:
            pending.append(name)
    for name in pending:
        candidate = _cut_utf8(name, limit)
        k = 0
        while not candidate or candidate.upper() in used:
            k += 1
            suffix = f"_{k}"
            candidate = _cut_utf8(name, limit - len(suffix)) + suffix
        out[name] = candidate
        used.add(candidate.upper())
    return {name: out[name] for name in names}


# --------------------------------------------------------------------------- field plan


@dataclass(frozen=True)
class _FieldPlan:
    """How one attribute field is written: DBF name, fiona type, value conversion."""

    source: str  # column name in the batches
    name: str  # DBF field name
    kind: str  # int | int32 | float | str | datetime | date | time
    fiona_type: str
    width: int  # bytes in the DBF record (initial; GDAL may widen str/int fields)
    arrow_type: pa.DataType  # type the column is cast to before conversion


def _string_width(length: int | None) -> int:
    if length is None or length <= 0:
        return MAX_STRING_BYTES
    return min(int(length), MAX_STRING_BYTES)


def _field_plan(field: Field, name: str) -> _FieldPlan:
    """The DBF column for one Esri field (the table in docs/type-mapping.md)."""
    t = field.esri_type
    arrow = field.arrow_type
    if t == "esriFieldTypeOID":
        return _FieldPlan(field.name, name, "int", "int:10", 10, pa.int64())
    if t == "esriFieldTypeSmallInteger":
        # Width < 10: fiona makes it an OGR Integer (32-bit) field; see _Int32.
        return _FieldPlan(field.name, name, "int32", "int:6", 6, pa.int64())
    if t == "esriFieldTypeInteger":
        return _FieldPlan(field.name, name, "int", "int:11", 11, pa.int64())
    if t == "esriFieldTypeBigInteger":
        # GDAL reads N fields of width <= 18 back as Integer64, wider ones as Real.
        return _FieldPlan(field.name, name, "int", "int:18", 18, pa.int64())
    if t in ("esriFieldTypeSingle", "esriFieldTypeDouble"):
        return _FieldPlan(field.name, name, "float", f"float:{_REAL_WIDTH}.{_REAL_DECIMALS}", _REAL_WIDTH, pa.float64())
    if t in ("esriFieldTypeDate", "esriFieldTypeTimestampOffset"):
        return _FieldPlan(field.name, name, "datetime", "date", 8, pa.timestamp("ms", tz="UTC"))
    if t == "esriFieldTypeDateOnly":
        return _FieldPlan(field.name, name, "date", "date", 8, pa.date32())
    if t == "esriFieldTypeTimeOnly":
        return _FieldPlan(field.name, name, "time", "str:12", 12, pa.time32("ms"))
    if t in ("esriFieldTypeGUID", "esriFieldTypeGlobalID"):
        return _FieldPlan(field.name, name, "str", "str:38", 38, pa.string())
    if t == "esriFieldTypeString":
        width = _string_width(field.length)
        return _FieldPlan(field.name, name, "str", f"str:{width}", width, pa.string())
    # XML and unknown types: Field.arrow_type maps them to string.
    if not pa.types.is_string(arrow):
        raise CapabilityError(
            f"shapefile: field {field.name!r} has type {t} ({arrow}), which has no DBF column; "
            "drop it with a fields transform or write GeoParquet"
        )
    width = _string_width(field.length)
    return _FieldPlan(field.name, name, "str", f"str:{width}", width, pa.string())


@dataclass(frozen=True)
class _Plan:
    """Everything decided from the schema before the first batch."""

    fields: tuple[_FieldPlan, ...]
    geometry: str  # fiona schema geometry name ("Point", "3D Polygon" …)
    allowed_type_ids: frozenset[int]
    promote_points: bool  # Point → MultiPoint
    has_z: bool
    renamed: dict[str, str]


_FAMILIES: tuple[tuple[frozenset[str], str, frozenset[int]], ...] = (
    (frozenset({"Point"}), "Point", frozenset({_POINT})),
    (frozenset({"MultiPoint"}), "MultiPoint", frozenset({_MULTIPOINT})),
    (frozenset({"Point", "MultiPoint"}), "MultiPoint", frozenset({_POINT, _MULTIPOINT})),
    (frozenset({"LineString", "MultiLineString"}), "LineString", frozenset({_LINESTRING, _MULTILINESTRING})),
    (frozenset({"Polygon", "MultiPolygon"}), "Polygon", frozenset({_POLYGON, _MULTIPOLYGON})),
)


def _plan(schema: LayerSchema) -> _Plan:
    """Geometry type and DBF columns for ``schema``; CapabilityError when impossible."""
    types = frozenset(schema.geojson_types())
    if not types:
        raise CapabilityError(
            f"shapefile: layer {schema.name!r} has no geometry type a shapefile can hold "
            f"(geometry_type={schema.geometry_type!r}); write it as GeoParquet (.parquet) or GeoJSON instead"
        )
    chosen: tuple[str, frozenset[int]] | None = None
    for family, fiona_name, ids in _FAMILIES:
        if types <= family:
            chosen = (fiona_name, ids)
            break
    if chosen is None:
        raise CapabilityError(
            f"shapefile: layer {schema.name!r} mixes geometry types {sorted(types)}, and a shapefile holds "
            "one family only (points, lines or polygons); filter the features by geometry type into "
            "separate outputs, or write GeoJSON or GeoParquet, which take mixed types"
        )
    fiona_name, ids = chosen
    if schema.has_z:
        fiona_name = "3D " + fiona_name
    attrs = schema.attribute_fields
    mapping = shapefile_field_names([f.name for f in attrs])
    fields = tuple(_field_plan(f, mapping[f.name]) for f in attrs)
    renamed = {old: new for old, new in mapping.items() if old != new}
    return _Plan(
        fields=fields,
        geometry=fiona_name,
        allowed_type_ids=ids,
        promote_points=fiona_name.endswith("MultiPoint") and _POINT in ids,
        has_z=schema.has_z,
        renamed=renamed,
    )


# --------------------------------------------------------------------------- fiona records

# fiona 1.10.1 specifics (checked against its model.py and ogrext.pyx):
# * writerecs accepts any fiona.model.Object as is and reads .geometry/.properties and
#   properties.keys()/.items(). fiona's Properties.__getitem__ rebuilds a dict of all
#   fields on every lookup (quadratic per record), so _Props serves its dict directly.
# * OGRFeatureBuilder caches the value setter per Python *type of the value*, not per
#   field: the first int written decides whether all ints go through OGR_F_SetFieldInteger
#   (32-bit) or ...Integer64. Width < 10 fields are 32-bit, so their values are passed as
#   _Int32 (a distinct type) and every other int field is 64-bit.


class _Int32(int):
    """An int bound for a 32-bit OGR field (see the fiona note above)."""

    __slots__ = ()


class _Props(Properties):
    """fiona Properties over a prepared dict, with O(1) item access."""

    def __init__(self, data: dict[str, Any]) -> None:  # no super().__init__: it copies the dict
        self._data = data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def keys(self) -> Any:
        return self._data.keys()

    def items(self) -> Any:
        return self._data.items()

    def values(self) -> Any:
        return self._data.values()


try:  # the private delegate classes of fiona 1.9/1.10; fall back to the public API
    from fiona.model import _Feature, _Geometry

    class _Geom(Geometry):
        def __init__(self, type: str, coordinates: Any) -> None:  # GeoJSON's member name
            self._delegate = _Geometry(coordinates=coordinates, type=type)
            self._data: dict[str, Any] = {}

    class _Feat(Feature):
        def __init__(self, geometry: Geometry | None, properties: Properties) -> None:
            self._delegate = _Feature(geometry=geometry, properties=properties)
            self._data: dict[str, Any] = {}

    def _geometry(type_: str, coordinates: Any) -> Geometry:
        return _Geom(type_, coordinates)

    def _feature(geometry: Geometry | None, properties: dict[str, Any]) -> Feature:
        return _Feat(geometry, _Props(properties))

except ImportError:  # pragma: no cover - other fiona versions

    def _geometry(type_: str, coordinates: Any) -> Geometry:
        return Geometry(type=type_, coordinates=coordinates)

    def _feature(geometry: Geometry | None, properties: dict[str, Any]) -> Feature:
        return Feature(geometry=geometry, properties=_Props(properties))


class _GdalRealWidthFilter(logging.Filter):
    """Drops GDAL's per-value "not successfully written" warnings for N(24,15) fields.

    GDAL formats reals with ``%24.15f`` and cuts the text to the field width; for
    ``|v| < 1e22`` the cut only removes digits beyond a double's precision, yet GDAL
    logs a warning per value. Values that would really be damaged are nulled (and
    counted) before they reach GDAL.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return "not successfully written" not in record.getMessage()


_FIONA_LOG = logging.getLogger("fiona._env")


# --------------------------------------------------------------------------- sizes


def _shp_record_sizes(geoms: np.ndarray, null: np.ndarray, shape_family: str, has_z: bool) -> np.ndarray:
    """Bytes each row adds to the ``.shp`` (record header included).

    Exact for what GDAL's shapelib writes (checked with GDAL 3.9.2 in fiona 1.10.1): Z
    shapes carry a Z range and Z values but no M block, because we never pass M values.
    """
    n = len(geoms)
    sizes = np.full(n, 12, dtype=np.int64)  # null shape: 8-byte header + shape type
    live = ~null
    if not live.any():
        return sizes
    g = geoms[live]
    if shape_family == "Point":
        sizes[live] = 8 + (4 + 24 if has_z else 4 + 16)  # type, x, y (, z)
        return sizes
    npts = shapely.get_num_coordinates(g).astype(np.int64)
    if shape_family == "MultiPoint":
        body = 4 + 32 + 4 + 16 * npts
    else:
        if shape_family == "LineString":
            nparts = shapely.get_num_geometries(g).astype(np.int64)
        else:  # polygons: one part per ring
            parts, index = shapely.get_parts(g, return_index=True)
            rings = shapely.get_num_interior_rings(parts).astype(np.int64) + 1
            nparts = np.bincount(index, weights=rings, minlength=len(g)).astype(np.int64)
        body = 4 + 32 + 4 + 4 + 4 * nparts + 16 * npts
    if has_z:
        body = body + 16 + 8 * npts  # Z range + Z values
    sizes[live] = 8 + body
    return sizes


def _int_text_width(values: np.ndarray) -> np.ndarray:
    """Characters ``str(v)`` takes for int64 values (an upper bound by at most one)."""
    a = np.abs(values.astype(np.float64))
    digits = np.where(a < 1, 1, np.floor(np.log10(np.maximum(a, 1))) + 1).astype(np.int64)
    return digits + (values < 0)


# --------------------------------------------------------------------------- writer


class _ShapefileWriter:
    """Writes batches into numbered parts inside ``folder``; see the module docstring."""

    def __init__(
        self,
        plan: _Plan,
        schema: LayerSchema,
        folder: Path,
        stem: str,
        *,
        max_part_bytes: int,
        split: bool,
        stats: LoadStats,
    ) -> None:
        self.stats = stats
        self._plan = plan
        self._crs = schema.crs
        self._layer = schema.name
        self._oid_field = schema.oid_field
        self._folder = folder
        self._stem = stem
        self._limit = max_part_bytes
        self._split = split
        self._fiona_schema = {
            "geometry": plan.geometry,
            "properties": {f.name: f.fiona_type for f in plan.fields},
        }
        self._crs_wkt = None if schema.crs is None else schema.crs.to_wkt()
        self._family = plan.geometry.removeprefix("3D ")
        self._collection: Any = None
        self._parts: list[str] = []  # part stems in the temp folder
        self._part_rows = 0
        self._part_shp = 100
        # GDAL gives a field-less DBF one "FID" N(11) field.
        n_fields = max(len(plan.fields), 1)
        self._dbf_header = 32 + 32 * n_fields + 1
        self._base_widths = [f.width for f in plan.fields] if plan.fields else [11]
        self._widths = list(self._base_widths)
        # counters for the end-of-run warnings
        self._cut_strings: dict[str, int] = {}
        self._bad_reals: dict[str, int] = {}
        self._time_parts = 0
        self._closed = False
        self._log_filter = _GdalRealWidthFilter()
        _FIONA_LOG.addFilter(self._log_filter)

    # ---------------------------------------------------------------- public

    def write(self, batch: FeatureBatch) -> None:
        """Append ``batch``: its rows go to the current part, spilling into new ones."""
        # Converting a batch creates about a million small lists and floats (coordinates,
        # records), none of them in reference cycles; with the cyclic GC running, its
        # repeated passes over the growing heap triple the time (CPython 3.11: tolist() of
        # 1M coordinate pairs 0.43 s → 0.12 s with the GC paused). It is paused for the
        # batch only and restored as it was.
        paused = gc.isenabled()
        gc.disable()
        try:
            self._write(batch)
        finally:
            if paused:
                gc.enable()

    def _write(self, batch: FeatureBatch) -> None:
        if self._closed:
            raise LoadError("shapefile: write() after the output was closed; write inside the with-block")
        check_batch_crs("shapefile", batch, self._crs)
        n = len(batch)
        if n == 0:
            return
        if batch.geometry is None:
            raise LoadError(
                f"shapefile: a batch of layer {self._layer!r} has no geometry array, but the schema "
                "declares geometries; a table without geometry cannot be a shapefile"
            )
        geoms = batch.geometry
        columns, needs = self._columns(batch)
        if not needs:  # no attribute fields: GDAL's "FID" placeholder field never widens
            needs = [np.empty(0, dtype=np.int64)]
        type_ids = shapely.get_type_id(geoms)
        self._check_types(type_ids, batch)
        null = (type_ids < 0) | shapely.is_empty(geoms)
        shapes = self._shapes(geoms, null)
        shp_sizes = _shp_record_sizes(geoms, null, self._family, self._plan.has_z)
        start = 0
        while start < n:
            if self._collection is None:
                self._open_part()
            take = self._rows_that_fit(shp_sizes[start:], [nd[start:] for nd in needs])
            if take == 0:
                if self._part_rows == 0:
                    first = self._record_sizes([nd[start : start + 1] for nd in needs])
                    first_dbf = self._dbf_header + int(first[0]) + 1
                    raise LoadError(
                        f"shapefile: max_part_bytes={self._limit} is too small to hold even one feature "
                        f"(feature {self.stats.features} needs {int(shp_sizes[start]) + 100} bytes of .shp and "
                        f"{first_dbf} bytes of .dbf); raise max_part_bytes"
                    )
                if not self._split:
                    raise LoadError(
                        f"shapefile: the output would pass max_part_bytes={self._limit} bytes per .shp/.dbf "
                        f"after {self.stats.features} features (a shapefile cannot exceed 2 GB); "
                        "pass split=True to write numbered parts, or write GeoParquet or GeoJSON"
                    )
                self._close_part()
                continue
            end = start + take
            self._write_rows(columns, shapes, start, end)
            self._part_shp += int(shp_sizes[start:end].sum())
            for i, nd in enumerate(needs):
                if len(nd):
                    self._widths[i] = max(self._widths[i], int(nd[start:end].max()))
            self._part_rows += take
            self.stats.features += take
            start = end

    # ---------------------------------------------------------------- lifecycle

    def finish(self) -> list[str]:
        """Close the last part (an empty stream still gives one empty shapefile).

        Returns the part stems in order. Adds the end-of-run warnings to ``stats``.
        """
        if self._collection is None and not self._parts:
            self._open_part()
        self._close_part()
        self._closed = True
        _FIONA_LOG.removeFilter(self._log_filter)
        if self._time_parts:
            self.stats.warnings.append(
                f"shapefile: DBF date fields hold no time of day; {self._time_parts} date value(s) had one "
                "and were written as their UTC calendar date; write GeoParquet or GeoJSON to keep times"
            )
        for name, count in self._cut_strings.items():
            self.stats.warnings.append(
                f"shapefile: field {name!r}: {count} value(s) longer than {MAX_STRING_BYTES} bytes were cut "
                f"to {MAX_STRING_BYTES} bytes (the DBF limit); write GeoParquet or GeoJSON to keep them whole"
            )
        for name, count in self._bad_reals.items():
            self.stats.warnings.append(
                f"shapefile: field {name!r}: {count} value(s) that a DBF number cannot hold (NaN, infinity "
                f"or |v| >= {_REAL_LIMIT:g}) were written as null"
            )
        return list(self._parts)

    def abort(self) -> None:
        """Close whatever is open after a failure; the caller deletes the temp folder."""
        self._closed = True
        _FIONA_LOG.removeFilter(self._log_filter)
        if self._collection is not None:
            collection, self._collection = self._collection, None
            try:
                collection.__exit__(None, None, None)
            except Exception as exc:  # already failing; the temp folder is deleted anyway
                log.debug("closing the partial shapefile after a failure raised %r", exc)

    # ---------------------------------------------------------------- parts

    def _open_part(self) -> None:
        number = len(self._parts) + 1
        if number == 2:
            # The first part was written under the plain name; now it becomes name_1.
            self._rename_part(self._stem, f"{self._stem}_1")
            self._parts[0] = f"{self._stem}_1"
        stem = self._stem if number == 1 else f"{self._stem}_{number}"
        path = self._folder / f"{stem}.shp"
        try:
            collection = fiona.open(
                path,
                "w",
                driver="ESRI Shapefile",
                schema=self._fiona_schema,
                crs_wkt=self._crs_wkt,
                encoding="utf-8",
            )
            # Entering the collection activates a fiona/GDAL environment, which routes GDAL
            # warnings to the "fiona._env" logger instead of stderr; __exit__ closes it.
            self._collection = collection.__enter__()
        except Exception as exc:  # fiona raises DriverError, SchemaError, ValueError …
            raise LoadError(f"shapefile: cannot create {path.name} in {self._folder}: {exc}") from exc
        self._parts.append(stem)
        self._part_rows = 0
        self._part_shp = 100
        self._widths = list(self._base_widths)

    def _close_part(self) -> None:
        if self._collection is None:
            return
        collection, self._collection = self._collection, None
        try:
            collection.__exit__(None, None, None)
        except Exception as exc:
            raise LoadError(f"shapefile: closing part {self._parts[-1]!r} failed: {exc}") from exc

    def _rename_part(self, old: str, new: str) -> None:
        for ext in _WRITTEN_EXTENSIONS:
            src = self._folder / f"{old}{ext}"
            if src.exists():
                os.replace(src, self._folder / f"{new}{ext}")

    def _rows_that_fit(self, shp_sizes: np.ndarray, needs: list[np.ndarray]) -> int:
        """How many leading rows fit in the current part without passing the limit."""
        m = len(shp_sizes)
        shp = self._part_shp + np.cumsum(shp_sizes)
        record = self._record_sizes(needs, m)
        rows = self._part_rows + np.arange(1, m + 1, dtype=np.int64)
        dbf = self._dbf_header + rows * record + 1  # +1: the 0x1A end-of-file byte
        fits = (shp <= self._limit) & (dbf <= self._limit)
        if fits.all():
            return m
        return int(np.argmin(fits))  # sizes only grow, so the fitting rows are a prefix

    def _record_sizes(self, needs: list[np.ndarray], m: int = 1) -> np.ndarray:
        """DBF record size after each of the next ``m`` rows (GDAL widens fields as needed).

        ``needs[i]`` holds the text width row by row of field ``i`` (empty: the field never
        needs more than its width). A widened field makes every record of the part wider.
        """
        record = np.full(m, 1 + sum(self._widths), dtype=np.int64)  # 1: the deletion flag
        for width, need in zip(self._widths, needs):
            if len(need):
                record += np.maximum(width, np.maximum.accumulate(need)) - width
        return record

    # ---------------------------------------------------------------- conversion

    def _check_types(self, type_ids: np.ndarray, batch: FeatureBatch) -> None:
        """Refuse a geometry outside the file's family (e.g. a polygon in a point layer's
        answer), naming the feature by its OID (else its position in the output)."""
        allowed = np.isin(type_ids, list(self._plan.allowed_type_ids)) | (type_ids < 0)
        if not allowed.all():
            row = int(np.argmin(allowed))
            who = f"feature {self.stats.features + row + 1} of the output"
            if self._oid_field is not None and self._oid_field in batch.column_names:
                oid = batch.column(self._oid_field)[row].as_py()
                if oid is not None:
                    who = f"feature {self._oid_field}={oid}"
            raise LoadError(
                f"shapefile: {who} has a {_TYPE_NAMES.get(int(type_ids[row]), '?')} geometry, but this "
                f"shapefile holds {self._family} features only (the layer's geometry type); exclude the "
                "feature with --where, or write GeoJSON or GeoParquet, which take mixed types"
            )

    def _shapes(self, geoms: np.ndarray, null: np.ndarray) -> list[Geometry | None]:
        """fiona geometries for the rows (None for null/empty).

        Coordinates come out of shapely in one vectorised call (``to_ragged_array``) and one
        ``tolist()``; the nesting is rebuilt by list slicing at the ragged offsets. That is
        about 4× faster than ``__geo_interface__`` per geometry (1.5 s → 0.35 s for 20,000
        49-vertex polygons). A batch that mixes single and multi types comes out all multi
        (MultiPoint, MultiLineString, MultiPolygon), which the shapefile stores identically.
        A 2D geometry in a Z file gets z = 0.
        """
        n = len(geoms)
        out: list[Geometry | None] = [None] * n
        live = np.flatnonzero(~null)
        if not len(live):
            return out
        has_z = self._plan.has_z
        geom_type, xyz, offsets = shapely.to_ragged_array(geoms[live], include_z=has_z)
        if has_z:
            np.nan_to_num(xyz, copy=False, nan=0.0)
        coords = xyz.tolist()
        code = int(geom_type)
        if code == _POINT:
            if self._plan.promote_points:
                items, name = [[c] for c in coords], "MultiPoint"
            else:
                items, name = coords, "Point"
        elif code == _MULTIPOINT or code == _LINESTRING:
            items, name = _split(coords, offsets[0]), _TYPE_NAMES[code]
        elif code == _MULTILINESTRING:
            items, name = _split(_split(coords, offsets[0]), offsets[1]), "MultiLineString"
        elif code == _POLYGON:
            items, name = _split(_split(coords, offsets[0]), offsets[1]), "Polygon"
        elif code == _MULTIPOLYGON:
            items, name = _split(_split(_split(coords, offsets[0]), offsets[1]), offsets[2]), "MultiPolygon"
        else:  # pragma: no cover - _check_types lets no other type through
            raise LoadError(f"shapefile: cannot write {_TYPE_NAMES.get(code, code)} geometries")
        for i, item in zip(live.tolist(), items):
            out[i] = _geometry(name, item)
        return out

    def _columns(self, batch: FeatureBatch) -> tuple[list[list[Any]], list[np.ndarray]]:
        """Python values per planned field, and per-row text widths of widenable fields."""
        table = batch.attributes
        values: list[list[Any]] = []
        needs: list[np.ndarray] = []
        for f in self._plan.fields:
            try:
                col = table.column(f.source)
            except KeyError as exc:
                raise LoadError(
                    f"shapefile: batch has no column {f.source!r} declared by the schema of layer "
                    f"{self._layer!r}; the batch columns are {table.column_names}"
                ) from exc
            if col.type != f.arrow_type:
                try:
                    col = col.cast(f.arrow_type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise LoadError(
                        f"shapefile: column {f.source!r} has type {col.type}, which cannot be written as "
                        f"{f.arrow_type} (schema type); fix the transform that produced it"
                    ) from exc
            need = np.empty(0, dtype=np.int64)
            if f.kind in ("int", "int32"):
                lo, hi = pc.min_max(col).values()
                if lo.is_valid and (_int_text_width(np.array([lo.as_py(), hi.as_py()])) > f.width).any():
                    need = _int_text_width(col.fill_null(0).to_numpy())
                vals = col.to_pylist()
                if f.kind == "int32":
                    vals = [None if v is None else _Int32(v) for v in vals]
            elif f.kind == "float":
                ok = pc.less(pc.abs(col), _REAL_LIMIT)  # false for NaN and ±inf, null for null
                bad = int(pc.sum(pc.invert(ok)).as_py() or 0)
                if bad:
                    self._bad_reals[f.name] = self._bad_reals.get(f.name, 0) + bad
                    col = pc.if_else(ok, col, pa.scalar(None, pa.float64()))
                vals = col.to_pylist()
            elif f.kind == "str":
                vals, need = self._strings(f, col)
            elif f.kind == "datetime":
                days = pc.cast(col, pa.date32())
                timed = pc.sum(pc.not_equal(pc.cast(days, col.type), col)).as_py()
                self._time_parts += int(timed or 0)
                vals = days.to_pylist()
            elif f.kind == "date":
                vals = col.to_pylist()
            else:  # time → "HH:MM:SS.mmm"
                vals = pc.cast(col, pa.string()).to_pylist()
            values.append(vals)
            needs.append(need)
        return values, needs

    def _strings(self, f: _FieldPlan, col: pa.ChunkedArray) -> tuple[list[Any], np.ndarray]:
        lengths = pc.binary_length(col)
        longest = pc.max(lengths).as_py()
        vals = col.to_pylist()
        if longest is None or longest <= f.width:
            return vals, np.empty(0, dtype=np.int64)
        need = lengths.fill_null(0).to_numpy().astype(np.int64)
        too_long = np.flatnonzero(need > MAX_STRING_BYTES)
        if len(too_long):
            for i in too_long.tolist():
                vals[i] = _cut_utf8(vals[i], MAX_STRING_BYTES)
            self._cut_strings[f.name] = self._cut_strings.get(f.name, 0) + len(too_long)
            need = np.minimum(need, MAX_STRING_BYTES)
        return vals, need

    def _write_rows(self, columns: list[list[Any]], shapes: list[Geometry | None], start: int, end: int) -> None:
        names = [f.name for f in self._plan.fields]
        rows = zip(*(c[start:end] for c in columns)) if columns else iter([()] * (end - start))
        records = [_feature(g, dict(zip(names, row))) for g, row in zip(shapes[start:end], rows)]
        try:
            self._collection.writerecords(records)
        except Exception as exc:  # fiona/GDAL raise RuntimeError, ValueError, OverflowError …
            raise LoadError(
                f"shapefile: writing features {self.stats.features}–{self.stats.features + end - start - 1} "
                f"of layer {self._layer!r} failed: {exc}"
            ) from exc


def _split(items: list[Any], offsets: np.ndarray) -> list[list[Any]]:
    """``items`` cut at ragged-array ``offsets`` (n + 1 boundaries → n lists)."""
    bounds = offsets.tolist()
    return [items[a:b] for a, b in zip(bounds[:-1], bounds[1:])]


def _describe(crs: CRS | None) -> str:
    if crs is None:
        return "an unknown CRS"
    from ags_etl.crs import describe_crs

    return describe_crs(crs)


# --------------------------------------------------------------------------- loader


class ShapefileLoader(FileLoader):
    """Write a layer as an ESRI Shapefile set (``.shp`` target) or a zipped one (``.zip``).

    Options: ``max_part_bytes`` (int, default 2,000,000,000: size limit per ``.shp`` and
    ``.dbf``), ``split`` (bool, default True: numbered parts past the limit; False: LoadError).
    """

    name: ClassVar[str] = "shapefile"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".shp", ".zip"),
        max_field_name_length=MAX_FIELD_NAME_BYTES,
        single_geometry_type=True,
        supports_tables=False,
    )

    class Options(pydantic.BaseModel):
        """Pipeline-file sink keys besides type/path/overwrite."""

        model_config = pydantic.ConfigDict(extra="forbid")
        max_part_bytes: int = pydantic.Field(DEFAULT_MAX_PART_BYTES, ge=1, le=_MAX_PART_CEILING)
        split: bool = True

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(path, overwrite=overwrite, **options)
        unknown = sorted(set(options) - {"max_part_bytes", "split"})
        if unknown:
            raise ConfigError(f"shapefile: unknown option(s) {unknown}; known options: max_part_bytes, split")
        limit = options.get("max_part_bytes", DEFAULT_MAX_PART_BYTES)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= _MAX_PART_CEILING:
            raise ConfigError(
                f"shapefile: max_part_bytes={limit!r} must be a whole number of bytes from 1 to {_MAX_PART_CEILING} "
                "(the 2 GB shapefile limit)"
            )
        split = options.get("split", True)
        if not isinstance(split, bool):
            raise ConfigError(f"shapefile: split={split!r} must be true or false")
        self.max_part_bytes: int = limit
        self.split: bool = split
        suffix = self.path.suffix.lower()
        if suffix not in (".shp", ".zip"):
            raise ConfigError(
                f"shapefile: output {str(self.path)!r} must end in .shp (a shapefile set) or .zip "
                f"(zipped set, e.g. {self.path.with_suffix('.shp.zip').name!r})"
            )
        self.zipped = suffix == ".zip"
        name = self.path.name
        stem = name[: -len(".shp.zip")] if name.lower().endswith(".shp.zip") else name[: -len(suffix)]
        if not stem:
            raise ConfigError(f"shapefile: output {str(self.path)!r} needs a file name before the extension")
        #: Base name of the files in the set (``roads`` for roads.shp, roads.zip, roads.shp.zip).
        self.stem = stem

    def check(self, schema: LayerSchema) -> None:
        """Target checks (folder, existing target), then what the schema needs (CapabilityError)."""
        super().check(schema)
        _plan(schema)

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[_ShapefileWriter]:
        """Writer for ``schema``; the output appears only when the with-block ends without error."""
        super().check(schema)
        plan = _plan(schema)
        stats = LoadStats(renamed_fields=dict(plan.renamed))
        if plan.renamed:
            stats.warnings.append(
                "shapefile: field names are limited to 10 bytes; renamed "
                + ", ".join(f"{old} → {new}" for old, new in plan.renamed.items())
            )
        if schema.crs is None:
            stats.warnings.append("shapefile: the layer's CRS is unknown, so no .prj was written")
        if schema.has_m:
            stats.warnings.append("shapefile: M values are not written (fiona writes X, Y and Z only)")
        folder = Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent))
        writer = _ShapefileWriter(
            plan, schema, folder, self.stem, max_part_bytes=self.max_part_bytes, split=self.split, stats=stats
        )
        try:
            yield writer
            parts = writer.finish()
            if self.zipped:
                self._deliver_zip(folder, parts)
                stats.outputs.append(self.path)
            else:
                stats.outputs.extend(self._deliver(folder, parts, stats))
        finally:
            writer.abort()
            shutil.rmtree(folder, ignore_errors=True)

    def _deliver(self, folder: Path, parts: list[str], stats: LoadStats) -> list[Path]:
        """Move the parts next to the target (per part: sidecars first, ``.shp`` last).

        Without overwrite, nothing is moved if any destination file exists. With overwrite,
        sidecars of the replaced sets that the new output lacks are removed (a stale
        ``.prj`` or spatial index would describe the old data), and so is the target's own
        set when the output was split into numbered parts. Returns the ``.shp`` paths.
        """
        dest = self.path.parent
        check_target(self.path, self.overwrite)
        files = [folder / f"{stem}{ext}" for stem in parts for ext in _WRITTEN_EXTENSIONS]
        files = [f for f in files if f.exists()]
        if not self.overwrite:
            clash = [dest / f.name for f in files if (dest / f.name).exists()]
            if clash:
                raise OutputExistsError(
                    f"shapefile: {', '.join(p.name for p in clash[:4])} already exist in {str(dest)!r}; "
                    "pass --overwrite (or overwrite: true) to replace them"
                )
        written: list[Path] = []
        for f in files:
            os.replace(f, dest / f.name)
            written.append(dest / f.name)
        if self.overwrite:
            stems = set(parts) | ({self.stem} if parts != [self.stem] else set())
            keep = set(written)
            for stem in stems:
                for ext in _SET_EXTENSIONS:
                    for variant in {ext, ext.upper()}:
                        old = dest / f"{stem}{variant}"
                        if old not in keep and old.is_file():
                            old.unlink()
            leftovers = sorted(
                n for n in os.listdir(dest)
                if re.fullmatch(re.escape(self.stem) + r"_\d+\.shp", n) and dest / n not in keep
            )
            if leftovers:
                stats.warnings.append(
                    f"shapefile: {', '.join(leftovers[:4])}{' …' if len(leftovers) > 4 else ''} in {str(dest)!r} "
                    "look like parts of an earlier split output and were left in place; delete them if so"
                )
        return [p for p in written if p.suffix == ".shp"]

    def _deliver_zip(self, folder: Path, parts: list[str]) -> None:
        with atomic_file(self.path, self.overwrite) as tmp:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                for stem in parts:
                    for ext in (".shp", ".shx", ".dbf", ".prj", ".cpg"):
                        src = folder / f"{stem}{ext}"
                        if src.exists():
                            zf.write(src, arcname=src.name)
