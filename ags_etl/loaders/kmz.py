"""KMZ (and plain KML 2.2) loader: a streaming writer built on numpy and Arrow string kernels.

Why not simplekml (the library on the design card): version 1.3.6 does not escape
``ExtendedData`` values (a ``&`` or ``<`` gives broken KML), writes numeric ``id``
attributes that fail ``ogckml22.xsd``, holds about 6.7 KB per point in memory and
writes 3–11k features/s. See ``docs/decisions/kml-writer.md`` for the measurements.

What is written (``http://www.opengis.net/kml/2.2`` as the default namespace — LIBKML
reads no layer from a document that uses a prefix):

* a KMZ is a zip whose first (and only) entry is ``doc.kml``, deflated at
  ``compresslevel`` (default 1: level 6 halved polygon throughput, 27k → 12.5k/s, for
  a file 12 % smaller). The entry's timestamp is zip's 1980-01-01 default, so equal
  input gives byte-identical output. A target ending in ``.kml`` gets the plain document;
* ``<Document>`` with ``<name>`` (the layer name) and one ``<Style>`` per geometry
  family: ``point`` (icon), ``line`` (colour, width), ``polygon`` (outline and a
  half-transparent fill). Geometry collections use the polygon style;
* one ``<Placemark id="f{OID}">`` per feature (``xs:ID`` values must not start with a
  digit, and must be unique: OIDs are). Without an OID field, or for a null OID, the id
  is ``row{n}`` with ``n`` the 1-based row number in the output;
* ``<name>``: the ``name_field`` option, by default the first ``esriFieldTypeString``
  field, else the OID; omitted when the value is null;
* ``<ExtendedData>`` holds ``<Data name="FIELD"><value>…</value></Data>`` for every
  attribute. **A null (or NaN/±Infinity) value is omitted** rather than written as an
  empty ``<value/>``, so readers can tell null from the empty string. Dates are ISO
  8601 UTC (``1965-03-01T00:00:00Z``), date-only values ``YYYY-MM-DD``, booleans
  ``true``/``false``;
* text is XML-escaped (``&``, ``<``, ``>``; ``\\r`` as ``&#13;`` so it survives
  end-of-line normalisation). Characters XML 1.0 cannot carry at all (C0 controls other
  than tab/newline/CR, U+FFFE, U+FFFF) are replaced by U+FFFD and counted in a warning;
* geometry: ``<Point>``, ``<LineString>``, ``<Polygon>`` with ``<outerBoundaryIs>`` and
  one ``<innerBoundaryIs>`` per hole (right-hand rule: exterior counter-clockwise),
  multi-part geometries and collections as ``<MultiGeometry>`` (collections flattened).
  Coordinates are ``lon,lat[,z]`` with ``precision`` decimals (default 7, fixed
  notation). A coordinate that fixed notation cannot carry exactly (NaN, infinite, or
  ``|v| * 10**precision >= 2**53``, e.g. ``1e308``) fails the run with a GeometryError
  naming the feature (its OID) — never a rounded or ``nan`` text. Z is written when the geometry has it; no ``<altitudeMode>`` is written, so
  viewers clamp to ground (KML's default);
* missing or empty geometries give a Placemark without geometry (legal KML; the
  feature count is kept). A *table* (schema without geometry) is refused with a
  CapabilityError: a KMZ of placemarks without locations is of no use in the viewers
  KMZ is made for; write GeoJSON or GeoParquet instead.

Coordinates become text in numpy (:func:`ags_etl.loaders.text.sequence_text`: a
character matrix per batch, digits by table lookup), everything else is assembled with
vectorised Arrow kernels (cast, join, take, replace) over a whole batch, and the
finished batch is written from the Arrow data buffer: no Python work per feature or
coordinate, and memory stays at one batch. A ``doc.kml`` that would pass 2 GiB raises
LoadError (a larger zip entry needs ZIP64, which many KMZ readers cannot open).
"""

from __future__ import annotations

