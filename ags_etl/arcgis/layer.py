"""Layer metadata (``<layer>?f=json``) → :class:`LayerInfo`, with real-server quirks (pure).

Quirks handled (docs/reference/arcgis-rest.md §1, §12):

* ``objectIdField`` absent (8 of 9 recorded servers, 10.0–10.22): the OID field is
  found by type ``esriFieldTypeOID``, wherever it stands in the list (Kent MI: index 11).
* OID qualified as ``SHAPE.fid`` (Tuolumne CA 10.11): kept as the server names it,
  so where clauses and ``orderByFields`` use the server's own spelling.
* Spatial reference only as WKT (Kent MI 10.22); 102100 with or without ``latestWkid``.
* ``maxRecordCount`` absent (Carson CA 10.0, Columbia MO 10.01, Cook IL): None, and the
  planner measures.
* ``capabilities`` absent on 10.0 MapServer layers: assumed to allow Query.
* Pagination and ORDER BY flags read from both ``advancedQueryCapabilities`` (10.3+)
  and the top level (10.1–10.2).
* An extent that is not four finite numbers with min ≤ max (empty layers send
  ``"NaN"``) is taken as no extent.

Metadata that cannot be a layer's — a field list that is not a list, a field without
a name, duplicate field names, a ``maxRecordCount`` that is not a number — raises
:class:`~ags_etl.errors.ArcGISError` naming the key, the value and the server; nothing
here raises anything but :class:`~ags_etl.errors.AgsEtlError` subclasses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from pyproj import CRS
from pyproj.exceptions import CRSError

from ags_etl.crs import crs_from_spatial_reference
from ags_etl.errors import ArcGISError, NotALayerError
from ags_etl.schema import Field, LayerSchema

LAYER_TYPES = frozenset({"feature layer", "table", "layer", "annotation layer", "dimension layer"})
#: Largest maxRecordCount taken as plausible.
MAX_RECORD_COUNT_LIMIT = 2**53
_FIX = "the server's layer JSON is broken; report it to the server's administrator"


@dataclass(frozen=True)
class LayerInfo:
    """What the extractor needs to know about a layer, parsed from its JSON."""

    url: str
    name: str
    layer_type: str
    schema: LayerSchema
    current_version: float | None
    max_record_count: int | None
    supports_pagination: bool
    supports_order_by: bool
    supports_statistics: bool
    oid_is_hash: bool
    capabilities: frozenset[str]
    query_formats: frozenset[str]
    extent: dict[str, Any] | None
    spatial_reference: dict[str, Any] | None
    edit_date_field: str | None = None
    global_id_field: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def oid_field(self) -> str | None:
        return self.schema.oid_field

    @property
    def has_geometry(self) -> bool:
        return self.schema.geometry_type is not None

    @property
    def can_query(self) -> bool:
        return not self.capabilities or "query" in self.capabilities


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _version(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value) if value is not None else None
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number is not None and math.isfinite(number) else None


def _flag(data: dict[str, Any], name: str) -> bool:
    adv = data.get("advancedQueryCapabilities")
    value = adv.get(name) if isinstance(adv, dict) else None
    if value is None:
        value = data.get(name)
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def _max_record_count(url: str, value: Any) -> int | None:
    """``maxRecordCount``: None when absent or not positive (the planner measures); else a whole number."""
    if value is None:
        return None
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and math.isfinite(value) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value.strip())
    if number is None or number > MAX_RECORD_COUNT_LIMIT:
        raise ArcGISError(
            f"layer {url} has maxRecordCount {_short(value)}, which is not a whole number of records; {_FIX} "
            f"(ags-etl measures the page cap when maxRecordCount is left out)"
        )
    return number if number > 0 else None


def _extent(value: Any) -> dict[str, Any] | None:
    """The extent when it is four finite numbers with min ≤ max, else None (empty layers send NaN)."""
    if not isinstance(value, dict):
        return None
    raw = [value.get(k) for k in ("xmin", "ymin", "xmax", "ymax")]
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in raw):
        return None
    box = [float(v) for v in raw if isinstance(v, (int, float))]
    if box[0] > box[2] or box[1] > box[3]:
        return None
    return value


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _fields(url: str, raw: Any) -> list[dict[str, Any]]:
    """The ``fields`` list, checked: a list of objects with unique, non-empty string names."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ArcGISError(f"layer {url} has fields {_short(raw)}, which is not a list; {_FIX}")
    seen: set[str] = set()
    for i, f in enumerate(raw):
        if not isinstance(f, dict) or not isinstance(f.get("name"), str) or not f["name"]:
            raise ArcGISError(f"layer {url} has field #{i} {_short(f)}, which has no name; {_FIX}")
        if f["name"] in seen:
            raise ArcGISError(f"layer {url} lists the field {f['name']!r} twice; {_FIX}")
        seen.add(f["name"])
        kind = f.get("type")
        if kind is not None and not isinstance(kind, str):
            raise ArcGISError(f"layer {url} gives field {f['name']!r} the type {_short(kind)}; {_FIX}")
        length = f.get("length")
        whole = (isinstance(length, int) and not isinstance(length, bool)) or (
            isinstance(length, float) and math.isfinite(length) and length.is_integer()
        )
        if length is not None and not whole:
            raise ArcGISError(f"layer {url} gives field {f['name']!r} the length {_short(length)}; {_FIX}")
    return raw


