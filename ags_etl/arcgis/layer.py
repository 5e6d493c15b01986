"""Layer metadata (``<layer>?f=json``) → :class:`LayerInfo`, with real-server quirks (pure).

Quirks handled (../shared/notes/arcgis-rest.md §1, §12):

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
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from pyproj import CRS

from ags_etl.crs import crs_from_spatial_reference
from ags_etl.errors import NotALayerError
from ags_etl.schema import Field, LayerSchema

LAYER_TYPES = frozenset({"feature layer", "table", "layer", "annotation layer", "dimension layer"})


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


def _version(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _flag(data: dict[str, Any], name: str) -> bool:
    adv = data.get("advancedQueryCapabilities") or {}
    value = adv.get(name)
    if value is None:
        value = data.get(name)
    return bool(value)


def find_oid_field(fields: list[dict[str, Any]], declared: str | None) -> str | None:
    """The OID field's name: ``objectIdField`` if it names a field, else the field of type OID.

    A declared name is matched case-insensitively and by its unqualified part
    (``fid`` ↔ ``SHAPE.fid``) against the field list; the field list's spelling wins.
    """
    names = [str(f.get("name")) for f in fields]
    if declared:
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


def parse_layer(url: str, data: dict[str, Any]) -> LayerInfo:
    """Parse layer JSON. Raises NotALayerError for a service, folder or other resource."""
    if "fields" not in data and ("layers" in data or "tables" in data or "services" in data or "folders" in data):
        layers = [f"{lyr.get('id')} ({lyr.get('name')})" for lyr in (data.get("layers") or []) + (data.get("tables") or [])]
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
    raw_fields = [f for f in (data.get("fields") or []) if isinstance(f, dict) and f.get("name")]
    oid = find_oid_field(raw_fields, data.get("objectIdField"))
    fields = []
    for f in raw_fields:
        fld = Field.from_esri(f)
        if fld.name == oid and fld.esri_type != "esriFieldTypeOID":
            fld = replace(fld, esri_type="esriFieldTypeOID", nullable=False)
        fields.append(fld)
    sr = data.get("sourceSpatialReference") or (data.get("extent") or {}).get("spatialReference") or data.get(
        "spatialReference"
    )
    crs: CRS | None = crs_from_spatial_reference(sr) if isinstance(sr, dict) else None
    geometry_type = data.get("geometryType") or None
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
    mrc = data.get("maxRecordCount")
    caps = {c.strip().lower() for c in str(data.get("capabilities") or "").split(",") if c.strip()}
    formats = {c.strip().lower() for c in str(data.get("supportedQueryFormats") or "").split(",") if c.strip()}
    edit_info = data.get("editFieldsInfo") or {}
    return LayerInfo(
        url=url.rstrip("/"),
        name=name,
        layer_type=layer_type,
        schema=schema,
        current_version=_version(data.get("currentVersion")),
        max_record_count=int(mrc) if mrc is not None and int(mrc) > 0 else None,
        supports_pagination=_flag(data, "supportsPagination"),
        supports_order_by=_flag(data, "supportsOrderBy") or bool(data.get("supportsAdvancedQueries")),
        supports_statistics=_flag(data, "supportsStatistics"),
        oid_is_hash=bool(data.get("OIDFieldContainsHashValue")),
        capabilities=frozenset(caps),
        query_formats=frozenset(formats),
        extent=data.get("extent"),
        spatial_reference=sr if isinstance(sr, dict) else None,
        edit_date_field=edit_info.get("editDateField"),
        global_id_field=data.get("globalIdField") or None,
        raw=data,
    )
