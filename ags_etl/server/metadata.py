"""JSON of the catalog, service and layer resources, shaped like ArcGIS Server 10.8.1.

With ``pagination=False`` the layer imitates a 10.0 MapServer-era layer:
``currentVersion`` 10.0, ``supportsPagination: false``, no
``advancedQueryCapabilities``, ``supportsAdvancedQueries: false`` (no ORDER BY)
and ``supportedQueryFormats`` "JSON". ``supportsStatistics`` stays true because
statistics are served in that mode too.

Layers list the geometry field as ``Shape`` (``esriFieldTypeGeometry``), as
enterprise-geodatabase layers do; query answers never list it.

Editable layers (``--editable``, see edits.py) advertise what ArcGIS Server
advertises for an editable feature service with editor tracking:
``capabilities`` "Create,Delete,Query,Update,Editing", ``editFieldsInfo``
(``creationDateField``, ``creatorField``, ``editDateField``, ``editorField``),
``globalIdField``, ``hasGlobalIds``, ``supportsApplyEditsWithGlobalIds``,
``supportsRollbackOnFailureParameter`` and ``allowGeometryUpdates`` true, and each
field's ``editable`` (false for the OID, GlobalID and editor fields).
"""

from __future__ import annotations

from typing import Any

from ags_etl.server.options import ServerOptions
from ags_etl.server.storage import LayerStore

#: Capabilities of an editable layer or service, in the order ArcGIS lists them.
EDIT_CAPABILITIES = "Create,Delete,Query,Update,Editing"


def spatial_reference(store: LayerStore) -> dict[str, Any]:
    """The layer's ``spatialReference`` ({} when the source CRS is unknown)."""
    return dict(store.spatial_ref.esri) if store.spatial_ref is not None else {}


def extent(store: LayerStore) -> dict[str, Any] | None:
    """Envelope of all geometries with its spatialReference (nulls for an empty layer)."""
    if store.geometry_type is None:
        return None
    box = store.extent
    xmin, ymin, xmax, ymax = box if box is not None else (None, None, None, None)
    return {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax, "spatialReference": spatial_reference(store)}


def geometry_field_name(store: LayerStore) -> str:
    """``Shape``, or ``Shape_1``… when an attribute field already has that name."""
    taken = {f.name.lower() for f in store.fields}
    name, n = "Shape", 1
    while name.lower() in taken:
        name = f"Shape_{n}"
        n += 1
    return name


def display_field(store: LayerStore) -> str:
    """First string field (ArcGIS's default display field), else the OID field."""
    for f in store.fields:
        if f.esri_type == "esriFieldTypeString":
            return f.name
    return store.oid_field


def rest_info(options: ServerOptions, base_url: str) -> dict[str, Any]:
    """``/arcgis/rest/info``."""
    auth: dict[str, Any] = {"isTokenBasedSecurity": options.token_auth}
    if options.token_auth:
        auth["tokenServicesUrl"] = f"{base_url}/arcgis/tokens/generateToken"
        ttl_minutes = 60 if options.token_ttl is None else max(1, options.token_ttl // 60)
        auth["shortLivedTokenValidity"] = ttl_minutes
    return {
        "currentVersion": options.current_version,
        "fullVersion": options.full_version,
        "soapUrl": None,
        "secureSoapUrl": None,
        "authInfo": auth,
    }


def catalog(options: ServerOptions, stores: list[LayerStore]) -> dict[str, Any]:
    """``/arcgis/rest/services``: no folders, one FeatureServer per data file."""
    return {
        "currentVersion": options.current_version,
        "folders": [],
        "services": [{"name": s.name, "type": "FeatureServer"} for s in stores],
    }


def _layer_entry(store: LayerStore) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "id": 0,
        "name": store.name,
        "parentLayerId": -1,
        "defaultVisibility": True,
        "subLayerIds": None,
        "minScale": 0,
        "maxScale": 0,
    }
    if store.geometry_type is not None:
        entry["geometryType"] = store.geometry_type
    return entry