import contextlib
import re
import zipfile
from collections.abc import Iterator
from typing import IO, Any, ClassVar
from xml.sax.saxutils import escape, quoteattr

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, GeometryError, LoadError
from ags_etl.loaders.base import WGS84, FileLoader, LoaderCapabilities, LoadStats, atomic_file, check_batch_crs
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
    reject_unknown_options,
    reorder_parts,
    scatter,
    sequence_text,
    validate_precision,
    write_text,
)
from ags_etl.schema import LayerSchema

__all__ = ["KMZLoader", "KMLWriter", "KML_NS", "kml_geometry_text", "xml_text"]

KML_NS = "http://www.opengis.net/kml/2.2"
#: zip entries above this size need ZIP64, which not every KMZ reader supports.
_ZIP_ENTRY_LIMIT = zipfile.ZIP64_LIMIT
_WRITE_BUFFER = 1 << 20
#: Characters XML 1.0 cannot carry, not even as character references (RE2 syntax).
_NOT_XML_RE2 = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x{FFFE}\x{FFFF}]"
_NOT_XML_PY = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

_STYLES = (
    '<Style id="point"><IconStyle><color>ff00aaff</color><scale>1.1</scale>'
    "<Icon><href>http://maps.google.com/mapfiles/kml/shapes/placemark_circle.png</href></Icon>"
    "</IconStyle></Style>\n"
    '<Style id="line"><LineStyle><color>ff0000ff</color><width>2</width></LineStyle></Style>\n'
    '<Style id="polygon"><LineStyle><color>ff7f3f00</color><width>1</width></LineStyle>'
    "<PolyStyle><color>7fff7f00</color><fill>1</fill><outline>1</outline></PolyStyle></Style>\n"
)
#: shapely type id + 1 (0 = no geometry) → styleUrl element.
_STYLE_BY_TYPE = pa.array(
    [
        "",
        "<styleUrl>#point</styleUrl>",  # Point
        "<styleUrl>#line</styleUrl>",  # LineString
        "<styleUrl>#line</styleUrl>",  # LinearRing
        "<styleUrl>#polygon</styleUrl>",  # Polygon
        "<styleUrl>#point</styleUrl>",  # MultiPoint
        "<styleUrl>#line</styleUrl>",  # MultiLineString
        "<styleUrl>#polygon</styleUrl>",  # MultiPolygon
        "<styleUrl>#polygon</styleUrl>",  # GeometryCollection
    ],
    LSTR,
)
#: shapely type id (0 Point, 1 LineString, 2 LinearRing) → element around a coordinate list.
_OPEN_BY_TYPE = pa.array(["<Point><coordinates>", "<LineString><coordinates>", "<LineString><coordinates>"], LSTR)
_CLOSE_BY_TYPE = pa.array(["</coordinates></Point>", "</coordinates></LineString>", "</coordinates></LineString>"], LSTR)
_OUTER = ("<outerBoundaryIs><LinearRing><coordinates>", "</coordinates></LinearRing></outerBoundaryIs>")
_INNER = ("<innerBoundaryIs><LinearRing><coordinates>", "</coordinates></LinearRing></innerBoundaryIs>")


# --------------------------------------------------------------------------- text


def _sanitise(text: str) -> tuple[str, int]:
    clean, count = _NOT_XML_PY.subn("\ufffd", text)
    return clean, count


def xml_text(column: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, int]:
    """XML-escaped large_string text of a string column and how many values needed repair.

    Escapes ``&``, ``<``, ``>`` and ``\\r`` (as ``&#13;``); replaces characters XML 1.0
    cannot hold with U+FFFD. Nulls stay null.
    """
    text = column.cast(LSTR)
    if isinstance(text, pa.ChunkedArray):
        text = text.combine_chunks()
    bad = int(pc.sum(pc.match_substring_regex(text, _NOT_XML_RE2)).as_py() or 0)
    if bad:
        text = pc.replace_substring_regex(text, _NOT_XML_RE2, "\ufffd")
    text = pc.replace_substring(text, "&", "&amp;")
    text = pc.replace_substring(text, "<", "&lt;")
    text = pc.replace_substring(text, ">", "&gt;")
    text = pc.replace_substring(text, "\r", "&#13;")
    return text, bad


