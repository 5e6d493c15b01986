"""The ``feature_service`` loader: write a stream into an ArcGIS feature layer through ``applyEdits``.

Pipeline form::

    sink:
      type: feature_service
      url: https://host/arcgis/rest/services/Parcels/FeatureServer/0
      mode: upsert            # append | replace | upsert | mirror
      key: PARCEL_ID          # a source field; required for upsert and mirror
      fields: {OLD_NAME: NEW_NAME, Shape__Area: null}   # overrides of the by-name mapping
      auth: {username: …, password: …}                  # or {token} or {api_key}: the target's own

Modes:

* ``append``: every feature is added.
* ``replace``: the target is emptied (``truncate`` where the layer says ``supportsTruncate``,
  else every feature deleted), then every feature is added. The target is emptied when the
  first batch arrives (or at the end for an empty source), so a source that fails before its
  first page leaves the target as it was.
* ``upsert``: the target's keys, OBJECTIDs and values are read first; a feature whose key the
  target lacks is added, one whose mapped attributes or geometry differ (see
  :mod:`ags_etl.arcgis.edits` for how values are compared) is updated, the rest cause no edit.
  An immediate second upsert sends no ``applyEdits`` at all.
* ``mirror``: upsert, then the target's features whose key the source no longer has are deleted
  — only when the whole source was read (the writer block ended without an exception).

Order of work, and when the network is used: :meth:`FeatureServiceLoader.preflight` and
:meth:`~FeatureServiceLoader.check` need no network (options were validated when the loader was
built). :meth:`~FeatureServiceLoader.open` first reads the target's metadata and checks the field
mapping, geometry type, spatial reference and capabilities — a problem there is a
CapabilityError before any edit — then (upsert, mirror) reads the target's keys; only then does it
yield the writer. This extends the Loader contract: a sink whose schema lives on a server checks
it at ``open()``, still before the first edit.

Sending: edits go in batches sized to the geometry (points 1000, lines 250, polygons 100, or
``batch_size``; see :class:`~ags_etl.arcgis.edits.BatchSizer`), halved after a failed or lost
request and grown back after a good one. With a key (upsert, mirror), up to ``concurrency`` (3)
requests of adds or updates are in flight at once, their answers taken in order; the first failed
or unanswered one ends that for the run (the others are awaited, then one request at a time).
``applyEdits`` is never retried blindly — its client has
no automatic retries:

* a request refused as a whole (an error body) is split in halves until the feature at fault is
  alone, which is then reported with the server's message; the others go through;
* a request without an answer (timeout, dropped connection, 5xx) may have been applied: before
  adds are sent again, the keys of that batch are read back from the target and the features now
  present are dropped from the batch (without a key, the target's count tells whether the whole
  batch arrived). Updates and deletes are idempotent and are resent as they are.

Failures per feature (the server's ``success: false`` results, and values the target cannot hold
— text longer than the field, a null in a non-nullable field, checked before sending) are
collected with the feature's key; the good edits still go through (``rollbackOnFailure`` is
false unless ``rollback_on_failure: true``). Leaving the writer block then raises
:class:`~ags_etl.errors.EditError` listing them (``ags-etl run`` exits 1).

``dry_run`` (or ``ags-etl run --dry-run``): the target is read as usual, and each add, update and
delete that would be sent is printed on standard output, one line each; ``applyEdits`` is never
called. The target's token is renewed mid-run like the source's (the same client machinery); no
secret appears in a message, a printed line or the stats.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar, Literal

import numpy as np
import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    field_validator,
    model_validator,
)

from ags_etl.arcgis import edits as plan
from ags_etl.arcgis.auth import Auth, NoAuth, split_url_credentials
from ags_etl.arcgis.client import ArcGISClient, display_url
from ags_etl.arcgis.esrijson import encode_geometry
from ags_etl.arcgis.layer import LayerInfo, parse_layer
from ags_etl.batch import FeatureBatch
from ags_etl.crs import describe_crs
from ags_etl.errors import (
    ArcGISError,
    CapabilityError,
    ConfigError,
    EditError,
    GeometryError,
    ServiceError,
    TransientError,
)
from ags_etl.geometry import transform_geometries
from ags_etl.loaders.base import Loader, LoaderCapabilities, LoadStats
from ags_etl.schema import LayerSchema
from ags_etl.spec import AuthSpec

__all__ = ["EditStats", "FeatureServiceLoader", "Mode"]

log = logging.getLogger(__name__)

Mode = Literal["append", "replace", "upsert", "mirror"]
#: Capabilities (lower-case) each mode needs, when the layer lists its capabilities.
_NEEDS: dict[str, tuple[str, ...]] = {
    "append": ("create",),
    "replace": ("create", "delete"),
    "upsert": ("create", "update"),
    "mirror": ("create", "update", "delete"),
}
#: Requests in a row that may fail or lose their answer before the run gives up.
MAX_STRIKES = 6
#: applyEdits requests in flight at once by default (adds and updates with a key; see _EditWriter._may_overlap).
EDITS_IN_FLIGHT = 3
#: Keys asked per re-read query after a lost answer.
KEYS_PER_QUERY = 100
#: Failures listed in the EditError message (all are in ``stats.failures``).
SHOWN_FAILURES = 10


class EditStats(LoadStats):
    """LoadStats plus what the edits did. ``features`` counts the source features the target now
    holds as the source has them (added + updated + unchanged)."""

    def __init__(self) -> None:
        super().__init__()
        self.added = 0
        self.updated = 0
        self.deleted = 0
        self.unchanged = 0
        self.requests = 0
        self.lost_answers = 0
        self.failures: list[plan.EditFailure] = []

    def summary(self) -> str:
        return (
            f"{self.added} added, {self.updated} updated, {self.deleted} deleted, {self.unchanged} unchanged, "
            f"{len(self.failures)} failed"
        )


class FeatureServiceLoader(Loader):
    """Writes into an ArcGIS feature layer or table; see the module docstring for the contract."""

    name: ClassVar[str] = "feature_service"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(extensions=(), supports_tables=True)

    class Options(BaseModel):
        """Pipeline-file sink keys (the sink takes no ``path``)."""

        model_config = ConfigDict(extra="forbid")
        url: str
        mode: Mode
        key: str | None = None
        fields: dict[str, str | None] = Field(default_factory=dict)
        auth: AuthSpec | None = None
        batch_size: PositiveInt | None = None
        rollback_on_failure: bool = False
        dry_run: bool = False
        timeout: PositiveFloat = 60.0
        retries: NonNegativeInt = 5

        @field_validator("url")
        @classmethod
        def _layer_url(cls, value: str) -> str:
            from ags_etl.extractors.feature_layer import validate_url

            clean, user, password = split_url_credentials(value)
            if user is not None or password is not None:
                raise ValueError("the url holds credentials; give them under auth ({username, password}) instead")
            try:
                return validate_url(clean)
            except ConfigError as exc:
                raise ValueError(str(exc)) from exc

        @model_validator(mode="after")
        def _key_for_mode(self) -> FeatureServiceLoader.Options:
            if self.mode in ("upsert", "mirror") and self.key is None:
                raise ValueError(f"mode {self.mode} needs key: the source field that identifies a feature")
            return self

    def __init__(
        self,
        url: str,
        *,
        mode: Mode,
        key: str | None = None,
        fields: dict[str, str | None] | None = None,
        auth: Auth | None = None,
        batch_size: int | None = None,
        rollback_on_failure: bool = False,
        dry_run: bool = False,
        timeout: float = 60.0,
        retries: int = 5,
        overwrite: bool = False,
        echo: Callable[[str], None] | None = None,
        concurrency: int = EDITS_IN_FLIGHT,
    ) -> None:
        super().__init__(overwrite=overwrite)
        from ags_etl.extractors.feature_layer import validate_url

        clean, user, password = split_url_credentials(url)
        if user is not None or password is not None:
            raise ConfigError(
                f"feature_service url {display_url(clean)} holds credentials; give them under auth "
                "({username, password}) instead"
            )
        self.url = validate_url(clean)
        if mode not in _NEEDS:
            raise ConfigError(f"feature_service mode {mode!r} is not one of {', '.join(_NEEDS)}")
        if mode in ("upsert", "mirror") and key is None:
            raise ConfigError(f"feature_service mode {mode} needs key: the source field that identifies a feature")
        if concurrency < 1:
            raise ConfigError(f"feature_service concurrency must be 1 or more, got {concurrency}")
        if batch_size is not None and batch_size < 1:
            raise ConfigError(f"feature_service batch_size must be 1 or more, got {batch_size}")
        self.mode: Mode = mode
        self.key = key
        self.fields = dict(fields or {})
        self.auth = auth if auth is not None else NoAuth()
        self.batch_size = batch_size
        self.rollback_on_failure = rollback_on_failure
        self.dry_run = dry_run
        self.timeout = timeout
        self.retries = retries
        self.echo = echo if echo is not None else _print
        self.concurrency = concurrency

    @classmethod
    def from_options(cls, opts: Options, *args: Any, overwrite: bool = False) -> FeatureServiceLoader:
        """Build from validated pipeline options; a ``path`` (positional) is refused."""
        if args:
            raise ConfigError("the feature_service sink takes url, not path; remove path from the sink")
        from ags_etl.build import build_auth

        return cls(
            opts.url,
            mode=opts.mode,
            key=opts.key,
            fields=opts.fields,
            auth=build_auth(opts.auth),
            batch_size=opts.batch_size,
            rollback_on_failure=opts.rollback_on_failure,
            dry_run=opts.dry_run,
            timeout=opts.timeout,
            retries=opts.retries,
            overwrite=overwrite,
        )

    @property
    def target(self) -> str | None:
        return display_url(self.url)

    # ------------------------------------------------------------------ sync jobs
    #
    # A sync job (see ags_etl.sync.DeletingSink) upserts the changed features by ``key``; mode
    # mirror deletes unseen keys only after a full read, and ``sync.detect_deletes`` deletes
    # the keys the source no longer has after every run.

    #: This sink takes part in sync jobs.
    supports_sync: ClassVar[bool] = True
    #: True in an incremental sync run: the stream holds the changed features only, so mirror
    #: deletes nothing at the end of it.
    partial_stream: bool = False
    #: Target key → OBJECTID, as :meth:`existing_keys` read it last, and the key's target field.
    _sync_index: dict[Hashable, int] | None = None
    _sync_key_target: str | None = None

    @classmethod
    def sync_issues(cls, options: dict[str, Any], sync: Any) -> list[tuple[tuple[str | int, ...], str]]:
        """Offline problems of a sync job writing here: ``options`` are the sink's keys,
        ``sync`` the job's SyncSpec. Returns (key path relative to the job, message) pairs."""
        mode, key = options.get("mode"), options.get("key")
        issues: list[tuple[tuple[str | int, ...], str]] = []
        if mode in ("append", "replace"):
            effect = "add every changed feature again" if mode == "append" else "empty the target on every run"
            issues.append((("sink", "mode"), (
                f"a sync job upserts the changed features by key; mode {mode} would {effect}; use mode upsert "
                "(with sync.detect_deletes for deletes) or mirror"
            )))
        if mode == "mirror" and not getattr(sync, "detect_deletes", False):
            issues.append((("sync", "detect_deletes"), (
                "with mode mirror a sync job deletes through sync.detect_deletes (an incremental run reads only the "
                "changes, so absence from it says nothing); set detect_deletes: true, or use mode upsert"
            )))
        sync_key = getattr(sync, "key", None)
        if sync_key is not None and key is not None and sync_key != key:
            issues.append((("sync", "key"), (
                f"sync.key {sync_key!r} differs from the sink's key {key!r}; both name the source field that "
                "matches features: drop sync.key or give the same field"
            )))
        return issues

    def prepare_sync(self, *, full: bool, key: str | None) -> str:
        """Before a sync run: remember whether the stream is complete; return the key field.
        Raises ConfigError for a mode other than upsert/mirror or a ``key`` unlike the sink's."""
        if self.mode not in ("upsert", "mirror") or self.key is None:
            raise ConfigError(
                f"feature_service: a sync job needs mode upsert or mirror with a key, not mode {self.mode}; "
                "set mode: upsert and key: <a source field that identifies a feature>"
            )
        if key is not None and key != self.key:
            raise ConfigError(
                f"feature_service: sync.key {key!r} differs from the sink's key {self.key!r}; drop sync.key or give "
                "the same field"
            )
        self.partial_stream = not full
        return self.key

    def _sync_key_field(self, info: LayerInfo, key: str) -> str:
        """The target field of the source field ``key`` (the sink's ``fields`` override, else by name)."""
        wanted = self.fields.get(key, key)
        if wanted is None:
            raise ConfigError(f"feature_service: key {key!r} maps to no field of {display_url(self.url)} (fields: {key}: null)")
        for f in info.schema.fields:
            if f.name.lower() == wanted.lower():
                return f.name
        raise CapabilityError(
            f"feature_service: key {key!r} has no field {wanted!r} in {display_url(self.url)}; map it under fields"
        )

    def existing_keys(self, key: str) -> set[Any]:
        """Every key value the target holds (features with a null key are left out): one read of
        the key field and OBJECTIDs, every page, with the completeness check."""
        from ags_etl.extractors.feature_layer import FeatureLayerExtractor

        index: dict[Hashable, int] = {}
        with ArcGISClient(auth=self.auth, timeout=self.timeout, retries=self.retries) as reads:
            info = parse_layer(self.url, reads.get(self.url))
            name = self._sync_key_field(info, key)
            if info.oid_field is None:
                raise CapabilityError(f"feature_service: {display_url(self.url)} has no OBJECTID field; nothing can be deleted")
            field = next(f for f in info.schema.fields if f.name == name)
            with FeatureLayerExtractor(self.url, fields=[name], client=reads, concurrency=2) as ext:
                for batch in ext:
                    keys = plan.target_values(batch.column(name), field)
                    for k, oid in zip(keys, batch.column(info.oid_field).to_pylist(), strict=True):
                        if k is not None:
                            index[k] = int(oid)
        self._sync_index, self._sync_key_target = index, name
        return set(index)

    def apply_deletes(self, key: str, keys: Sequence[Any]) -> int:
        """Delete the target's features whose key is in ``keys`` (looked up as
        :meth:`existing_keys` read them), in adaptive batches; a lost answer is resent, and a
        delete that then fails because the feature is already gone counts as done. Returns
        how many were deleted; raises EditError listing the features that could not be."""
        if self._sync_index is None:
            self.existing_keys(key)
        assert self._sync_index is not None and self._sync_key_target is not None
        pairs = [(k, self._sync_index[k]) for k in keys if k in self._sync_index]
        if not pairs:
            return 0
        with (
            ArcGISClient(auth=self.auth, timeout=self.timeout, retries=self.retries) as reads,
            ArcGISClient(auth=self.auth, timeout=self.timeout, retries=0) as edits,
        ):
            writer = _EditWriter(self, LayerSchema(()), reads, edits)
            writer.fmap = plan.FieldMap((), key_source=key, key_target=self._sync_key_target)  # deletes send no attribute
            oids = [o for _, o in pairs]
            writer._dispatch("delete", [k for k, _ in pairs], [str(o).encode() for o in oids], oids=oids)
            failures = writer.stats.failures
            if failures and not self.dry_run:
                # A resent delete whose first answer was lost fails with "missing": it is done.
                by_key = dict(pairs)
                answer = reads.post(self.url + "/query", {
                    "objectIds": ",".join(str(by_key[f.key]) for f in failures), "returnIdsOnly": True,
                })
                still = {int(o) for o in (answer.get("objectIds") or [])}
                done = [f for f in failures if by_key[f.key] not in still]
                writer.stats.deleted += len(done)
                failures = [f for f in failures if by_key[f.key] in still]
        self._sync_index = None
        if failures:
            shown = "; ".join(str(f) for f in failures[:SHOWN_FAILURES])
            raise EditError(
                f"feature_service: {len(failures)} of {len(pairs)} deletes in {display_url(self.url)} failed "
                f"({writer.stats.deleted} done): {shown}. Run again"
            )
        return writer.stats.deleted

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[_EditWriter]:
        """Read and check the target (no edit yet), yield the writer; leaving the block normally
        sends what is left (mirror: the deletes) and raises EditError if any feature failed."""
        with (
            ArcGISClient(auth=self.auth, timeout=self.timeout, retries=self.retries) as reads,
            ArcGISClient(auth=self.auth, timeout=self.timeout, retries=0) as edits,
        ):
            writer = _EditWriter(self, schema, reads, edits)
            try:
                writer.prepare()
                yield writer
                writer.commit()
            finally:
                writer.close()


