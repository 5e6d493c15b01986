"""The ArcGIS FeatureServer/MapServer layer extractor.

::

    with FeatureLayerExtractor(url, where="STATUS = 'A'", concurrency=8) as ext:
        ext.schema            # LayerSchema, known before the first page
        plan = ext.plan()     # probes + pure planner (ags_etl.arcgis.paging)
        for batch in ext:     # FeatureBatches, in plan order, each feature exactly once
            ...
        ext.stats             # counts, strategy, requests, retries

Contract: iteration yields every feature matching the query exactly once, or raises.
At the end the number of distinct OIDs read is compared with the server's
``returnCountOnly`` for the same where clause and filter; a difference raises
:class:`~ags_etl.errors.IncompleteExtractError` naming both numbers. The one exception
is a layer that gives no count at all (the ``box-split`` plan): completeness then rests
on every box having come back below the page cap without ``exceededTransferLimit``, and
``stats.unchecked`` (also logged and in ``stats.notes``) says so. Every plan has a
request bound (:func:`ags_etl.arcgis.paging.request_budget`); server answers that do not
add up end the run with a PagingError, never an endless loop. Pages run
concurrently (at most ``concurrency`` requests, ``2 × concurrency`` pages held), and
come out in plan order, so memory stays flat as the layer grows.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np
import shapely
from pyproj import CRS
from pyproj.transformer import Transformer as ProjTransformer

from ags_etl.arcgis import paging
from ags_etl.arcgis.auth import Auth
from ags_etl.arcgis.client import DEFAULT_MAX_RESPONSE_BYTES, ArcGISClient, display_url
from ags_etl.arcgis.esrijson import decode_features, decode_geojson_features
from ags_etl.arcgis.layer import LayerInfo, parse_layer
from ags_etl.arcgis.paging import Plan, Probes, Strategy
from ags_etl.batch import FeatureBatch
from ags_etl.crs import parse_crs
from ags_etl.errors import (
    ArcGISError,
    ConfigError,
    IncompleteExtractError,
    NotALayerError,
    PagingError,
    QueryError,
    ServiceError,
    TransientError,
)
from ags_etl.schema import LayerSchema

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")
BBox = tuple[float, float, float, float]

#: Rounds of re-asking for ids a chunk did not return before giving up on them.
MAX_STALLED_ROUNDS = 2


@dataclass
class ExtractStats:
    strategy: str = ""
    expected: int | None = None
    features: int = 0
    pages: int = 0
    duplicates_dropped: int = 0
    strays_dropped: int = 0
    page_size: int = 0
    requests: int = 0
    retries: int = 0
    notes: list[str] = field(default_factory=list)
    #: Set when no server count was available: what completeness rests on instead.
    unchecked: str | None = None


def validate_url(url: str) -> str:
    """Reject what cannot be a layer URL before any network call."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{url!r} is not an http(s) URL; give a layer URL such as "
            f"https://host/arcgis/rest/services/Name/FeatureServer/0"
        )
    if parts.query:
        raise ConfigError(
            f"layer URL {display_url(url)} has a query string; pass the layer URL alone and use "
            f"--where/--fields/--token for the rest"
        )
    return url.rstrip("/")


def ordered_map(fn: Callable[[T], R], tasks: Iterable[T], concurrency: int) -> Iterator[R]:
    """Run ``fn`` over ``tasks`` on ``concurrency`` threads, yielding results in task order.

    At most ``2 × concurrency`` tasks are in flight, so memory stays bounded. The first
    exception is raised in order; pending tasks are cancelled. On Ctrl-C, SIGTERM or an
    abandoned iteration (a BaseException that is not an Exception) requests in flight are
    not waited for, so the caller can clean up and leave at once.
    """
    it = iter(tasks)
    window: deque[Future[R]] = deque()
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="ags-etl-page")
    try:
        for task in itertools.islice(it, concurrency * 2):
            window.append(pool.submit(fn, task))
        while window:
            result = window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(fn, nxt))
            yield result
    except BaseException as exc:
        pool.shutdown(wait=isinstance(exc, Exception), cancel_futures=True)
        raise
    pool.shutdown()


