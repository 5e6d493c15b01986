"""Edits on the local FeatureServer (``ags-etl serve --editable``): applyEdits and its kin.

Operations (POST only; a GET gets ``{"error": {"code": 405, …}}``; a server without
``--editable`` answers 400 "Requested operation is not supported by this service.")::

    …/FeatureServer/<id>/applyEdits      adds, updates, deletes, rollbackOnFailure, useGlobalIds
    …/FeatureServer/<id>/addFeatures     features, rollbackOnFailure
    …/FeatureServer/<id>/updateFeatures  features, rollbackOnFailure
    …/FeatureServer/<id>/deleteFeatures  objectIds and/or where, rollbackOnFailure
    …/FeatureServer/applyEdits           edits=[{id, adds, updates, deletes}], rollbackOnFailure, useGlobalIds

Answers have ArcGIS's shape (docs/reference/arcgis-rest.md §11): layer operations
``{"addResults": [...], "updateResults": [...], "deleteResults": [...]}`` (the single
operations only their own list), the service operation a list of
``{"id", "addResults", "updateResults", "deleteResults"}``. Each result is
``{"objectId", "globalId", "success": true}`` or ``{"objectId", "globalId",
"success": false, "error": {"code", "description"}}`` (``objectId`` null for a
failed add; ``globalId`` null when unknown).

Codes: 1000 for a value that cannot be stored (unknown field, wrong type, text
longer than the field's ``length``, null in a non-nullable field, a number out of
the field's range, an invalid geometry or one of another type than the layer's,
a duplicate GlobalID, an update without an object id); 1019 for an update or
delete of an object that does not exist ("Object is missing").

``rollbackOnFailure`` (default true): every request is one SQLite transaction per
layer. With true, the first failing edit rolls the whole request back and the
answer is ArcGIS's top-level error ``{"error": {"code": 400, "message": "Unable to
complete operation.", "details": ["Operation rolled back.", "<which edit failed and
why>"]}}`` — what ArcGIS Server answers then (§11: "one failure fails the call";
the arcgislayers#259 answer shows these details). With false, the good edits are
committed and each failure is reported in its result.

Editing is done in this order within a layer: adds, updates, deletes (ArcGIS's
order). OIDs and the editor-tracking fields in a client's attributes are ignored
(the server sets them: ``CreationDate``/``Creator`` on add, ``EditDate``/``Editor``
on add and update, dates in epoch ms, the user being the token user or
``ags-etl``). GlobalIDs sent with adds are kept only with ``useGlobalIds=true``;
otherwise new ones are generated. With ``useGlobalIds=true`` updates name their
feature by GlobalID (attribute) and deletes are GlobalIDs.

Several layers (service ``applyEdits``): each layer has its own SQLite file.
Every involved layer's write lock is taken (in path order, so two requests
cannot deadlock) and a transaction opened on each; the edits run layer by layer
in the order given; only when all succeeded (or rollbackOnFailure is false) are
the transactions committed, one after the other. A failure rolls all back.
(A crash between two of the final COMMITs could leave one layer committed: a
window of microseconds this test server accepts.)

Where clauses of ``deleteFeatures`` go through the read guard (where.py) and run
only on a guarded read connection (read-only, authorizer) to list the ids; the
write connection executes only this module's own statements, with bind values.

Validation (:func:`prepare_feature`, :func:`check_value`) is pure; the writes are in
:func:`apply`.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import re
import sqlite3
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import shapely

from ags_etl.arcgis.esrijson import decode_geometry
from ags_etl.errors import GeometryError
from ags_etl.schema import Field
from ags_etl.server import spatialref
from ags_etl.server import where as where_sql
from ags_etl.server.catalog import LAYER_EDITS, SERVICE_EDITS
from ags_etl.server.options import ServerOptions
from ags_etl.server.protocol import QUERY_FAILED, Params, RestError, invalid_parameter
from ags_etl.server.storage import (
    TABLE,
    WKB,
    XMAX,
    XMIN,
    YMAX,
    YMIN,
    LayerStore,
    new_global_id,
    quote,
)

#: Layer operations and the service operation, as they appear (lower case) in URLs.
LAYER_OPERATIONS = LAYER_EDITS
SERVICE_OPERATION = SERVICE_EDITS

CODE_INVALID = 1000
CODE_MISSING = 1019
ROLLED_BACK = "Operation rolled back."

_INT_RANGES = {
    "esriFieldTypeSmallInteger": (-(2**15), 2**15 - 1),
    "esriFieldTypeInteger": (-(2**31), 2**31 - 1),
    "esriFieldTypeBigInteger": (-(2**63), 2**63 - 1),
    "esriFieldTypeDate": (-(2**63), 2**63 - 1),
}
_TEXT_TYPES = ("esriFieldTypeString", "esriFieldTypeGUID")
_REAL_TYPES = ("esriFieldTypeSingle", "esriFieldTypeDouble")
_GUID = re.compile(r"\{?[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}?")
#: Geometry kinds (shapely type ids) each layer type accepts; a point layer may hold multipoints (sources.py).
_ACCEPTS = {
    "esriGeometryPoint": (0, 4),
    "esriGeometryMultipoint": (4,),
    "esriGeometryPolyline": (1, 5),
    "esriGeometryPolygon": (3, 6),
}


class EditFailure(Exception):
    """One edit that cannot be applied: ArcGIS's per-edit ``error`` {code, description}."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(description)
        self.code = code
        self.description = description


