"""The ``/query`` operation: parameters → one SQL query → Esri JSON or GeoJSON.

Paging follows ArcGIS Server 10.3.1+: the page size is
``min(resultRecordCount or maxRecordCount, maxRecordCount)``; one extra row is
read to learn whether more rows match, and ``exceededTransferLimit: true`` is
sent iff they do (the key is left out when false, as many servers do; in
``f=geojson`` it sits in the collection's ``properties``, as 10.8 puts it).
``returnIdsOnly``, ``returnCountOnly`` and ``returnExtentOnly`` are not capped.
Rows come in OID order unless ``orderByFields`` says otherwise (the OID is then
the tie-breaker, so pages never overlap).

Without pagination (``--no-pagination``, a 10.0-era layer) ``resultOffset``,
``resultRecordCount`` and ``orderByFields`` are ignored and the first
``maxRecordCount`` rows (in OID order) come back, flagged when more match. 10.0
itself did not send the flag; 10.1 did, and so does this server.

Spatial filter: ``geometry`` (checked and reprojected by spatial_filter.py); the
bbox index prefilters by envelope, then shapely tests ``esriSpatialRelIntersects``
exactly (``esriSpatialRelEnvelopeIntersects`` stops at the envelopes). Features
whose envelope lies inside a query rectangle match without the exact test.

Bounds: every query request has ``--query-timeout`` seconds, counted from when
it is parsed; SQLite statements are interrupted at the deadline (see
storage.py) and the answer is ArcGIS's code-500 "Error performing query
operation" naming the limit, as ArcGIS answers a query that runs out of time
(clients retry it with smaller pages). The Python-side work around the SQL is
bounded by the request: at most :data:`MAX_OBJECT_IDS` ids, a filter geometry of
at most ``spatial_filter.MAX_VERTICES`` vertices, pages of at most
maxRecordCount rows.
"""

from __future__ import annotations

import re
import sqlite3
import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import orjson
import shapely

from ags_etl.arcgis.esrijson import encode_geometry
from ags_etl.schema import Field
from ags_etl.server import pbf, spatial_filter, spatialref, where as where_sql
from ags_etl.server.faults import box_only_check
from ags_etl.server.metadata import geometry_field_name
from ags_etl.server.options import ServerOptions
from ags_etl.server.protocol import QUERY_FAILED, Params, RestError, invalid_parameter, json_bytes
from ags_etl.server.spatial_filter import SpatialFilter
from ags_etl.server.spatialref import SpatialRef
from ags_etl.server.storage import (
    HIT_FUNCTION,
    TABLE,
    WKB,
    XMAX,
    XMIN,
    YMAX,
    YMIN,
    LayerStore,
    Reader,
    quote,
)

FORMATS = ("json", "pjson", "geojson", "pbf")
_STATISTIC_TYPES = {"count": "count", "sum": "sum", "min": "min", "max": "max", "avg": "avg"}
_WGS84 = 4326
#: Above this estimated share of the layer, the envelope prefilter scans instead of using the index.
_INDEX_SHARE = 0.2
#: Most ids one request may list in ``objectIds`` (clients send a page's worth, ~1000).
MAX_OBJECT_IDS = 100_000
JSON_TYPE = "application/json; charset=utf-8"
GEOJSON_TYPE = "application/geo+json; charset=utf-8"


@dataclass
class Statistic:
    kind: str
    field: Field | None  # None: count(*)
    out_name: str


@dataclass
class QueryRequest:
    """A parsed, validated query."""

    fmt: str
    where: str | None
    object_ids: list[int] | None
    spatial: SpatialFilter | None
    out_fields: list[Field]
    return_geometry: bool
    out_sr: SpatialRef | None
    order_by: list[tuple[Field, str]]
    offset: int
    page_size: int
    ids_only: bool
    count_only: bool
    extent_only: bool
    return_z: bool
    statistics: list[Statistic] = field(default_factory=list)
    group_by: list[Field] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing


def output_format(params: Params) -> str:
    """``f`` (default json); RestError 400 for formats this server does not write."""
    fmt = params.text("f", "json").strip().lower()
    if fmt not in FORMATS:
        raise RestError(400, "Invalid or missing input parameters.", [f"Unsupported output format 'f={fmt}'"])
    return fmt


