"""Reading the data files that ``ags-etl serve`` publishes.

One file → one :class:`SourceLayer`: attribute columns already converted to what
SQLite stores (dates as epoch ms UTC, booleans as 0/1), OIDs, shapely geometries
and the Esri field list. Readers:

* GeoJSON (``.geojson``/``.json``, including Esri JSON that GDAL reads) and
  shapefiles (``.shp``): the schema (declared types, string widths) and CRS come
  from fiona; the rows from pyogrio's Arrow reader when pyogrio is installed
  (about 5× faster on big files), otherwise from fiona. Both paths convert values
  by the *declared* type, so the served layer is the same either way.
  Set ``AGS_ETL_SERVE_READER=fiona`` to force the fiona path.
* GeoParquet (``.parquet``): pyarrow; the WKB geometry column named by the
  ``geo`` metadata (``primary_column``), its CRS from the PROJJSON ``crs``
  (absent → OGC:CRS84, served as 4326). A parquet file without ``geo``
  metadata is served as a table.

Field rules: names are made SQL-safe (letters, digits, ``_``); integers are
``esriFieldTypeInteger`` when every value fits 32 bits, else ``BigInteger``;
booleans ``SmallInteger``; strings carry their declared width or, when none is
declared (GeoJSON, Parquet), the longest value's length. An integer field named
``OBJECTID`` (any case) with unique non-null values becomes the OID field and
keeps its values (gaps included); otherwise OIDs 1..N are assigned.
A file whose geometries are all null is served as a table.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import fiona
import shapely
from fiona.errors import FionaError
from pyproj import CRS
from pyproj.exceptions import CRSError

from ags_etl.errors import ConfigError
from ags_etl.schema import Field
from ags_etl.server import spatialref
from ags_etl.server.spatialref import SpatialRef

log = logging.getLogger(__name__)

#: File suffixes served, lower case.
SUFFIXES = (".geojson", ".json", ".shp", ".parquet")

#: Column names the store reserves for itself; source fields may not start with this.
INTERNAL_PREFIX = "__ags"

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

#: shapely type id → Esri geometry family (Point and MultiPoint share one: see _geometry_type).
_FAMILY = {
    0: "esriGeometryPoint",
    4: "esriGeometryPoint",
    1: "esriGeometryPolyline",
    5: "esriGeometryPolyline",
    3: "esriGeometryPolygon",
    6: "esriGeometryPolygon",
}


@dataclass
class Column:
    """One attribute field as read: ``kind`` is int|float|single|str|date|bool|time|json."""

    name: str
    kind: str
    values: list[Any]
    width: int | None = None


@dataclass
class SourceLayer:
    """A data file ready to be stored.

    ``fields`` lists the OID field first, then the attribute fields, in file order;
    ``columns[i]`` holds the values of ``fields[i + 1]``; ``oids`` is aligned with
    them. ``geometry`` is None for a table, else an object array (None where a
    feature has no geometry) in ``spatial_ref``.
    """

    name: str
    path: Path
    fields: list[Field]
    oid_field: str
    oids: np.ndarray
    columns: list[list[Any]]
    geometry: np.ndarray | None
    geometry_type: str | None
    spatial_ref: SpatialRef | None
    has_z: bool

    @property
    def count(self) -> int:
        return len(self.oids)


def service_name(path: Path) -> str:
    """File stem with every character outside ``[A-Za-z0-9_]`` replaced by ``_``."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", path.stem)
    return name or "layer"


def find_sources(directory: Path) -> list[Path]:
    """Data files directly in ``directory`` (not recursive), sorted by name."""
    if not directory.is_dir():
        raise ConfigError(f"data directory {str(directory)!r} does not exist or is not a directory; pass a folder")
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in SUFFIXES)