@dataclass
class Prepared:
    """A validated add or update: column values to write (by field name), and the geometry
    columns when the geometry is to be written."""

    values: dict[str, Any]
    set_geometry: bool = False
    wkb: bytes | None = None
    bounds: tuple[float, float, float, float] | None = None
    #: The object the update targets (OID, or GlobalID with useGlobalIds); None for adds.
    target: int | str | None = None
    #: GlobalID an add keeps (useGlobalIds); None: generate one.
    global_id: str | None = None


@dataclass
class LayerEdits:
    """The edits of one layer in one request, as sent (validated when applied)."""

    store: LayerStore
    layer_id: int
    adds: list[Any] = field(default_factory=list)
    updates: list[Any] = field(default_factory=list)
    deletes: list[Any] = field(default_factory=list)
    #: deleteFeatures by where: the guarded SQL expression (ids are looked up under the write lock).
    delete_where: str | None = None


@dataclass
class LayerResults:
    add_results: list[dict[str, Any]] = field(default_factory=list)
    update_results: list[dict[str, Any]] = field(default_factory=list)
    delete_results: list[dict[str, Any]] = field(default_factory=list)
    added: int = 0
    deleted: int = 0
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r["success"] for r in self.add_results + self.update_results + self.delete_results)


@dataclass
class EditAnswer:
    """The body of an edit request and whether it committed a change (faults act only then)."""

    body: Any
    committed: bool


class _RollBack(Exception):
    """A failure with rollbackOnFailure=true: the whole request is undone."""

    def __init__(self, what: str, failure: EditFailure) -> None:
        super().__init__(failure.description)
        self.what = what
        self.failure = failure


# --------------------------------------------------------------------------- validation (pure)


def check_value(fld: Field, value: Any) -> Any:
    """The value to store for ``fld`` (dates as epoch ms); raises EditFailure(1000) naming the field."""
    if value is None:
        if not fld.nullable:
            raise EditFailure(CODE_INVALID, f"Field {fld.name!r} does not accept null; send a value")
        return None
    kind = fld.esri_type
    if kind in _TEXT_TYPES:
        if not isinstance(value, str):
            raise EditFailure(CODE_INVALID, f"Field {fld.name!r} holds text; got {_show(value)}")
        if fld.length is not None and len(value) > fld.length:
            raise EditFailure(
                CODE_INVALID,
                f"Field {fld.name!r} holds at most {fld.length} characters; the value has {len(value)}: shorten it",
            )
        return value
    if kind in _INT_RANGES:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            what = "a date (epoch milliseconds)" if kind == "esriFieldTypeDate" else "whole numbers"
            raise EditFailure(CODE_INVALID, f"Field {fld.name!r} holds {what}; got {_show(value)}")
        low, high = _INT_RANGES[kind]
        if not low <= value <= high:
            raise EditFailure(CODE_INVALID, f"Field {fld.name!r} holds {low}..{high}; got {value}")
        return value
    if kind in _REAL_TYPES:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise EditFailure(CODE_INVALID, f"Field {fld.name!r} holds numbers; got {_show(value)}")
        number = float(value)
        if not math.isfinite(number):
            raise EditFailure(CODE_INVALID, f"Field {fld.name!r} holds finite numbers; got {value}")
        return number
    raise EditFailure(CODE_INVALID, f"Field {fld.name!r} ({kind}) cannot be edited on this server")