def _field_list(store: LayerStore, value: str, param: str) -> list[Field]:
    out: list[Field] = []
    for raw in value.split(","):
        name = raw.strip()
        if not name:
            continue
        found = store.field_by_name(name)
        if found is None:
            raise invalid_parameter(param, f"field {name!r} does not exist")
        if found not in out:
            out.append(found)
    return out


def _out_fields(store: LayerStore, params: Params) -> list[Field]:
    """Requested fields, OID always first; ``*`` means all. The geometry field name is accepted and skipped."""
    value = params.text("outFields", "")
    names = [n.strip() for n in value.split(",") if n.strip()]
    if "*" in names:
        return list(store.fields)
    shape = geometry_field_name(store).lower() if store.geometry_type is not None else None
    names = [n for n in names if n.lower() != shape]
    fields = _field_list(store, ",".join(names), "outFields")
    oid = store.fields[0]
    return [oid] + [f for f in fields if f is not oid]


def _order_by(store: LayerStore, params: Params) -> list[tuple[Field, str]]:
    value = params.get("orderByFields")
    if value is None:
        return []
    out: list[tuple[Field, str]] = []
    for part in value.split(","):
        words = part.split()
        if not words:
            continue
        if len(words) > 2 or (len(words) == 2 and words[1].upper() not in ("ASC", "DESC")):
            raise invalid_parameter("orderByFields", f"expected 'FIELD [ASC|DESC]', got {part.strip()!r}")
        found = store.field_by_name(words[0])
        if found is None:
            raise invalid_parameter("orderByFields", f"field {words[0]!r} does not exist")
        out.append((found, words[1].upper() if len(words) == 2 else "ASC"))
    return out


def _object_ids(params: Params) -> list[int] | None:
    value = params.get("objectIds")
    if value is None:
        return None
    if value.count(",") >= MAX_OBJECT_IDS:
        raise invalid_parameter(
            "objectIds", f"{value.count(',') + 1} ids; at most {MAX_OBJECT_IDS} per request, split the list"
        )
    ids: list[int] = []
    for raw in value.split(","):
        text = raw.strip()
        if not text:
            continue
        try:
            number = float(text) if any(c in text for c in ".eE") else int(text)
        except ValueError:
            raise invalid_parameter("objectIds", f"{text!r} is not an object id") from None
        if isinstance(number, float):
            if not number.is_integer():
                raise invalid_parameter("objectIds", f"{text!r} is not an object id")
            number = int(number)
        ids.append(number)
    return ids


def _statistics(store: LayerStore, params: Params) -> tuple[list[Statistic], list[Field]]:
    value = params.json("outStatistics")
    if value is None:
        return [], []
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise invalid_parameter("outStatistics", "expected a JSON list of statistic definitions")
    stats: list[Statistic] = []
    for item in value:
        if not isinstance(item, dict):
            raise invalid_parameter("outStatistics", f"expected an object, got {item!r}")
        kind = str(item.get("statisticType", "")).strip().lower()
        if kind not in _STATISTIC_TYPES:
            raise invalid_parameter(
                "outStatistics", f"statisticType {item.get('statisticType')!r} is not one of {sorted(_STATISTIC_TYPES)}"
            )
        name = str(item.get("onStatisticField", "")).strip()
        found: Field | None
        if name == "*" and kind == "count":
            found = None
        else:
            found = store.field_by_name(name)
            if found is None:
                raise invalid_parameter("outStatistics", f"onStatisticField {name!r} is not a field")
            if kind in ("sum", "avg") and found.esri_type in ("esriFieldTypeString",):
                raise invalid_parameter("outStatistics", f"{kind} needs a numeric field, {found.name!r} is a string")
        out_name = str(item.get("outStatisticFieldName") or f"{kind}_{found.name if found else 'all'}").strip()
        if not re.fullmatch(r"\w+", out_name):
            raise invalid_parameter("outStatistics", f"outStatisticFieldName {out_name!r} is not a valid name")
        stats.append(Statistic(kind, found, out_name))
    group_value = params.get("groupByFieldsForStatistics")
    group = _field_list(store, group_value, "groupByFieldsForStatistics") if group_value else []
    return stats, group