def read_source(path: Path, name: str | None = None) -> SourceLayer:
    """Read one data file. Raises ConfigError naming the file when it cannot be served."""
    name = name or service_name(path)
    try:
        if path.suffix.lower() == ".parquet":
            columns, geoms, crs = _read_parquet(path)
        else:
            columns, geoms, crs = _read_ogr(path)
    except ConfigError:
        raise
    # GDAL errors arrive as FionaError/ValueError (fiona) or RuntimeError subclasses (pyogrio).
    except (OSError, ValueError, RuntimeError, FionaError, pa.ArrowException, CRSError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}; fix or remove the file") from exc
    return _build(name, path, columns, geoms, crs)


# --------------------------------------------------------------------------- GDAL formats


_FIONA_KINDS = {
    "int": "int",
    "int32": "int",
    "int64": "int",
    "int16": "int",
    "float": "float",
    "str": "str",
    "date": "date",
    "datetime": "date",
    "time": "time",
    "bool": "bool",
}


def _declared(fiona_type: str) -> tuple[str | None, int | None]:
    """fiona schema type ('str:80', 'int:10', 'float:24.15') → (kind, string width)."""
    base, _, size = fiona_type.partition(":")
    kind = _FIONA_KINDS.get(base)
    width = None
    if kind == "str" and size:
        try:
            width = int(size.split(".")[0])
        except ValueError:
            width = None
    return kind, width


def _read_ogr(path: Path) -> tuple[list[Column], np.ndarray | None, CRS | None]:
    with fiona.open(path) as src:
        schema = src.schema
        crs_wkt = src.crs.to_wkt() if src.crs else ""
        declared: list[tuple[str, str, int | None]] = []
        for fname, ftype in schema["properties"].items():
            kind, width = _declared(ftype)
            if kind is None:
                log.warning("%s: field %r of type %s is not served (no Esri equivalent)", path.name, fname, ftype)
                continue
            declared.append((fname, kind, width))
        has_geometry_column = schema.get("geometry") not in (None, "None")
        crs = CRS.from_wkt(crs_wkt) if crs_wkt else None
        table = None
        if os.environ.get("AGS_ETL_SERVE_READER", "auto") != "fiona":
            table = _pyogrio_table(path, [d[0] for d in declared])
        if table is not None:
            data, geoms = table
            columns = [Column(n, k, _arrow_values(data.column(n), k), w) for n, k, w in declared]
            return columns, geoms, crs
        values: list[list[Any]] = [[] for _ in declared]
        raw_geoms: list[Any] = []
        for feature in src:
            props = feature.properties
            for i, (fname, _, _) in enumerate(declared):
                values[i].append(props.get(fname))
            raw_geoms.append(feature.geometry)
    columns = [Column(n, k, _python_values(v, k), w) for (n, k, w), v in zip(declared, values)]
    has_any = has_geometry_column or any(g is not None for g in raw_geoms)
    fiona_geoms = _fiona_geometries(raw_geoms) if has_any else None
    return columns, fiona_geoms, crs


def _pyogrio_table(path: Path, names: list[str]) -> tuple[pa.Table, np.ndarray] | None:
    """Rows via pyogrio's Arrow reader, or None when pyogrio is missing or disagrees on fields."""
    try:
        import pyogrio
    except ImportError:
        return None
    try:
        meta, table = pyogrio.read_arrow(path)
    except (RuntimeError, ValueError, OSError) as exc:  # pyogrio's errors are RuntimeErrors
        log.info("%s: pyogrio cannot read it (%s); reading with fiona", path.name, exc)
        return None
    if any(n not in table.column_names for n in names):
        log.info("%s: pyogrio fields differ from fiona's; reading with fiona", path.name)
        return None
    geom_name = meta.get("geometry_name") or "wkb_geometry"
    if geom_name not in table.column_names:
        geom_name = "wkb_geometry" if "wkb_geometry" in table.column_names else ""
    if geom_name:
        wkb = table.column(geom_name).to_numpy(zero_copy_only=False)
        geoms = shapely.from_wkb(wkb)
    else:
        geoms = np.full(table.num_rows, None, dtype=object)
    return table, geoms


