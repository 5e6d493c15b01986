"""``ags-etl state list|show|clear FILE [JOB]``: what sync jobs remember, and forgetting it.

The state file is the pipeline file's ``state:`` path (relative to the pipeline file) or
``.ags_etl/state.db`` beside it. Only the ``state`` key of the pipeline file is read (its
``${VAR}`` filled from the environment), so the rest of the file need not be complete.

Exit codes: 0 done; 2 usage error (no such job in the state); 75 ``clear`` refused because
a run of the job holds its lock; 78 the pipeline file cannot be read.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click
import yaml  # type: ignore[import-untyped]

from ags_etl.cli._common import EXIT_CONFIG, EXIT_LOCKED, fail, handle_errors
from ags_etl.errors import ConfigError
from ags_etl.state import StateStore, lock_is_held, state_path


def _store(file: Path) -> StateStore:
    """The state store of the pipeline file ``file``; exit 78 when it cannot be read."""
    from ags_etl.config import interpolate

    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        fail(f"{file}: cannot be read as a pipeline file ({exc}); check the path", EXIT_CONFIG)
        raise AssertionError("unreachable") from exc
    state = data.get("state") if isinstance(data, dict) else None
    if state is not None:
        filled, found = interpolate(state, os.environ, ("state",))
        if found.problems or not isinstance(filled, str):
            fail(f"{file}: state: must be a path; {'; '.join(str(p) for p in found.problems)}", EXIT_CONFIG)
        state = filled
    return StateStore(state_path(file, state))


@click.group("state")
def state_cmd() -> None:
    """Show or clear what sync jobs remember (cursor, last run, counts)."""


@state_cmd.command("list")
@click.argument("file", type=click.Path(path_type=Path))
@handle_errors(writes_output=False)
def list_cmd(file: Path) -> None:
    """List the sync state of every job of the pipeline file FILE: cursor, last run, counts."""
    store = _store(file)
    states = store.rows()
    if not states:
        click.echo(f"no sync state in {store.path}")
        return
    rows = [("job", "mode", "cursor", "last run", "read", "written", "deleted")]
    for s in states:
        cursor = "-" if s.cursor is None else s.cursor.text()
        rows.append((s.name, s.mode, cursor, s.last_run, str(s.features_read), str(s.written), str(s.deleted)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        click.echo("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())


@state_cmd.command("show")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("job")
@handle_errors(writes_output=False)
def show_cmd(file: Path, job: str) -> None:
    """Print the sync state of JOB (as written in FILE, or one layer of it) as JSON."""
    store = _store(file)
    states = store.rows(job)
    if not states:
        raise ConfigError(f"no sync state for job {job!r} in {store.path}; `ags-etl state list {file}` shows the jobs")
    data = [s.to_dict() for s in states]
    click.echo(json.dumps(data[0] if len(data) == 1 else data, indent=2, ensure_ascii=False))


@state_cmd.command("clear")
@click.argument("file", type=click.Path(path_type=Path))
@click.argument("job", required=False)
@handle_errors(writes_output=False)
def clear_cmd(file: Path, job: str | None) -> None:
    """Forget the sync state of JOB (every job without JOB); its next run reads everything.

    Refused (exit 75) while a run of the job holds its lock.
    """
    store = _store(file)
    states = store.rows(job)
    for name in sorted({s.job for s in states} | ({job} if job is not None else set())):
        if lock_is_held(store.lock_dir, name):
            fail(f"job {name!r} is being run by another process; its state was not cleared, try again later", EXIT_LOCKED)
    removed = store.clear(job)
    if not removed:
        click.echo(f"nothing to clear in {store.path}" + ("" if job is None else f" for job {job!r}"))
        return
    for name in removed:
        click.echo(f"cleared {name}")