def parse_query(store: LayerStore, params: Params, options: ServerOptions) -> QueryRequest:
    """Validate the parameters of a query request against the layer."""
    fmt = output_format(params)
    where_text = params.text("where", "1=1")
    names = [f.name for f in store.fields]
    where = None if where_sql.is_everything(where_text) else where_sql.rewrite(where_text, names)
    out_sr_value = params.get("outSR")
    out_sr = spatialref.parse(out_sr_value, "outSR") if out_sr_value is not None else None
    if out_sr is not None and store.spatial_ref is None and store.geometry_type is not None:
        raise invalid_parameter("outSR", "this layer's spatial reference is unknown, so it cannot be projected")
    if options.pagination:
        order_by = _order_by(store, params)
        offset = params.integer("resultOffset") or 0
        requested = params.integer("resultRecordCount")
    else:
        # A 10.0 layer knew none of these parameters and ignored them.
        order_by, offset, requested = [], 0, None
    page_size = min(requested or options.max_record_count, options.max_record_count)
    stats, group = _statistics(store, params)
    return QueryRequest(
        fmt=fmt,
        where=where,
        object_ids=_object_ids(params),
        spatial=spatial_filter.parse(params, store.geometry_type, store.spatial_ref),
        out_fields=_out_fields(store, params),
        return_geometry=params.flag("returnGeometry", True) and store.geometry_type is not None,
        out_sr=out_sr,
        order_by=order_by,
        offset=offset,
        page_size=page_size,
        ids_only=params.flag("returnIdsOnly"),
        count_only=params.flag("returnCountOnly"),
        extent_only=params.flag("returnExtentOnly"),
        return_z=params.flag("returnZ") and store.has_z,
        statistics=stats,
        group_by=group,
    )


# --------------------------------------------------------------------------- SQL


def _conditions(store: LayerStore, req: QueryRequest) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") and its bind values."""
    parts: list[str] = []
    args: list[Any] = []
    oid = quote(store.oid_field)
    if req.where is not None:
        parts.append(f"({req.where})")
    if req.object_ids is not None:
        # Ids are validated integers, so they can be written into the SQL directly
        # (no limit on how many, unlike bind parameters).
        parts.append(f"{oid} IN ({','.join(str(i) for i in req.object_ids) or 'NULL'})")
    sf = req.spatial
    if sf is not None:
        xmin, ymin, xmax, ymax = sf.bbox
        # Envelope prefilter on the bbox index: a feature that reaches x >= xmin starts at
        # most max_width before it (margin for rounding in the subtraction).
        strip = xmin - store.max_width
        strip -= 1e-9 * (abs(strip) + store.max_width) + 1e-300
        # A strip holding much of the layer is cheaper to test row by row in OID order
        # (pages stop early) than to read from the index and sort: unary + hides the index.
        use_index = "" if store.strip_share(strip, xmax) <= _INDEX_SHARE else "+"
        parts.append(
            f"{use_index}{quote(XMIN)} >= ? AND {use_index}{quote(XMIN)} <= ? AND {quote(XMAX)} >= ? "
            f"AND {quote(YMIN)} <= ? AND {quote(YMAX)} >= ?"
        )
        args += [strip, xmax, xmin, ymax, ymin]
        if not sf.envelope_only:
            exact = f"{HIT_FUNCTION}({quote(WKB)})"
            if sf.rectangle:
                inside = f"{quote(XMIN)} >= ? AND {quote(XMAX)} <= ? AND {quote(YMIN)} >= ? AND {quote(YMAX)} <= ?"
                parts.append(f"(({inside}) OR {exact})")
                args += [xmin, xmax, ymin, ymax]
            else:
                parts.append(exact)
    return (" WHERE " + " AND ".join(parts)) if parts else "", args


class _TimeUp(Exception):
    """The request's deadline passed (turned into :func:`time_limit_error` by run_query)."""


def time_limit_error(seconds: float) -> RestError:
    """ArcGIS's answer to a query that ran out of time (code 500: clients retry with smaller pages)."""
    return RestError(
        500,
        f"Error performing query operation: the query exceeded the server's time limit of {seconds:g} s",
        [
            (
                "Simplify the where clause or the geometry filter, ask for fewer records (resultRecordCount), "
                "or start the server with a larger --query-timeout."
            )
        ],
    )


