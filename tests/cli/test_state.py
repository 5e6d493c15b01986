"""`ags-etl state list|show|clear FILE [JOB]` in a real process, on a state file written by the store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ags_etl.state import JobState, StateStore
from ags_etl.sync import Cursor
from tests.cli.helpers import ags, one_error_line


def _pipeline(tmp_path: Path, state: str | None) -> Path:
    path = tmp_path / "pipeline.yaml"
    line = "" if state is None else f"state: {state}\n"
    # ${SERVER} is never set: only the state key is read, so the rest need not be complete.
    path.write_text(f"version: 1\n{line}jobs:\n  - name: a\n    source: {{url: \"${{SERVER}}/x\"}}\n"
                    "    sink: {type: geoparquet, path: a.parquet}\n")
    return path


def _fill(store: StateStore) -> None:
    for name, job, cursor in (("a", "a", Cursor("date", 1_718_096_101_000)), ("m/s/one", "m", Cursor("number", 42))):
        store.put(JobState(name=name, job=job, cursor=cursor, source={"url": "https://h/x"}, mode="incremental",
                           last_run="2024-06-11T09:00:00Z", features_read=3, written=10, deleted=1))


def test_list_show_clear(tmp_path: Path) -> None:
    file = _pipeline(tmp_path, "${STATE_DIR:-st}/s.db")
    store = StateStore(tmp_path / "st" / "s.db")
    empty = ags("state", "list", str(file))
    assert empty.returncode == 0 and empty.stdout.startswith("no sync state in ")
    _fill(store)
    listed = ags("state", "list", str(file))
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["job", "mode", "cursor", "last", "run", "read", "written", "deleted"]
    assert lines[1].split() == ["a", "incremental", "2024-06-11T08:55:01.000Z", "2024-06-11T09:00:00Z", "3", "10", "1"]
    assert lines[2].split()[:3] == ["m/s/one", "incremental", "42"]
    shown = ags("state", "show", str(file), "a")
    data = json.loads(shown.stdout)
    assert data["cursor"] == {"kind": "date", "value": 1_718_096_101_000, "text": "2024-06-11T08:55:01.000Z"}
    assert (data["written"], data["deleted"], data["source"]) == (10, 1, {"url": "https://h/x"})
    missing = ags("state", "show", str(file), "nope")
    assert missing.returncode == 2 and "no sync state for job 'nope'" in one_error_line(missing)
    cleared = ags("state", "clear", str(file), "m")
    assert (cleared.returncode, cleared.stdout) == (0, "cleared m/s/one\n")
    assert [s.name for s in store.rows()] == ["a"]
    assert ags("state", "clear", str(file)).stdout == "cleared a\n"
    assert ags("state", "clear", str(file)).stdout.startswith("nothing to clear in ")


def test_default_state_beside_the_file_and_clear_refused_while_locked(tmp_path: Path) -> None:
    file = _pipeline(tmp_path, None)
    store = StateStore(tmp_path / ".ags_etl" / "state.db")
    _fill(store)
    hold = ("import sys, time; from pathlib import Path; from ags_etl.state import JobLock\n"
            "with JobLock(Path(sys.argv[1]), 'a'):\n    print('held', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(store.lock_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = ags("state", "clear", str(file), "a")
        assert refused.returncode == 75 and "job 'a' is being run by another process" in one_error_line(refused)
        refused_all = ags("state", "clear", str(file))
        assert refused_all.returncode == 75
        assert len(store.rows()) == 2, "nothing cleared"
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert ags("state", "clear", str(file), "a").returncode == 0


def test_unreadable_pipeline_file_is_78(tmp_path: Path) -> None:
    proc = ags("state", "list", str(tmp_path / "missing.yaml"))
    assert proc.returncode == 78 and "missing.yaml" in one_error_line(proc)