class FeatureLayerExtractor:
    """Reads one ArcGIS REST layer; see the module docstring for the contract."""

    name = "arcgis"

    def __init__(
        self,
        url: str,
        *,
        where: str | None = None,
        fields: list[str] | None = None,
        auth: Auth | None = None,
        page_size: int | None = None,
        concurrency: int = 4,
        strategy: str | None = None,
        out_sr: Any = None,
        spatial_filter: tuple[BBox, CRS | None] | None = None,
        response_format: str = "json",
        timeout: float = 60.0,
        retries: int = 5,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        backoff: float = 0.5,
        proxy: str | None = None,
        ca_bundle: str | None = None,
        client: ArcGISClient | None = None,
    ) -> None:
        self.url = validate_url(url)
        self.where = where.strip() if where is not None and where.strip() else "1=1"
        self.fields = list(fields) if fields else None
        if concurrency < 1:
            raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")
        if page_size is not None and page_size < 1:
            raise ConfigError(f"--page-size must be at least 1, got {page_size}")
        try:
            self.forced = Strategy(strategy) if strategy is not None else None
        except ValueError as exc:
            choices = ", ".join(s.value for s in Strategy)
            raise ConfigError(f"--strategy {strategy!r} is not one of {choices}") from exc
        if response_format not in ("json", "geojson"):
            raise ConfigError(f"response format {response_format!r} is not json or geojson")
        self.out_crs = parse_crs(out_sr) if out_sr is not None else None
        self.spatial_filter = spatial_filter
        self.concurrency = concurrency
        self.requested_page_size = page_size
        self.response_format = response_format
        self._own_client = client is None
        self.client = client or ArcGISClient(
            auth=auth,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            pool_size=max(concurrency, 4) + 2,
            max_response_bytes=max_response_bytes,
            proxy=proxy,
            ca_bundle=ca_bundle,
        )
        self.info: LayerInfo | None = None
        self.schema: LayerSchema | None = None
        self.stats = ExtractStats()
        self._plan: Plan | None = None
        self._probes: Probes | None = None
        self._page_size = 0
        self._lock = threading.Lock()
        self._seen: set[int] = set()
        self._seen_rows: set[bytes] = set()
        self._budget: Callable[[], int | None] = lambda: None
        self._pages_before_plan = 0
        #: Fewest rows a non-empty page held: servers that cut pages silently need more requests.
        self._min_rows = paging.MAX_PLAUSIBLE
        self._box_cap = paging.DEFAULT_PAGE_SIZE
        self._empty_pages = 0

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> "FeatureLayerExtractor":
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._own_client:
            self.client.close()

    def open(self) -> LayerSchema:
        """Read the layer's metadata and build the output schema."""
        try:
            data = self.client.get(self.url)
        except QueryError as exc:
            raise NotALayerError(
                f"{self.url} is not a layer the server knows ({exc}); check the service name and layer id"
            ) from exc
        info = parse_layer(self.url, data)
        if not info.can_query:
            raise ArcGISError(f"layer {self.url} does not allow Query (capabilities: {sorted(info.capabilities)})")
        self.info = info
        schema = info.schema
        if self.fields is not None:
            known = {f.name.lower(): f.name for f in schema.fields}
            unknown = [f for f in self.fields if f.lower() not in known]
            if unknown:
                raise ConfigError(
                    f"field(s) {', '.join(unknown)} not in layer {info.name!r}; available: "
                    f"{', '.join(f.name for f in schema.attribute_fields)}"
                )
            wanted = {known[f.lower()] for f in self.fields}
            if schema.oid_field is not None:
                wanted.add(schema.oid_field)  # the OID is what makes exactly-once checkable
            schema = schema.replace(fields=tuple(f for f in schema.fields if f.name in wanted))
        if self.out_crs is not None:
            schema = schema.replace(crs=self.out_crs)
        self.schema = schema
        self._page_size = paging.page_size_for(info, self.requested_page_size)
        self.stats.page_size = self._page_size
        self._box_cap = info.max_record_count or paging.DEFAULT_PAGE_SIZE
        return schema

    # ------------------------------------------------------------------ query helpers

    def _require_open(self) -> tuple[LayerInfo, LayerSchema]:
        if self.info is None or self.schema is None:
            raise RuntimeError("use the extractor as a context manager (or call open()) first")
        return self.info, self.schema

    def _filter_params(self) -> dict[str, Any]:
        """Spatial filter (pushed down from a clip) as envelope query parameters."""
        info, _ = self._require_open()
        if self.spatial_filter is None:
            return {}
        bbox, crs = self.spatial_filter
        layer_crs = info.schema.crs
        if crs is not None and layer_crs is not None and not crs.equals(layer_crs):
            t = ProjTransformer.from_crs(crs, layer_crs, always_xy=True)
            bbox = t.transform_bounds(*bbox, densify_pts=21)
            crs = layer_crs
        params: dict[str, Any] = {
            "geometry": {"xmin": bbox[0], "ymin": bbox[1], "xmax": bbox[2], "ymax": bbox[3]},
            "geometryType": "esriGeometryEnvelope",
            "spatialRel": "esriSpatialRelIntersects",
        }
        sr = info.spatial_reference if (crs is None or crs.equals(layer_crs)) else _sr_json(crs)
        if sr:
            params["inSR"] = sr
        return params

    def _base_params(self) -> dict[str, Any]:
        info, schema = self._require_open()
        out_fields = "*" if self.fields is None else ",".join(f.name for f in schema.attribute_fields)
        params: dict[str, Any] = {
            "where": self.where,
            "outFields": out_fields,
            "returnGeometry": info.has_geometry,
        }
        if info.has_geometry:
            if info.schema.has_z:
                params["returnZ"] = True
            if self.out_crs is not None:
                params["outSR"] = _sr_json(self.out_crs)
        params.update(self._filter_params())
        return params

    def _query(self, extra: dict[str, Any], *, where: str | None = None) -> tuple[FeatureBatch, bool]:
        """One feature page → (decoded batch, exceededTransferLimit)."""
        info, schema = self._require_open()
        params = self._base_params()
        if where is not None:
            params["where"] = where
        params.update(extra)
        params["f"] = self.response_format
        data = self.client.post(info.url + "/query", params)
        if self.response_format == "geojson":
            feats = data.get("features") or []
            batch = decode_geojson_features(feats, schema)
            flag = bool((data.get("properties") or {}).get("exceededTransferLimit") or data.get("exceededTransferLimit"))
        else:
            if "features" not in data:
                raise ArcGISError(f"{info.url}/query answered without a features list; is it a layer query endpoint?")
            batch = decode_features(data["features"], schema)
            flag = bool(data.get("exceededTransferLimit"))
        with self._lock:
            self.stats.pages += 1
            pages = self.stats.pages - self._pages_before_plan
            if len(batch):
                self._min_rows = min(self._min_rows, len(batch))
        budget = self._budget()
        if budget is not None and pages > budget:
            plan = self.plan()
            raise PagingError(
                f"plan {plan.strategy.value} for {info.url} needed more than {budget} requests for {plan.count} "
                f"features at {self._page_size} per page; the server's answers do not add up (a count too high, "
                f"or pages shorter than they say). Retry; if it repeats, try another --strategy, and report the "
                f"server version ({info.current_version})"
            )
        return batch, flag

    def _oids(self, batch: FeatureBatch) -> np.ndarray:
        info, schema = self._require_open()
        if schema.oid_field is None:
            raise PagingError(f"layer {info.url} has no OID field; its pages cannot be told apart by id")
        col = batch.column(schema.oid_field)
        if col.null_count:
            raise PagingError(
                f"{info.url} sent features without an {schema.oid_field} value; they cannot be checked. "
                f"Report it to the server's administrator"
            )
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)

    def _row_keys(self, batch: FeatureBatch) -> list[bytes]:
        """One digest per row of attributes and geometry: the identity of a feature without an OID."""
        attrs = batch.attributes.to_pylist()
        wkb: list[Any] = [None] * len(batch) if batch.geometry is None else shapely.to_wkb(batch.geometry).tolist()
        return [hashlib.blake2b(repr((row, g)).encode(), digest_size=16).digest() for row, g in zip(attrs, wkb)]

    def _observe_cap(self, rows: int) -> None:
        """A page came back with fewer rows than asked while more remained: the real cap."""
        if rows < 1:
            return
        with self._lock:
            if rows < self._page_size:
                log.info("server returned %d rows for a page of %d; using %d", rows, self._page_size, rows)
                self.stats.notes.append(f"server capped pages at {rows} (asked {self._page_size})")
                self._page_size = rows
                self.stats.page_size = rows

    def _halve(self, size: int, exc: Exception) -> None:
        if size <= 1:
            raise exc
        with self._lock:
            self._page_size = max(1, min(self._page_size, size // 2))
            self.stats.page_size = self._page_size
            self.stats.notes.append(f"page size halved to {self._page_size} after: {exc}")
        log.warning("page of %d failed (%s); retrying with %d", size, exc, self._page_size)

    # ------------------------------------------------------------------ probes and plan

    def count(self) -> int:
        """The server's count for the query; PagingError when it gives none."""
        info, _ = self._require_open()
        value, problem = self._count_answer()
        if value is None:
            raise PagingError(f"{info.url}: {problem}; completeness cannot be checked")
        return value

    def _count_answer(self) -> tuple[int | None, str | None]:
        """(count, None), or (None, how the server failed to give one) for a layer without counts.

        A malformed count ("abc", -1, 1e300) raises PagingError; a rejected count request
        raises QueryError unless a plain query with the same where clause works (then the
        server refuses counts, not the query).
        """
        info, _ = self._require_open()
        params = self._base_params()
        params.update({"returnCountOnly": True, "returnGeometry": False})
        params.pop("outSR", None)
        try:
            data = self.client.post(info.url + "/query", params)
        except QueryError as exc:
            if self._plain_query_works():
                return None, f"returnCountOnly was refused ({exc})"
            # The count is the first query: a bad where clause or filter shows up here.
            raise QueryError(
                f"the server rejected the query with where clause {self.where!r}: {exc}; check field names "
                f"(ags-etl inspect lists them) and quoting (strings in single quotes)",
                code=exc.code,
                details=exc.details,
            ) from exc
        if "count" not in data:
            if isinstance(data.get("features"), list):
                # Cook County IL answers a count request with a page of features (flag ignored).
                return None, f"returnCountOnly was answered with {len(data['features'])} features instead of a count"
            return None, "returnCountOnly was answered without a count (keys: " + ", ".join(sorted(data)[:4]) + ")"
        return paging.as_count(data["count"], "returnCountOnly", info.url), None

    def _plain_query_works(self) -> bool:
        """Whether the where clause and filter work in a plain query (one page, no geometry)."""
        info, schema = self._require_open()
        params = self._base_params()
        params.update({"returnGeometry": False, "outFields": schema.oid_field or "*"})
        params.pop("outSR", None)
        try:
            self.client.post(info.url + "/query", params)
        except ServiceError:
            return False
        return True

    def _probe_ids(self) -> tuple[np.ndarray | None, str | None]:
        info, _ = self._require_open()
        params = self._base_params()
        params.update({"returnIdsOnly": True, "returnGeometry": False})
        params.pop("outSR", None)
        try:
            data = self.client.post(info.url + "/query", params)
        except (ServiceError, TransientError) as exc:
            return None, str(exc)
        if "objectIds" not in data:
            return None, "the answer held no objectIds (it held " + ", ".join(sorted(data)[:4]) + ")"
        raw = data["objectIds"]
        return paging.normalise_ids([] if raw is None else raw, info.url), None  # null: no ids (10.x, empty query)

    def _probe_offset(self) -> bool | None:
        info, schema = self._require_open()
        if not info.supports_pagination or schema.oid_field is None:
            return None
        try:
            p1, _ = self._query({"resultOffset": 0, "resultRecordCount": 2, "orderByFields": f"{schema.oid_field} ASC"})
            p2, _ = self._query({"resultOffset": 1, "resultRecordCount": 2, "orderByFields": f"{schema.oid_field} ASC"})
        except (ServiceError, TransientError):
            return False
        o1, o2 = np.sort(self._oids(p1)), np.sort(self._oids(p2))
        # Some servers ignore resultOffset (GDAL compares first OIDs of consecutive pages):
        # page [1, 3) must start where page [0, 2) ends. Rows within a page may come in any order.
        return len(o1) == 2 and len(o2) >= 1 and o2[0] == o1[1] and o1[0] < o1[1]

    def _probe_range(self, count: int) -> tuple[int | None, int | None, int | None]:
        info, schema = self._require_open()
        oid = schema.oid_field
        if oid is None or info.oid_is_hash:
            return None, None, None
        params = {
            "where": self.where,
            "returnGeometry": False,
            "outStatistics": [
                {"statisticType": "min", "onStatisticField": oid, "outStatisticFieldName": "AGS_ETL_MIN"},
                {"statisticType": "max", "onStatisticField": oid, "outStatisticFieldName": "AGS_ETL_MAX"},
            ],
        }
        try:
            data = self.client.post(info.url + "/query", params)
            attrs = (data.get("features") or [{}])[0].get("attributes") or {}
        except (ServiceError, TransientError, IndexError):
            return None, None, None  # Kent MI 10.22: statistics → 400 "Unable to complete operation."
        lo = hi = None
        for key, value in attrs.items():
            # Tuolumne CA 10.11 names the columns "MIN(SHAPE.fid) AS THE_MIN": match loosely.
            k = key.lower()
            if value is None:
                continue
            if "min" in k and lo is None:
                lo = paging.as_oid(value, "the minimum OID from outStatistics", info.url)
            elif "max" in k and hi is None:
                hi = paging.as_oid(value, "the maximum OID from outStatistics", info.url)
        if lo is None or hi is None:
            return None, None, None
        params2 = self._base_params()
        params2.update(
            {
                "where": paging.where_and(self.where, f"{oid} >= {lo} AND {oid} <= {hi}"),
                "returnCountOnly": True,
                "returnGeometry": False,
            }
        )
        try:
            answer = self.client.post(info.url + "/query", params2)
        except (ServiceError, TransientError):
            return None, None, None
        if "count" not in answer:
            return None, None, None
        return lo, hi, paging.as_count(answer["count"], f"returnCountOnly for OIDs {lo}..{hi}", info.url)

    def probe(self) -> Probes:
        """Run the cheap requests the planner needs (count, then what the ladder asks)."""
        if self._probes is not None:
            return self._probes
        _, schema = self._require_open()
        count, count_problem = self._count_answer()
        forced = self.forced
        if count is None:
            # No count: an id list can stand in for one; offsets and OID ranges cannot be checked.
            probes = Probes(count=None, count_problem=count_problem)
            if schema.oid_field is not None and forced in (None, Strategy.OID_LIST):
                ids, problem = self._probe_ids()
                probes = replace(probes, ids=ids, ids_problem=problem)
            self._probes = probes
            return probes
        probes = Probes(count=count)
        if count > 0 and schema.oid_field is not None:
            if forced in (None, Strategy.OID_LIST):
                ids, problem = self._probe_ids()
                probes = Probes(count=count, ids=ids, ids_problem=problem)
            ids_ok = probes.ids is not None and len(probes.ids) == count
            if forced is Strategy.OFFSET or (forced is None and not ids_ok):
                probes = replace(probes, offset_works=self._probe_offset())
            if forced is Strategy.OID_RANGE or (forced is None and not ids_ok and not probes.offset_works):
                lo, hi, rc = self._probe_range(count)
                probes = replace(probes, oid_min=lo, oid_max=hi, range_count=rc)
        self._probes = probes
        return probes

    def plan(self) -> Plan:
        if self._plan is None:
            info, _ = self._require_open()
            probes = self.probe()
            plan = paging.choose_strategy(info, probes, self._page_size, self.forced)
            self._plan = plan
            self.stats.strategy = plan.strategy.value
            self.stats.expected = plan.count
            if plan.unchecked is not None:
                self.stats.unchecked = plan.unchecked
                self.stats.notes.append(plan.unchecked)
                log.warning("%s: %s", info.url, plan.unchecked)
        return self._plan

    # ------------------------------------------------------------------ strategies (run in worker threads)

    def _run_id_chunk(self, ids: np.ndarray) -> FeatureBatch:
        """All features of ``ids``: re-asks for ids a short page left out; halves on failures."""
        pending = ids
        parts: list[FeatureBatch] = []
        stalled = 0
        while len(pending):
            size = min(len(pending), self._page_size)
            sub, rest = pending[:size], pending[size:]
            try:
                batch, flag = self._query({"objectIds": ",".join(map(str, sub.tolist()))})
            except TransientError as exc:
                self._halve(size, exc)
                continue
            got = self._oids(batch)
            keep = np.isin(got, sub) & paging.first_occurrence_mask(got)
            if not keep.all():
                with self._lock:
                    self.stats.strays_dropped += int((~keep).sum())
                batch = batch.filter(keep)
                got = got[keep]
            parts.append(batch)
            missing = paging.missing_ids(sub, got)
            if len(missing):
                if len(got) == 0:
                    stalled += 1
                    if stalled >= MAX_STALLED_ROUNDS:
                        log.warning("%d ids were not returned by the server; the count check will decide", len(missing))
                        pending = rest
                        continue
                else:
                    stalled = 0
                    if flag or len(got) < len(sub):
                        self._observe_cap(len(got))
            pending = np.concatenate([missing, rest]) if len(missing) else rest
        return self._concat(parts)

    def _run_offset_page(self, page: tuple[int, int]) -> FeatureBatch:
        """Rows [offset, offset+n) ordered by OID; a short page is followed up, not taken as the end."""
        _, schema = self._require_open()
        offset, n = page
        pos, remaining = offset, n
        parts: list[FeatureBatch] = []
        while remaining > 0:
            size = min(remaining, self._page_size)
            try:
                batch, flag = self._query(
                    {"resultOffset": pos, "resultRecordCount": size, "orderByFields": f"{schema.oid_field} ASC"}
                )
            except TransientError as exc:
                self._halve(size, exc)
                continue
            rows = len(batch)
            if rows == 0:
                self._empty_page(pos)
                break  # nothing at this offset: the completeness check decides, unless it keeps happening
            parts.append(batch)
            pos += rows
            remaining -= rows
            if rows < size and flag:
                self._observe_cap(rows)
            # A short page without the flag is followed up all the same: some servers
            # (e.g. behind spatial-index filtering, 10.3+) send short pages mid-layer.
        return self._concat(parts)

    def _empty_page(self, offset: int) -> None:
        """An offset page below the count came back empty; a few may (the layer shrank), many may not."""
        info, _ = self._require_open()
        plan = self.plan()
        with self._lock:
            self._empty_pages += 1
            empties = self._empty_pages
        if empties >= paging.MAX_EMPTY_PAGES:
            raise PagingError(
                f"offset plan for {info.url}: {empties} pages came back empty (the last at offset {offset}) "
                f"although the server counts {plan.count} features; the count or the paging does not work. "
                f"Try --strategy oid-list or oid-range, or report the server version ({info.current_version})"
            )

    def _walk_windows(self, lo: int, hi: int) -> Iterator[FeatureBatch]:
        """Sparse OID range: adaptive windows, one at a time (see paging.WindowWalk)."""
        walk = paging.WindowWalk(lo, hi, self._page_size)
        while (window := walk.window()) is not None:
            batch, flag = self._window_query(window)
            if flag:
                self._observe_cap(len(batch))
                walk.record(window, len(batch), True, self._page_size)
                continue
            batch = self._keep_window(batch, window)
            walk.record(window, len(batch), False, self._page_size)
            if len(batch):
                yield batch

    def _window_query(self, window: tuple[int, int]) -> tuple[FeatureBatch, bool]:
        _, schema = self._require_open()
        oid = schema.oid_field
        a, b = window
        return self._query({}, where=paging.where_and(self.where, f"{oid} >= {a} AND {oid} <= {b}"))

    def _keep_window(self, batch: FeatureBatch, window: tuple[int, int]) -> FeatureBatch:
        """Rows of ``batch`` inside ``window``, each OID once."""
        got = self._oids(batch)
        keep = (got >= window[0]) & (got <= window[1]) & paging.first_occurrence_mask(got)
        return batch.filter(keep) if not keep.all() else batch

    def _run_window(self, window: tuple[int, int]) -> FeatureBatch:
        """Rows with OID in [a, b]; a window over the transfer limit is halved."""
        stack = [window]
        parts: list[FeatureBatch] = []
        while stack:
            a, b = stack.pop()
            try:
                batch, flag = self._window_query((a, b))
            except TransientError as exc:
                if a >= b:
                    raise
                log.warning("window %d..%d failed (%s); splitting", a, b, exc)
                stack.extend(reversed(paging.split_window((a, b))))
                continue
            if flag:
                self._observe_cap(len(batch))
                stack.extend(reversed(paging.split_window((a, b))))
                continue
            parts.append(self._keep_window(batch, (a, b)))
        return self._concat(parts)

    def _box_query(self, box: BBox) -> tuple[FeatureBatch, bool]:
        info, _ = self._require_open()
        sr = (info.extent or {}).get("spatialReference") or info.spatial_reference
        extra: dict[str, Any] = {
            "geometry": {"xmin": box[0], "ymin": box[1], "xmax": box[2], "ymax": box[3]},
            "geometryType": "esriGeometryEnvelope",
            "spatialRel": "esriSpatialRelIntersects",
        }
        if sr:
            extra["inSR"] = sr
        return self._query(extra)

    def _box_complete(self, rows: int, flag: bool) -> bool:
        """A box is complete when it came back below the cap without the flag.

        A full page without the flag is not trusted (10.0 servers never set it). A flagged
        page teaches the real cap: the rows the server sent.
        """
        with self._lock:
            if flag and 0 < rows < self._box_cap:
                log.info("server cut a box at %d rows (cap was %d); using %d", rows, self._box_cap, rows)
                self.stats.notes.append(f"server capped boxes at {rows} (advertised {self._box_cap})")
                self._box_cap = rows
            return not flag and rows < self._box_cap

    def _check_one_spot(self, batch: FeatureBatch) -> None:
        """A full box whose features all lie at one point: fail if that point alone fills a page.

        Stacked points below the cap are fine (a smaller box holds them all); above it no
        box can separate them. Checked with one tiny box around the point, in the layer's
        CRS (skipped when the server reprojects: the depth limit then decides).
        """
        info, _ = self._require_open()
        if batch.geometry is None or len(batch) < 2 or self.out_crs is not None:
            return
        geoms = batch.geometry
        if shapely.get_type_id(geoms[0]) != 0 or not bool(np.all(shapely.equals_exact(geoms, geoms[0], 0.0))):
            return
        x, y = float(shapely.get_x(geoms[0])), float(shapely.get_y(geoms[0]))
        eps = max(abs(x), abs(y), 1.0) * 1e-9
        spot, flag = self._box_query((x - eps, y - eps, x + eps, y + eps))
        if not self._box_complete(len(spot), flag):
            raise PagingError(
                f"{info.url} has more features at the single point ({x}, {y}) than it returns per request "
                f"({self._box_cap}); no box can separate them, so splitting the extent cannot get them all. "
                f"Ask the server's administrator to enable returnIdsOnly or pagination, or to raise maxRecordCount"
            )

    def _run_box(self, task: tuple[BBox, int]) -> FeatureBatch:
        """Rows intersecting a box; a box that is not complete is split in four, to a depth limit."""
        info, _ = self._require_open()
        stack = [task]
        parts: list[FeatureBatch] = []
        while stack:
            box, depth = stack.pop()
            try:
                batch, flag = self._box_query(box)
            except TransientError as exc:
                if depth >= paging.MAX_SPLIT_DEPTH:
                    raise
                log.warning("box %s failed (%s); splitting it", box, exc)
                stack.extend((b, depth + 1) for b in paging.split_envelope(box))
                continue
            if not self._box_complete(len(batch), flag):
                self._check_one_spot(batch)
                if depth >= paging.MAX_SPLIT_DEPTH:
                    raise PagingError(
                        f"spatial split of {info.url} reached depth {depth} with box {box} still at the page cap "
                        f"({self._box_cap}); the layer has too many features at one place for splitting by boxes. "
                        f"Ask the server's administrator to enable returnIdsOnly or pagination"
                    )
                stack.extend((b, depth + 1) for b in paging.split_envelope(box))
                continue
            parts.append(batch)
        return self._concat(parts)

    def _concat(self, parts: list[FeatureBatch]) -> FeatureBatch:
        _, schema = self._require_open()
        if not parts:
            return FeatureBatch.empty(schema.arrow_schema(), schema.crs, schema.geometry_type is not None)
        return parts[0] if len(parts) == 1 else FeatureBatch.concat(parts)

    def _dedupe_global(self, batch: FeatureBatch) -> FeatureBatch:
        """Drop rows already yielded (offset and spatial plans can overlap): by OID, or by a
        digest of attributes and geometry on a layer without an OID field."""
        _, schema = self._require_open()
        if schema.oid_field is None:
            mask = np.zeros(len(batch), dtype=bool)
            for i, key in enumerate(self._row_keys(batch)):
                if key not in self._seen_rows:
                    self._seen_rows.add(key)
                    mask[i] = True
        else:
            oids = self._oids(batch)
            mask = paging.first_occurrence_mask(oids)
            fresh = np.fromiter((int(o) not in self._seen for o in oids), dtype=bool, count=len(oids))
            mask &= fresh
            self._seen.update(int(o) for o in oids[mask])
        dropped = int((~mask).sum())
        if dropped:
            self.stats.duplicates_dropped += dropped
            return batch.filter(mask)
        return batch

    def _tasks(self, plan: Plan) -> tuple[Callable[[Any], FeatureBatch], Iterable[Any], bool]:
        """(worker, tasks, needs global dedupe) for a plan."""
        info, _ = self._require_open()
        probes = self.probe()
        if plan.strategy is Strategy.OID_LIST:
            assert probes.ids is not None
            return self._run_id_chunk, paging.id_chunks(probes.ids, lambda: self._page_size), False
        if plan.strategy is Strategy.OFFSET:
            assert plan.count is not None
            return self._run_offset_page, paging.offset_pages(plan.count, plan.page_size), True
        if plan.strategy is Strategy.OID_RANGE:
            assert probes.oid_min is not None and probes.oid_max is not None
            return self._run_window, paging.oid_windows(probes.oid_min, probes.oid_max, plan.page_size), False
        if info.extent is None:
            raise PagingError(f"layer {info.url} advertises no usable extent to split; try another --strategy")
        extent = info.extent
        box: BBox = (float(extent["xmin"]), float(extent["ymin"]), float(extent["xmax"]), float(extent["ymax"]))
        return self._run_box, [(b, 1) for b in paging.split_envelope(box)], True

    def _batches(self, plan: Plan) -> Iterator[FeatureBatch]:
        """The plan's pages in order, before global dedupe; the request bound is set here."""
        probes = self.probe()
        span = None
        if plan.strategy is Strategy.OID_RANGE and probes.oid_min is not None and probes.oid_max is not None:
            span = (probes.oid_min, probes.oid_max)
        self._pages_before_plan = self.stats.pages
        self._budget = lambda: paging.request_budget(
            plan.strategy, plan.count, min(self._page_size, self._min_rows), span
        )
        if span is not None and plan.count is not None and not paging.is_dense(*span, plan.count, plan.page_size):
            log.info("OIDs %d..%d are sparse for %d features: adaptive windows", span[0], span[1], plan.count)
            yield from self._walk_windows(*span)
            return
        worker, tasks, dedupe = self._tasks(plan)
        for batch in ordered_map(worker, tasks, self.concurrency):
            yield self._dedupe_global(batch) if dedupe else batch

    # ------------------------------------------------------------------ iteration

    def __iter__(self) -> Iterator[FeatureBatch]:
        info, schema = self._require_open()
        plan = self.plan()
        log.info("%s: %s features, strategy %s, page size %d", info.url, plan.count, plan.strategy.value, plan.page_size)
        if plan.count is None or plan.count > 0:
            if schema.oid_field is None and plan.strategy not in (Strategy.SPATIAL, Strategy.BOX_SPLIT):
                raise PagingError(
                    f"layer {info.url} has no OID field (fields: {', '.join(schema.field_names[:8])}) and "
                    f"{plan.strategy.value} pages by OID; use --strategy spatial, or ask the server's "
                    f"administrator to publish the layer with an OID field"
                )
            for batch in self._batches(plan):
                if len(batch) == 0:
                    continue
                self.stats.features += len(batch)
                yield batch
        self.stats.requests = self.client.requests_made
        self.stats.retries = self.client.retries_made
        self._check_complete(plan)

    def _check_complete(self, plan: Plan) -> None:
        """Distinct features read must equal the server's count; skipped only without a count (box-split)."""
        info, _ = self._require_open()
        got = self.stats.features
        if plan.count is None:
            log.warning("%s: read %d features; %s", info.url, got, plan.unchecked)
            return
        if got == plan.count:
            return
        recount = self.count()
        changed = "" if recount == plan.count else f" (the count was {plan.count} at the start: the layer changed)"
        if plan.strategy in (Strategy.SPATIAL, Strategy.BOX_SPLIT) and got < recount:
            changed += " (a spatial plan cannot see features without geometry or outside the layer's extent)"
        raise IncompleteExtractError(
            f"read {got} distinct features from {info.url} but the server counts {recount} for where "
            f"{self.where!r}{changed}; nothing was written. Retry; if it repeats, try --strategy or a smaller "
            f"--page-size, and report the server version ({info.current_version})",
            expected=recount,
            got=got,
        )


def _sr_json(crs: CRS) -> dict[str, Any]:
    epsg = crs.to_epsg()
    if epsg is not None:
        return {"wkid": epsg}
    auth = crs.to_authority()
    if auth is not None and auth[0] == "ESRI":
        return {"wkid": int(auth[1])}
    return {"wkt": crs.to_wkt("WKT1_ESRI")}