def _show(value: Any, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _global_id(value: Any) -> str:
    """A GlobalID as stored (``{UPPER}``); EditFailure(1000) for anything else."""
    if not isinstance(value, str) or _GUID.fullmatch(value.strip()) is None:
        raise EditFailure(CODE_INVALID, f"GlobalID {_show(value)} is not a GUID like '{{0D3A…-…}}'")
    return "{" + value.strip().strip("{}").upper() + "}"


def _geometry(store: LayerStore, value: Any) -> tuple[bytes | None, tuple[float, float, float, float] | None]:
    """An Esri JSON geometry of the layer's type → (ISO WKB, envelope), (None, None) for null."""
    if value is None:
        return None, None
    if store.geometry_type is None:
        raise EditFailure(CODE_INVALID, "Invalid geometry: this layer is a table; send features without geometry")
    try:
        geom = decode_geometry(value, store.geometry_type, has_z=store.has_z)
    except GeometryError as exc:
        raise EditFailure(CODE_INVALID, f"Invalid geometry: {exc}") from exc
    if geom is None:
        return None, None
    if shapely.get_type_id(geom) not in _ACCEPTS.get(store.geometry_type, ()):
        raise EditFailure(CODE_INVALID, f"Invalid geometry: a {geom.geom_type} in a {store.geometry_type} layer")
    sr_value = value.get("spatialReference") if isinstance(value, dict) else None
    if sr_value is not None and store.spatial_ref is not None:
        try:
            source = spatialref.parse(sr_value, "spatialReference")
        except RestError as exc:
            raise EditFailure(CODE_INVALID, f"Invalid geometry: unknown spatialReference {_show(sr_value)}") from exc
        if source.key != store.spatial_ref.key:
            array = np.array([geom], dtype=object)
            geom = spatialref.transform_geometries(array, source, store.spatial_ref, include_z=store.has_z)[0]
    coords = shapely.get_coordinates(geom)
    if not np.isfinite(coords).all():
        raise EditFailure(CODE_INVALID, "Invalid geometry: coordinates must be finite numbers")
    xmin, ymin, xmax, ymax = (float(v) for v in shapely.bounds(geom))
    wkb = shapely.to_wkb(geom, output_dimension=3 if store.has_z else 2, flavor="iso")
    return wkb, (xmin, ymin, xmax, ymax)


@dataclass(frozen=True)
class _Schema:
    """What validating a feature needs of a layer, looked up once per request."""

    by_name: dict[str, Field]
    #: Lower-case names of the editor-tracking fields (the server's, ignored when sent).
    tracking: frozenset[str]
    #: Attribute fields a client may write, in table order (an add sends null for those it leaves out).
    writable: tuple[Field, ...]

    @classmethod
    def of(cls, store: LayerStore) -> _Schema:
        system = store.edit_fields
        assert system is not None
        tracking = frozenset(n.lower() for n in system.names[1:])
        writable = tuple(
            f for f in store.fields[1:] if f.name.lower() not in tracking and f.name != system.global_id
        )
        return cls({f.name.strip().lower(): f for f in store.fields}, tracking, writable)


def _prepare_attributes(
    store: LayerStore, schema: _Schema, feature: Any, *, is_add: bool, use_global_ids: bool
) -> Prepared:
    """The attribute part of :func:`prepare_feature` (geometry left unset)."""
    if not isinstance(feature, dict):
        raise EditFailure(CODE_INVALID, f"expected a feature object {{attributes, geometry}}, got {_show(feature)}")
    attributes = feature.get("attributes") or {}
    if not isinstance(attributes, dict):
        raise EditFailure(CODE_INVALID, f"'attributes' must be an object, got {_show(attributes)}")
    system = store.edit_fields
    assert system is not None
    out = Prepared(values={})
    for key, value in attributes.items():
        fld = schema.by_name.get(str(key).strip().lower())
        if fld is None:
            raise EditFailure(CODE_INVALID, f"Field {key!r} does not exist in layer {store.name!r}")
        if fld.name == store.oid_field:
            if not is_add and not use_global_ids:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise EditFailure(CODE_INVALID, f"{store.oid_field} {_show(value)} is not an object id")
                out.target = value
            continue  # ArcGIS assigns OIDs itself
        if fld.name == system.global_id:
            if use_global_ids:
                gid = _global_id(value)
                if is_add:
                    out.global_id = gid
                else:
                    out.target = gid
            continue
        if fld.name.lower() in schema.tracking:
            continue  # editor tracking is the server's
        out.values[fld.name] = check_value(fld, value)
    if is_add:
        for fld in schema.writable:
            if fld.name not in out.values:
                out.values[fld.name] = check_value(fld, None)
    elif out.target is None:
        key_name = system.global_id if use_global_ids else store.oid_field
        raise EditFailure(CODE_INVALID, f"an update needs the feature's {key_name} in its attributes")
    return out


def prepare_feature(store: LayerStore, feature: Any, *, is_add: bool, use_global_ids: bool) -> Prepared:
    """Validate one feature of an add or update against the layer; raises EditFailure.

    Field names match case-insensitively. An add gets null for the fields it leaves
    out (refused for non-nullable ones); an update changes only the fields it sends,
    and its geometry only when it sends one.
    """
    out = _prepare_attributes(store, _Schema.of(store), feature, is_add=is_add, use_global_ids=use_global_ids)
    if is_add or "geometry" in feature:
        out.wkb, out.bounds = _geometry(store, feature.get("geometry"))
        out.set_geometry = True
    return out


def prepare_features(
    store: LayerStore, features: list[Any], *, is_add: bool, use_global_ids: bool
) -> list[Prepared | EditFailure]:
    """:func:`prepare_feature` for each feature of a request, in order: the Prepared, or the
    EditFailure that feature raises. The same answers, but plain points (the bulk of large
    loads) are decoded, checked, reprojected and encoded together (:func:`_point_geometries`)."""
    schema = _Schema.of(store)
    out: list[Prepared | EditFailure] = []
    with_geometry: list[int] = []
    for i, feature in enumerate(features):
        try:
            out.append(_prepare_attributes(store, schema, feature, is_add=is_add, use_global_ids=use_global_ids))
        except EditFailure as failure:
            out.append(failure)
            continue
        if is_add or "geometry" in feature:
            with_geometry.append(i)
    values = [features[i].get("geometry") for i in with_geometry]
    decoded = _point_geometries(store, values)
    for i, value, fast in zip(with_geometry, values, decoded, strict=True):
        prepared = out[i]
        assert isinstance(prepared, Prepared)
        try:
            prepared.wkb, prepared.bounds = fast if fast is not None else _geometry(store, value)
        except EditFailure as failure:
            out[i] = failure
            continue
        prepared.set_geometry = True
    return out


#: Python types of a coordinate the bulk point path takes (bool is not int here: ``type(True) is bool``).
_PLAIN_NUMBERS = (int, float)


def _point_geometries(
    store: LayerStore, values: list[Any]
) -> list[tuple[bytes, tuple[float, float, float, float]] | None]:
    """(ISO WKB, envelope) of each plain point of a point layer, decoded in bulk; None for every
    other value, which :func:`_geometry` then handles one by one (and names its problem).

    A plain point is ``{"x": number, "y": number}`` (with a number ``z`` when the layer has Z),
    with no spatialReference or one that parses; those in another spatial reference than the
    layer's are reprojected together. A point whose coordinates are (or become) infinite or
    NaN is left to the careful path too.
    """
    out: list[tuple[bytes, tuple[float, float, float, float]] | None] = [None] * len(values)
    if store.geometry_type != "esriGeometryPoint" or not values:
        return out
    keys = ("x", "y", "z") if store.has_z else ("x", "y")
    #: spatialReference JSON text → parsed (None: the layer's own, or the layer has none).
    refs: dict[bytes, spatialref.SpatialRef | None] = {}
    groups: dict[bytes, list[int]] = {}
    for i, value in enumerate(values):
        if type(value) is not dict or any(type(value.get(k)) not in _PLAIN_NUMBERS for k in keys):
            continue
        sr_value = value.get("spatialReference")
        ref_key = b"" if sr_value is None or store.spatial_ref is None else orjson.dumps(sr_value)
        if ref_key not in refs:
            try:
                parsed = None if ref_key == b"" else spatialref.parse(sr_value, "spatialReference")
            except RestError:
                parsed = None
                ref_key = b"?"  # unknown: the careful path reports it
            refs[ref_key] = parsed if parsed is None or store.spatial_ref is None or parsed.key != store.spatial_ref.key else None
        if ref_key != b"?":
            groups.setdefault(ref_key, []).append(i)
    for ref_key, rows in groups.items():
        try:
            coords = np.array([[values[i][k] for k in keys] for i in rows], dtype=float)
        except OverflowError:  # an int beyond the float range: the careful path names it
            continue
        geoms = shapely.points(coords)
        source = refs[ref_key]
        if source is not None:
            assert store.spatial_ref is not None
            try:
                geoms = spatialref.transform_geometries(geoms, source, store.spatial_ref, include_z=store.has_z)
            except RestError:
                continue  # the careful path answers as it always did
            coords = shapely.get_coordinates(geoms, include_z=store.has_z)
        finite = np.isfinite(coords).all(axis=1)
        wkb = shapely.to_wkb(geoms, output_dimension=3 if store.has_z else 2, flavor="iso").tolist()
        xy = coords[:, :2].tolist()
        for j, i in enumerate(rows):
            if finite[j]:
                x, y = xy[j]
                out[i] = (wkb[j], (x, y, x, y))
    return out


# --------------------------------------------------------------------------- parameters


def _json_list(params: Params, name: str) -> list[Any]:
    value = params.json(name)
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid_parameter(name, "expected a JSON list")
    return value


def _id_list(params: Params, name: str, use_global_ids: bool) -> list[Any]:
    """``deletes``/``objectIds``: "1,2,3" or a JSON list; GlobalIDs with useGlobalIds."""
    raw = params.get(name)
    if raw is None:
        return []
    text = raw.strip()
    if text.startswith("["):
        items = params.json(name)
        assert isinstance(items, list)
    else:
        items = [part.strip() for part in text.split(",") if part.strip()]
    if use_global_ids:
        return [str(item) for item in items]
    ids: list[Any] = []
    for item in items:
        number = as_object_id(item)
        if number is None:
            raise invalid_parameter(name, f"{_show(item)} is not an object id")
        ids.append(number)
    return ids


def as_object_id(value: Any) -> int | None:
    """An object id from JSON or text (``7``, ``"7"``, ``7.0``), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d+\s*", value):
        return int(value)
    return None


_DISPLAY = {"applyedits": "applyEdits", "addfeatures": "addFeatures", "updatefeatures": "updateFeatures",
            "deletefeatures": "deleteFeatures"}  # fmt: skip


def _check_method(method: str, operation: str) -> None:
    if method != "POST":
        name = _DISPLAY.get(operation, operation)
        raise RestError(405, "Method not supported.", [f"{name} is POST only; send the parameters in a POST body"])


def _check_editable(store: LayerStore) -> None:
    if not store.editable:
        raise RestError(
            400,
            "Requested operation is not supported by this service.",
            ["The layer is read-only: start ags-etl serve with --editable to allow edits."],
        )


def parse_layer_request(store: LayerStore, layer_id: int, operation: str, params: Params) -> LayerEdits:
    """The edits of a layer operation (``operation`` lower case, one of LAYER_OPERATIONS)."""
    use_gids = params.flag("useGlobalIds", False)
    edits = LayerEdits(store, layer_id)
    if operation == "applyedits":
        edits.adds = _json_list(params, "adds")
        edits.updates = _json_list(params, "updates")
        edits.deletes = _id_list(params, "deletes", use_gids)
    elif operation == "addfeatures":
        edits.adds = _json_list(params, "features")
    elif operation == "updatefeatures":
        edits.updates = _json_list(params, "features")
    else:
        if params.get("geometry") is not None:
            raise invalid_parameter("geometry", "deleting by geometry is not supported by this server; use where")
        edits.deletes = _id_list(params, "objectIds", False)
        where_text = params.get("where")
        if where_text is None and not edits.deletes:
            raise invalid_parameter("where", "deleteFeatures needs objectIds or where")
        if where_text is not None:
            edits.delete_where = (
                "1=1"
                if where_sql.is_everything(where_text)
                else where_sql.rewrite(where_text, [f.name for f in store.fields])
            )
    return edits


# --------------------------------------------------------------------------- writing


def _result(oid: int | None, gid: str | None, failure: EditFailure | None = None) -> dict[str, Any]:
    if failure is None:
        return {"objectId": oid, "globalId": gid, "success": True}
    return {
        "objectId": oid,
        "globalId": gid,
        "success": False,
        "error": {"code": failure.code, "description": failure.description},
    }


def _missing(store: LayerStore, target: Any, by_gid: bool) -> EditFailure:
    what = "GlobalID" if by_gid else store.oid_field
    return EditFailure(CODE_MISSING, f"Object is missing: layer {store.name!r} has no feature with {what} {target}")


def _geometry_columns(prepared: Prepared) -> dict[str, Any]:
    if not prepared.set_geometry:
        return {}
    xmin, ymin, xmax, ymax = prepared.bounds if prepared.bounds is not None else (None, None, None, None)
    return {WKB: prepared.wkb, XMIN: xmin, YMIN: ymin, XMAX: xmax, YMAX: ymax}


def _where_ids(store: LayerStore, expression: str, options: ServerOptions) -> list[int]:
    """Ids matching a guarded where expression, read on a guarded (read-only) connection."""
    from ags_etl.server.query import (
        time_limit_error,  # query imports much; only deletes by where need it
    )

    oid = quote(store.oid_field)
    with store.reader(time.monotonic() + options.query_timeout) as reader:
        try:
            rows = reader.conn.execute(f"SELECT {oid} FROM {TABLE} WHERE ({expression}) ORDER BY {oid}").fetchall()
        except (sqlite3.Error, OverflowError) as exc:
            if reader.timed_out:
                raise time_limit_error(options.query_timeout) from exc
            raise RestError(400, QUERY_FAILED, [f"'where' parameter is invalid: {exc}"]) from exc
    return [int(r[0]) for r in rows]


#: Bind values per look-up statement (SQLite builds before 3.32 allow 999 in all).
_LOOKUP_CHUNK = 500
_INT64 = (-(2**63), 2**63 - 1)


def _lookup_key(target: Any, by_gid: bool) -> int | str | None:
    """The value a target is stored under (GlobalIDs normalised); None when none can match."""
    if by_gid:
        try:
            return _global_id(target)
        except EditFailure:
            return None
    if isinstance(target, bool) or not isinstance(target, int) or not _INT64[0] <= target <= _INT64[1]:
        return None
    return target


def _lookup(
    conn: sqlite3.Connection, store: LayerStore, keys: list[int | str | None], by_gid: bool
) -> dict[int | str, tuple[int, str]]:
    """(OID, GlobalID) of the features stored under ``keys`` (OIDs, or normalised GlobalIDs),
    by key; absent keys are missing from the answer. One indexed statement per chunk."""
    assert store.edit_fields is not None
    oid_col, gid_col = quote(store.oid_field), quote(store.edit_fields.global_id)
    key_col = gid_col if by_gid else oid_col
    wanted = list(dict.fromkeys(k for k in keys if k is not None))
    found: dict[int | str, tuple[int, str]] = {}
    for a in range(0, len(wanted), _LOOKUP_CHUNK):
        chunk = wanted[a : a + _LOOKUP_CHUNK]
        sql = f"SELECT {oid_col}, {gid_col} FROM {TABLE} WHERE {key_col} IN ({', '.join('?' * len(chunk))})"
        for oid, gid in conn.execute(sql, chunk):
            found[str(gid) if by_gid else int(oid)] = (int(oid), str(gid))
    return found


def _next_oid(conn: sqlite3.Connection, store: LayerStore) -> int:
    """The OID AUTOINCREMENT would give the next row: one past the largest ever used."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (TABLE,)).fetchone()
    (top,) = conn.execute(f"SELECT max({quote(store.oid_field)}) FROM {TABLE}").fetchone()
    return max(0 if row is None or row[0] is None else int(row[0]), 0 if top is None else int(top)) + 1


def _insert_adds(
    conn: sqlite3.Connection, store: LayerStore, adds: list[Prepared], *, user: str, now_ms: int
) -> list[tuple[int | None, str, EditFailure | None]]:
    """Insert validated adds in order; (OID, GlobalID, None) for each one stored, (None,
    GlobalID, EditFailure) for each one refused.

    One ``executemany`` with the OIDs AUTOINCREMENT would hand out (consecutive, above any
    ever used). Should a GlobalID be taken (the unique index refuses it), the statement is
    undone to its savepoint and the adds go in one by one, so each one's fate is known.
    """
    system = store.edit_fields
    assert system is not None
    if not adds:
        return []
    schema = _Schema.of(store)
    names = [store.oid_field, *(f.name for f in schema.writable), *system.names, WKB, XMIN, YMIN, XMAX, YMAX]
    sql = f"INSERT INTO {TABLE} ({', '.join(quote(n) for n in names)}) VALUES ({', '.join('?' * len(names))})"
    gids = [p.global_id if p.global_id is not None else new_global_id() for p in adds]
    first = _next_oid(conn, store)
    none_box = (None, None, None, None)
    rows = [
        (
            first + k,
            *[p.values[f.name] for f in schema.writable],
            gid, now_ms, user, now_ms, user,
            p.wkb,
            *(p.bounds if p.bounds is not None else none_box),
        )
        for k, (p, gid) in enumerate(zip(adds, gids, strict=True))
    ]  # fmt: skip
    conn.execute("SAVEPOINT adds")
    try:
        conn.executemany(sql, rows)
    except sqlite3.IntegrityError:
        conn.execute("ROLLBACK TO adds")
        conn.execute("RELEASE adds")
        return [_insert_one(conn, store, p, gid, user=user, now_ms=now_ms) for p, gid in zip(adds, gids, strict=True)]
    conn.execute("RELEASE adds")
    return [(first + k, gid, None) for k, gid in enumerate(gids)]


def _insert_one(
    conn: sqlite3.Connection, store: LayerStore, prepared: Prepared, gid: str, *, user: str, now_ms: int
) -> tuple[int | None, str, EditFailure | None]:
    """Insert one add (OID by AUTOINCREMENT); EditFailure(1000) when its GlobalID is taken."""
    system = store.edit_fields
    assert system is not None
    values = dict(prepared.values)
    values.update({system.global_id: gid, system.creation_date: now_ms, system.creator: user})
    values.update({system.edit_date: now_ms, system.editor: user})
    values.update(_geometry_columns(prepared))
    names = ", ".join(quote(n) for n in values)
    try:
        cursor = conn.execute(
            f"INSERT INTO {TABLE} ({names}) VALUES ({', '.join('?' * len(values))})", list(values.values())
        )
    except sqlite3.IntegrityError as exc:
        return None, gid, EditFailure(CODE_INVALID, f"GlobalID {gid} is taken by another feature ({exc})")
    return cursor.lastrowid, gid, None


def apply(
    conn: sqlite3.Connection,
    edits: LayerEdits,
    *,
    rollback: bool,
    use_global_ids: bool,
    user: str,
    now_ms: int,
    options: ServerOptions,
) -> LayerResults:
    """Apply one layer's edits inside the caller's open transaction on ``conn``.

    Raises _RollBack at the first failure when ``rollback``; otherwise failures are
    reported in the results and the other edits applied.

    The work is proportional to the edits of the request, not to the layer: features
    are validated in bulk, objects looked up by key in chunks, and each kind of edit
    written with ``executemany`` (updates: one per run of updates setting the same columns).
    """
    store = edits.store
    system = store.edit_fields
    assert system is not None
    out = LayerResults()

    def fail(kind: str, index: int, failure: EditFailure, oid: int | None, gid: str | None) -> dict[str, Any]:
        if rollback:
            raise _RollBack(f"{kind}[{index}] of layer {edits.layer_id}", failure)
        return _result(oid, gid, failure)

    # adds
    prepared_adds = prepare_features(store, edits.adds, is_add=True, use_global_ids=use_global_ids)
    good = [p for p in prepared_adds if isinstance(p, Prepared)]
    inserted = iter(_insert_adds(conn, store, good, user=user, now_ms=now_ms))
    for i, prepared in enumerate(prepared_adds):
        if isinstance(prepared, EditFailure):
            out.add_results.append(fail("adds", i, prepared, None, None))
            continue
        oid, gid, taken = next(inserted)
        if taken is not None:
            out.add_results.append(fail("adds", i, taken, None, gid))
            continue
        out.added += 1
        if prepared.bounds is not None:
            out.boxes.append(prepared.bounds)
        out.add_results.append(_result(oid, gid))

    # updates (after the adds: an update may name a feature added by this request)
    prepared_updates = prepare_features(store, edits.updates, is_add=False, use_global_ids=use_global_ids)
    keys = [_lookup_key(p.target, use_global_ids) if isinstance(p, Prepared) else None for p in prepared_updates]
    found = _lookup(conn, store, keys, use_global_ids)
    writes: list[tuple[tuple[str, ...], list[Any]]] = []
    for i, (prepared, key) in enumerate(zip(prepared_updates, keys, strict=True)):
        hit = found.get(key) if key is not None else None
        if isinstance(prepared, Prepared) and hit is None:
            assert prepared.target is not None
            prepared = _missing(store, prepared.target, use_global_ids)
        if isinstance(prepared, EditFailure):
            feature = edits.updates[i]
            target = feature.get("attributes", {}) if isinstance(feature, dict) else {}
            known = prepared_target(store, target, use_global_ids)
            out.update_results.append(fail("updates", i, prepared, *known))
            continue
        assert hit is not None
        oid, gid = hit
        values = dict(prepared.values)
        values.update({system.edit_date: now_ms, system.editor: user})
        values.update(_geometry_columns(prepared))
        writes.append((tuple(values), [*values.values(), oid]))
        if prepared.bounds is not None:
            out.boxes.append(prepared.bounds)
        out.update_results.append(_result(oid, gid))
    for names, group in itertools.groupby(writes, key=lambda w: w[0]):
        assignments = ", ".join(f"{quote(n)} = ?" for n in names)
        conn.executemany(
            f"UPDATE {TABLE} SET {assignments} WHERE {quote(store.oid_field)} = ?", [params for _, params in group]
        )

    # deletes
    targets: list[Any] = list(edits.deletes)
    by_gid = use_global_ids
    if edits.delete_where is not None:
        matching = _where_ids(store, edits.delete_where, options)
        wanted = set(targets)
        targets = [t for t in matching if t in wanted] if wanted else matching
        by_gid = False
    keys = [_lookup_key(t, by_gid) for t in targets]
    found = _lookup(conn, store, keys, by_gid)
    gone: list[int] = []
    gone_set: set[int] = set()
    for i, (target, key) in enumerate(zip(targets, keys, strict=True)):
        hit = found.get(key) if key is not None else None
        if hit is None or hit[0] in gone_set:  # a second delete of one feature finds it missing
            missing = _missing(store, target, by_gid)
            out.delete_results.append(fail("deletes", i, missing, target if not by_gid else None, target if by_gid else None))
            continue
        oid, gid = hit
        gone.append(oid)
        gone_set.add(oid)
        out.delete_results.append(_result(oid, gid))
    conn.executemany(f"DELETE FROM {TABLE} WHERE {quote(store.oid_field)} = ?", [(oid,) for oid in gone])
    out.deleted += len(gone)
    return out


def prepared_target(store: LayerStore, attributes: Any, use_global_ids: bool) -> tuple[int | None, str | None]:
    """(objectId, globalId) to name in a failed update's result, from what the client sent."""
    if not isinstance(attributes, dict) or store.edit_fields is None:
        return None, None
    wanted = (store.edit_fields.global_id if use_global_ids else store.oid_field).lower()
    for key, value in attributes.items():
        if str(key).lower() == wanted:
            if use_global_ids:
                return None, value if isinstance(value, str) else None
            return (value if isinstance(value, int) and not isinstance(value, bool) else None), None
    return None, None


@contextlib.contextmanager
def _transactions(stores: list[LayerStore]) -> Iterator[dict[int, sqlite3.Connection]]:
    """Write locks and an open transaction on each store (path order); yields conns by id(store).

    The caller commits each connection; any transaction still open on exit is rolled back.
    """
    with contextlib.ExitStack() as stack:
        conns: dict[int, sqlite3.Connection] = {}
        for store in sorted(stores, key=lambda s: str(s.path)):
            conn = stack.enter_context(store.writing())
            conn.execute("BEGIN IMMEDIATE")
            conns[id(store)] = conn
        try:
            yield conns
        finally:
            for conn in conns.values():
                if conn.in_transaction:
                    conn.execute("ROLLBACK")


def run_edits(
    batches: list[LayerEdits], options: ServerOptions, *, rollback: bool, use_global_ids: bool
) -> list[LayerResults]:
    """Apply the batches (one per layer entry) as one request; RestError when rolled back."""
    stores = list({id(b.store): b.store for b in batches}.values())
    now_ms = time.time_ns() // 1_000_000
    with _transactions(stores) as conns:
        results: list[LayerResults] = []
        try:
            for batch in batches:
                results.append(
                    apply(
                        conns[id(batch.store)],
                        batch,
                        rollback=rollback,
                        use_global_ids=use_global_ids,
                        user=options.edit_user,
                        now_ms=now_ms,
                        options=options,
                    )
                )
        except _RollBack as stop:
            detail = f"{stop.what}: {stop.failure.description} (error code {stop.failure.code})"
            raise RestError(400, "Unable to complete operation.", [ROLLED_BACK, detail]) from None
        for conn in conns.values():
            conn.execute("COMMIT")
        for store in stores:
            mine = [r for b, r in zip(batches, results) if b.store is store]
            store.after_commit(
                sum(r.added for r in mine), sum(r.deleted for r in mine), [x for r in mine for x in r.boxes]
            )
    return results


# --------------------------------------------------------------------------- answers


def layer_operation(
    store: LayerStore, layer_id: int, operation: str, method: str, params: Params, options: ServerOptions
) -> EditAnswer:
    """Answer ``…/<layer_id>/<operation>`` (operation lower case, one of LAYER_OPERATIONS)."""
    _check_editable(store)
    _check_method(method, operation)
    edits = parse_layer_request(store, layer_id, operation, params)
    result = run_edits(
        [edits],
        options,
        rollback=params.flag("rollbackOnFailure", True),
        use_global_ids=params.flag("useGlobalIds", False),
    )[0]
    body: dict[str, Any] = {}
    if operation in ("applyedits", "addfeatures"):
        body["addResults"] = result.add_results
    if operation in ("applyedits", "updatefeatures"):
        body["updateResults"] = result.update_results
    if operation in ("applyedits", "deletefeatures"):
        body["deleteResults"] = result.delete_results
    return EditAnswer(body, result.changed)


def service_operation(
    layers: Mapping[int, LayerStore], method: str, params: Params, options: ServerOptions
) -> EditAnswer:
    """Answer ``…/FeatureServer/applyEdits`` for a service whose layers are ``layers`` (by id)."""
    if not any(store.editable for store in layers.values()):
        _check_editable(next(iter(layers.values())))
    _check_method(method, "applyEdits")
    use_gids = params.flag("useGlobalIds", False)
    entries = params.json("edits")
    if not isinstance(entries, list) or not entries:
        raise invalid_parameter("edits", "expected a JSON list of {id, adds, updates, deletes}")
    batches: list[LayerEdits] = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise invalid_parameter("edits", f"expected {{id, adds, updates, deletes}}, got {_show(entry)}")
        layer_id = entry.get("id")
        store = layers.get(layer_id) if isinstance(layer_id, int) and not isinstance(layer_id, bool) else None
        if store is None or not isinstance(layer_id, int):
            raise invalid_parameter(
                "edits", f"layer id {_show(layer_id)} is not a layer of this service ({sorted(layers)})"
            )
        _check_editable(store)
        parts: dict[str, list[Any]] = {}
        for key in ("adds", "updates"):
            value = entry.get(key) or []
            if not isinstance(value, list):
                raise invalid_parameter("edits", f"'{key}' of layer {layer_id} must be a list")
            parts[key] = value
        deletes = entry.get("deletes") or []
        if isinstance(deletes, str):
            deletes = [d.strip() for d in deletes.split(",") if d.strip()]
        if not isinstance(deletes, list):
            raise invalid_parameter("edits", f"'deletes' of layer {layer_id} must be a list or comma-separated ids")
        if not use_gids:
            ids = [as_object_id(d) for d in deletes]
            if any(i is None for i in ids):
                raise invalid_parameter(
                    "edits", f"'deletes' of layer {layer_id} must be object ids, got {_show(deletes)}"
                )
            deletes = ids
        batches.append(LayerEdits(store, layer_id, parts["adds"], parts["updates"], deletes))
    results = run_edits(batches, options, rollback=params.flag("rollbackOnFailure", True), use_global_ids=use_gids)
    body = [
        {
            "id": b.layer_id,
            "addResults": r.add_results,
            "updateResults": r.update_results,
            "deleteResults": r.delete_results,
        }
        for b, r in zip(batches, results)
    ]
    return EditAnswer(body, any(r.changed for r in results))
