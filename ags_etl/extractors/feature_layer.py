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
add up end the run with a PagingError, never an endless loop.

The work is split (see docs/decisions/task-extractor.md): a planner per strategy
(:mod:`ags_etl.extractors.plans`) hands out picklable page tasks and reacts to what
each page reports; one worker function (:func:`ags_etl.extractors.tasks.fetch_page`)
fetches and decodes a task; the driver (:mod:`ags_etl.extractors.driver`) removes
duplicates; an executor (:mod:`ags_etl.extractors.executor`; threads by default) runs
the tasks, at most ``2 × concurrency`` in flight, so memory stays flat as the layer grows.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from dataclasses import replace
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from pyproj import CRS

from ags_etl.arcgis import paging, pbf
from ags_etl.arcgis.auth import Auth
from ags_etl.arcgis.client import DEFAULT_MAX_RESPONSE_BYTES, ArcGISClient, display_url
from ags_etl.arcgis.layer import LayerInfo, parse_layer
from ags_etl.arcgis.paging import Plan, Probes, Strategy
from ags_etl.batch import FeatureBatch
from ags_etl.crs import parse_crs, sr_json, transform_bounds
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
from ags_etl.extractors.driver import ExtractStats, drive
from ags_etl.extractors.executor import Executor, ThreadExecutor, ordered_map
from ags_etl.extractors.plans import MAX_STALLED_ROUNDS, planner_for
from ags_etl.extractors.staging import StagingStore, manifest_for
from ags_etl.extractors.tasks import (
    ClientSpec,
    OffsetPage,
    PageResult,
    PageTask,
    QueryContext,
    fetch_page,
    json_object,
)
from ags_etl.schema import LayerSchema

__all__ = ["MAX_STALLED_ROUNDS", "ExtractStats", "FeatureLayerExtractor", "ordered_map", "validate_url"]

log = logging.getLogger(__name__)

BBox = tuple[float, float, float, float]


_ID_LIST_KEY = b'"objectIds"'


