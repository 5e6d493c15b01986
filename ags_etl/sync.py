"""Sync jobs: what an incremental run asks the server for, and how its changes reach a file.

A job with a ``sync:`` block reads, after its first run, only the features whose cursor
field (an editor-tracking date such as ``EditDate``, or any field that grows on every edit)
is at or after the cursor of the last committed run minus ``lag``::

    (<source where>) AND EditDate >= timestamp '2024-06-11 08:55:00'

The pure decisions live here: :func:`parse_lag`, :func:`parse_initial_value`,
:func:`cursor_where`, :func:`batch_cursor` (the largest cursor among rows read, never the
clock), :func:`source_identity` and :func:`plan_sync` (full or incremental, and why).

A file sink of a sync job is wrapped in a :class:`MergingLoader`: the changes are written
first, then the rows of the previous merged data whose key was neither changed nor deleted.
With ``detect_deletes`` the source's full id set (``returnIdsOnly``, or the key field's
values) is read after the changes and every previous row whose key is not in it is dropped.
A GeoParquet output is its own merged data (:data:`MERGEABLE_FILE_SINKS`): it is read back
and rewritten through the sink's atomic writer. Every other file sink (GeoJSON, GeoJSONL,
shapefile, KMZ, a plugin's) keeps a GeoParquet *shadow* of its merged data in the state
folder (:func:`shadow_path`); the changes are merged into a new shadow, the output is
rendered from it through the sink's own writer, and the shadow is renamed into place. Commit
order, so that a run killed anywhere leaves the state as it was and the next run (reading
again from the old cursor) repairs everything::

    new shadow → <shadow>.pending.parquet → output committed (temp + rename)
               → pending renamed onto the shadow → (runner) state row written

A sink that is not a file takes part in sync jobs by having ``supports_sync = True`` and the
methods of :class:`DeletingSink`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc  # type: ignore[import-untyped]

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError, LoadError
from ags_etl.loaders.base import (
    FileLoader,
    Loader,
    LoaderCapabilities,
    LoadStats,
    Writer,
)
from ags_etl.schema import LayerSchema

if TYPE_CHECKING:
    from ags_etl.extractors.feature_layer import FeatureLayerExtractor
    from ags_etl.spec import JobSpec

__all__ = [
    "MERGEABLE_FILE_SINKS",
    "Cursor",
    "DeletingSink",
    "MergingLoader",
    "SyncPlan",
    "batch_cursor",
    "cursor_where",
    "parse_initial_value",
    "parse_lag",
    "plan_sync",
    "remove_tree",
    "shadow_path",
    "source_identity",
    "source_keys",
]

#: File sinks whose previous output is read back and merged into as it is (no shadow needed).
MERGEABLE_FILE_SINKS = frozenset({"geoparquet"})

_LAG = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


# ---------------------------------------------------------------------------- cursor values


@dataclass(frozen=True)
class Cursor:
    """A cursor value: ``kind`` "date" (``value`` in epoch milliseconds, UTC) or "number"."""

    kind: Literal["date", "number"]
    value: int | float

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "value": self.value}

    @classmethod
    def from_json(cls, data: Any) -> Cursor | None:
        """The cursor stored by :meth:`to_json`, or None for anything else."""
        if not isinstance(data, dict) or data.get("kind") not in ("date", "number"):
            return None
        value = data.get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        return cls(data["kind"], value)

    def text(self) -> str:
        """For people: an ISO date (UTC) or the number."""
        if self.kind == "date":
            return (_EPOCH + dt.timedelta(milliseconds=self.value)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")[:-4] + "Z"
        return repr(self.value)


def parse_lag(value: str | float | None) -> float:
    """Seconds of overlap from ``5m``, ``30s``, ``2h``, ``1d``, ``90`` or a number (seconds).

    None is 0. Raises ValueError naming the value and the accepted forms.
    """
    if value is None:
        return 0.0
    if isinstance(value, bool):
        raise ValueError(  # noqa: TRY004 - pydantic reports ValueErrors as validation problems
            f"lag {value!r} is not a duration; give seconds or text such as '30s', '5m', '2h', '1d'"
        )
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"lag {value!r} must be 0 or more seconds")
        return float(value)
    match = _LAG.fullmatch(value)
    if match is None:
        raise ValueError(f"lag {value!r} is not a duration; give seconds or text such as '30s', '5m', '2h', '1d'")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2).lower()]


def parse_date_ms(text: str) -> int | None:
    """Epoch ms (UTC) of ``YYYY-MM-DD[ HH:MM[:SS[.fff]]]`` (``T`` and a trailing ``Z`` allowed), else None."""
    cleaned = text.strip().replace("T", " ").removesuffix("Z").removesuffix("z")
    for fmt in _DATE_FORMATS:
        try:
            moment = dt.datetime.strptime(cleaned, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
        return (moment - _EPOCH) // dt.timedelta(milliseconds=1)
    return None


def parse_initial_value(value: str | float | None) -> Cursor | None:
    """The cursor of a job without state: text is a date (UTC), a number is a number.

    Raises ValueError for text that is not a date.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"initial_value {value!r} is neither a date text nor a number")  # noqa: TRY004 - for pydantic
    if isinstance(value, (int, float)):
        if not math.isfinite(value):
            raise ValueError(f"initial_value {value!r} must be a finite number")
        return Cursor("number", value)
    ms = parse_date_ms(value)
    if ms is None:
        raise ValueError(
            f"initial_value {value!r} is not a date; write it as 'YYYY-MM-DD' or 'YYYY-MM-DD HH:MM:SS' (UTC), "
            "or give a number for a numeric cursor field"
        )
    return Cursor("date", ms)


