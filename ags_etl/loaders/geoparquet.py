"""GeoParquet 1.1 loader (pyarrow).

Layout of the file (details and the type table in ``docs/type-mapping.md``):

* one column per attribute field, with the Arrow type the schema gives it
  (:mod:`ags_etl.arcgis.fields`; Esri dates stay ``timestamp[ms, tz=UTC]``);
* ``geometry``: the geometry as ISO WKB (``shapely.to_wkb(flavor="iso")``), null for a
  missing geometry;
* ``bbox``: the bounding-box covering column, a struct ``{xmin, ymin, xmax, ymax}`` of
  float64, null for missing or empty geometries;
* the file metadata key ``geo`` (GeoParquet 1.1.0): ``primary_column`` "geometry",
  ``encoding`` "WKB", ``geometry_types`` — the distinct types actually written, " Z"
  suffixed for 3D, sorted —, ``crs`` as PROJJSON (written explicitly even for EPSG:4326;
  JSON null when the layer's CRS is unknown), ``bbox`` over all features (left out when no
  feature has a geometry), and ``covering.bbox`` pointing at the struct column.

Coordinates are x/y (easting/longitude first), as the spec requires whatever the
CRS's axis order. If an attribute is itself called ``geometry`` or ``bbox``, the
geometry/covering column gets a ``_1`` (``_2`` …) suffix and a warning says so.

Streaming: batches are converted as they arrive and buffered until ``row_group_size``
rows (option, default 65,536) or ``row_group_bytes`` of Arrow data (option, default
128 MiB, so a layer of huge polygons cannot buffer gigabytes), then written as row groups
by a :class:`pyarrow.parquet.ParquetWriter` (zstd). ``geo`` is added with
``add_key_value_metadata`` just before the writer closes, because bbox and types are
known only then; it therefore sits in the Parquet footer only (geopandas, GDAL and
geoparquet-validator read it from there). Memory is bounded by one row group plus one
batch (or ``row_group_bytes``, whichever is reached first).

Tables (a schema without geometry) are written as plain Parquet: attribute columns only,
no ``geo`` metadata.

Atomic: the file is written to a hidden temp file beside the target and renamed onto it
when the with-block ends without error (:func:`~ags_etl.loaders.base.atomic_file`).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import shapely
from pydantic import BaseModel, ConfigDict, Field

from ags_etl.batch import FeatureBatch, wkb_array
from ags_etl.errors import ConfigError, LoadError
from ags_etl.loaders.base import FileLoader, LoaderCapabilities, LoadStats, check_batch_crs
from ags_etl.loaders.storage import atomic_output, names_folder
from ags_etl.schema import LayerSchema

__all__ = ["DEFAULT_ROW_GROUP_BYTES", "DEFAULT_ROW_GROUP_SIZE", "GEOPARQUET_VERSION", "GeoParquetLoader"]

GEOPARQUET_VERSION = "1.1.0"
DEFAULT_ROW_GROUP_SIZE = 65_536
DEFAULT_ROW_GROUP_BYTES = 128 * 1024 * 1024
COMPRESSION = "zstd"

#: shapely type id → GeoParquet geometry type name (a LinearRing is written as a LineString).
_TYPE_NAMES = {
    0: "Point",
    1: "LineString",
    2: "LineString",
    3: "Polygon",
    4: "MultiPoint",
    5: "MultiLineString",
    6: "MultiPolygon",
    7: "GeometryCollection",
}
_BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
_BBOX_TYPE = pa.struct([pa.field(name, pa.float64(), nullable=False) for name in _BBOX_FIELDS])


def _free_name(base: str, taken: set[str]) -> str:
    if base not in taken:
        return base
    k = 1
    while f"{base}_{k}" in taken:
        k += 1
    return f"{base}_{k}"


class _GeoParquetWriter:
    """Converts batches to Arrow, buffers up to one row group, tracks bbox and types."""

    def __init__(
        self,
        schema: LayerSchema,
        path: Path,
        row_group_size: int,
        row_group_bytes: int,
        stats: LoadStats,
        *,
        store_schema: bool = True,
    ) -> None:
        self.stats = stats
        self._layer = schema.name
        self._crs = schema.crs
        self._row_group_size = row_group_size
        self._row_group_bytes = row_group_bytes
        self._attr_schema = schema.arrow_schema()
        self._has_geometry = schema.geometry_type is not None
        taken = set(self._attr_schema.names)
        self.geometry_column = _free_name("geometry", taken)
        self.bbox_column = _free_name("bbox", taken | {self.geometry_column})
        fields = list(self._attr_schema)
        if self._has_geometry:
            for wanted, got in (("geometry", self.geometry_column), ("bbox", self.bbox_column)):
                if wanted != got:
                    stats.warnings.append(
                        f"geoparquet: layer {schema.name!r} has an attribute named {wanted!r}, so the "
                        f"{wanted} column is called {got!r}"
                    )
            fields += [pa.field(self.geometry_column, pa.binary()), pa.field(self.bbox_column, _BBOX_TYPE)]
        self._file_schema = pa.schema(fields)
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._buffered_bytes = 0
        self._types: set[str] = set()
        self._bounds = [math.inf, math.inf, -math.inf, -math.inf]
        try:
            # store_schema=False (dataset parts): no ARROW:schema, so readers of a folder take the footer's
            # "geo" as the schema metadata (pyarrow exposes ARROW:schema's metadata instead when present).
            self._writer = pq.ParquetWriter(
                path, self._file_schema, compression=COMPRESSION, store_schema=store_schema, **self._encodings()
            )
        except (OSError, pa.ArrowException) as exc:
            raise LoadError(f"geoparquet: cannot create {str(path)!r}: {exc}") from exc

    def _encodings(self) -> dict[str, Any]:
        """No dictionary for the WKB and bbox columns, no min/max for the WKB column.

        Their values are (nearly) all distinct: Parquet's dictionary encoder only builds a
        hash table per row group to give up on it, and min/max of WKB bytes tell a reader
        nothing (the bbox column's statistics are what GeoParquet readers filter on). For a
        point layer this halves the writer's CPU and its memory per row group.
        """
        if not self._has_geometry:
            return {}
        attributes = list(self._attr_schema.names)
        return {
            "use_dictionary": attributes,
            "write_statistics": attributes + [f"{self.bbox_column}.{name}" for name in _BBOX_FIELDS],
        }

    # ---------------------------------------------------------------- public

    def write(self, batch: FeatureBatch) -> None:
        """Convert ``batch`` and buffer it; full row groups are written at once."""
        check_batch_crs("geoparquet", batch, self._crs)
        if len(batch) == 0:
            return
        table = self._attributes(batch)
        if self._has_geometry:
            if batch.geometry is None:
                raise LoadError(
                    f"geoparquet: a batch of layer {self._layer!r} has no geometry array, but the schema "
                    "declares geometries; keep the geometry through the transforms"
                )
            wkb, bbox = self._geometry_columns(batch.geometry)
            table = table.append_column(self._file_schema.field(self.geometry_column), wkb)
            table = table.append_column(self._file_schema.field(self.bbox_column), bbox)
        self._buffer.append(table)
        self._buffered += table.num_rows
        self._buffered_bytes += table.nbytes
        self.stats.features += table.num_rows
        if self._buffered_bytes >= self._row_group_bytes:
            self._flush(everything=True)
        elif self._buffered >= self._row_group_size:
            self._flush(everything=False)

    def geo_metadata(self) -> dict[str, Any]:
        """The ``geo`` metadata for what was written so far."""
        column: dict[str, Any] = {
            "encoding": "WKB",
            "geometry_types": sorted(self._types, key=_type_order),
            "crs": None if self._crs is None else self._crs.to_json_dict(),
            "covering": {"bbox": {name: [self.bbox_column, name] for name in _BBOX_FIELDS}},
        }
        if self._bounds[0] <= self._bounds[2]:
            column["bbox"] = list(self._bounds)
        return {
            "version": GEOPARQUET_VERSION,
            "primary_column": self.geometry_column,
            "columns": {self.geometry_column: column},
        }

    def close(self) -> None:
        """Write the last row group and the ``geo`` metadata, then the footer."""
        self._flush(everything=True)
        if self._has_geometry:
            self._writer.add_key_value_metadata({"geo": json.dumps(self.geo_metadata(), separators=(",", ":"))})
        self._writer.close()

    def abort(self) -> None:
        """Release the file after a failure (the temp file is deleted by atomic_file)."""
        self._buffer.clear()
        with contextlib.suppress(OSError, pa.ArrowException):
            self._writer.close()

    # ---------------------------------------------------------------- internals

    def _flush(self, *, everything: bool) -> None:
        """Write full row groups (``everything``: also the rest, as one smaller group)."""
        if not self._buffered:
            return
        table = pa.concat_tables(self._buffer)
        size = self._row_group_size
        start = 0
        while table.num_rows - start >= size or (everything and start < table.num_rows):
            chunk = table.slice(start, size)
            self._writer.write_table(chunk, row_group_size=size)
            start += chunk.num_rows
        rest = table.slice(start)
        self._buffer = [rest] if rest.num_rows else []
        self._buffered = rest.num_rows
        self._buffered_bytes = rest.nbytes if rest.num_rows else 0

    def _attributes(self, batch: FeatureBatch) -> pa.Table:
        table = batch.attributes
        names = self._attr_schema.names
        missing = [n for n in names if n not in table.column_names]
        if missing:
            raise LoadError(
                f"geoparquet: batch has no column(s) {missing} declared by the schema of layer {self._layer!r}; "
                f"the batch columns are {table.column_names}"
            )
        table = table.select(names)
        if not table.schema.equals(self._attr_schema, check_metadata=False):
            try:
                table = table.cast(self._attr_schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LoadError(
                    f"geoparquet: batch columns {table.schema.types} cannot be cast to the schema's "
                    f"{self._attr_schema.types}: {exc}; fix the transform that produced them"
                ) from exc
        return table.replace_schema_metadata(None)

    def _geometry_columns(self, geoms: np.ndarray) -> tuple[pa.Array, pa.Array]:
        wkb = wkb_array(geoms)
        bounds = shapely.bounds(geoms)  # NaN rows for None and empty geometries
        valid = ~np.isnan(bounds).any(axis=1)
        if valid.any():
            b = bounds[valid]
            lo = b.min(axis=0)
            hi = b.max(axis=0)
            self._bounds = [
                min(self._bounds[0], float(lo[0])),
                min(self._bounds[1], float(lo[1])),
                max(self._bounds[2], float(hi[2])),
                max(self._bounds[3], float(hi[3])),
            ]
        filled = np.where(valid[:, None], bounds, 0.0)
        bbox = pa.StructArray.from_arrays(
            [pa.array(filled[:, i], type=pa.float64()) for i in range(4)],
            fields=list(_BBOX_TYPE),
            # a mask makes pyarrow import pyarrow.compute (13 MB resident) to invert it: only when needed
            mask=None if valid.all() else pa.array(~valid),
        )
        ids = shapely.get_type_id(geoms)
        present = ids >= 0
        if present.any():
            z = shapely.has_z(geoms[present])
            for code in np.unique(ids[present] * 2 + z):
                name = _TYPE_NAMES.get(int(code) // 2)
                if name is None:
                    raise LoadError(f"geoparquet: unsupported shapely geometry type id {int(code) // 2}")
                self._types.add(name + (" Z" if code % 2 else ""))
        return wkb, bbox


def _type_order(name: str) -> tuple[int, str]:
    base = name.removesuffix(" Z")
    order = ["Point", "LineString", "Polygon", "MultiPoint", "MultiLineString", "MultiPolygon", "GeometryCollection"]
    return (order.index(base) if base in order else len(order), name)


class GeoParquetLoader(FileLoader):
    """Write a layer (or a table) as GeoParquet 1.1 (``.parquet``/``.geoparquet``).

    Options: ``row_group_size`` (int, default 65,536): rows per row group, and so the rows
    held in memory before a write; ``row_group_bytes`` (int, default 128 MiB): a row group
    is also written once this much Arrow data is buffered.
    """

    name: ClassVar[str] = "geoparquet"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".parquet", ".geoparquet"), supports_tables=True, object_storage=True
    )

    class Options(BaseModel):
        """Pipeline-file sink keys besides type/path/overwrite."""

        model_config = ConfigDict(extra="forbid")
        row_group_size: int = Field(DEFAULT_ROW_GROUP_SIZE, ge=1)
        row_group_bytes: int = Field(DEFAULT_ROW_GROUP_BYTES, ge=1)
        partitioned: bool = False
        rows_per_part: int = Field(1_000_000, ge=1)
        storage_options: dict[str, Any] | None = None

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(path, overwrite=overwrite, **options)
        known = {"row_group_size", "row_group_bytes", "partitioned", "rows_per_part", "storage_options"}
        unknown = sorted(set(options) - known)
        if unknown:
            raise ConfigError(f"geoparquet: unknown option(s) {unknown}; known options: {', '.join(sorted(known))}")
        # A dataset folder of part files (ags_etl.loaders.geoparquet_dataset): a path ending in "/" or partitioned.
        self.partitioned: bool = bool(options.get("partitioned")) or names_folder(path)
        self.location = self.location.as_folder(self.partitioned)
        self.rows_per_part: int = options.get("rows_per_part", 1_000_000)
        size = options.get("row_group_size", DEFAULT_ROW_GROUP_SIZE)
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ConfigError(f"geoparquet: row_group_size={size!r} must be a whole number of rows, 1 or more")
        nbytes = options.get("row_group_bytes", DEFAULT_ROW_GROUP_BYTES)
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 1:
            raise ConfigError(f"geoparquet: row_group_bytes={nbytes!r} must be a whole number of bytes, 1 or more")
        self.row_group_size: int = size
        self.row_group_bytes: int = nbytes

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[_GeoParquetWriter]:
        """Writer for ``schema``; the file appears only when the with-block ends without error."""
        self.check(schema)
        stats = LoadStats()
        if self.partitioned:
            from ags_etl.loaders.geoparquet_dataset import open_dataset

            with open_dataset(
                self.location, schema, overwrite=self.overwrite, rows_per_part=self.rows_per_part,
                row_group_size=self.row_group_size, row_group_bytes=self.row_group_bytes,
            ) as dataset:
                yield dataset  # type: ignore[misc]
            dataset.stats.outputs.append(self.path)
            return
        with atomic_output(self.location, self.overwrite) as tmp:
            writer = _GeoParquetWriter(schema, tmp, self.row_group_size, self.row_group_bytes, stats)
            try:
                yield writer
                writer.close()
            except BaseException:
                writer.abort()
                raise
        stats.outputs.append(self.path)
