"""``ags-etl serve`` hardening: CORS only when asked, a warning when bound beyond loopback,
request-size bounds (where clause, objectIds), and the new options on the command line.

The expensive-query and malformed-geometry tests are in tests/hostile/test_local_server.py;
the where-guard fuzz is in test_where_fuzz.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import requests
from serve_helpers import layer_url, post_json, write_points

from ags_etl.errors import ConfigError
from ags_etl.server import where
from ags_etl.server.app import bind_warning
from ags_etl.server.cors import normalize_origin
from ags_etl.server.query import MAX_OBJECT_IDS
from ags_etl.server.testing import run_server

ALLOWED = "https://maps.example.org"
OTHER = "https://evil.example"


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small layer: the servers started here only need to start fast."""
    d = tmp_path_factory.mktemp("hardening-data")
    write_points(d / "points.geojson")
    return d


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``ags-etl serve`` as a user runs it, for option errors and --help (exits at once)."""
    return subprocess.run(
        [sys.executable, "-m", "ags_etl.server", *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def info(base: str, origin: str | None = None) -> requests.Response:
    headers = {"Origin": origin} if origin is not None else {}
    response = requests.get(f"{base}/arcgis/rest/info", params={"f": "json"}, headers=headers, timeout=30)
    assert response.status_code == 200
    return response


def preflight(base: str, origin: str) -> requests.Response:
    response = requests.options(
        f"{layer_url(base, 'points')}/query",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "x-esri-authorization",
        },
        timeout=30,
    )
    assert response.status_code == 204
    return response


# --------------------------------------------------------------------------- CORS


def test_no_cors_headers_by_default(server: str) -> None:
    for response in (info(server), info(server, OTHER), preflight(server, OTHER)):
        assert not any(name.lower().startswith("access-control-") for name in response.headers), response.headers
    assert "POST" in preflight(server, OTHER).headers["Allow"]


def test_cors_allows_the_listed_origins_only(small_dir: Path) -> None:
    with run_server(small_dir, "--cors", ALLOWED + "/", "--cors", "http://localhost:3000") as base:
        allowed = info(base, ALLOWED)
        assert allowed.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert allowed.headers["Vary"] == "Origin"
        assert info(base, "http://localhost:3000").headers["Access-Control-Allow-Origin"] == "http://localhost:3000"

        refused = info(base, OTHER)
        assert "Access-Control-Allow-Origin" not in refused.headers
        assert refused.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Origin" not in info(base).headers

        answer = preflight(base, ALLOWED)
        assert answer.headers["Access-Control-Allow-Origin"] == ALLOWED
        assert "POST" in answer.headers["Access-Control-Allow-Methods"]
        assert "X-Esri-Authorization" in answer.headers["Access-Control-Allow-Headers"]
        assert "Access-Control-Allow-Origin" not in preflight(base, OTHER).headers


def test_cors_star_allows_any_origin(small_dir: Path) -> None:
    with run_server(small_dir, "--cors", "*") as base:
        assert info(base, OTHER).headers["Access-Control-Allow-Origin"] == "*"
        assert preflight(base, OTHER).headers["Access-Control-Allow-Origin"] == "*"


def test_a_cors_value_that_is_not_an_origin_is_a_usage_error(small_dir: Path) -> None:
    proc = serve_cli(str(small_dir), "--port", "0", "--cors", "ftp://files.example")
    assert proc.returncode == 2, proc.stderr
    assert "--cors 'ftp://files.example' is not an origin" in proc.stderr
    assert "listening" not in proc.stdout


@pytest.mark.parametrize("origin", ["maps.example.org", "https://maps.example.org/app", "https://", "https://a?b=1"])
def test_only_scheme_host_port_is_an_origin(origin: str) -> None:
    with pytest.raises(ConfigError, match="is not an origin"):
        normalize_origin(origin)
    assert normalize_origin("HTTPS://Maps.Example.org:8443/") == "https://maps.example.org:8443"


# --------------------------------------------------------------------------- bind address


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost", "LOCALHOST"])
def test_loopback_addresses_get_no_warning(host: str) -> None:
    assert bind_warning(host) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.10"])
def test_other_addresses_get_a_warning(host: str) -> None:
    warning = bind_warning(host)
    assert warning is not None
    assert "reachable from other machines" in warning and "--token-auth" in warning


def test_serving_on_all_interfaces_warns_on_stderr(small_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with run_server(small_dir, "--host", "0.0.0.0", log_path=log) as base:
        assert base.startswith("http://0.0.0.0:")
        assert "currentVersion" in info(base.replace("0.0.0.0", "127.0.0.1")).json()
        text = log.read_text()
    assert "ags-etl serve: warning: serving on 0.0.0.0: reachable from other machines" in text
    assert "no access control beyond --token-auth" in text


def test_serving_on_loopback_prints_no_warning(small_dir: Path, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    with run_server(small_dir, log_path=log) as base:
        info(base)
        text = log.read_text()
    assert "warning" not in text.lower(), text


# --------------------------------------------------------------------------- request-size bounds


def test_where_clause_longer_than_the_limit_is_refused(server: str) -> None:
    clause = "name IN (" + ",".join(f"'{i}'" for i in range(where.MAX_LENGTH // 4)) + ")"
    assert len(clause) > where.MAX_LENGTH
    body = post_json(f"{layer_url(server, 'points')}/query", where=clause)
    assert body["error"]["code"] == 400
    assert f"at most {where.MAX_LENGTH}" in body["error"]["details"][0]


def test_where_clause_nested_beyond_the_limit_is_refused(server: str) -> None:
    depth = where.MAX_DEPTH + 1
    clause = "replace(" * depth + "name" + ", 'a', 'b')" * depth + " = 'x'"
    body = post_json(f"{layer_url(server, 'points')}/query", where=clause)
    assert body["error"]["code"] == 400
    assert f"more than {where.MAX_DEPTH} deep" in body["error"]["details"][0]


@pytest.mark.parametrize("clause", ["pop > 1 --", "pop > 1 /* x */", "pop > 1) OR (1=1"])
def test_comments_and_stray_parentheses_are_refused(server: str, clause: str) -> None:
    body = post_json(f"{layer_url(server, 'points')}/query", where=clause)
    assert body["error"]["code"] == 400, body


def test_too_many_object_ids_are_refused(server: str) -> None:
    ids = ",".join(str(i) for i in range(1, MAX_OBJECT_IDS + 2))
    body = post_json(f"{layer_url(server, 'points')}/query", objectIds=ids)
    assert body["error"]["code"] == 400
    assert f"at most {MAX_OBJECT_IDS} per request" in body["error"]["details"][0]
    ok = post_json(
        f"{layer_url(server, 'points')}/query", objectIds=",".join(str(i) for i in range(1, MAX_OBJECT_IDS + 1))
    )
    assert [f["attributes"]["OBJECTID"] for f in ok["features"]] == [1, 2, 3, 5, 8, 13, 21, 34]


# --------------------------------------------------------------------------- command line


def test_help_lists_query_timeout_and_cors() -> None:
    proc = serve_cli("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--query-timeout SECONDS" in proc.stdout
    assert "--cors ORIGIN" in proc.stdout


def test_query_timeout_must_be_positive(small_dir: Path) -> None:
    proc = serve_cli(str(small_dir), "--port", "0", "--query-timeout", "0")
    assert proc.returncode == 2, proc.stderr
    assert "--query-timeout" in proc.stderr