def _sql_timestamp(ms: float) -> str:
    moment = _EPOCH + dt.timedelta(milliseconds=math.floor(ms / 1000) * 1000)
    return f"timestamp '{moment.strftime('%Y-%m-%d %H:%M:%S')}'"


def cursor_where(where: str | None, cursor_field: str, cursor: Cursor, lag_seconds: float) -> str:
    """The where clause of an incremental run: ``(<where>) AND <field> >= <cursor - lag>``.

    Dates are ArcGIS standardized-SQL ``timestamp 'YYYY-MM-DD HH:MM:SS'`` literals in UTC,
    rounded down to the second (so a re-read is never too short); numbers are written as
    numbers, the lag subtracted as is (in the field's units). ``>=`` and not ``>``: rows
    edited in the same millisecond as the last one seen are read again, and replaced by key.
    """
    if cursor.kind == "date":
        literal = _sql_timestamp(cursor.value - lag_seconds * 1000)
    else:
        start = cursor.value - lag_seconds
        literal = repr(int(start)) if float(start).is_integer() else repr(float(start))
    clause = f"{cursor_field} >= {literal}"
    if where is None or where.strip() in ("", "1=1"):
        return clause
    return f"({where}) AND {clause}"


def batch_cursor(batch: FeatureBatch, cursor_field: str) -> Cursor | None:
    """The largest cursor value among the rows of ``batch`` (None: no rows or all null).

    Raises ConfigError when the batch has no such column or its type cannot be a cursor.
    """
    if cursor_field not in batch.column_names:
        raise ConfigError(
            f"sync.cursor_field {cursor_field!r} is not a field of the layer (fields: {', '.join(batch.column_names)}); "
            "name an editor-tracking date such as EditDate or a number that grows on every edit"
        )
    column = batch.column(cursor_field)
    kind: Literal["date", "number"]
    if pa.types.is_timestamp(column.type) or pa.types.is_date(column.type):
        column = column.cast(pa.timestamp("ms", tz="UTC")).cast(pa.int64())
        kind = "date"
    elif pa.types.is_integer(column.type) or pa.types.is_floating(column.type):
        kind = "number"
    else:
        raise ConfigError(
            f"sync.cursor_field {cursor_field!r} is of type {column.type}; a cursor must be a date or a number"
        )
    top = pc.max(column).as_py()
    if top is None or (isinstance(top, float) and not math.isfinite(top)):
        return None
    return Cursor(kind, top)


def later(a: Cursor | None, b: Cursor | None) -> Cursor | None:
    """The larger of two cursors (None is smaller than anything)."""
    if a is None:
        return b
    if b is None:
        return a
    return b if b.value > a.value else a


# ---------------------------------------------------------------------------- planning


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def source_identity(job: JobSpec) -> dict[str, str | None]:
    """What must stay the same for a previous output to be merged into: the layer URL without
    credentials or query, and digests of the where clause, field list, transforms, cursor
    field and key. Holds no secret (URLs are shown as :func:`display_url` gives them)."""
    from ags_etl.arcgis.client import display_url

    source = job.source
    sync = job.sync
    return {
        "url": None if source.url is None else display_url(source.url),
        "where": _digest(source.where or "1=1"),
        "fields": _digest(source.fields),
        "transforms": _digest([t.model_dump() for t in job.transforms]),
        "cursor_field": None if sync is None else sync.cursor_field,
        "key": None if sync is None else sync.key,
    }