def _field(data: dict[str, Any]) -> Field:
    """A checked field object (see :func:`_fields`) → Field; an odd alias or domain is dropped."""
    alias = data.get("alias")
    domain = data.get("domain")
    length = data.get("length")
    return Field(
        name=data["name"],
        esri_type=data.get("type") or "esriFieldTypeString",
        alias=alias if isinstance(alias, str) else None,
        length=int(length) if length is not None else None,
        nullable=data.get("nullable", True) is not False,
        domain=domain if isinstance(domain, dict) else None,
    )


def find_oid_field(fields: list[dict[str, Any]], declared: str | None) -> str | None:
    """The OID field's name: ``objectIdField`` if it names a field, else the field of type OID.

    A declared name is matched case-insensitively and by its unqualified part
    (``fid`` ↔ ``SHAPE.fid``) against the field list; the field list's spelling wins.
    """
    names = [str(f.get("name")) for f in fields]
    if isinstance(declared, str) and declared:
        for n in names:
            if n == declared or n.lower() == declared.lower():
                return n
        short = declared.rsplit(".", 1)[-1].lower()
        for n in names:
            if n.rsplit(".", 1)[-1].lower() == short:
                return n
    for f in fields:  # scan every field: the OID need not come first (Kent MI 10.22: index 11)
        if f.get("type") == "esriFieldTypeOID":
            return str(f.get("name"))
    return None


def parse_layer(url: str, data: Any) -> LayerInfo:
    """Parse layer JSON. Raises NotALayerError for a service, folder or other resource, and
    ArcGISError (see the module docstring) for metadata that cannot be a layer's."""
    if not isinstance(data, dict):
        raise NotALayerError(
            f"{url} answered {_short(data)} instead of layer JSON; give the URL of a layer, e.g. …/FeatureServer/0"
        )
    try:
        return _parse_layer(url, data)
    except (CRSError, ValueError, TypeError, OverflowError) as exc:
        # Anything the checks missed (a CRS PROJ chokes on …): a message, never a traceback.
        raise ArcGISError(f"layer {url} has metadata ags-etl cannot read ({exc}); {_FIX}") from exc


def _parse_layer(url: str, data: dict[str, Any]) -> LayerInfo:
    if "fields" not in data and ("layers" in data or "tables" in data or "services" in data or "folders" in data):
        listed = [item for key in ("layers", "tables") if isinstance(data.get(key), list) for item in data[key]]
        layers = [f"{lyr.get('id')} ({lyr.get('name')})" for lyr in listed if isinstance(lyr, dict)]
        hint = (
            f"it is a service with layers {', '.join(layers[:8])}; add the layer id, e.g. {url.rstrip('/')}/0"
            if layers
            else "give the URL of a layer, e.g. …/FeatureServer/0"
        )
        raise NotALayerError(f"{url} is not a layer: {hint}")
    layer_type = str(data.get("type") or ("Feature Layer" if data.get("geometryType") else "Table"))
    if layer_type.lower() not in LAYER_TYPES:
        raise NotALayerError(
            f"{url} is a {layer_type!r}, not a feature layer or table; give the URL of a layer, e.g. …/FeatureServer/0"
        )
    raw_fields = _fields(url, data.get("fields"))
    oid = find_oid_field(raw_fields, data.get("objectIdField"))
    fields = []
    for f in raw_fields:
        fld = _field(f)
        if fld.name == oid and fld.esri_type != "esriFieldTypeOID":
            fld = replace(fld, esri_type="esriFieldTypeOID", nullable=False)
        fields.append(fld)
    raw_extent = data.get("extent")
    extent_sr = raw_extent.get("spatialReference") if isinstance(raw_extent, dict) else None
    sr = next(
        (v for v in (data.get("sourceSpatialReference"), extent_sr, data.get("spatialReference")) if isinstance(v, dict) and v),
        None,
    )
    crs: CRS | None = crs_from_spatial_reference(sr) if sr is not None else None
    geometry_type = data.get("geometryType") or None
    if geometry_type is not None and not isinstance(geometry_type, str):
        raise ArcGISError(f"layer {url} has geometryType {_short(geometry_type)}, which is not a type name; {_FIX}")
    name = str(data.get("name") or url.rstrip("/").rsplit("/", 1)[-1])
    schema = LayerSchema(
        fields=tuple(fields),
        oid_field=oid,
        geometry_type=geometry_type,
        crs=crs,
        has_z=bool(data.get("hasZ")),
        has_m=bool(data.get("hasM")),
        name=name,
    )
    caps = {c.strip().lower() for c in str(data.get("capabilities") or "").split(",") if c.strip()}
    formats = {c.strip().lower() for c in str(data.get("supportedQueryFormats") or "").split(",") if c.strip()}
    edit_info = data.get("editFieldsInfo")
    edit_info = edit_info if isinstance(edit_info, dict) else {}
    return LayerInfo(
        url=url.rstrip("/"),
        name=name,
        layer_type=layer_type,
        schema=schema,
        current_version=_version(data.get("currentVersion")),
        max_record_count=_max_record_count(url, data.get("maxRecordCount")),
        supports_pagination=_flag(data, "supportsPagination"),
        supports_order_by=_flag(data, "supportsOrderBy") or bool(data.get("supportsAdvancedQueries")),
        supports_statistics=_flag(data, "supportsStatistics"),
        oid_is_hash=data.get("OIDFieldContainsHashValue") is True,
        capabilities=frozenset(caps),
        query_formats=frozenset(formats),
        extent=_extent(raw_extent),
        spatial_reference=sr,
        edit_date_field=_text_or_none(edit_info.get("editDateField")),
        global_id_field=_text_or_none(data.get("globalIdField")),
        raw=data,
    )
