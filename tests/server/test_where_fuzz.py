"""The where-clause guard (ags_etl/server/where.py) against arbitrary text and SQL token soups.

Properties:

* ``rewrite`` returns a string or raises its own RestError (code 400) — never
  another exception, whatever the text;
* a clause it accepts, run as the server runs it, reads nothing but the
  ``features`` table and performs no other kind of action (no ATTACH, PRAGMA,
  write, schema change): checked on a copy of the layer's SQLite file holding a
  ``secret`` table, with an authorizer that allows everything and records;
* on the server's own guarded read connection an accepted clause either runs or
  fails with a ``sqlite3.Error``, and a call of a function outside the
  allow-list is refused there ("not authorized").
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from serve_helpers import write_points

from ags_etl.server import where
from ags_etl.server.app import load_stores
from ags_etl.server.protocol import RestError
from ags_etl.server.storage import ALLOWED_FUNCTIONS, TABLE, LayerStore

FIELDS = ["OBJECTID", "name", "pop", "ratio", "born"]

TOKENS = [
    # clause material
    "name", "pop", "OBJECTID", '"name"', '"pop"', "1", "0", "2.5", "'x'", "'O''Hare'", "'%a%'", "=", "<>", "<",
    ">=", "AND", "OR", "NOT", "LIKE", "IN", "IS", "NULL", "BETWEEN", "ESCAPE", "CAST", "AS", "TEXT", "||", ",",
    "(", ")", "date", "'2020-01-01'", "timestamp", "CURRENT_DATE", "CURRENT_TIMESTAMP",
    # functions, allowed and not
    "replace(", "upper(", "lower(", "substr(", "length(", "typeof(", "load_extension(", "readfile(", "writefile(",
    "randomblob(", "zeroblob(", "sqlite_version(", "fts3_tokenizer(", "printf(", "char(", "unlikely(",
    # statements, tables, quoting, comments, parameters
    "SELECT", "select", "PRAGMA", "ATTACH", "DATABASE", "DETACH", "VACUUM", "WITH", "UNION", "VALUES", "INSERT",
    "INTO", "UPDATE", "SET", "DELETE", "FROM", "DROP", "TABLE", "CREATE", "ALTER", "sqlite_master", "secret",
    "features", "main", "temp", ".", "*", ";", "--", "/*", "*/", "'", '"', "`", "[name]", "`name`", '"nosuch"',
    "__ags_wkb", "__AGS_XMIN", "[__ags_wkb]", "?", "?1", ":a", "@a", "$a", "\n", "\x00", "é", "東京",
]  # fmt: skip

#: Authorizer actions a where clause may cause; anything else is a guard failure.
READ_ACTIONS = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LayerStore]:
    data = tmp_path_factory.mktemp("where-data")
    write_points(data / "points.geojson")
    workdir = tmp_path_factory.mktemp("where-store")
    (loaded,) = load_stores(data, workdir)
    with loaded:
        yield loaded


@pytest.fixture(scope="module")
def canary(store: LayerStore, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the layer's SQLite file with a ``secret`` table no clause may read."""
    path = tmp_path_factory.mktemp("where-canary") / "canary.sqlite"
    shutil.copy(store.path, path)
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE secret (value TEXT)")
        conn.execute("INSERT INTO secret VALUES ('token-1234')")
        conn.commit()
    return path


def guarded(text: str) -> str | None:
    """The guard's translation, or None when it refused; any other exception fails the test."""
    try:
        return where.rewrite(text, FIELDS)
    except RestError as err:
        assert err.code == 400 and err.details, err.body()
        return None