@dataclass(frozen=True)
class SyncPlan:
    """One sync run: ``mode`` "full" (read everything, write the output anew) or
    "incremental" (read ``where``, merge); ``cursor`` the cursor it starts from; ``reason``
    says why, for the report."""

    mode: Literal["full", "incremental"]
    where: str | None
    cursor: Cursor | None
    reason: str


def plan_sync(
    job: JobSpec,
    *,
    stored_cursor: Cursor | None,
    stored_identity: dict[str, Any] | None,
    previous_output: bool,
    full_refresh: bool,
) -> SyncPlan:
    """Full or incremental, from the job, what the state store holds and whether the previous
    output exists (a sink that is not a file: True). Pure.

    Full when: ``full_refresh``; no state and no ``initial_value``; the state was written for
    another source, where clause, field list, transforms, cursor field or key; the previous
    output is gone.
    """
    assert job.sync is not None and job.sync.cursor_field is not None
    where = job.source.where
    if full_refresh:
        return SyncPlan("full", where, None, "--full-refresh")
    if stored_identity is not None and stored_identity != source_identity(job):
        changed = sorted(k for k, v in source_identity(job).items() if stored_identity.get(k) != v)
        return SyncPlan("full", where, None, f"the job's {', '.join(changed)} changed since the state was written")
    if not previous_output:
        return SyncPlan("full", where, None, "no previous output")
    cursor = stored_cursor if stored_identity is not None else parse_initial_value(job.sync.initial_value)
    if cursor is None:
        return SyncPlan("full", where, None, "first run" if stored_identity is None else "no cursor yet")
    lag = parse_lag(job.sync.lag)
    return SyncPlan("incremental", cursor_where(where, job.sync.cursor_field, cursor, lag), cursor,
                    f"cursor {cursor.text()} minus lag {lag:g} s")


# ---------------------------------------------------------------------------- the source's key set


def source_keys(extractor: FeatureLayerExtractor, where: str | None, key: str) -> set[Any]:
    """Every key value the source holds for ``where`` (the job's own where clause, not the
    incremental one), read through the extractor's client once it is open.

    The OID field: one ``returnIdsOnly`` request. Another field: the layer is read again with
    that field only (every page, with the completeness check).
    """
    from ags_etl.arcgis.paging import normalise_ids
    from ags_etl.extractors.feature_layer import FeatureLayerExtractor

    info, schema = extractor.info, extractor.schema
    assert info is not None and schema is not None, "open the extractor first"
    if key == info.schema.oid_field:
        params: dict[str, Any] = {"where": where or "1=1", "returnIdsOnly": True, "returnGeometry": False}
        data = extractor.client.post(info.url + "/query", params)
        if "objectIds" not in data:
            from ags_etl.errors import ArcGISError

            raise ArcGISError(
                f"{info.url} answered returnIdsOnly without objectIds; deletes cannot be detected there, "
                "drop sync.detect_deletes or give sync.key another field"
            )
        raw = data["objectIds"]
        return {int(i) for i in normalise_ids([] if raw is None else raw, info.url)}
    found: set[Any] = set()
    with FeatureLayerExtractor(info.url, where=where, fields=[key], client=extractor.client) as keys:
        keys.plan()
        for batch in keys:
            found.update(batch.column(key).to_pylist())
    return found


# ---------------------------------------------------------------------------- merging into a file


@runtime_checkable
class DeletingSink(Protocol):
    """A sink that is not a file and takes part in sync jobs.

    The runner builds it as usual, calls :meth:`prepare_sync` before the run, writes only the
    changed features (all of them in a full run) through :meth:`Loader.open` — the sink
    upserts them by key — then, once that block committed and when ``detect_deletes`` is
    set, asks :meth:`existing_keys` what the target holds and calls :meth:`apply_deletes`
    with the keys the source no longer has. All three raise LoadError (or its subclasses)
    on failure, ConfigError for a job they cannot serve.
    """

    supports_sync: ClassVar[bool]

    def prepare_sync(self, *, full: bool, key: str | None) -> str:
        """Before the run: ``full`` False means the stream holds the changed features only,
        so nothing may be deleted for being absent from it. ``key`` is ``sync.key``; returns
        the source field whose values match features of the target."""
        ...

    def existing_keys(self, key: str) -> set[Any]:
        """Every key value the target holds now (after the changes were written)."""
        ...

    def apply_deletes(self, key: str, keys: Sequence[Any]) -> int:
        """Delete the target's features with these key values; return how many were deleted."""
        ...