def _fiona_geometries(raw: list[Any]) -> np.ndarray:
    """fiona Geometry objects → shapely; 2D points in one vectorised call."""
    out = np.full(len(raw), None, dtype=object)
    point_idx: list[int] = []
    point_xy: list[tuple[float, float]] = []
    for i, g in enumerate(raw):
        if g is None:
            continue
        if g.type == "Point" and len(g.coordinates) == 2:
            point_idx.append(i)
            point_xy.append(g.coordinates)
        else:
            out[i] = shapely.geometry.shape(g)
    if point_idx:
        xy = np.asarray(point_xy, dtype=float)
        out[np.asarray(point_idx)] = shapely.points(xy[:, 0], xy[:, 1])
    return out


# --------------------------------------------------------------------------- GeoParquet


def _read_parquet(path: Path) -> tuple[list[Column], np.ndarray | None, CRS | None]:
    table = pq.read_table(path)
    metadata = table.schema.metadata or {}
    geo_raw = metadata.get(b"geo")
    geo_column: str | None = None
    crs: CRS | None = None
    geoms: np.ndarray | None = None
    geometry_columns: set[str] = set()
    if geo_raw is not None:
        try:
            geo = orjson.loads(geo_raw)
        except orjson.JSONDecodeError as exc:
            raise ConfigError(f"{str(path)!r}: the 'geo' metadata is not JSON ({exc}); rewrite the file") from exc
        geometry_columns = set((geo.get("columns") or {}).keys())
        geo_column = geo.get("primary_column")
        col_meta = (geo.get("columns") or {}).get(geo_column or "", None)
        if geo_column is None or col_meta is None or geo_column not in table.column_names:
            raise ConfigError(
                f"{str(path)!r}: 'geo' metadata names primary column {geo_column!r}, which is not in the file; "
                "rewrite the file with a valid GeoParquet writer"
            )
        encoding = str(col_meta.get("encoding", "")).upper()
        if encoding != "WKB":
            raise ConfigError(
                f"{str(path)!r}: geometry column {geo_column!r} uses encoding {col_meta.get('encoding')!r}; "
                "only WKB is served — rewrite it with WKB encoding"
            )
        if "crs" not in col_meta:
            crs = CRS.from_user_input("OGC:CRS84")  # GeoParquet 1.x: absent crs means OGC:CRS84
        elif col_meta["crs"] is not None:
            crs_value = col_meta["crs"]
            crs = CRS.from_json_dict(crs_value) if isinstance(crs_value, dict) else CRS.from_user_input(crs_value)
        wkb = table.column(geo_column).to_numpy(zero_copy_only=False)
        geoms = shapely.from_wkb(wkb)
    columns: list[Column] = []
    for fname in table.column_names:
        if fname in geometry_columns:
            continue
        col = table.column(fname)
        kind = _arrow_kind(col.type)
        if kind is None:
            log.warning("%s: column %r of type %s is not served (no Esri equivalent)", path.name, fname, col.type)
            continue
        columns.append(Column(fname, kind, _arrow_values(col, kind)))
    return columns, geoms, crs


def _arrow_kind(dtype: pa.DataType) -> str | None:
    if pa.types.is_dictionary(dtype):
        return _arrow_kind(dtype.value_type)
    if pa.types.is_boolean(dtype):
        return "bool"
    if pa.types.is_integer(dtype):
        return "int"
    if pa.types.is_float32(dtype) or pa.types.is_float16(dtype):
        return "single"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "float"
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype) or pa.types.is_null(dtype):
        return "str"
    if pa.types.is_timestamp(dtype) or pa.types.is_date(dtype):
        return "date"
    if pa.types.is_time(dtype):
        return "time"
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_struct(dtype) or pa.types.is_map(dtype):
        return "json"
    return None


# --------------------------------------------------------------------------- value conversion


