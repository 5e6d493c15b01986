"""The state of sync jobs (a SQLite file) and the per-job lock that keeps two runs apart.

Where: the pipeline file's ``state:`` path (relative to the pipeline file), or
``<pipeline file's folder>/.ags_etl/state.db``; locks live beside it in ``locks/``.

One row per layer job (``name``: the job as run, ``job/service/layer`` for a layer of a
multi-layer job; ``job``: the job as written in the file)::

    store = StateStore(state_path(spec))
    with JobLock(store.lock_dir, "parcels"):      # JobLockedError when another run holds it
        before = store.get("parcels")             # JobState or None; store.rows() all of them
        ...                                       # the sink commits first
        store.put(JobState(name="parcels", job="parcels", cursor=..., ...))  # one transaction

Contract: :meth:`StateStore.put` is called only after the sink committed, so a run killed at
any point leaves the row as it was. Nothing secret is stored: URLs without credentials or
query, digests of the where clause and field list, counts and times.

The lock is ``fcntl.flock`` on ``locks/<job>.lock``, taken without waiting: it is released
by the kernel when the process ends however it ends (SIGKILL included), so a lock is never
stale.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from ags_etl.errors import ConfigError, JobLockedError
from ags_etl.sync import Cursor

__all__ = ["DEFAULT_STATE", "JobLock", "JobState", "StateStore", "lock_is_held", "state_path"]

#: The state file when the pipeline file names none, relative to the pipeline file's folder.
DEFAULT_STATE = Path(".ags_etl") / "state.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS job_state (
    name TEXT PRIMARY KEY,
    job TEXT NOT NULL,
    cursor TEXT,
    source TEXT NOT NULL,
    mode TEXT NOT NULL,
    last_run TEXT NOT NULL,
    features_read INTEGER NOT NULL,
    written INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    output TEXT
)
"""


def state_path(pipeline_path: Path | None, state: str | None) -> Path:
    """The state file of a pipeline: ``state`` (relative to the pipeline file's folder) or the
    default beside the pipeline file (the current folder for a pipeline built in Python)."""
    base = Path(".") if pipeline_path is None else (pipeline_path.parent if str(pipeline_path.parent) else Path("."))
    if state is None:
        return base / DEFAULT_STATE
    path = Path(state).expanduser()
    return path if path.is_absolute() else base / path


@dataclass
class JobState:
    """The last committed run of one layer job."""

    name: str
    job: str
    cursor: Cursor | None
    source: dict[str, Any]
    mode: str
    last_run: str
    features_read: int = 0
    written: int = 0
    deleted: int = 0
    output: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["cursor"] = None if self.cursor is None else {**self.cursor.to_json(), "text": self.cursor.text()}
        return data


