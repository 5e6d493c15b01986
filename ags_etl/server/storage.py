"""SQLite storage of one served layer, and a pool of guarded read connections.

Layout of the file ``<dir>/<name>.sqlite``:

* table ``features``: the OID field as ``INTEGER PRIMARY KEY`` (so paging in OID
  order walks the table b-tree, one query per page), one column per attribute
  field (dates as INTEGER epoch ms), ``__ags_wkb`` (ISO WKB) and
  ``__ags_xmin/ymin/xmax/ymax`` (the feature's envelope);
* index ``features_bbox`` on ``(xmin, xmax, ymin, ymax)``: the envelope prefilter
  reads the strip ``qxmin - W <= xmin <= qxmax`` of it, where ``W`` is the widest
  feature envelope of the layer (0 for points), and tests the other sides inside
  the index. An R*Tree answers faster but costs ~15 µs per feature to build
  (3 s of start-up for 200,000 points); the strip keeps start-up to the table load.

Each HTTP request borrows a read connection from the pool
(``check_same_thread=False``: a connection moves between threads but is used by
one at a time). Read connections are opened read-only with ``query_only``, and
an authorizer that allows only reads of ``features`` and a list of harmless
functions — the guard behind user where clauses.

Every borrowed connection carries a deadline, so an expensive where clause
stops using the CPU when its request's time is up, not when the statement would
have finished: one watchdog thread interrupts (``Connection.interrupt``) the
connections whose deadline has passed — a single step of a statement can take
long (``replace()`` on a long string) — and a progress handler, called every
thousand virtual-machine steps, stops any statement started after it.

Editable stores (``ags-etl serve --editable``, see edits.py) differ in four ways:

* the OID column is ``INTEGER PRIMARY KEY AUTOINCREMENT``: SQLite keeps the
  largest id ever used in ``sqlite_sequence``, so an id is never handed out
  twice, not even after the feature with the largest id is deleted and the
  server restarted;
* five system fields follow the attribute fields: ``GlobalID``
  (esriFieldTypeGlobalID, ``{UPPER-CASE-UUID}`` in braces as ArcGIS writes it,
  generated for the source's rows when the store is built, unique index) and
  the editor-tracking fields ``CreationDate``, ``Creator``, ``EditDate``,
  ``Editor`` (null for the source's rows, set by the server on every add and
  update). A source field already named so pushes ours to ``GlobalID_1`` …;
* the file is in WAL mode and lives in a store folder that outlives the
  server: one sub-folder per layer (:func:`store_folder`), reused at the next
  start when the source files have not changed (table ``__ags_meta`` records
  their size, mtime and SHA-256, and the layer's schema), rebuilt otherwise;
* one write connection per store, used under :meth:`LayerStore.writing`'s lock
  (one writer per layer at a time; readers keep reading the last commit). It
  runs only the server's own statements, never a client's SQL.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import itertools
import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import shapely
from pyproj import CRS

from ags_etl.schema import Field
from ags_etl.server.sources import INTERNAL_PREFIX, SourceLayer, read_source
from ags_etl.server.spatialref import SpatialRef

log = logging.getLogger(__name__)

TABLE = "features"
BBOX_INDEX = "features_bbox"
WKB = f"{INTERNAL_PREFIX}_wkb"
XMIN, YMIN, XMAX, YMAX = (f"{INTERNAL_PREFIX}_{c}" for c in ("xmin", "ymin", "xmax", "ymax"))
#: SQL function testing a row's WKB against the request's filter geometry.
HIT_FUNCTION = f"{INTERNAL_PREFIX}_hit"
#: Table of an editable store holding the source fingerprint and the layer's schema.
META_TABLE = f"{INTERNAL_PREFIX}_meta"
#: Bumped when the layout of editable stores changes: older stores are rebuilt.
STORE_FORMAT = 1
#: Sidecar files whose change changes a shapefile source.
_SIDECARS = (".dbf", ".shx", ".prj", ".cpg")

#: Functions a where clause (and our own SQL) may call; everything else is refused.
ALLOWED_FUNCTIONS = frozenset(
    {
        "abs", "coalesce", "ifnull", "nullif", "iif", "instr", "length", "lower", "upper", "ltrim", "rtrim",
        "trim", "replace", "round", "substr", "substring", "like", "glob", "min", "max", "count", "sum", "avg",
        "total", "char", "unicode", "typeof", HIT_FUNCTION,
    }
)  # fmt: skip

_SQL_TYPES = {
    "esriFieldTypeOID": "INTEGER",
    "esriFieldTypeSmallInteger": "INTEGER",
    "esriFieldTypeInteger": "INTEGER",
    "esriFieldTypeBigInteger": "INTEGER",
    "esriFieldTypeDate": "INTEGER",
    "esriFieldTypeSingle": "REAL",
    "esriFieldTypeDouble": "REAL",
}

#: Longest string/blob a query may build (SQLite's default is 1e9): a where clause
#: nesting replace() cannot eat the machine's memory.
_MAX_VALUE_BYTES = 256 * 1024 * 1024
#: SQLite virtual-machine steps between two deadline checks (a check costs ~0.2 µs,
#: a thousand steps ~20 µs).
_PROGRESS_STEPS = 1000
#: Deepest expression tree a statement may hold (SQLite's default is 1000).
_MAX_EXPR_DEPTH = 200


def quote(name: str) -> str:
    """A SQL identifier in double quotes."""
    return '"' + name.replace('"', '""') + '"'


@dataclass
class Reader:
    """A pooled read connection; ``filter_geometry`` is what ``__ags_hit(wkb)`` tests against.

    ``deadline`` (a ``time.monotonic()`` value, or None for none) is enforced by the
    progress handler: a statement still running then fails with
    ``sqlite3.OperationalError`` ("interrupted") and ``timed_out`` becomes True.
    """

    conn: sqlite3.Connection
    filter_geometry: shapely.Geometry | None = None
    deadline: float | None = None
    timed_out: bool = False

    def hit(self, wkb: bytes | None) -> int:
        if wkb is None or self.filter_geometry is None:
            return 0
        return 1 if self.filter_geometry.intersects(shapely.from_wkb(wkb)) else 0

    def progress(self) -> int:
        """SQLite progress handler: non-zero (interrupt) once the deadline has passed."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
            return 1
        return 0

    def expired(self) -> bool:
        """True once the deadline has passed (for Python-side work between statements)."""
        if self.deadline is not None and time.monotonic() > self.deadline:
            self.timed_out = True
        return self.timed_out