def _print(line: str) -> None:
    sys.stdout.write(line + "\n")


class _EditWriter:
    """One run of edits against the target (see the module docstring)."""

    def __init__(self, loader: FeatureServiceLoader, schema: LayerSchema, reads: ArcGISClient, edits: ArcGISClient) -> None:
        self.loader = loader
        self.schema = schema
        self.reads = reads
        self.edits = edits
        self.stats = EditStats()
        self.url = loader.url
        self.where = display_url(loader.url)
        self.info: LayerInfo | None = None
        self.fmap: plan.FieldMap | None = None
        self.transformer: Any = None
        self.grid = 1e-4
        #: Target key → (OBJECTID, digest), upsert and mirror only.
        self.index: dict[Hashable, tuple[int, bytes]] = {}
        #: OBJECTIDs of target features without a key value (mirror deletes them).
        self.keyless_oids: list[int] = []
        self.seen: set[Hashable] = set()
        self.cleared = False
        #: Features the target holds, as far as this run knows (append/replace without key).
        self.expected_count: int | None = None
        self.sizer = plan.BatchSizer.start(1000)
        self.rows_seen = 0
        #: Requests sent and not yet answered (oldest first), when edits overlap (:meth:`_may_overlap`).
        self.in_flight: deque[tuple[str, list[Any], list[bytes], Future[dict[str, Any]]]] = deque()
        self.pool: ThreadPoolExecutor | None = None
        #: False once a request failed or lost its answer: from then on one request at a time.
        self.overlap = True

    # ------------------------------------------------------------------ preparation

    def prepare(self) -> None:
        """Target metadata, mapping, CRS and capabilities checked; keys read (upsert, mirror)."""
        info = parse_layer(self.url, self.reads.get(self.url))
        self.info = info
        mode = self.loader.mode
        missing = [c for c in _NEEDS[mode] if info.capabilities and c not in info.capabilities]
        if missing and not self.loader.dry_run:
            raise CapabilityError(
                f"feature_service: {self.where} does not allow {', '.join(missing)} (capabilities: "
                f"{', '.join(sorted(info.capabilities))}), which mode {mode} needs; enable editing on the layer "
                "or choose another mode"
            )
        self.fmap = plan.plan_field_map(
            self.schema,
            info.schema,
            overrides=self.loader.fields,
            key=self.loader.key,
            maintained=_maintained(info),
            defaults=_with_defaults(info),
            target_label=f"target layer {self.where}",
        )
        if self.fmap.skipped:
            self.stats.warnings.append(
                f"feature_service: source field(s) {', '.join(self.fmap.skipped)} not written: {self.where} fills "
                "its fields of those names itself"
            )
        self._check_crs(info)
        self.sizer = plan.BatchSizer.start(plan.initial_batch_size(info.schema.geometry_type, self.loader.batch_size))
        if mode in ("upsert", "mirror"):
            self._read_index()
        elif not self.loader.dry_run and self.fmap.key_target is None:
            self.expected_count = self._count()

    def _check_crs(self, info: LayerInfo) -> None:
        source, target = self.schema.crs, info.schema.crs
        if self.schema.geometry_type is None or info.schema.geometry_type is None:
            return
        if target is None:
            raise CapabilityError(
                f"feature_service: target layer {self.where} declares no spatial reference; geometries cannot be "
                "placed in it safely"
            )
        if source is None:
            raise CapabilityError(
                f"feature_service: the source's CRS is unknown, the target is in {describe_crs(target)}; add a "
                "reproject transform with from_crs naming the source's CRS"
            )
        from ags_etl.transformers.reproject import get_transformer, same_crs

        if not same_crs(source, target):
            self.transformer = get_transformer(source, target)
        self.grid = plan.geometry_grid(target)

    def _read_index(self) -> None:
        """Every target feature once (the extractor's guarantee): key → (OBJECTID, digest)."""
        from ags_etl.extractors.feature_layer import FeatureLayerExtractor

        assert self.info is not None and self.fmap is not None and self.fmap.key_target is not None
        oid_field = self.info.oid_field
        if oid_field is None:
            raise CapabilityError(f"feature_service: target layer {self.where} has no OBJECTID field; it cannot be updated")
        names = self.fmap.target_names
        target_fields = [t for _, t in self.fmap.pairs]
        dupes: dict[Hashable, int] = {}
        extractor = FeatureLayerExtractor(self.url, fields=names, client=self.reads, concurrency=2)
        with extractor as ext:
            for batch in ext:
                cols = [plan.target_values(batch.column(f.name), f) for f in target_fields]
                keys = cols[names.index(self.fmap.key_target)]
                oids = batch.column(oid_field).to_pylist()
                geoms = self._canonical(batch.geometry)
                digests = plan.row_digests(cols, target_fields, geoms, len(batch))
                for k, oid, d in zip(keys, oids, digests, strict=True):
                    if k is None:
                        self.keyless_oids.append(int(oid))
                    elif k in self.index:
                        dupes[k] = dupes.get(k, 1) + 1
                    else:
                        self.index[k] = (int(oid), d)
        if dupes:
            shown = ", ".join(f"{k!r} ({n} times)" for k, n in list(dupes.items())[:10])
            raise CapabilityError(
                f"feature_service: key {self.fmap.key_target!r} is not unique in target layer {self.where}: {shown}"
                f"{' …' if len(dupes) > 10 else ''}; remove the duplicates from the target (or choose another key)"
            )

    def _canonical(self, geometry: np.ndarray | None) -> list[bytes | None] | None:
        if geometry is None or self.info is None or self.info.schema.geometry_type is None:
            return None
        return plan.canonical_geometries(geometry, grid=self.grid, has_z=self.info.schema.has_z)

    def _count(self) -> int:
        answer = self.reads.post(self.url + "/query", {"where": "1=1", "returnCountOnly": True})
        count = answer.get("count")
        if not isinstance(count, int):
            raise ArcGISError(f"{self.where}/query answered no count ({str(answer)[:80]}); is it a feature layer?")
        return count

    # ------------------------------------------------------------------ writing

    def write(self, batch: FeatureBatch) -> None:
        """Plan this batch's adds and updates and send them (or print them in a dry run)."""
        assert self.info is not None and self.fmap is not None
        if len(batch) == 0:
            return
        if self.loader.mode == "replace" and not self.cleared:
            self._clear()
        fmap = self.fmap
        geoms = batch.geometry if self.info.schema.geometry_type is not None else None
        problems: dict[int, str] = {}
        if geoms is not None and self.transformer is not None:
            geoms, bad = transform_geometries(geoms, self.transformer)
            for i in np.flatnonzero(bad).tolist():
                problems[i] = f"its geometry falls outside {describe_crs(self.info.schema.crs)}"
        cols = [plan.target_values(batch.column(s), t) for s, t in fmap.pairs]
        for col, (_, tf) in zip(cols, fmap.pairs, strict=True):
            for i, why in plan.value_problems(col, tf).items():
                problems.setdefault(i, why)
        keys = self._labels(batch, cols)
        self.rows_seen += len(batch)
        if fmap.key_target is not None and self.loader.mode in ("upsert", "mirror"):
            self._check_keys(keys, problems)
        fail_kind = "add" if self.loader.mode in ("append", "replace") else "write"
        for i, why in sorted(problems.items()):
            self.stats.failures.append(plan.EditFailure(fail_kind, keys[i], None, f"not sent: {why}"))
        good = np.array([i not in problems for i in range(len(batch))], dtype=bool)
        if self.loader.mode in ("upsert", "mirror"):
            target_fields = [t for _, t in fmap.pairs]
            digests = plan.row_digests(cols, target_fields, self._canonical(geoms), len(batch))
            idx = np.flatnonzero(good)
            adds, updates, same = plan.classify([keys[i] for i in idx], [digests[i] for i in idx], self.index)
            add_rows = [int(idx[j]) for j in adds]
            update_rows = [(int(idx[j]), oid) for j, oid in updates]
            self.stats.unchanged += same
        else:
            add_rows = np.flatnonzero(good).tolist()
            update_rows = []
        if add_rows:
            payloads = [self._edit(cols, geoms, i, None) for i in add_rows]
            self._dispatch("add", [keys[i] for i in add_rows], payloads)
        if update_rows:
            payloads = [self._edit(cols, geoms, i, oid) for i, oid in update_rows]
            self._dispatch("update", [keys[i] for i, _ in update_rows], payloads, oids=[o for _, o in update_rows])

    def _labels(self, batch: FeatureBatch, cols: list[list[Any]]) -> list[Any]:
        """Each row's key value (the target-side value of the key field), else the source OID, else
        its position in the stream, to name it in failures."""
        assert self.fmap is not None
        if self.fmap.key_target is not None:
            return cols[self.fmap.target_names.index(self.fmap.key_target)]
        oid = self.schema.oid_field
        if oid is not None and oid in batch.column_names:
            return batch.column(oid).to_pylist()
        return [f"#{self.rows_seen + i + 1}" for i in range(len(batch))]

    def _check_keys(self, keys: list[Any], problems: dict[int, str]) -> None:
        """Null keys become failures; a key seen twice in the source is an error (named)."""
        dupes = list(dict.fromkeys([*plan.duplicates(keys), *(k for k in keys if k is not None and k in self.seen)]))
        if dupes:
            assert self.fmap is not None
            shown = ", ".join(repr(k) for k in dupes[:10]) + (" …" if len(dupes) > 10 else "")
            raise EditError(
                f"feature_service: key {self.fmap.key_source!r} is not unique in the source: {shown}; "
                f"the edits of earlier batches reached {self.where}, nothing more was sent. Make the key unique "
                "(or choose another key) and run again"
            )
        for i, k in enumerate(keys):
            if k is None:
                problems.setdefault(i, "its key is null")
            else:
                self.seen.add(k)

    def _edit(self, cols: list[list[Any]], geoms: np.ndarray | None, row: int, oid: int | None) -> bytes:
        assert self.fmap is not None and self.info is not None
        attrs = {t.name: col[row] for col, (_, t) in zip(cols, self.fmap.pairs, strict=True)}
        if oid is not None:
            assert self.info.oid_field is not None
            attrs[self.info.oid_field] = oid
        edit: dict[str, Any] = {"attributes": attrs}
        if geoms is not None:
            try:
                edit["geometry"] = encode_geometry(geoms[row], has_z=self.info.schema.has_z)
            except GeometryError as exc:
                raise GeometryError(f"feature_service: feature {row} of the batch: {exc}") from exc
        return orjson.dumps(edit)

    # ------------------------------------------------------------------ replace / mirror

    def _clear(self) -> None:
        """Empty the target (replace): truncate where supported, else delete every feature."""
        assert self.info is not None
        self.cleared = True
        if self.info.raw.get("supportsTruncate") is True and not self.loader.dry_run and self._truncate():
            self.expected_count = 0
            return
        answer = self.reads.post(self.url + "/query", {"where": "1=1", "returnIdsOnly": True})
        oids = sorted(int(o) for o in (answer.get("objectIds") or []))
        if self.loader.dry_run:
            self.echo(f"delete all {len(oids)} features of {self.where} (replace)")
            return
        self._dispatch("delete", oids, [str(o).encode() for o in oids], oids=oids)
        self.expected_count = self._count()
        if self.expected_count != 0:
            raise EditError(
                f"feature_service: {self.where} still holds {self.expected_count} features after deleting all "
                "(another editor?); nothing was added. Run again"
            )

    def _truncate(self) -> bool:
        """POST ``truncate`` to the layer's admin URL; False when the server refuses it."""
        admin = self.url.replace("/rest/services/", "/rest/admin/services/", 1)
        try:
            self.edits.post(admin + "/truncate", {"async": False})
        except (ServiceError, ArcGISError) as exc:
            log.info("truncate of %s refused (%s); deleting every feature instead", self.where, exc)
            return False
        self.stats.requests += 1
        return True

    def commit(self) -> None:
        """The end of a complete source: mirror deletes, summary, EditError if anything failed."""
        self.drain()
        if self.loader.mode == "replace" and not self.cleared:
            self._clear()  # an empty source still replaces the target's content
        if self.loader.mode == "mirror" and not self.loader.partial_stream:  # a sync run's changes only: no deletes
            gone = [(k, oid) for k, (oid, _) in self.index.items() if k not in self.seen]
            gone += [(None, oid) for oid in self.keyless_oids]
            if gone:
                self._dispatch("delete", [k for k, _ in gone], [str(o).encode() for _, o in gone], oids=[o for _, o in gone])
        stats = self.stats
        stats.features = stats.added + stats.updated + stats.unchanged
        prefix = "feature_service (dry run, nothing sent): would have " if self.loader.dry_run else "feature_service: "
        stats.warnings.append(f"{prefix}{stats.summary()} in {self.where}")
        if stats.failures:
            shown = "; ".join(str(f) for f in stats.failures[:SHOWN_FAILURES])
            more = len(stats.failures) - SHOWN_FAILURES
            stats.warnings.extend(str(f) for f in stats.failures[:100])
            raise EditError(
                f"feature_service: {len(stats.failures)} feature(s) could not be written to {self.where} "
                f"({stats.summary()}; every other change arrived): {shown}"
                f"{f'; and {more} more' if more > 0 else ''}. Fix those values at the source or widen the "
                "target's fields, then run again"
            )

    # ------------------------------------------------------------------ sending

    def _dispatch(self, kind: str, keys: Sequence[Any], payloads: Sequence[bytes], *, oids: Sequence[int] = ()) -> None:
        """Send (or, in a dry run, print) edits of one kind, in adaptive batches."""
        if self.loader.dry_run:
            for i, k in enumerate(keys):
                oid = f" objectid={oids[i]}" if oids else ""
                self.echo(f"{kind} key={k!r}{oid}")
            counter = {"add": "added", "update": "updated", "delete": "deleted"}[kind]
            setattr(self.stats, counter, getattr(self.stats, counter) + len(keys))
            return
        queue: deque[tuple[list[Any], list[bytes]]] = deque()
        self._enqueue(queue, list(keys), list(payloads))
        if self._may_overlap(kind):
            self._send_overlapping(kind, queue)
        else:
            self.drain()
            self._send(kind, queue)

    def _may_overlap(self, kind: str) -> bool:
        """Whether these edits may go with others in flight: adds and updates keyed by a target field
        (a lost answer is then checked by the batch's own keys, whatever else is in flight), as long
        as no request of this run failed or lost its answer."""
        return (
            self.overlap
            and self.loader.concurrency > 1
            and kind in ("add", "update")
            and self.loader.mode in ("upsert", "mirror")
            and self.fmap is not None
            and self.fmap.key_target is not None
        )

    def _send_overlapping(self, kind: str, queue: deque[tuple[list[Any], list[bytes]]]) -> None:
        """Submit the queued requests with at most ``concurrency`` in flight; answers are taken in
        order of sending. The first failure ends overlapping for the run: what is in flight is
        awaited, and the failed request is handled one at a time as :meth:`_send` does."""
        if self.pool is None:
            self.pool = ThreadPoolExecutor(self.loader.concurrency, thread_name_prefix="ags-etl-edits")
        while queue:
            while len(self.in_flight) >= self.loader.concurrency:
                self._harvest()
            if not self.overlap:
                self.drain()
                self._send(kind, queue)
                return
            ks, ps = queue.popleft()
            self.stats.requests += 1
            self.in_flight.append((kind, ks, ps, self.pool.submit(self._post_edits, kind, ps)))

    def _harvest(self) -> None:
        """Take the answer of the oldest request in flight."""
        kind, ks, ps, future = self.in_flight.popleft()
        try:
            answer = future.result()
        except (TransientError, ServiceError) as exc:
            self.overlap = False
            self.drain()
            self._send(kind, deque(), failed=(ks, ps, exc))
            return
        self._accept(kind, ks, answer)

    def drain(self) -> None:
        """Take the answers of every request in flight."""
        while self.in_flight:
            self._harvest()

    def close(self) -> None:
        """Wait for requests still in flight (their outcome is counted when it can be) and stop the
        threads; for leaving the writer block early."""
        try:
            while self.in_flight:
                kind, ks, _, future = self.in_flight.popleft()
                try:
                    self._accept(kind, ks, future.result())
                except ArcGISError as exc:  # not resent: the run is ending with another error
                    log.info("applyEdits of %d %ss to %s failed while stopping: %s", len(ks), kind, self.where, exc)
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)
                self.pool = None

    def _send(
        self,
        kind: str,
        queue: deque[tuple[list[Any], list[bytes]]],
        *,
        failed: tuple[list[Any], list[bytes], ArcGISError] | None = None,
    ) -> None:
        """Send the queued requests one at a time: halve and re-read after a lost answer, split a
        refused request (see the module docstring). ``failed``: a request already sent whose
        failure is to be handled first."""
        strikes = 0
        while queue or failed is not None:
            error: ArcGISError | None = None
            if failed is not None:
                ks, ps, error = failed
                failed = None
            else:
                ks, ps = queue.popleft()
                try:
                    answer = self._post(kind, ps)
                except (TransientError, ServiceError) as exc:
                    error = exc
            if isinstance(error, TransientError):
                strikes += 1
                self.stats.lost_answers += 1
                if strikes >= MAX_STRIKES:
                    raise EditError(
                        f"feature_service: {strikes} applyEdits requests in a row to {self.where} failed or lost "
                        f"their answer (last: {error}); the edits confirmed so far arrived. Run again later "
                        "(upsert and mirror repair what is missing)"
                    ) from error
                self.sizer.failed()
                log.info("applyEdits of %d %ss to %s: %s; batch size now %d", len(ks), kind, self.where, error, self.sizer.size)
                time.sleep(min(8.0, 0.25 * 2 ** (strikes - 1)))
                if kind == "add":
                    ks, ps = self._not_arrived(ks, ps)
                if ks:
                    self._enqueue(queue, ks, ps, front=True)
                continue
            if isinstance(error, ServiceError):
                # The whole request was refused: split until the feature at fault is alone.
                if len(ks) > 1:
                    self.sizer.failed()
                    half = len(ks) // 2
                    queue.appendleft((ks[half:], ps[half:]))
                    queue.appendleft((ks[:half], ps[:half]))
                else:
                    self.stats.failures.append(plan.EditFailure(kind, ks[0], error.code, _server_text(error)))
                continue
            strikes = 0
            self._accept(kind, ks, answer)

    def _accept(self, kind: str, keys: list[Any], answer: dict[str, Any]) -> None:
        """Count a request's answer: successes, and failures per feature."""
        self.sizer.succeeded()
        ok, failures = plan.parse_results(answer, kind, keys, self.where)
        self._count_done(kind, ok)
        self.stats.failures.extend(failures)

    def _enqueue(self, queue: deque[tuple[list[Any], list[bytes]]], keys: list[Any], payloads: list[bytes], *, front: bool = False) -> None:
        parts = [(keys[a:b], payloads[a:b]) for a, b in plan.chunk_bounds([len(p) for p in payloads], self.sizer.size)]
        if front:
            queue.extendleft(reversed(parts))
        else:
            queue.extend(parts)

    def _post(self, kind: str, payloads: list[bytes]) -> dict[str, Any]:
        self.stats.requests += 1
        return self._post_edits(kind, payloads)

    def _post_edits(self, kind: str, payloads: list[bytes]) -> dict[str, Any]:
        """One applyEdits request (run on the edit threads too: it touches no writer state)."""
        if kind == "delete":
            body = b",".join(payloads).decode()
        else:
            body = (b"[" + b",".join(payloads) + b"]").decode()
        params: dict[str, Any] = {f"{kind}s": body, "rollbackOnFailure": self.loader.rollback_on_failure, "useGlobalIds": False}
        return self.edits.post(self.url + "/applyEdits", params)

    def _count_done(self, kind: str, n: int) -> None:
        if kind == "add":
            self.stats.added += n
            if self.expected_count is not None:
                self.expected_count += n
        elif kind == "update":
            self.stats.updated += n
        else:
            self.stats.deleted += n
            if self.expected_count is not None:
                self.expected_count -= n

    def _not_arrived(self, keys: list[Any], payloads: list[bytes]) -> tuple[list[Any], list[bytes]]:
        """After a lost answer to adds: the adds the target does not hold yet.

        With a key, the batch's keys are read back; without one, the target's count says whether
        the whole batch arrived or none of it (anything else cannot be told apart: EditError).
        """
        assert self.fmap is not None
        if self.fmap.key_target is not None:
            present = self._present_keys(keys)
            arrived = sum(1 for k in keys if k in present)
            self._count_done("add", arrived)
            kept = [(k, p) for k, p in zip(keys, payloads, strict=True) if k not in present]
            return [k for k, _ in kept], [p for _, p in kept]
        now = self._count()
        assert self.expected_count is not None
        if now == self.expected_count:
            return keys, payloads
        if now == self.expected_count + len(keys):
            self._count_done("add", len(keys))
            return [], []
        raise EditError(
            f"feature_service: the answer to {len(keys)} adds to {self.where} was lost and the layer now holds {now} "
            f"features where {self.expected_count} or {self.expected_count + len(keys)} were expected; without a key "
            "it cannot be told which arrived, so none is resent. Give the sink a key (a source field that identifies "
            "a feature) so lost answers can be checked feature by feature"
        )

    def _present_keys(self, keys: list[Any]) -> set[Hashable]:
        assert self.fmap is not None and self.fmap.key_target is not None
        field = self.fmap.key_target
        found: set[Hashable] = set()
        for a in range(0, len(keys), KEYS_PER_QUERY):
            chunk = keys[a : a + KEYS_PER_QUERY]
            answer = self.reads.post(
                self.url + "/query",
                {"where": plan.key_where(field, chunk), "outFields": field, "returnGeometry": False},
            )
            for feat in answer.get("features") or []:
                attrs = feat.get("attributes") if isinstance(feat, dict) else None
                if isinstance(attrs, dict):
                    found.add(_match_key(attrs, field))
        return found

    # ------------------------------------------------------------------ dry run

    def echo(self, line: str) -> None:
        self.loader.echo(f"dry run: {self.where}: {line}")