def run_recorded(path: Path, sql: str) -> list[tuple[int, str | None, str | None]]:
    """Run the clause as the server does, allowing everything and recording each authorizer call."""
    seen: list[tuple[int, str | None, str | None]] = []

    def record(action: int, arg1: str | None, arg2: str | None, db: str | None, trigger: str | None) -> int:
        seen.append((action, arg1, arg2))
        return sqlite3.SQLITE_OK

    deadline = time.monotonic() + 2.0
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 1 << 20)  # randomblob(1e9) must not allocate a GiB
        conn.set_progress_handler(lambda: int(time.monotonic() > deadline), 1000)
        conn.set_authorizer(record)
        try:
            conn.execute(f"SELECT OBJECTID FROM {TABLE} WHERE ({sql}) ORDER BY OBJECTID LIMIT 5").fetchall()
        except sqlite3.Error:
            pass  # syntax errors and the like: SQLite refused it, which is fine
    return seen


def run_guarded(store: LayerStore, sql: str) -> sqlite3.Error | None:
    """Run the clause on the server's own read connection (authorizer, deadline)."""
    with store.reader(time.monotonic() + 2.0) as reader:
        try:
            reader.conn.execute(f"SELECT OBJECTID FROM {TABLE} WHERE ({sql}) ORDER BY OBJECTID LIMIT 5").fetchall()
        except sqlite3.Error as exc:
            return exc
    return None


def check_accepted(store: LayerStore, canary: Path, sql: str) -> None:
    seen = run_recorded(canary, sql)
    for action, arg1, arg2 in seen:
        assert action in READ_ACTIONS, f"clause {sql!r} caused authorizer action {action} ({arg1}, {arg2})"
        if action == sqlite3.SQLITE_READ:
            assert arg1 == TABLE, f"clause {sql!r} read table {arg1!r}"
    unlisted = {
        arg2.lower() for action, _, arg2 in seen if action == sqlite3.SQLITE_FUNCTION and arg2
    } - ALLOWED_FUNCTIONS
    error = run_guarded(store, sql)
    if unlisted:
        assert error is not None and "not authorized" in str(error), (sql, unlisted, error)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_guard_answers_any_text_with_a_translation_or_its_own_error(text: str) -> None:
    guarded(text)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(TOKENS), max_size=25), st.sampled_from([" ", ""]))
def test_accepted_token_soups_touch_only_the_features_table(
    store: LayerStore, canary: Path, tokens: list[str], sep: str
) -> None:
    sql = guarded(sep.join(tokens))
    if sql is not None:
        check_accepted(store, canary, sql)


@pytest.mark.parametrize(
    "text",
    [
        "1=1; DROP TABLE features",
        "1=1) UNION SELECT value FROM secret --",
        "name IN (SELECT value FROM secret)",
        "1=1 --",
        "1=1 /* hidden */",
        "1=1) OR (1=1",
        "(1=1",
        "name = 'unterminated",
        'name = "unterminated',
        "ATTACH DATABASE '/tmp/x' AS x",
        "PRAGMA writable_schema=1",
        "[__ags_wkb] IS NOT NULL",
        "`__ags_xmin` > 0",
        "x" * (where.MAX_LENGTH + 1),
        "(" * (where.MAX_DEPTH + 1) + "1=1" + ")" * (where.MAX_DEPTH + 1),
    ],
)
def test_statements_comments_stray_parentheses_and_oversize_clauses_are_refused(text: str) -> None:
    assert guarded(text) is None


@pytest.mark.parametrize(
    "text",
    [
        "load_extension('/tmp/evil.so') IS NULL",
        "length(randomblob(100)) > 0",
        "sqlite_version() > '0'",
        "printf('%s', name) = 'x'",
    ],
)
def test_functions_off_the_allow_list_pass_the_guard_but_not_the_authorizer(
    store: LayerStore, canary: Path, text: str
) -> None:
    sql = guarded(text)
    assert sql is not None  # the guard leaves function names to the authorizer
    error = run_guarded(store, sql)
    assert error is not None and "not authorized" in str(error)
    check_accepted(store, canary, sql)


def test_nesting_up_to_the_limit_is_accepted_and_runs(store: LayerStore) -> None:
    text = "(" * where.MAX_DEPTH + "pop > 10" + ")" * where.MAX_DEPTH
    sql = guarded(text)
    assert sql is not None
    assert run_guarded(store, sql) is None