class _Watchdog:
    """One daemon thread that interrupts borrowed connections at their deadline.

    ``watch`` returns a ticket; after ``unwatch(ticket)`` returns, that reader is
    never interrupted for it (both run under one lock), so a connection back in
    the pool cannot be hit by a late interrupt.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._watched: dict[int, Reader] = {}
        self._tickets = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, reader: Reader, deadline: float) -> int:
        with self._cond:
            ticket = next(self._tickets)
            self._watched[ticket] = reader
            heapq.heappush(self._heap, (deadline, ticket))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ags-etl-query-watchdog", daemon=True)
                self._thread.start()
            if self._heap[0][1] == ticket:  # earlier than what the thread waits for
                self._cond.notify()
            return ticket

    def unwatch(self, ticket: int) -> None:
        with self._cond:
            self._watched.pop(ticket, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._watched:
                    heapq.heappop(self._heap)  # returned in time
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, ticket = self._heap[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                reader = self._watched.pop(ticket)
                reader.timed_out = True
                reader.conn.interrupt()


_WATCHDOG = _Watchdog()


@dataclass(frozen=True)
class EditFields:
    """Names of the system fields of an editable store (see the module docstring)."""

    global_id: str
    creation_date: str
    creator: str
    edit_date: str
    editor: str

    @property
    def names(self) -> tuple[str, ...]:
        return (self.global_id, self.creation_date, self.creator, self.edit_date, self.editor)

    def fields(self) -> list[Field]:
        """The system fields as served (GlobalID not nullable; editor fields nullable)."""
        return [
            Field(self.global_id, "esriFieldTypeGlobalID", alias="GlobalID", length=38, nullable=False),
            Field(self.creation_date, "esriFieldTypeDate", alias="CreationDate", length=8),
            Field(self.creator, "esriFieldTypeString", alias="Creator", length=128),
            Field(self.edit_date, "esriFieldTypeDate", alias="EditDate", length=8),
            Field(self.editor, "esriFieldTypeString", alias="Editor", length=128),
        ]

    @classmethod
    def avoiding(cls, taken: list[Field]) -> EditFields:
        """The standard names, each made unique against the source's fields (``GlobalID_1`` …)."""
        used = {f.name.lower() for f in taken}
        names = []
        for base in ("GlobalID", "CreationDate", "Creator", "EditDate", "Editor"):
            name, n = base, 1
            while name.lower() in used:
                name = f"{base}_{n}"
                n += 1
            used.add(name.lower())
            names.append(name)
        return cls(*names)