def _execute(reader: Reader, sql: str, args: list[Any], spatial: SpatialFilter | None) -> list[tuple[Any, ...]]:
    """Run one statement; SQLite errors (bad where clause …) become ArcGIS's 400 answer.

    A statement interrupted at the reader's deadline raises :class:`_TimeUp`.
    """
    reader.filter_geometry = spatial.geometry if spatial is not None else None
    try:
        return reader.conn.execute(sql, args).fetchall()
    except (sqlite3.Error, OverflowError) as exc:
        if reader.timed_out:
            raise _TimeUp() from exc
        raise RestError(400, QUERY_FAILED, [f"'where' parameter is invalid: {exc}"]) from exc



# --------------------------------------------------------------------------- answers


def run_query(store: LayerStore, params: Params, options: ServerOptions) -> tuple[bytes, str]:
    """Answer a query request: (body, content type). Raises RestError for invalid requests,
    and :func:`time_limit_error` when it takes more than ``options.query_timeout`` seconds."""
    deadline = time.monotonic() + options.query_timeout
    try:
        return _answer(store, params, options, deadline)
    except _TimeUp:
        raise time_limit_error(options.query_timeout) from None


def _answer(store: LayerStore, params: Params, options: ServerOptions, deadline: float) -> tuple[bytes, str]:
    req = parse_query(store, params, options)
    if box_only_check(params, options):  # --box-only --count-answers-features: a count answered with features
        req = replace(req, count_only=False)
    if req.fmt == "pbf":
        pbf.check_request(params, req.return_z, bool(req.statistics), req.extent_only)
    where, args = _conditions(store, req)
    pretty = req.fmt == "pjson"
    with store.reader(deadline) as reader:
        if req.statistics:
            return json_bytes(_statistics_answer(store, reader, req, where, args), pretty=pretty), JSON_TYPE
        if req.extent_only:
            return json_bytes(_extent_answer(store, reader, req, where, args), pretty=pretty), JSON_TYPE
        if req.count_only:
            rows = _execute(reader, f"SELECT count(*) FROM {TABLE}{where}", args, req.spatial)
            if req.fmt == "pbf":
                return pbf.count_result(rows[0][0]), pbf.PBF_TYPE
            return json_bytes({"count": rows[0][0]}, pretty=pretty), JSON_TYPE
        if req.ids_only:
            oid = quote(store.oid_field)
            rows = _execute(reader, f"SELECT {oid} FROM {TABLE}{where} ORDER BY {oid}", args, req.spatial)
            if req.fmt == "pbf":
                return pbf.ids_result(store.oid_field, [r[0] for r in rows]), pbf.PBF_TYPE
            body = {"objectIdFieldName": store.oid_field, "objectIds": [r[0] for r in rows]}
            return json_bytes(body, pretty=pretty), JSON_TYPE
        rows, exceeded = _page(store, reader, req, where, args)
        if reader.expired():  # no time left to encode the page
            raise _TimeUp()
    if req.fmt == "geojson":
        return json_bytes(_geojson_answer(store, req, rows, exceeded)), GEOJSON_TYPE
    if req.fmt == "pbf":
        return _pbf_answer(store, req, rows, exceeded, params), pbf.PBF_TYPE
    return json_bytes(_esri_answer(store, req, rows, exceeded), pretty=pretty), JSON_TYPE


def _page(
    store: LayerStore, reader: Reader, req: QueryRequest, where: str, args: list[Any]
) -> tuple[list[tuple[Any, ...]], bool]:
    columns = ", ".join(quote(f.name) for f in req.out_fields)
    if req.return_geometry:
        columns += f", {quote(WKB)}"
    order = [f"{quote(f.name)} {direction}" for f, direction in req.order_by]
    if not any(f.name == store.oid_field for f, _ in req.order_by):
        order.append(f"{quote(store.oid_field)} ASC")
    sql = f"SELECT {columns} FROM {TABLE}{where} ORDER BY {', '.join(order)} LIMIT ? OFFSET ?"
    rows = _execute(reader, sql, [*args, req.page_size + 1, req.offset], req.spatial)
    exceeded = len(rows) > req.page_size
    return rows[: req.page_size], exceeded