def service(options: ServerOptions, store: LayerStore) -> dict[str, Any]:
    """``/arcgis/rest/services/NAME/FeatureServer``."""
    is_table = store.geometry_type is None
    out: dict[str, Any] = {
        "currentVersion": options.current_version,
        "serviceDescription": "",
        "hasVersionedData": False,
        "supportsDisconnectedEditing": False,
        "hasStaticData": True,
        "maxRecordCount": options.max_record_count,
        "supportedQueryFormats": "JSON, geoJSON, PBF" if options.pagination else "JSON",
        "capabilities": EDIT_CAPABILITIES if store.editable else "Query",
        "description": f"Served by ags-etl from {store.source_file}",
        "copyrightText": "",
        "allowGeometryUpdates": store.editable,
        "supportsApplyEditsWithGlobalIds": store.editable,
        "syncEnabled": False,
        "layers": [] if is_table else [_layer_entry(store)],
        "tables": [_layer_entry(store)] if is_table else [],
    }
    if not is_table:
        ext = extent(store)
        out["spatialReference"] = spatial_reference(store)
        out["initialExtent"] = ext
        out["fullExtent"] = ext
        if store.spatial_ref is not None:
            out["units"] = store.spatial_ref.esri_units
    return out


def layer(options: ServerOptions, store: LayerStore) -> dict[str, Any]:
    """``/arcgis/rest/services/NAME/FeatureServer/0``."""
    is_table = store.geometry_type is None
    fields = [f.to_esri() for f in store.fields]
    system = store.edit_fields
    if system is not None:
        fixed = {store.oid_field, *system.names}
        for entry in fields:
            entry["editable"] = entry["name"] not in fixed
    if not is_table:
        fields.append(
            {"name": geometry_field_name(store), "type": "esriFieldTypeGeometry", "alias": "Shape", "domain": None}
        )
    out: dict[str, Any] = {
        "currentVersion": options.current_version,
        "id": 0,
        "name": store.name,
        "type": "Table" if is_table else "Feature Layer",
        "description": "",
        "copyrightText": "",
        "defaultVisibility": True,
        "parentLayer": None,
        "subLayers": [],
        "minScale": 0,
        "maxScale": 0,
        "displayField": display_field(store),
        "typeIdField": None,
        "types": [],
        "templates": [],
        "relationships": [],
        "hasAttachments": False,
        "htmlPopupType": "esriServerHTMLPopupTypeNone",
        "canModifyLayer": False,
        "canScaleSymbols": False,
        "hasLabels": False,
        "capabilities": EDIT_CAPABILITIES if store.editable else "Query",
        "maxRecordCount": options.max_record_count,
        "supportsStatistics": True,
        "supportsAdvancedQueries": options.pagination,
        "supportedQueryFormats": "JSON, geoJSON, PBF" if options.pagination else "JSON",
        "isDataVersioned": False,
        "useStandardizedQueries": True,
        "supportsPagination": options.pagination,
        "objectIdField": store.oid_field,
        "globalIdField": system.global_id if system is not None else "",
        "hasGlobalIds": system is not None,
        "editFieldsInfo": None
        if system is None
        else {
            "creationDateField": system.creation_date,
            "creatorField": system.creator,
            "editDateField": system.edit_date,
            "editorField": system.editor,
        },
        "supportsApplyEditsWithGlobalIds": system is not None,
        "fields": fields,
        "hasZ": store.has_z,
        "hasM": False,
        "allowGeometryUpdates": system is not None,
        "supportsRollbackOnFailureParameter": system is not None,
        "supportsCoordinatesQuantization": False,
    }
    if not is_table:
        out["geometryType"] = store.geometry_type
        out["extent"] = extent(store)
        out["geometryField"] = {"name": geometry_field_name(store), "type": "esriFieldTypeGeometry"}
    if options.pagination:
        out["advancedQueryCapabilities"] = {
            "supportsPagination": True,
            "supportsQueryWithDistance": False,
            "supportsReturningQueryExtent": True,
            "supportsStatistics": True,
            "supportsOrderBy": True,
            "supportsDistinct": False,
            "supportsQueryWithResultType": False,
            "supportsSqlExpression": True,
            "supportsAdvancedQueryRelated": False,
            "supportsCountDistinct": False,
            "supportsReturningGeometryCentroid": False,
            "supportsQueryWithDatumTransformation": False,
            "supportsHavingClause": False,
            "supportsOutFieldSQLExpression": False,
        }
    return out


def layers(options: ServerOptions, store: LayerStore) -> dict[str, Any]:
    """``/arcgis/rest/services/NAME/FeatureServer/layers``: the layer (or table) in full."""
    body = layer(options, store)
    if store.geometry_type is None:
        return {"layers": [], "tables": [body]}
    return {"layers": [body], "tables": []}