def shadow_path(state_dir: Path, name: str, target: str | None) -> Path:
    """The GeoParquet shadow of the layer job ``name`` writing ``target``:
    ``<state_dir>/data/<name made safe>.<digest of name and target>.parquet``. Another
    target (the sink path changed) has another shadow, so its first run is a full one."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]
    digest = hashlib.sha256(f"{name}\0{target}".encode()).hexdigest()[:12]
    return state_dir / "data" / f"{safe}.{digest}.parquet"


def pending_shadow(shadow: Path) -> Path:
    """Where a run writes its new shadow before the output is committed."""
    return shadow.with_name(shadow.stem + ".pending.parquet")


@dataclass
class MergeStats:
    """What a merge did: rows written from the changes, kept from the previous output,
    dropped because the source no longer has them, replaced by a change."""

    changed: int = 0
    kept: int = 0
    deleted: int = 0
    replaced: int = 0
    previous: bool = False


class _MergeWriter:
    """Writes the changed batches through the sink's writer and remembers their keys."""

    def __init__(self, inner: Writer, key: str) -> None:
        self.inner = inner
        self.key = key
        self.keys: set[Any] = set()
        self.stats: LoadStats = inner.stats

    def write(self, batch: FeatureBatch) -> None:
        self.keys.update(batch.column(self.key).to_pylist())
        self.inner.write(batch)


class MergingLoader(Loader):
    """The sink of a sync job writing a file: changes first, then the previous merged rows
    whose key is neither among the changes nor (with ``source_keys``) gone from the source.

    ``previous`` is the merged data of the last committed run — the output itself for a
    GeoParquet sink, else the shadow — or None: write the changes only (a full run).
    ``shadow`` (required for sinks outside :data:`MERGEABLE_FILE_SINKS`) is where the merged
    data is kept; the output is then rendered from it (see the module docstring for the
    commit order). ``source_keys`` is called once the changes are written, while the
    extractor is open. The sink replaces its target whatever its ``overwrite``: a sync job
    owns it.
    """

    name: ClassVar[str] = "merge"
    capabilities: ClassVar[LoaderCapabilities] = LoaderCapabilities(extensions=())

    def __init__(
        self,
        inner: FileLoader,
        *,
        key: str | None,
        previous: Path | None,
        source_keys: Callable[[str], set[Any]] | None = None,
        shadow: Path | None = None,
    ) -> None:
        super().__init__(overwrite=True)
        if shadow is None and inner.name not in MERGEABLE_FILE_SINKS:
            raise ConfigError(
                f"a sync job's {inner.name} sink keeps its merged data in a shadow file, and none was given; "
                "run the job through ags-etl run (which keeps the shadow beside the state file)"
            )
        inner.overwrite = True
        self.inner = inner
        self.key = key
        self.previous = previous
        self.source_keys = source_keys
        self.shadow = shadow
        self.merge = MergeStats()
        # The pipeline reads name and capabilities from the loader: show the wrapped sink's.
        self.name = inner.name  # type: ignore[misc]
        self.capabilities = inner.capabilities  # type: ignore[misc]

    @property
    def target(self) -> str | None:
        return self.inner.target

    def preflight(self) -> None:
        self.inner.preflight()

    def key_for(self, schema: LayerSchema) -> str:
        """The key field: ``sync.key`` or the layer's OID field; it must reach the sink."""
        key = self.key if self.key is not None else schema.oid_field
        if key is None:
            raise ConfigError(
                f"layer {schema.name!r} has no OID field; give sync.key, a field whose values are unique"
            )
        if key not in schema.field_names:
            raise ConfigError(
                f"sync key {key!r} is not among the fields written ({', '.join(schema.field_names)}); "
                "keep it in source.fields and do not rename or drop it in a transform"
            )
        return key

    def check(self, schema: LayerSchema) -> None:
        self.key_for(schema)
        self.inner.check(schema)

    @contextlib.contextmanager
    def open(self, schema: LayerSchema) -> Iterator[Writer]:
        key = self.key_for(schema)
        if self.shadow is None:
            with self.inner.open(schema) as writer:
                merge = _MergeWriter(writer, key)
                yield merge
                self._merge_previous(merge, writer, schema)
            return
        from ags_etl.loaders.geoparquet import GeoParquetLoader

        pending = pending_shadow(self.shadow)
        try:
            pending.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LoadError(
                f"shadow folder {str(pending.parent)!r} of a sync job cannot be created ({exc.strerror}); set "
                "state: in the pipeline file to a writable path"
            ) from exc
        with GeoParquetLoader(pending, overwrite=True).open(schema) as writer:
            merge = _MergeWriter(writer, key)
            yield merge
            self._merge_previous(merge, writer, schema)
        # The merged data is complete in ``pending``: render the output from it, then keep it.
        with self.inner.open(schema) as output:
            for batch in read_geoparquet(pending, schema):
                output.write(batch)
        merge.stats = output.stats  # the pipeline reports what reached the output
        try:
            os.replace(pending, self.shadow)
        except OSError as exc:
            raise LoadError(
                f"the output {self.inner.target!r} was written, but its shadow {str(self.shadow)!r} could not be "
                f"kept ({exc.strerror}); the state is unchanged, so the next run repairs both. Check the state folder"
            ) from exc

    def _merge_previous(self, merge: _MergeWriter, writer: Writer, schema: LayerSchema) -> None:
        """Write the previous rows that stay (once the changes are written)."""
        self.merge.changed = len(merge.keys)
        if self.previous is not None and self.previous.exists():
            present = None if self.source_keys is None else self.source_keys(merge.key)
            self.merge.previous = True
            for batch in read_geoparquet(self.previous, schema):
                kept = self._keep(batch, merge.key, merge.keys, present)
                if len(kept):
                    writer.write(kept)

    def _keep(self, batch: FeatureBatch, key: str, changed: set[Any], present: set[Any] | None) -> FeatureBatch:
        keys = batch.column(key)
        replaced = _is_in(keys, changed)
        keep = ~replaced
        if present is not None:
            gone = ~_is_in(keys, present) & keep
            self.merge.deleted += int(gone.sum())
            keep &= ~gone
        self.merge.replaced += int(replaced.sum())
        self.merge.kept += int(keep.sum())
        return batch.filter(keep)