def _geometries(store: LayerStore, req: QueryRequest, rows: list[tuple[Any, ...]], target: SpatialRef | None) -> np.ndarray:
    """WKB of a page → shapely geometries in the output CRS (Z only when asked for)."""
    wkb = np.empty(len(rows), dtype=object)
    wkb[:] = [r[-1] for r in rows]
    geoms = shapely.from_wkb(wkb)
    src = store.spatial_ref
    if src is None or target is None:
        return geoms if req.return_z else shapely.force_2d(geoms)
    return spatialref.transform_geometries(geoms, src, target, include_z=req.return_z)


def encode_esri(geoms: np.ndarray, geometry_type: str | None, has_z: bool) -> list[dict[str, Any] | None]:
    """A page of geometries → Esri JSON (None for null), as ``esrijson.encode_geometry`` writes them.

    Points take a vectorised path (a third of the page time otherwise); the
    result is the same.
    """
    if geometry_type == "esriGeometryPoint" and len(geoms):
        present = shapely.is_geometry(geoms) & ~shapely.is_empty(geoms)
        geoms = geoms.copy()
        geoms[~present] = None  # GEOS refuses getX on an empty point
        xs, ys = shapely.get_x(geoms).tolist(), shapely.get_y(geoms).tolist()
        if has_z:
            zs = shapely.get_z(geoms).tolist()
            with_z = shapely.has_z(geoms).tolist()
            return [
                None if not ok else ({"x": x, "y": y, "z": z} if hz else {"x": x, "y": y})
                for ok, x, y, z, hz in zip(present.tolist(), xs, ys, zs, with_z)
            ]
        return [{"x": x, "y": y} if ok else None for ok, x, y in zip(present.tolist(), xs, ys)]
    return [encode_geometry(g, has_z=has_z) for g in geoms]


def _response_fields(fields: list[Field]) -> list[dict[str, Any]]:
    out = []
    for f in fields:
        entry: dict[str, Any] = {"name": f.name, "type": f.esri_type, "alias": f.alias or f.name}
        if f.length is not None and f.esri_type == "esriFieldTypeString":
            entry["length"] = f.length
        out.append(entry)
    return out


def _esri_answer(store: LayerStore, req: QueryRequest, rows: list[tuple[Any, ...]], exceeded: bool) -> dict[str, Any]:
    names = [f.name for f in req.out_fields]
    target = req.out_sr or store.spatial_ref
    body: dict[str, Any] = {
        "objectIdFieldName": store.oid_field,
        "uniqueIdField": {"name": store.oid_field, "isSystemMaintained": True},
        "globalIdFieldName": "",
    }
    if store.geometry_type is not None:
        body["geometryType"] = store.geometry_type
        body["spatialReference"] = dict(target.esri) if target is not None else {}
        if req.return_z:
            body["hasZ"] = True
    body["fields"] = _response_fields(req.out_fields)
    n = len(names)
    if req.return_geometry:
        encoded = encode_esri(_geometries(store, req, rows, target), store.geometry_type, req.return_z)
        features = []
        for row, geometry in zip(rows, encoded):
            feature: dict[str, Any] = {"attributes": dict(zip(names, row[:n]))}
            if geometry is not None:
                feature["geometry"] = geometry
            features.append(feature)
    else:
        features = [{"attributes": dict(zip(names, row))} for row in rows]
    body["features"] = features
    if exceeded:
        body["exceededTransferLimit"] = True
    return body


def _pbf_answer(
    store: LayerStore, req: QueryRequest, rows: list[tuple[Any, ...]], exceeded: bool, params: Params
) -> bytes:
    """The page as a FeatureCollection protocol buffer (see pbf.py), from the same rows as JSON."""
    target = req.out_sr or store.spatial_ref
    geoms = _geometries(store, req, rows, target) if req.return_geometry else None
    return pbf.feature_result(
        oid_field=store.oid_field,
        fields=req.out_fields,
        rows=rows,
        geoms=geoms,
        geometry_type=store.geometry_type if req.return_geometry else None,
        spatial_reference=dict(target.esri) if target is not None and req.return_geometry else None,
        exceeded=exceeded,
        params=params,
    )