def _arrow_values(col: pa.ChunkedArray, kind: str) -> list[Any]:
    """An Arrow column → Python values as stored (dates epoch ms, bools 0/1)."""
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    dtype = col.type
    if kind == "date":
        if pa.types.is_timestamp(dtype):
            # tz-aware timestamps hold UTC instants; naive ones are taken as UTC.
            unit_ms = col.cast(pa.timestamp("ms", tz=dtype.tz), safe=False)
            return unit_ms.cast(pa.int64()).to_pylist()
        if pa.types.is_date(dtype):
            return col.cast(pa.timestamp("ms")).cast(pa.int64()).to_pylist()
        return _python_values(col.to_pylist(), kind)
    if kind == "bool":
        return [None if v is None else int(bool(v)) for v in col.to_pylist()]
    if kind in ("float", "single") and pa.types.is_decimal(dtype):
        return col.cast(pa.float64()).to_pylist()
    if kind == "time":
        return [None if v is None else (v.isoformat() if hasattr(v, "isoformat") else str(v)) for v in col.to_pylist()]
    if kind == "json":
        return [None if v is None else orjson.dumps(v, default=str).decode() for v in col.to_pylist()]
    values = col.to_pylist()
    if kind == "str" and not (pa.types.is_string(dtype) or pa.types.is_large_string(dtype)):
        return [None if v is None else str(v) for v in values]
    if kind == "int" and pa.types.is_boolean(dtype):
        return [None if v is None else int(v) for v in values]
    return values


def _python_values(values: list[Any], kind: str) -> list[Any]:
    """fiona property values → stored values (dates from ISO strings to epoch ms)."""
    if kind == "date":
        return [_epoch_ms(v) for v in values]
    if kind == "bool":
        return [None if v is None else int(bool(v)) for v in values]
    if kind == "time":
        return [None if v is None else str(v) for v in values]
    if kind == "str":
        return [v if v is None or isinstance(v, str) else str(v) for v in values]
    return values