def ids_from_raw(body: bytes) -> np.ndarray | None:
    """A ``returnIdsOnly`` answer's raw JSON → sorted unique int64 ids, never a Python int per id.

    A million ids parsed as JSON cost about 36 MB of Python ints (the peak of a large
    pull); read here from the bytes of the list straight into int64 they cost 8 MB. Only a
    plain list is read so — digits, commas and blanks, one ``objectIds`` member, every id
    whole and at most 2**53; anything else (floats, strings, null, negative ids) returns
    None, and the caller parses the answer and
    :func:`ags_etl.arcgis.paging.normalise_ids` decides and names what is wrong.
    """
    if body.count(_ID_LIST_KEY) != 1:
        return None
    key = body.index(_ID_LIST_KEY) + len(_ID_LIST_KEY)
    colon = body.find(b":", key)
    if colon < 0 or body[key:colon].strip() or not body[colon + 1 :].lstrip().startswith(b"["):
        return None
    start = body.index(b"[", colon) + 1
    end = body.find(b"]", start)
    if end < 0:
        return None
    text = body[start:end]
    if text.translate(None, b"0123456789, \t\r\n"):
        return None  # not digits and commas only
    if not text.strip():
        return np.empty(0, dtype=np.int64)
    try:
        ids = np.fromstring(text, dtype=np.int64, sep=",")
    except ValueError:  # an empty element ("1,,2")
        return None
    del text
    if len(ids) != body.count(b",", start, end) + 1 or int(ids.min()) < 0 or int(ids.max()) > paging.MAX_PLAUSIBLE:
        return None
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        ids = np.unique(ids)  # servers usually send them sorted; otherwise sort and drop repeats
    return ids


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
        executor: Executor | None = None,
        staging: StagingStore | None = None,
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
        if response_format not in pbf.RESPONSE_FORMATS:
            raise ConfigError(
                f"response format {response_format!r} is not one of {', '.join(pbf.RESPONSE_FORMATS)}"
            )
        self.out_crs = parse_crs(out_sr) if out_sr is not None else None
        self.spatial_filter = spatial_filter
        self.concurrency = concurrency
        self.requested_page_size = page_size
        self.response_format = response_format
        self._own_client = client is None
        #: Runs page tasks; threads by default. Replaceable: see ags_etl.extractors.executor.
        self.executor: Executor = executor if executor is not None else ThreadExecutor(concurrency)
        self._client_spec = ClientSpec(
            key=uuid.uuid4().hex,
            auth=auth if client is None else client.auth,
            timeout=timeout if client is None else client.timeout,
            retries=retries if client is None else client.retries,
            backoff=backoff if client is None else client.backoff,
            max_response_bytes=max_response_bytes if client is None else client.max_response_bytes,
        )
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
        self._format: pbf.FormatChoice | None = None
        #: Completed pages of a resumable run (``--resume``); removed once the run succeeded.
        self.staging = staging
        self._complete = False

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> FeatureLayerExtractor:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            # Exited without an error after a complete extraction: the output is committed
            # (the loader's block is inside this one), so the staged pages are done with.
            if exc_type is None and self._complete and self.staging is not None:
                self.staging.remove()
        finally:
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
            bbox = transform_bounds(bbox, crs, layer_crs)
            crs = layer_crs
        params: dict[str, Any] = {
            "geometry": {"xmin": bbox[0], "ymin": bbox[1], "xmax": bbox[2], "ymax": bbox[3]},
            "geometryType": "esriGeometryEnvelope",
            "spatialRel": "esriSpatialRelIntersects",
        }
        sr = info.spatial_reference if (crs is None or crs.equals(layer_crs)) else sr_json(crs)
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
                params["outSR"] = sr_json(self.out_crs)
        params.update(self._filter_params())
        return params

    def context(self) -> QueryContext:
        """The picklable description of this query that page tasks run against."""
        info, schema = self._require_open()
        box_sr = (info.extent or {}).get("spatialReference") or info.spatial_reference
        choice = self.format_choice()
        params = self._base_params()
        if choice.format == "pbf":
            params.update(self._pbf_params())
        return QueryContext(
            url=info.url,
            params=params,
            where=self.where,
            schema=schema,
            response_format=choice.format,
            box_sr=box_sr or None,
            client=self._client_spec,
        )

    def _pbf_params(self) -> dict[str, Any]:
        """``quantizationParameters`` for f=pbf: the extent (in the output CRS) and a tolerance finer than the data."""
        info, _ = self._require_open()
        if not info.has_geometry or info.extent is None:
            return {}
        e = info.extent
        box = (float(e["xmin"]), float(e["ymin"]), float(e["xmax"]), float(e["ymax"]))
        sr = (e.get("spatialReference") or info.spatial_reference) or None
        if self.out_crs is not None and info.schema.crs is not None and not self.out_crs.equals(info.schema.crs):
            box = transform_bounds(box, info.schema.crs, self.out_crs)
            sr = sr_json(self.out_crs)
        return {"quantizationParameters": pbf.quantization_parameters(box, sr)}

    def format_choice(self) -> pbf.FormatChoice:
        """The response format pages use and why (``stats.response_format``); PBF is checked
        against JSON on a sample page first (see :func:`ags_etl.arcgis.pbf.check_first_page`)."""
        if self._format is None:
            info, schema = self._require_open()
            choice = pbf.choose_format(self.response_format, info)
            if choice.check:
                params = {**self._base_params(), **self._pbf_params()}
                choice = pbf.check_first_page(self.client, info.url, params, info, schema, choice)
                if choice.format != "pbf":
                    log.warning("%s: %s", info.url, choice.reason)
                    self.stats.notes.append(choice.reason)
            self._format = choice
            self.stats.response_format = f"{choice.format} ({choice.reason})"
        return self._format

    def _fetch(self, task: PageTask) -> PageResult:
        """One task in this process, with this extractor's client (probes use it too)."""
        return fetch_page(task, self.context(), self.client)

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
            answer = self.client.post_raw(info.url + "/query", params)
        except (ServiceError, TransientError) as exc:
            return None, str(exc)
        if isinstance(answer, bytes):
            ids = ids_from_raw(answer)
            if ids is not None:
                return ids, None
            answer = json_object(answer, info.url + "/query")
        data = answer
        if "objectIds" not in data:
            return None, "the answer held no objectIds (it held " + ", ".join(sorted(data)[:4]) + ")"
        raw = data["objectIds"]
        return paging.normalise_ids([] if raw is None else raw, info.url), None  # null: no ids (10.x, empty query)

    def _probe_offset(self) -> bool | None:
        info, schema = self._require_open()
        if not info.supports_pagination or schema.oid_field is None:
            return None
        try:
            p1, p2 = self._fetch(OffsetPage(0, 2)), self._fetch(OffsetPage(1, 2))
        except ServiceError:
            return False
        self.stats.pages += 2
        if p1.failure is not None or p2.failure is not None or p1.oids is None or p2.oids is None:
            return False
        o1, o2 = np.sort(p1.oids), np.sort(p2.oids)
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

    # ------------------------------------------------------------------ running the plan

    def _batches(self, plan: Plan) -> Iterator[FeatureBatch]:
        """The plan's pages in order, duplicates removed: the planner, run by the driver on the executor."""
        info, schema = self._require_open()
        planner = planner_for(plan, self.probe(), info, check_spots=self.out_crs is None, notes=self.stats.notes)
        ctx = self.context()
        if self.staging is not None:
            probes = self.probe()
            manifest = manifest_for(info, ctx.params, ctx.response_format, plan, probes, self._max_oid(probes))
            discarded = self.staging.begin(manifest, schema)
            if discarded is not None:
                self.stats.notes.append(discarded)
        if self.executor.shares_memory:
            fetch = partial(fetch_page, ctx=ctx, client=self.client)
        else:
            fetch = partial(fetch_page, ctx=ctx)  # picklable: each worker process builds its own client
        yield from drive(
            planner,
            fetch,
            self.executor,
            self.stats,
            oid_field=schema.oid_field,
            version=info.current_version,
            staging=self.staging,
        )

    def _max_oid(self, probes: Probes) -> int | None:
        """The highest OID matching the query, for a resumed run's layer fingerprint: the last
        id of the id list, the statistics probe's maximum, or one statistics request (None
        when the layer has no OID field or the server gives no statistics)."""
        info, schema = self._require_open()
        if probes.ids is not None:
            return int(probes.ids[-1]) if len(probes.ids) else None
        if probes.oid_max is not None:
            return probes.oid_max
        if schema.oid_field is None or info.oid_is_hash:
            return None
        params = {
            "where": self.where,
            "returnGeometry": False,
            "outStatistics": [
                {"statisticType": "max", "onStatisticField": schema.oid_field, "outStatisticFieldName": "AGS_ETL_MAX"}
            ],
        }
        try:
            data = self.client.post(info.url + "/query", params)
            attrs = (data.get("features") or [{}])[0].get("attributes") or {}
        except (ServiceError, TransientError, IndexError):
            return None  # no statistics: count and last edit date still tell a changed layer
        value = next((v for v in attrs.values() if v is not None), None)
        return None if value is None else paging.as_oid(value, "the maximum OID from outStatistics", info.url)

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
        self._complete = True

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