def new_global_id() -> str:
    """A GlobalID as ArcGIS writes them: an upper-case UUID in braces."""
    return "{" + str(uuid.uuid4()).upper() + "}"


def source_fingerprint(path: Path) -> str:
    """Size, mtime and SHA-256 of a source file and its shapefile sidecars, as JSON text."""
    parts = []
    for file in [path] + [path.with_suffix(s) for s in _SIDECARS if path.suffix.lower() == ".shp"]:
        if not file.exists():
            continue
        digest = hashlib.sha256()
        with file.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        stat = file.stat()
        parts.append(
            {"file": file.name, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest.hexdigest()}
        )
    return orjson.dumps(parts).decode()


def store_folder(key: str) -> str:
    """The sub-folder of a store folder for the layer ``key`` (``Svc``, ``Folder/Svc``, ``Svc/0``)."""
    return key.replace("/", "+")


@dataclass
class LayerStore:
    """One served layer: metadata plus its SQLite file. Close it (or use ``with``) to free it.

    Build with :meth:`create`. Thread-safe: requests borrow readers from the pool.
    """

    name: str
    path: Path
    fields: list[Field]
    oid_field: str
    geometry_type: str | None
    spatial_ref: SpatialRef | None
    has_z: bool
    count: int
    extent: tuple[float, float, float, float] | None
    #: Widest feature envelope (xmax - xmin) of the layer: the strip width of the prefilter.
    max_width: float
    #: Up to 1025 quantiles of the envelopes' xmin, to guess how much of the layer a strip holds.
    xmin_quantiles: np.ndarray
    source_file: str
    #: System field names of an editable store; None for a read-only one.
    edit_fields: EditFields | None = None
    _pool: list[Reader] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)
    _write_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _writer: sqlite3.Connection | None = field(default=None, repr=False)

    @property
    def editable(self) -> bool:
        return self.edit_fields is not None

    # ------------------------------------------------------------------ build

    @classmethod
    def create(cls, source: SourceLayer, directory: Path, *, editable: bool = False) -> LayerStore:
        """Write ``source`` into ``directory/<name>.sqlite`` and return the store.

        ``editable`` builds an editable store (see the module docstring); the caller
        records the source fingerprint with :meth:`write_meta`.
        """
        path = directory / f"{source.name}.sqlite"
        geoms = source.geometry
        n = source.count
        if geoms is not None:
            wkb = shapely.to_wkb(geoms, output_dimension=3 if source.has_z else 2, flavor="iso")
            bounds = shapely.bounds(geoms)
        else:
            wkb = np.full(n, None, dtype=object)
            bounds = np.full((n, 4), np.nan)
        bounds_list = [[None if v != v else v for v in row] for row in bounds.tolist()]
        edit_fields = EditFields.avoiding(source.fields) if editable else None
        attr_fields = source.fields[1:]
        system_fields = edit_fields.fields() if edit_fields is not None else []
        autoincrement = " AUTOINCREMENT" if editable else ""
        columns = [f"{quote(source.oid_field)} INTEGER PRIMARY KEY{autoincrement}"]
        columns += [f"{quote(f.name)} {_SQL_TYPES.get(f.esri_type, 'TEXT')}" for f in attr_fields + system_fields]
        columns += [f"{quote(WKB)} BLOB"] + [f"{quote(c)} REAL" for c in (XMIN, YMIN, XMAX, YMAX)]
        system_values: list[list[Any]] = []
        if edit_fields is not None:
            system_values = [[new_global_id() for _ in range(n)]] + [[None] * n for _ in range(4)]
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(f"CREATE TABLE {TABLE} ({', '.join(columns)})")
            marks = ", ".join("?" * (len(attr_fields) + len(system_fields) + 6))
            rows = (
                zip(source.oids.tolist(), *source.columns, *system_values, wkb.tolist(), *zip(*bounds_list))
                if n
                else iter(())
            )
            conn.executemany(f"INSERT INTO {TABLE} VALUES ({marks})", rows)
            conn.execute(
                f"CREATE INDEX {BBOX_INDEX} ON {TABLE} ({', '.join(quote(c) for c in (XMIN, XMAX, YMIN, YMAX))})"
            )
            if edit_fields is not None:
                conn.execute(f"CREATE UNIQUE INDEX features_globalid ON {TABLE} ({quote(edit_fields.global_id)})")
            conn.execute("ANALYZE")
            conn.commit()
            if editable:
                conn.execute("PRAGMA journal_mode=WAL")
        finally:
            conn.close()
        extent: tuple[float, float, float, float] | None = None
        max_width = 0.0
        quantiles = np.empty(0)
        if geoms is not None:
            present = ~np.isnan(bounds[:, 0])
            if present.any():
                b = bounds[present]
                extent = (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))
                max_width = float((b[:, 2] - b[:, 0]).max())
                quantiles = np.quantile(b[:, 0], np.linspace(0.0, 1.0, min(len(b), 1025)))
        return cls(
            name=source.name,
            path=path,
            fields=source.fields + system_fields,
            oid_field=source.oid_field,
            geometry_type=source.geometry_type,
            spatial_ref=source.spatial_ref,
            has_z=source.has_z,
            count=n,
            extent=extent,
            max_width=max_width,
            xmin_quantiles=quantiles,
            source_file=source.path.name,
            edit_fields=edit_fields,
        )

    # ------------------------------------------------------------------ persistence (editable stores)

    def write_meta(self, fingerprint: str) -> None:
        """Record the source fingerprint and the layer's schema, so :meth:`reopen` can serve
        the store without reading the source again."""
        assert self.edit_fields is not None
        schema = {
            "format": STORE_FORMAT,
            "name": self.name,
            "fields": [f.to_esri() for f in self.fields],
            "oid_field": self.oid_field,
            "geometry_type": self.geometry_type,
            "spatial_ref": None
            if self.spatial_ref is None
            else {"key": self.spatial_ref.key, "esri": self.spatial_ref.esri},
            "has_z": self.has_z,
            "source_file": self.source_file,
            "edit_fields": list(self.edit_fields.names),
        }
        with contextlib.closing(sqlite3.connect(self.path)) as conn, conn:
            conn.execute(f"CREATE TABLE IF NOT EXISTS {META_TABLE} (key TEXT PRIMARY KEY, value TEXT)")
            conn.executemany(
                f"INSERT OR REPLACE INTO {META_TABLE} VALUES (?, ?)",
                [("fingerprint", fingerprint), ("schema", orjson.dumps(schema).decode())],
            )

    @classmethod
    def reopen(cls, path: Path, fingerprint: str) -> LayerStore | None:
        """The editable store at ``path`` when it was built from a source with this
        ``fingerprint`` by this store format; None when it must be rebuilt."""
        if not path.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(path)) as conn:
                meta = dict(conn.execute(f"SELECT key, value FROM {META_TABLE}").fetchall())
                if meta.get("fingerprint") != fingerprint:
                    return None
                schema = orjson.loads(meta["schema"])
                if schema.get("format") != STORE_FORMAT:
                    return None
                count, xmin, ymin, xmax, ymax, width = conn.execute(
                    f"SELECT count(*), min({quote(XMIN)}), min({quote(YMIN)}), max({quote(XMAX)}), "
                    f"max({quote(YMAX)}), max({quote(XMAX)} - {quote(XMIN)}) FROM {TABLE}"
                ).fetchone()
                lows = np.array(
                    [r[0] for r in conn.execute(f"SELECT {quote(XMIN)} FROM {TABLE} WHERE {quote(XMIN)} IS NOT NULL")]
                )
        except (sqlite3.Error, KeyError, ValueError, orjson.JSONDecodeError) as exc:
            log.warning("%s: store unreadable (%s); rebuilding it", path, exc)
            return None
        sr = schema["spatial_ref"]
        spatial_ref = None
        if sr is not None:
            key = str(sr["key"])
            crs = CRS.from_wkt(key[4:]) if key.startswith("WKT:") else CRS.from_user_input(key)
            spatial_ref = SpatialRef(key=key, crs=crs, esri=dict(sr["esri"]))
        quantiles = np.quantile(lows, np.linspace(0.0, 1.0, min(len(lows), 1025))) if len(lows) else np.empty(0)
        return cls(
            name=str(schema["name"]),
            path=path,
            fields=[Field.from_esri(f) for f in schema["fields"]],
            oid_field=str(schema["oid_field"]),
            geometry_type=schema["geometry_type"],
            spatial_ref=spatial_ref,
            has_z=bool(schema["has_z"]),
            count=int(count),
            extent=None if xmin is None else (float(xmin), float(ymin), float(xmax), float(ymax)),
            max_width=float(width or 0.0),
            xmin_quantiles=quantiles,
            source_file=str(schema["source_file"]),
            edit_fields=EditFields(*schema["edit_fields"]),
        )

    # ------------------------------------------------------------------ writing (editable stores)

    @contextlib.contextmanager
    def writing(self) -> Iterator[sqlite3.Connection]:
        """The store's write connection, held alone for the ``with`` block (one writer per
        layer). It is in autocommit mode: the caller runs BEGIN/COMMIT/ROLLBACK itself."""
        if self.edit_fields is None:
            raise RuntimeError(f"layer store {self.name!r} is read-only")
        with self._write_lock:
            if self._closed:
                raise RuntimeError(f"layer store {self.name!r} is closed")
            if self._writer is None:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                # NORMAL in WAL mode: a commit survives the process being killed (not a power cut).
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=10000")
                self._writer = conn
            yield self._writer

    def after_commit(self, added: int, deleted: int, boxes: list[tuple[float, float, float, float]]) -> None:
        """Update count, extent and widest envelope after a commit (call under :meth:`writing`).

        The extent only grows (a delete does not shrink it, as on hosted ArcGIS layers);
        the widest envelope must grow, or the bbox prefilter would miss wide new features.
        """
        self.count += added - deleted
        for xmin, ymin, xmax, ymax in boxes:
            box = self.extent
            self.extent = (
                (xmin, ymin, xmax, ymax)
                if box is None
                else (min(box[0], xmin), min(box[1], ymin), max(box[2], xmax), max(box[3], ymax))
            )
            self.max_width = max(self.max_width, xmax - xmin)

    def strip_share(self, low: float, high: float) -> float:
        """Estimated share (0..1) of the geometries whose envelope xmin lies in [low, high]."""
        q = self.xmin_quantiles
        if len(q) == 0:
            return 0.0
        inside = np.searchsorted(q, high, side="right") - np.searchsorted(q, low, side="left")
        return float(inside) / len(q)

    # ------------------------------------------------------------------ fields

    def field_by_name(self, name: str) -> Field | None:
        """Case-insensitive field lookup (ArcGIS field names are case-insensitive)."""
        low = name.strip().lower()
        for f in self.fields:
            if f.name.lower() == low:
                return f
        return None

    # ------------------------------------------------------------------ readers

    def _open_reader(self) -> Reader:
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False)
        conn.execute("PRAGMA query_only=1")
        conn.execute("PRAGMA mmap_size=268435456")
        if hasattr(conn, "setlimit"):  # Python 3.11+
            conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, _MAX_VALUE_BYTES)
            conn.setlimit(sqlite3.SQLITE_LIMIT_EXPR_DEPTH, _MAX_EXPR_DEPTH)
        reader = Reader(conn)
        conn.create_function(HIT_FUNCTION, 1, reader.hit, deterministic=True)
        conn.set_authorizer(_authorizer)
        conn.set_progress_handler(reader.progress, _PROGRESS_STEPS)
        return reader

    @contextlib.contextmanager
    def reader(self, deadline: float | None = None) -> Iterator[Reader]:
        """Borrow a read connection whose statements stop at ``deadline`` (``time.monotonic()``
        seconds; None: no limit). Filter geometry and deadline are cleared on return."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"layer store {self.name!r} is closed")
            reader = self._pool.pop() if self._pool else None
        if reader is None:
            reader = self._open_reader()
        reader.deadline = deadline
        reader.timed_out = False
        ticket = _WATCHDOG.watch(reader, deadline) if deadline is not None else None
        try:
            yield reader
        finally:
            if ticket is not None:
                _WATCHDOG.unwatch(ticket)
            reader.filter_geometry = None
            reader.deadline = None
            reader.timed_out = False
            with self._lock:
                if self._closed:
                    reader.conn.close()
                else:
                    self._pool.append(reader)

    def close(self) -> None:
        """Close pooled connections (borrowed ones close on return). Idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, []
        for reader in pool:
            reader.conn.close()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def __enter__(self) -> LayerStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
    """SQLite authorizer of read connections: reads of the layer tables and listed functions only."""
    if action == sqlite3.SQLITE_SELECT:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_READ and arg1 == TABLE:
        return sqlite3.SQLITE_OK
    if action == sqlite3.SQLITE_FUNCTION and arg2 is not None and arg2.lower() in ALLOWED_FUNCTIONS:
        return sqlite3.SQLITE_OK
    return sqlite3.SQLITE_DENY


def open_store(path: Path, name: str, directory: Path, *, editable: bool = False) -> LayerStore:
    """The store of the source file ``path`` in ``directory``.

    Read-only: always built afresh. Editable: the store already in ``directory`` is
    reused when its source fingerprint matches; otherwise it is rebuilt (edits made
    to the old one are dropped, with a warning). Raises ConfigError naming a source
    that cannot be read.
    """
    if not editable:
        return LayerStore.create(read_source(path, name), directory)
    fingerprint = source_fingerprint(path)
    target = directory / f"{name}.sqlite"
    store = LayerStore.reopen(target, fingerprint)
    if store is not None:
        log.info("%s: reusing the store in %s (edits kept)", path.name, directory)
        return store
    stale = [target.with_name(target.name + suffix) for suffix in ("", "-wal", "-shm")]
    if target.exists():
        log.warning(
            "%s: the source changed since its store was built; rebuilding it (earlier edits dropped)", path.name
        )
    for file in stale:
        file.unlink(missing_ok=True)
    store = LayerStore.create(read_source(path, name), directory, editable=True)
    store.write_meta(fingerprint)
    return store