def _value_text(name: str, column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Attribute values as strings for ``<value>``; NaN/±Infinity become null."""
    dtype = column.type
    if pa.types.is_dictionary(dtype):
        column = column.cast(dtype.value_type)
        dtype = column.type
    if pa.types.is_timestamp(dtype):
        return iso_timestamps(column)
    if pa.types.is_floating(dtype):
        column = pc.if_else(pc.is_finite(column), column, pa.scalar(None, dtype))
    try:
        return column.cast(pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise CapabilityError(
            f"kmz: attribute {name!r} has Arrow type {dtype}, which has no text form; "
            f"drop the field with a fields transform"
        ) from exc


# --------------------------------------------------------------------------- geometry


def kml_geometry_text(geoms: np.ndarray, precision: int = 7) -> tuple[pa.Array, np.ndarray]:
    """KML geometry elements for a batch and the shapely type id of each row (-1: none).

    Returns a large_string array aligned with ``geoms`` (``""`` for missing or empty
    geometries) and the type ids used to pick a style. See the module docstring.
    """
    n = len(geoms)
    parts = decompose_geometries(geoms, flatten_collections=True)
    type_ids = np.full(n, -1, dtype=np.int64)
    if not len(parts.rows):
        return pa.array([""] * n, LSTR), type_ids
    type_ids[parts.rows] = parts.types
    seq_text = sequence_text(parts.coords, parts.seq_counts, precision, strip=False, between=b" ")

    other_types = pa.array(parts.part_types[parts.other_pos])
    other_xml = join(
        pc.take(_OPEN_BY_TYPE, other_types),
        seq_text.slice(0, len(parts.other_pos)),
        pc.take(_CLOSE_BY_TYPE, other_types),
    )
    ring_text = seq_text.slice(len(parts.other_pos))
    outer = np.zeros(len(ring_text), dtype=bool)
    ring_starts = np.concatenate(([0], np.cumsum(parts.ring_counts)[:-1]))
    outer[ring_starts[parts.ring_counts > 0]] = True
    ring_xml = pc.if_else(
        pa.array(outer),
        join(lit(_OUTER[0]), ring_text, lit(_OUTER[1])),
        join(lit(_INNER[0]), ring_text, lit(_INNER[1])),
    )
    poly_xml = join(lit("<Polygon>"), join_runs(parts.ring_counts, ring_xml, ""), lit("</Polygon>"))
    body = join_runs(parts.part_counts, reorder_parts(parts, other_xml, poly_xml), "")
    multi = parts.types >= 4
    if multi.any():
        body = pc.if_else(pa.array(multi), join(lit("<MultiGeometry>"), body, lit("</MultiGeometry>")), body)
    return scatter(body, parts.rows, n, ""), type_ids


# --------------------------------------------------------------------------- writer


class KMLWriter:
    """Writes batches as Placemarks into an open ``doc.kml`` stream (see :class:`KMZLoader`)."""

    def __init__(
        self,
        fh: IO[bytes],
        schema: LayerSchema,
        *,
        precision: int,
        name_field: str | None,
        size_limit: int | None,
        written: int = 0,
    ) -> None:
        self._fh = fh
        self._oid_field = schema.oid_field
        self._name_field = name_field
        self._precision = precision
        self._size_limit = size_limit
        self._written = written
        self._repaired = 0
        self._data_open: dict[str, str] = {}
        self.stats = LoadStats()

    def _data_prefix(self, field: str) -> str:
        prefix = self._data_open.get(field)
        if prefix is None:
            clean, bad = _sanitise(field)
            self._repaired += bad
            prefix = self._data_open[field] = f"<Data name={quoteattr(clean)}><value>"
        return prefix

    def _placemarks(self, batch: FeatureBatch) -> pa.Array:
        n = len(batch)
        row_numbers = pa.array(np.arange(self.stats.features + 1, self.stats.features + n + 1)).cast(LSTR)
        row_ids = join(lit("row"), row_numbers)
        if self._oid_field is not None and self._oid_field in batch.column_names:
            oid_text = batch.column(self._oid_field).cast(LSTR).combine_chunks()
            ids = pc.if_else(pc.is_null(oid_text), row_ids, join(lit("f"), oid_text.fill_null(lit(""))))
        else:
            ids = row_ids

        escaped: dict[str, pa.Array] = {}
        data_elements = []
        for field in batch.column_names:
            text, bad = xml_text(_value_text(field, batch.column(field).combine_chunks()))
            self._repaired += bad
            escaped[field] = text
            data_elements.append(join(lit(self._data_prefix(field)), text, lit("</value></Data>")).fill_null(lit("")))
        names: pa.Array | pa.Scalar = lit("")
        if self._name_field is not None and self._name_field in escaped:
            names = join(lit("<name>"), escaped[self._name_field], lit("</name>")).fill_null(lit(""))
        extended: pa.Array | pa.Scalar = lit("")
        if data_elements:
            body = join(*data_elements) if len(data_elements) > 1 else data_elements[0]
            extended = pc.if_else(
                pc.equal(body, lit("")), lit(""), join(lit("<ExtendedData>"), body, lit("</ExtendedData>"))
            )

        geometry: pa.Array | pa.Scalar
        if batch.geometry is None:
            geometry, type_ids = lit(""), np.full(n, -1, dtype=np.int64)
        else:
            geometry, type_ids = kml_geometry_text(batch.geometry, self._precision)
        styles = pc.take(_STYLE_BY_TYPE, pa.array(type_ids + 1))
        return join(lit('<Placemark id="'), ids, lit('">'), names, styles, extended, geometry, lit("</Placemark>\n"))

    def _name_bad_feature(self, batch: FeatureBatch, exc: GeometryError) -> GeometryError:
        """The coordinate error again, naming the feature at fault (found by a second pass)."""
        limit = MAGNITUDE_LIMIT / 10.0**self._precision
        found = None if batch.geometry is None else locate_bad_coordinate(batch.geometry, limit)
        if found is None:
            return exc
        row, coordinate = found
        who = describe_feature(batch.attributes, row, self._oid_field, self.stats.features)
        return GeometryError(
            f"kmz: {who} has the coordinate {coordinate}, which KML cannot hold: coordinates are written in "
            f"fixed notation with {self._precision} decimals, so each must be finite with |value| < {limit:.4g}; "
            f"check the layer's CRS, or exclude the feature with --where (GeoJSON and GeoParquet keep any finite value)"
        )

    def write(self, batch: FeatureBatch) -> None:
        """Append the batch as Placemarks. Raises CapabilityError for a batch not in EPSG:4326,
        GeometryError naming the feature for a coordinate KML text cannot hold."""
        check_batch_crs("kmz", batch, WGS84)
        if len(batch) == 0:
            return
        try:
            text = self._placemarks(batch)
        except GeometryError as exc:
            raise self._name_bad_feature(batch, exc) from exc
        if self._size_limit is not None:
            size = pc.sum(pc.binary_length(text)).as_py() or 0
            if self._written + size > self._size_limit:
                raise LoadError(
                    f"kmz: doc.kml would pass {self._size_limit:,} bytes after {self.stats.features:,} features; "
                    f"a larger zip entry needs ZIP64, which many KMZ readers cannot open. Write a plain .kml, "
                    f"GeoJSON or GeoParquet, or filter the layer (where/bbox)"
                )
        self._written += write_text(self._fh, text)
        self.stats.features += len(batch)

    def finish(self) -> None:
        """Record the repair warning (if any); called before the footer is written."""
        if self._repaired:
            self.stats.warnings.append(
                f"kmz: {self._repaired} value(s) held characters XML 1.0 cannot carry (control characters, "
                f"U+FFFE/U+FFFF); they were replaced by U+FFFD"
            )


class KMZLoader(FileLoader):
    """KMZ (``.kmz``, zipped ``doc.kml``) or plain KML (``.kml``) in EPSG:4326.

    Options: ``name_field`` (field for ``<name>``; default the first string field,
    else the OID), ``precision`` (decimals, 0–15, default 7), ``compresslevel``
    (0–9, default 1; 0 stores the entry uncompressed).
    """

    name: ClassVar[str] = "kmz"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(
        extensions=(".kmz", ".kml"), required_crs=WGS84, supports_tables=False
    )
    _options: ClassVar[tuple[str, ...]] = ("name_field", "precision", "compresslevel")

    class Options(BaseModel):
        """Pipeline-file sink keys besides type/path/overwrite."""

        model_config = ConfigDict(extra="forbid")
        name_field: str | None = None
        precision: int = Field(7, ge=0, le=15)
        compresslevel: int = Field(1, ge=0, le=9)

    def __init__(self, path: Any, *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(path, overwrite=overwrite, **options)
        reject_unknown_options(self.name, options, self._options)
        self.precision = validate_precision(self.name, options.get("precision", 7))
        level = options.get("compresslevel", 1)
        if isinstance(level, bool) or not isinstance(level, int) or not 0 <= level <= 9:
            raise ConfigError(
                f"kmz: option compresslevel={level!r} must be a whole number from 0 (store) to 9; "
                f"1 is fast, 6 is zip's usual default"
            )
        self.compresslevel = level
        name_field = options.get("name_field")
        if name_field is not None and not isinstance(name_field, str):
            raise ConfigError(f"kmz: option name_field={name_field!r} must be a field name (text)")
        self.name_field: str | None = name_field

    def resolve_name_field(self, schema: LayerSchema) -> str | None:
        """The field whose value becomes each Placemark's ``<name>`` (ConfigError if unknown)."""
        names = [f.name for f in schema.attribute_fields]
        if self.name_field is not None:
            if self.name_field not in names:
                raise ConfigError(
                    f"kmz: name_field {self.name_field!r} is not a field of layer {schema.name!r}; "
                    f"use one of {', '.join(names) if names else '(no fields)'}"
                )
            return self.name_field
        for f in schema.attribute_fields:
            if f.esri_type == "esriFieldTypeString":
                return f.name
        return schema.oid_field

    def check(self, schema: LayerSchema) -> None:
        """Base checks (target, CRS, tables refused) plus the ``name_field`` option."""
        super().check(schema)
        self.resolve_name_field(schema)

    def _header(self, schema: LayerSchema) -> bytes:
        name, _ = _sanitise(schema.name)
        return (
            f'<?xml version="1.0" encoding="UTF-8"?>\n<kml xmlns="{KML_NS}">\n<Document>\n'
            f"<name>{escape(name)}</name>\n{_STYLES}"
        ).encode("utf-8")

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[KMLWriter]:
        """Stream ``doc.kml`` into a temp file beside the target; rename on success, delete on error."""
        self.check(schema)
        name_field = self.resolve_name_field(schema)
        plain = self.path.suffix.lower() == ".kml"
        header = self._header(schema)
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(atomic_file(self.path, self.overwrite))
            fh: IO[bytes]
            if plain:
                fh = stack.enter_context(tmp.open("wb", buffering=_WRITE_BUFFER))
            else:
                zf = stack.enter_context(
                    zipfile.ZipFile(
                        tmp,
                        "w",
                        compression=zipfile.ZIP_DEFLATED if self.compresslevel else zipfile.ZIP_STORED,
                        compresslevel=self.compresslevel or None,
                    )
                )
                fh = stack.enter_context(zf.open("doc.kml", "w"))
            fh.write(header)
            writer = KMLWriter(
                fh,
                schema,
                precision=self.precision,
                name_field=name_field,
                size_limit=None if plain else _ZIP_ENTRY_LIMIT - 64,
                written=len(header),
            )
            yield writer
            writer.finish()
            fh.write(b"</Document>\n</kml>\n")
        writer.stats.outputs.append(self.path)