def _geojson_answer(store: LayerStore, req: QueryRequest, rows: list[tuple[Any, ...]], exceeded: bool) -> dict[str, Any]:
    """RFC 7946 FeatureCollection: lon/lat unless outSR says otherwise, exteriors counter-clockwise."""
    names = [f.name for f in req.out_fields]
    n = len(names)
    body: dict[str, Any] = {"type": "FeatureCollection"}
    target = req.out_sr
    if target is None and store.spatial_ref is not None:
        target = spatialref.parse(_WGS84, "outSR")
    if target is not None and target.key != "EPSG:4326" and target.key.startswith(("EPSG:", "ESRI:")):
        # Not RFC 7946 any more: name the CRS the legacy (2008) way, as ArcGIS does.
        body["crs"] = {"type": "name", "properties": {"name": target.key}}
    encoded: list[Any] = [None] * len(rows)
    if req.return_geometry and rows:
        geoms = _geometries(store, req, rows, target)
        geoms = shapely.orient_polygons(geoms, exterior_cw=False)
        encoded = [None if g is None else orjson.Fragment(g) for g in shapely.to_geojson(geoms)]
    body["features"] = [
        {"type": "Feature", "id": row[0], "geometry": geometry, "properties": dict(zip(names, row[:n]))}
        for row, geometry in zip(rows, encoded)
    ]
    if exceeded:
        body["properties"] = {"exceededTransferLimit": True}
    return body


def _extent_answer(store: LayerStore, reader: Reader, req: QueryRequest, where: str, args: list[Any]) -> dict[str, Any]:
    sql = (
        f"SELECT min({quote(XMIN)}), min({quote(YMIN)}), max({quote(XMAX)}), max({quote(YMAX)}), count(*) "
        f"FROM {TABLE}{where}"
    )
    xmin, ymin, xmax, ymax, count = _execute(reader, sql, args, req.spatial)[0]
    body: dict[str, Any] = {}
    if store.geometry_type is not None:
        target = req.out_sr or store.spatial_ref
        sr = dict(target.esri) if target is not None else {}
        if xmin is None:
            body["extent"] = {"xmin": None, "ymin": None, "xmax": None, "ymax": None, "spatialReference": sr}
        else:
            box: tuple[float, ...] = (xmin, ymin, xmax, ymax)
            if target is not None and store.spatial_ref is not None:
                box = spatialref.transform_bounds(box, store.spatial_ref, target)
            body["extent"] = dict(zip(("xmin", "ymin", "xmax", "ymax"), box), spatialReference=sr)
    if req.count_only or store.geometry_type is None:
        body["count"] = count
    return body


def _statistics_answer(
    store: LayerStore, reader: Reader, req: QueryRequest, where: str, args: list[Any]
) -> dict[str, Any]:
    selects = [quote(f.name) for f in req.group_by]
    out_fields: list[dict[str, Any]] = [
        {"name": f.name, "type": f.esri_type, "alias": f.alias or f.name} for f in req.group_by
    ]
    for stat in req.statistics:
        target = quote(stat.field.name) if stat.field is not None else "*"
        selects.append(f"{_STATISTIC_TYPES[stat.kind]}({target})")
        if stat.kind == "count":
            esri_type = "esriFieldTypeInteger"
        elif stat.kind in ("sum", "avg"):
            esri_type = "esriFieldTypeDouble"
        else:
            assert stat.field is not None
            esri_type = "esriFieldTypeInteger" if stat.field.esri_type == "esriFieldTypeOID" else stat.field.esri_type
        out_fields.append({"name": stat.out_name, "type": esri_type, "alias": stat.out_name})
    sql = f"SELECT {', '.join(selects)} FROM {TABLE}{where}"
    if req.group_by:
        groups = ", ".join(quote(f.name) for f in req.group_by)
        sql += f" GROUP BY {groups} ORDER BY {groups}"
    rows = _execute(reader, sql, args, req.spatial)
    names = [f["name"] for f in out_fields]
    return {
        "displayFieldName": "",
        "fieldAliases": {n: n for n in names},
        "fields": out_fields,
        "features": [{"attributes": dict(zip(names, row))} for row in rows],
    }