def _is_in(values: pa.ChunkedArray, members: set[Any]) -> np.ndarray:
    if not members:
        return np.zeros(len(values), dtype=bool)
    value_set = pa.array(list(members)).cast(values.type)
    return np.asarray(pc.fill_null(pc.is_in(values, value_set=value_set), False), dtype=bool)


def read_geoparquet(path: Path, schema: LayerSchema, batch_rows: int = 65_536) -> Iterator[FeatureBatch]:
    """Batches of a GeoParquet file written by our loader for ``schema``, row group by row
    group (memory: one batch). Raises LoadError when its columns do not fit ``schema`` —
    the layer or the transforms changed: a ``--full-refresh`` run rewrites the file."""
    import pyarrow.parquet as pq  # type: ignore[import-untyped]
    import shapely  # type: ignore[import-untyped]

    with pq.ParquetFile(path) as pf:
        metadata = pf.metadata.metadata or {}  # "geo" is written into the footer, after the Arrow schema
        geo = json.loads(metadata[b"geo"]) if b"geo" in metadata else None
        geometry_column = None if geo is None else geo.get("primary_column")
        wanted = schema.arrow_schema()
        names = [f.name for f in wanted]
        columns = names + ([geometry_column] if geometry_column is not None else [])
        missing = [c for c in columns if c not in pf.schema_arrow.names]
        if missing or (geometry_column is None) != (schema.geometry_type is None):
            raise LoadError(
                f"previous output {str(path)!r} does not hold the columns this job writes (missing: "
                f"{', '.join(missing) or 'the geometry'}); run with --full-refresh to write it anew"
            )
        for record_batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
            table = pa.Table.from_batches([record_batch])
            try:
                attributes = table.select(names).cast(wanted)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise LoadError(
                    f"previous output {str(path)!r} has column types {table.select(names).schema.types}, this job "
                    f"writes {wanted.types}; run with --full-refresh to write it anew"
                ) from exc
            geometry = None
            if geometry_column is not None:
                geometry = shapely.from_wkb(table.column(geometry_column).to_numpy(zero_copy_only=False))
            yield FeatureBatch(attributes, geometry, schema.crs)


def previous_output(loader: Loader) -> Path | None:
    """The path a file sink writes (None for other sinks)."""
    return loader.path if isinstance(loader, FileLoader) else None


def remove_tree(path: Path) -> None:
    """Remove a stale temp output (a file, or a folder of a shapefile set); gone already is fine."""
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class SyncOutcome:
    """What one sync run did, for the report and the state store: its plan, the largest
    cursor read, the merge counts, the file sink's merging wrapper, the key a sink that is
    not a file matches features by, warnings for the report."""

    plan: SyncPlan
    cursor: Cursor | None = None
    merge: MergeStats = field(default_factory=MergeStats)
    loader: MergingLoader | None = None
    key: str | None = None
    warnings: list[str] = field(default_factory=list)
