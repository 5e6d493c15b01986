"""The state store (SQLite) and the per-job lock (flock), with real files and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ags_etl.errors import ConfigError, JobLockedError
from ags_etl.state import (
    DEFAULT_STATE,
    JobLock,
    JobState,
    StateStore,
    lock_is_held,
    state_path,
)
from ags_etl.sync import Cursor

NOVEMBER = Cursor("date", 1_700_000_000_000)


def _state(name: str, job: str, cursor: Cursor | None = NOVEMBER) -> JobState:
    return JobState(name=name, job=job, cursor=cursor, source={"url": "https://h/arcgis/rest/services/S/FeatureServer/0"},
                    mode="full", last_run="2024-01-01T00:00:00Z", features_read=5, written=5, deleted=1, output="o.parquet")


def test_paths() -> None:
    assert state_path(Path("/p/pipeline.yaml"), None) == Path("/p") / DEFAULT_STATE
    assert state_path(Path("/p/pipeline.yaml"), "st/s.db") == Path("/p/st/s.db")
    assert state_path(Path("/p/pipeline.yaml"), "/abs/s.db") == Path("/abs/s.db")
    assert state_path(None, None) == Path(".") / DEFAULT_STATE


def test_round_trip_list_and_clear(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "deep" / "state.db")
    assert store.get("a") is None and store.rows() == [] and not store.path.exists(), "reading creates nothing"
    store.put(_state("a", "a"))
    store.put(_state("multi/svc/one", "multi", None))
    store.put(_state("multi/svc/two", "multi", Cursor("number", 12)))
    again = StateStore(store.path)
    assert again.get("a") == _state("a", "a")
    assert [s.name for s in again.rows("multi")] == ["multi/svc/one", "multi/svc/two"]
    assert again.get("multi/svc/two").cursor == Cursor("number", 12)  # type: ignore[union-attr]
    store.put(_state("a", "a", Cursor("date", 5)))
    assert again.get("a").cursor == Cursor("date", 5)  # type: ignore[union-attr]
    assert again.clear("multi") == ["multi/svc/one", "multi/svc/two"]
    assert again.clear("nothing") == [] and [s.name for s in again.rows()] == ["a"]
    assert again.clear() == ["a"] and again.rows() == []


def test_a_file_that_is_not_sqlite_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "state.db"
    bad.write_bytes(b"not a database, just text" * 100)
    with pytest.raises(ConfigError, match="state.db.*remove it"):
        StateStore(bad).put(_state("a", "a"))


_HOLD = """
import sys, time
from pathlib import Path
from ags_etl.state import JobLock
with JobLock(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    time.sleep(120)
"""


def test_lock_held_by_another_process_and_freed_when_it_is_killed(tmp_path: Path) -> None:
    locks = tmp_path / "locks"
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(locks), "job a/b"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(JobLockedError, match="'job a/b' is being run by another process") as err, \
                JobLock(locks, "job a/b"):
            pass
        assert err.value.job == "job a/b"
        assert lock_is_held(locks, "job a/b") and not lock_is_held(locks, "job a_b"), "names that clean alike differ"
        with JobLock(locks, "other"):
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    with JobLock(locks, "job a/b") as lock:  # the kernel let go of the killed holder's lock
        assert lock.path.parent == locks and "/" not in lock.path.name
    assert not lock_is_held(locks, "job a/b")


def test_lock_in_an_unwritable_place_is_a_config_error(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(ConfigError, match="cannot be created"):
        JobLock(blocked / "locks", "a").acquire()


def test_release_and_reacquire_in_one_process(tmp_path: Path) -> None:
    lock = JobLock(tmp_path, "a")
    lock.acquire()
    assert os.path.exists(lock.path)
    lock.release()
    lock.release()  # twice is harmless
    start = time.monotonic()
    with JobLock(tmp_path, "a"):
        pass
    assert time.monotonic() - start < 30, "never waits"
