"""Page tasks and the one worker function that fetches and decodes a task.

A *task* is one query request, described by plain, frozen, picklable data: an id chunk,
an offset page, an OID window, a box, or a spot check around one point. A planner
(:mod:`ags_etl.extractors.plans`) makes them; :func:`fetch_page` runs one and returns a
:class:`PageResult` saying what the page reported (rows, the ``exceededTransferLimit``
flag, the OIDs, a transient failure); the planner reacts to that and the driver
(:mod:`ags_etl.extractors.driver`) removes duplicates.

Everything :func:`fetch_page` needs besides the task is a :class:`QueryContext`: the
layer URL, the base query parameters, the schema, the response format and a
:class:`ClientSpec` (auth *spec*, timeouts) — no live session. In the same process the
extractor passes its live client along; in another process (a process pool, Dask) the
worker builds one client per process from the spec.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import shapely

from ags_etl.arcgis import paging, pbf
from ags_etl.arcgis.auth import Auth
from ags_etl.arcgis.client import DEFAULT_MAX_RESPONSE_BYTES, ArcGISClient, display_url
from ags_etl.arcgis.esrijson import (
    decode_features,
    decode_geojson_features,
    decode_raw_page,
)
from ags_etl.batch import FeatureBatch
from ags_etl.errors import ArcGISError, PagingError, TransientError
from ags_etl.schema import LayerSchema

BBox = tuple[float, float, float, float]


# --------------------------------------------------------------------------- tasks


@dataclass(frozen=True)
class IdChunk:
    """Features whose OID is one of ``ids`` (sorted); ``stalled`` counts rounds that returned none."""

    ids: tuple[int, ...]
    stalled: int = 0


@dataclass(frozen=True)
class OffsetPage:
    """``count`` rows from ``resultOffset = offset``, ordered by OID."""

    offset: int
    count: int


@dataclass(frozen=True)
class OidWindow:
    """Features with ``lo <= OID <= hi``."""

    lo: int
    hi: int


@dataclass(frozen=True)
class Box:
    """Features intersecting an envelope in the layer's CRS; ``depth`` counts splits (1 = a quadrant)."""

    bbox: BBox
    depth: int


@dataclass(frozen=True)
class SpotCheck:
    """A tiny box around one point, asked when a full ``parent`` box held nothing but that point.

    Its rows are never output: it only tells whether that one point alone fills a page.
    """

    bbox: BBox
    point: tuple[float, float]
    parent: Box


PageTask = IdChunk | OffsetPage | OidWindow | Box | SpotCheck


# --------------------------------------------------------------------------- context and result


@dataclass(frozen=True)
class ClientSpec:
    """How to build an :class:`ArcGISClient` in another process (the auth object pickles without its token).

    ``key`` names the run: a worker process builds one client per key, however many
    unpickled copies of the auth object its tasks bring.
    """

    key: str = "default"
    auth: Auth | None = field(default=None, compare=False)
    timeout: float = 60.0
    retries: int = 5
    backoff: float = 0.5
    max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES

    def client(self) -> ArcGISClient:
        return ArcGISClient(
            auth=self.auth,
            timeout=self.timeout,
            retries=self.retries,
            backoff=self.backoff,
            max_response_bytes=self.max_response_bytes,
        )


@dataclass(frozen=True)
class QueryContext:
    """Everything a page request needs besides its task; picklable.

    ``params`` are the base query parameters (where, outFields, returnGeometry, outSR,
    spatial filter); ``box_sr`` is the ``inSR`` of box tasks (the extent's CRS).
    """

    url: str
    params: dict[str, Any]
    where: str
    schema: LayerSchema
    response_format: str = "json"
    box_sr: dict[str, Any] | None = None
    client: ClientSpec = field(default_factory=ClientSpec)


@dataclass(frozen=True)
class PageResult:
    """What one page reported; picklable (the batch is Arrow + shapely geometries).

    ``batch`` holds the rows that belong to the task (rows outside an id chunk or OID
    window are ``strays``, dropped here); ``oids`` are their OIDs (None on a layer without
    an OID field); ``exceeded`` is the ``exceededTransferLimit`` flag; ``failure`` is the
    transient error that ended the request after the client's retries (``batch`` is then
    empty). Duplicates are *not* removed here: that is the driver's job.
    """

    task: PageTask
    batch: FeatureBatch
    exceeded: bool = False
    oids: np.ndarray | None = None
    strays: int = 0
    failure: TransientError | None = None

    @property
    def rows(self) -> int:
        return len(self.batch)


# --------------------------------------------------------------------------- the worker


def task_params(task: PageTask, ctx: QueryContext) -> dict[str, Any]:
    """The query parameters of one task (base parameters included, ``f`` set)."""
    params = dict(ctx.params)
    oid = ctx.schema.oid_field
    if isinstance(task, IdChunk):
        params["objectIds"] = ",".join(map(str, task.ids))
    elif isinstance(task, OffsetPage):
        params.update(
            {
                "resultOffset": task.offset,
                "resultRecordCount": task.count,
                "orderByFields": f"{oid} ASC",
            }
        )
    elif isinstance(task, OidWindow):
        params["where"] = paging.where_and(
            ctx.where, f"{oid} >= {task.lo} AND {oid} <= {task.hi}"
        )
    else:
        xmin, ymin, xmax, ymax = task.bbox
        params.update(
            {
                "geometry": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax},
                "geometryType": "esriGeometryEnvelope",
                "spatialRel": "esriSpatialRelIntersects",
            }
        )
        if ctx.box_sr:
            params["inSR"] = ctx.box_sr
    params["f"] = ctx.response_format
    return params