def now_text() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class StateStore:
    """The SQLite state file at ``path``; created (with its folder) on the first write.

    Each method opens its own short connection, so a store can be shared by threads and
    another process may write meanwhile (SQLite serialises; 30 s busy timeout).
    """

    path: Path
    _created: bool = field(default=False, repr=False)

    @property
    def lock_dir(self) -> Path:
        return self.path.parent / "locks"

    @contextlib.contextmanager
    def _connect(self, *, write: bool) -> Iterator[sqlite3.Connection | None]:
        if not write and not self.path.exists():
            yield None
            return
        if write:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"state folder {str(self.path.parent)!r} cannot be created ({exc.strerror}); set state: in the "
                    "pipeline file to a writable path"
                ) from exc
        try:
            conn = sqlite3.connect(self.path, timeout=30.0)
        except sqlite3.Error as exc:
            raise ConfigError(f"state file {str(self.path)!r} cannot be opened ({exc}); check the path") from exc
        try:
            with conn:  # one transaction: committed on success, rolled back on any exception
                if write:
                    conn.execute(_SCHEMA)
                yield conn
        except sqlite3.DatabaseError as exc:
            raise ConfigError(
                f"state file {str(self.path)!r} cannot be used ({exc}); remove it to start every sync job anew"
            ) from exc
        finally:
            conn.close()

    def get(self, name: str) -> JobState | None:
        """The state of the layer job ``name``, or None."""
        with self._connect(write=False) as conn:
            if conn is None or not _has_table(conn):
                return None
            row = conn.execute("SELECT * FROM job_state WHERE name = ?", (name,)).fetchone()
            return None if row is None else _from_row(row)

    def rows(self, job: str | None = None) -> list[JobState]:
        """Every row (or those of ``job``, by its name as written or as run), by name."""
        with self._connect(write=False) as conn:
            if conn is None or not _has_table(conn):
                return []
            if job is None:
                rows = conn.execute("SELECT * FROM job_state ORDER BY name").fetchall()
            else:
                rows = conn.execute(
                    "SELECT * FROM job_state WHERE job = ? OR name = ? ORDER BY name", (job, job)
                ).fetchall()
            return [_from_row(r) for r in rows]

    def put(self, state: JobState) -> None:
        """Replace the row of ``state.name`` in one transaction."""
        cursor = None if state.cursor is None else json.dumps(state.cursor.to_json())
        with self._connect(write=True) as conn:
            assert conn is not None
            conn.execute(
                "INSERT OR REPLACE INTO job_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (state.name, state.job, cursor, json.dumps(state.source, sort_keys=True), state.mode,
                 state.last_run, state.features_read, state.written, state.deleted, state.output),
            )

    def clear(self, job: str | None = None) -> list[str]:
        """Remove the rows of ``job`` (all rows when None); return the names removed."""
        removed = [s.name for s in self.rows(job)]
        if not removed:
            return []
        with self._connect(write=True) as conn:
            assert conn is not None
            conn.executemany("DELETE FROM job_state WHERE name = ?", [(n,) for n in removed])
        return removed


def _has_table(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_state'").fetchone() is not None


def _from_row(row: tuple[Any, ...]) -> JobState:
    name, job, cursor, source, mode, last_run, read, written, deleted, output = row
    return JobState(
        name=name, job=job, cursor=None if cursor is None else Cursor.from_json(json.loads(cursor)),
        source=json.loads(source), mode=mode, last_run=last_run, features_read=read, written=written,
        deleted=deleted, output=output,
    )


def _lock_file(lock_dir: Path, job: str) -> Path:
    """``locks/<job>.lock``: the name made safe for any file system, with a digest so that
    two names that clean up alike keep separate locks."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", job)[:80]
    digest = hashlib.sha256(job.encode("utf-8")).hexdigest()[:8]
    return lock_dir / f"{safe}.{digest}.lock"


class JobLock:
    """The lock of job ``job``: ``with JobLock(dir, job):`` — raises JobLockedError at once
    when another process holds it. Released on leaving the block or when the process ends."""

    def __init__(self, lock_dir: Path, job: str) -> None:
        self.path = _lock_file(lock_dir, job)
        self.job = job
        self._fd: int | None = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock now or raise JobLockedError (ConfigError when the lock file cannot be made)."""
        if self._fd is not None:
            raise RuntimeError(f"the lock of job {self.job!r} is already held by this JobLock")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(
                f"lock file {str(self.path)!r} cannot be created ({exc.strerror}); set state: in the pipeline "
                "file to a writable path"
            ) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            os.close(fd)
            raise JobLockedError(
                f"job {self.job!r} is being run by another process (lock {str(self.path)!r}); nothing was changed. "
                "Let that run finish, or schedule the runs further apart",
                job=self.job,
            ) from exc
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (nothing when not held)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


def lock_is_held(lock_dir: Path, job: str) -> bool:
    """Whether another process holds ``job``'s lock right now (takes and drops it if free)."""
    try:
        with JobLock(lock_dir, job):
            return False
    except JobLockedError:
        return True