def _epoch_ms(value: Any) -> int | None:
    """An ISO date/datetime string (or date/datetime) → epoch ms UTC; naive values are UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            value = dt.datetime.fromisoformat(text)
        except ValueError as exc:
            raise ConfigError(f"date value {value!r} is not ISO 8601; fix the value in the data file") from exc
    if isinstance(value, dt.datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day, tzinfo=dt.timezone.utc)
    else:
        raise ConfigError(f"date value {value!r} is neither a date nor a timestamp; fix the data file")
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)


# --------------------------------------------------------------------------- assembling the layer


def _field_name(raw: str, taken: set[str]) -> str:
    """SQL-safe, unique (case-insensitively) field name: letters/digits/_; no leading digit."""
    name = re.sub(r"\W", "_", raw)
    if not name:
        name = "FIELD"
    if name[0].isdigit():
        name = "F_" + name
    if name.lower().startswith(INTERNAL_PREFIX):
        name = "F" + name
    base, n = name, 1
    while name.lower() in taken:
        name = f"{base}_{n}"
        n += 1
    taken.add(name.lower())
    return name


def _is_oid_candidate(col: Column) -> bool:
    if col.name.lower() != "objectid" or col.kind != "int":
        return False
    values = col.values
    if any(v is None for v in values):
        return False
    return len(set(values)) == len(values)


def _string_length(values: Iterable[Any]) -> int:
    longest = 0
    for v in values:
        if v is not None and len(v) > longest:
            longest = len(v)
    return max(longest, 1)


def _esri_field(name: str, col: Column) -> Field:
    kind = col.kind
    if kind == "int":
        present = [v for v in col.values if v is not None]
        fits = not present or (min(present) >= _INT32_MIN and max(present) <= _INT32_MAX)
        return Field(name, "esriFieldTypeInteger" if fits else "esriFieldTypeBigInteger", alias=col.name)
    if kind == "bool":
        return Field(name, "esriFieldTypeSmallInteger", alias=col.name)
    if kind == "float":
        return Field(name, "esriFieldTypeDouble", alias=col.name)
    if kind == "single":
        return Field(name, "esriFieldTypeSingle", alias=col.name)
    if kind == "date":
        return Field(name, "esriFieldTypeDate", alias=col.name, length=8)
    length = col.width if col.width is not None else _string_length(col.values)
    return Field(name, "esriFieldTypeString", alias=col.name, length=length)


def _geometry_type(path: Path, geoms: np.ndarray) -> tuple[str | None, np.ndarray]:
    """The Esri geometry type of a layer, and the geometries adjusted to it.

    Points and MultiPoints together make a Multipoint layer (single points are
    promoted). Mixed families (points with polygons …) and GeometryCollections
    cannot be one Esri layer.
    """
    type_ids = shapely.get_type_id(geoms)
    present = set(int(t) for t in np.unique(type_ids) if t >= 0)
    if not present:
        return None, geoms
    families = {_FAMILY.get(t) for t in present}
    if None in families or len(families) > 1:
        names = sorted({shapely.GeometryType(t).name for t in present})
        raise ConfigError(
            f"{str(path)!r} mixes geometry types {names}; an Esri layer holds one family "
            "(points, multipoints, lines or polygons) — split the file by geometry type"
        )
    family = families.pop()
    assert family is not None
    if 4 in present:
        family = "esriGeometryMultipoint"
    if family == "esriGeometryMultipoint" and 0 in present:
        geoms = geoms.copy()
        for i in np.flatnonzero(type_ids == 0):
            geoms[i] = shapely.MultiPoint([geoms[i]])
    return family, geoms


def _build(name: str, path: Path, columns: list[Column], geoms: np.ndarray | None, crs: CRS | None) -> SourceLayer:
    n = len(columns[0].values) if columns else (0 if geoms is None else len(geoms))
    for col in columns:
        if len(col.values) != n:
            raise ConfigError(f"{str(path)!r}: column {col.name!r} has {len(col.values)} values, expected {n}")
    geometry_type: str | None = None
    has_z = False
    if geoms is not None:
        if len(geoms) != n and columns:
            raise ConfigError(f"{str(path)!r}: {len(geoms)} geometries for {n} rows")
        n = len(geoms) if not columns else n
        geoms = np.asarray(geoms, dtype=object)
        empty = np.array([g is not None and g.is_empty for g in geoms], dtype=bool) if len(geoms) else np.zeros(0, bool)
        if empty.any():
            geoms = geoms.copy()
            geoms[empty] = None
        geometry_type, geoms = _geometry_type(path, geoms)
        if geometry_type is None:
            geoms = None  # every geometry null: a table, as ArcGIS would publish it
        else:
            present = geoms[shapely.is_geometry(geoms)]
            has_z = bool(len(present)) and bool(shapely.has_z(present).any())

    oid_col = next((c for c in columns if _is_oid_candidate(c)), None)
    taken: set[str] = set()
    if oid_col is not None:
        oid_name = _field_name(oid_col.name, taken)
        oids = np.asarray(oid_col.values, dtype=np.int64)
    else:
        oid_name = ""
    fields: list[Field] = []
    values: list[list[Any]] = []
    for col in columns:
        if col is oid_col:
            continue
        fname = _field_name(col.name, taken)
        fields.append(_esri_field(fname, col))
        values.append(col.values)
    if oid_col is None:
        oid_name = _field_name("OBJECTID", taken)
        oids = np.arange(1, n + 1, dtype=np.int64)
    oid_field = Field(oid_name, "esriFieldTypeOID", alias=oid_name, nullable=False)
    return SourceLayer(
        name=name,
        path=path,
        fields=[oid_field, *fields],
        oid_field=oid_name,
        oids=oids,
        columns=values,
        geometry=geoms,
        geometry_type=geometry_type,
        spatial_ref=None if crs is None or geoms is None else spatialref.from_crs(crs),
        has_z=has_z,
    )