def _match_key(attrs: dict[str, Any], field: str) -> Any:
    if field in attrs:
        return attrs[field]
    lowered = {k.lower(): v for k, v in attrs.items()}
    return lowered.get(field.lower())


def _server_text(exc: ServiceError) -> str:
    detail = "; ".join(exc.details)[:300]
    return detail or str(exc)


def _maintained(info: LayerInfo) -> dict[str, str]:
    """Target fields the server fills itself (lower-case name → why)."""
    out: dict[str, str] = {}
    if info.oid_field is not None:
        out[info.oid_field.lower()] = "object id"
    if info.global_id_field is not None:
        out[info.global_id_field.lower()] = "global id"
    edit_info = info.raw.get("editFieldsInfo")
    if isinstance(edit_info, dict):
        for key in ("creationDateField", "creatorField", "editDateField", "editorField"):
            name = edit_info.get(key)
            if isinstance(name, str) and name:
                out[name.lower()] = "editor tracking"
    for f in info.raw.get("fields") or []:
        if isinstance(f, dict) and f.get("editable") is False and isinstance(f.get("name"), str):
            out.setdefault(f["name"].lower(), "not editable")
        if isinstance(f, dict) and f.get("type") == "esriFieldTypeGlobalID" and isinstance(f.get("name"), str):
            out.setdefault(f["name"].lower(), "global id")
    return out


def _with_defaults(info: LayerInfo) -> frozenset[str]:
    return frozenset(
        f["name"].lower()
        for f in info.raw.get("fields") or []
        if isinstance(f, dict) and isinstance(f.get("name"), str) and f.get("defaultValue") is not None
    )
