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
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import shapely

from ags_etl.schema import Field
from ags_etl.server.sources import INTERNAL_PREFIX, SourceLayer
from ags_etl.server.spatialref import SpatialRef

TABLE = "features"
BBOX_INDEX = "features_bbox"
WKB = f"{INTERNAL_PREFIX}_wkb"
XMIN, YMIN, XMAX, YMAX = (f"{INTERNAL_PREFIX}_{c}" for c in ("xmin", "ymin", "xmax", "ymax"))
#: SQL function testing a row's WKB against the request's filter geometry.
HIT_FUNCTION = f"{INTERNAL_PREFIX}_hit"

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
    _pool: list[Reader] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _closed: bool = field(default=False, repr=False)

    # ------------------------------------------------------------------ build

    @classmethod
    def create(cls, source: SourceLayer, directory: Path) -> "LayerStore":
        """Write ``source`` into ``directory/<name>.sqlite`` and return the store."""
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
        attr_fields = source.fields[1:]
        columns = [f"{quote(source.oid_field)} INTEGER PRIMARY KEY"]
        columns += [f"{quote(f.name)} {_SQL_TYPES.get(f.esri_type, 'TEXT')}" for f in attr_fields]
        columns += [f"{quote(WKB)} BLOB"] + [f"{quote(c)} REAL" for c in (XMIN, YMIN, XMAX, YMAX)]
        conn = sqlite3.connect(path)
        try:
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute(f"CREATE TABLE {TABLE} ({', '.join(columns)})")
            marks = ", ".join("?" * (len(attr_fields) + 6))
            rows = zip(source.oids.tolist(), *source.columns, wkb.tolist(), *zip(*bounds_list)) if n else iter(())
            conn.executemany(f"INSERT INTO {TABLE} VALUES ({marks})", rows)
            conn.execute(f"CREATE INDEX {BBOX_INDEX} ON {TABLE} ({', '.join(quote(c) for c in (XMIN, XMAX, YMIN, YMAX))})")
            conn.execute("ANALYZE")
            conn.commit()
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
            fields=source.fields,
            oid_field=source.oid_field,
            geometry_type=source.geometry_type,
            spatial_ref=source.spatial_ref,
            has_z=source.has_z,
            count=n,
            extent=extent,
            max_width=max_width,
            xmin_quantiles=quantiles,
            source_file=source.path.name,
        )

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

    def __enter__(self) -> "LayerStore":
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