def decode_page(
    data: dict[str, Any] | bytes, response_format: str, schema: LayerSchema, url: str
) -> tuple[FeatureBatch, bool]:
    """A query answer → (batch, exceededTransferLimit); one branch per response format.

    A new wire format (``f=pbf``) adds one branch here and nowhere else.
    """
    if isinstance(data, bytes):  # f=pbf (the client returns bytes only for post_binary)
        return pbf.decode_features(data, schema)
    if response_format == "geojson":
        batch = decode_geojson_features(data.get("features") or [], schema)
        flag = bool(
            (data.get("properties") or {}).get("exceededTransferLimit")
            or data.get("exceededTransferLimit")
        )
        return batch, flag
    if response_format == "json":
        if "features" not in data:
            raise ArcGISError(
                f"{url}/query answered without a features list; is it a layer query endpoint?"
            )
        return decode_features(data["features"], schema), bool(
            data.get("exceededTransferLimit")
        )
    raise ArcGISError(
        f"response format {response_format!r} has no page decoder; use json or geojson"
    )


def page_oids(batch: FeatureBatch, schema: LayerSchema, url: str) -> np.ndarray:
    """The OID column of a page as int64; PagingError when the layer has none or a row lacks one."""
    if schema.oid_field is None:
        raise PagingError(
            f"layer {url} has no OID field; its pages cannot be told apart by id"
        )
    col = batch.column(schema.oid_field)
    if col.null_count:
        raise PagingError(
            f"{url} sent features without an {schema.oid_field} value; they cannot be checked. "
            f"Report it to the server's administrator"
        )
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)


def row_keys(batch: FeatureBatch) -> np.ndarray:
    """One 63-bit digest per row of attributes and geometry: the identity of a feature without an OID."""
    attrs = batch.attributes.to_pylist()
    wkb: list[Any] = (
        [None] * len(batch)
        if batch.geometry is None
        else shapely.to_wkb(batch.geometry).tolist()
    )
    keys = [
        int.from_bytes(
            hashlib.blake2b(repr((row, g)).encode(), digest_size=8).digest(), "big"
        )
        >> 1
        for row, g in zip(attrs, wkb)
    ]
    return np.asarray(keys, dtype=np.int64)


def _belongs(task: PageTask, oids: np.ndarray) -> np.ndarray | None:
    """Mask of rows that belong to ``task`` (None: every row does)."""
    if isinstance(task, IdChunk):
        return np.isin(oids, np.asarray(task.ids, dtype=np.int64))
    if isinstance(task, OidWindow):
        return (oids >= task.lo) & (oids <= task.hi)
    return None


def json_object(body: bytes, url: str) -> dict[str, Any]:
    """A raw answer that the bulk decoder left alone, parsed as the client parses answers."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        snippet = body[:80].decode("utf-8", "replace").replace("\n", " ")
        raise ArcGISError(
            f"{display_url(url)} did not answer JSON (starts {snippet!r}); is it an ArcGIS REST endpoint?"
        ) from exc
    if not isinstance(data, dict):
        raise ArcGISError(
            f"{display_url(url)} answered JSON that is not an object; is it an ArcGIS REST endpoint?"
        )
    return data


_process_clients: dict[ClientSpec, ArcGISClient] = {}
_process_lock = threading.Lock()


def _client_for(spec: ClientSpec) -> ArcGISClient:
    """One client per spec per process, for workers that run outside the extractor's process."""
    with _process_lock:
        found = _process_clients.get(spec)
        if found is None:
            found = _process_clients[spec] = spec.client()
        return found


def fetch_page(
    task: PageTask, ctx: QueryContext, client: ArcGISClient | None = None
) -> PageResult:
    """Run one task: one POST to ``<layer>/query``, decoded; rows outside the task dropped.

    ``client`` is the live client when the caller shares the process; without it one is
    built from ``ctx.client`` (once per process). A :class:`TransientError` (after the
    client's retries) comes back as ``failure`` for the planner to react to (halve,
    split); every other error is raised.
    """
    http = client if client is not None else _client_for(ctx.client)
    schema = ctx.schema
    # f=json pages come back unparsed (when the client can) for the bulk decoder.
    raw = getattr(http, "post_raw", None) if ctx.response_format == "json" else None
    post: Callable[[str, dict[str, Any]], bytes | dict[str, Any]]
    if ctx.response_format == "pbf":
        post = http.post_binary
    else:
        post = http.post if raw is None else raw
    data: bytes | dict[str, Any]
    try:
        data = post(ctx.url + "/query", task_params(task, ctx))
    except TransientError as exc:
        empty = FeatureBatch.empty(
            schema.arrow_schema(), schema.crs, schema.geometry_type is not None
        )
        return PageResult(task, empty, failure=exc)
    if raw is not None and isinstance(data, bytes):
        decoded = decode_raw_page(data, schema)
        if decoded is None:  # not a plain page: parse it and take the careful path
            data = json_object(data, ctx.url + "/query")
            decoded = decode_page(data, ctx.response_format, schema, ctx.url)
        batch, exceeded = decoded
    else:
        batch, exceeded = decode_page(data, ctx.response_format, schema, ctx.url)
    if schema.oid_field is None:
        return PageResult(task, batch, exceeded)
    oids = page_oids(batch, schema, ctx.url)
    keep = _belongs(task, oids)
    strays = 0
    if keep is not None and not keep.all():
        strays = int((~keep).sum())
        batch, oids = batch.filter(keep), oids[keep]
    return PageResult(task, batch, exceeded, oids, strays)
