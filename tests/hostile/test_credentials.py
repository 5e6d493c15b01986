"""Credentials stay with their host: `ags-etl pull` against servers that redirect elsewhere.

"The other host" is a second loopback server on another port that records every request
(headers, body, query string); no token, API key, password or cookie may ever reach it.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.cli.helpers import ags, one_error_line
from tests.hostile.stubs import COOKIE, LAYER_PATH, ROWS, Log, Redirect, layer_stub, recorder_stub

SECRET = "s3cret-5ab7c1"
PASSWORD = "pw-9d2e4f"


@pytest.fixture
def other() -> Iterator[tuple[str, Log]]:
    with recorder_stub() as served:
        yield served


def _everything_to(other_base: str, status: int) -> Redirect:
    """Every path of the stub redirects to the same path on ``other_base``."""
    return Redirect(status, "/arcgis", lambda rest: f"{other_base}/arcgis{rest}")


def _pull(url: str, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return ags("pull", url, "-o", str(out), "--retries", "0", "--strategy", "oid-list", *args, env=env, timeout=60)


def _features(out: Path) -> list[dict[str, object]]:
    return [f["properties"] for f in orjson.loads(out.read_bytes())["features"]]


# Every status with --api-key, and --token/--api-key with the client alone, are in
# tests/arcgis/test_client_redirects.py (in-process, faster); here the user's view.
@pytest.mark.parametrize(
    ("status", "option"),
    [(301, "--token"), (302, "--token"), (303, "--token"), (307, "--token"), (308, "--token"), (307, "--api-key")],
)
def test_token_is_not_sent_to_another_host(
    status: int, option: str, other: tuple[str, Log], tmp_path: Path
) -> None:
    other_base, other_log = other
    with layer_stub(redirects=(_everything_to(other_base, status),)) as (base, _):
        proc = _pull(base + LAYER_PATH, tmp_path / "x.geojson", option, SECRET)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert f"{base}{LAYER_PATH} redirected (HTTP {status}) to {other_base}{LAYER_PATH}" in line
    assert "another host" in line and "use the final URL directly" in line
    assert SECRET not in proc.stderr
    assert SECRET not in other_log.text()
    assert other_log.requests == [], "nothing at all is sent to the other host"
    assert not (tmp_path / "x.geojson").exists()


@pytest.mark.parametrize("status", [307, 308])
def test_token_endpoint_redirect_keeps_the_password(status: int, other: tuple[str, Log], tmp_path: Path) -> None:
    other_base, other_log = other
    with layer_stub(token="tok", redirects=(_everything_to(other_base, status),)) as (base, log):
        proc = _pull(
            base + LAYER_PATH, tmp_path / "x.geojson", "--username", "ags",
            "--token-url", f"{base}/arcgis/tokens/generateToken", env={"AGS_ETL_PASSWORD": PASSWORD},
        )
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    endpoint = "/arcgis/tokens/generateToken"
    assert f"{base}{endpoint} redirected (HTTP {status}) to {other_base}{endpoint}" in line
    assert "use the final URL directly" in line
    assert PASSWORD not in proc.stderr
    assert PASSWORD not in other_log.text() and other_log.requests == []
    assert [s.path for s in log.requests] == ["/arcgis/tokens/generateToken"]


def test_same_origin_redirect_keeps_working_with_a_token(tmp_path: Path) -> None:
    moved = Redirect(301, "/moved/", lambda rest: f"/arcgis/rest/services/tiny/{rest}")
    with layer_stub(token=SECRET, redirects=(moved,)) as (base, log):
        out = tmp_path / "x.geojson"
        proc = _pull(f"{base}/moved/FeatureServer/0", out, env={"AGS_ETL_TOKEN": SECRET})
    assert proc.returncode == 0, proc.stderr
    assert _features(out) == ROWS
    followed = [s for s in log.requests if s.path.startswith("/arcgis/")]
    assert followed and all(s.headers.get("X-Esri-Authorization") == f"Bearer {SECRET}" for s in followed)


def test_anonymous_redirect_to_another_host_is_followed(other: tuple[str, Log], tmp_path: Path) -> None:
    other_base, other_log = other
    with layer_stub(redirects=(_everything_to(other_base, 301),)) as (base, _):
        out = tmp_path / "x.geojson"
        proc = _pull(base + LAYER_PATH, out)
    assert proc.returncode == 0, proc.stderr
    assert _features(out) == ROWS
    assert other_log.requests, "the other host answered the pull"


def _cookie_then_redirect(target_base: str) -> Redirect:
    """The layer's metadata sets a cookie; its queries redirect to ``target_base``."""
    return Redirect(307, f"{LAYER_PATH}/query", lambda rest: f"{target_base}{LAYER_PATH}/query{rest}")


def test_cookie_for_this_host_blocks_a_redirect_to_another_port(other: tuple[str, Log], tmp_path: Path) -> None:
    # Cookies are not scoped by port: 127.0.0.1:OTHER would get the cookie, so the redirect is refused.
    other_base, other_log = other
    with layer_stub(set_cookie=True, redirects=(_cookie_then_redirect(other_base),)) as (base, _):
        proc = _pull(base + LAYER_PATH, tmp_path / "x.geojson")
    assert proc.returncode == 1, proc.stderr
    assert "credentials" in one_error_line(proc)
    assert other_log.requests == []


def test_cookie_is_not_sent_to_another_host_name(other: tuple[str, Log], tmp_path: Path) -> None:
    # The same server under another name (localhost): the cookie jar keeps 127.0.0.1's cookie home.
    other_base, other_log = other
    other_named = other_base.replace("127.0.0.1", "localhost")
    with layer_stub(set_cookie=True, redirects=(_cookie_then_redirect(other_named),)) as (base, log):
        out = tmp_path / "x.geojson"
        proc = _pull(base + LAYER_PATH, out)
    assert proc.returncode == 0, proc.stderr
    assert _features(out) == ROWS
    assert any("stubsession" in s.headers.get("Cookie", "") for s in log.requests), "the cookie went home"
    assert other_log.requests and COOKIE.split("=")[1] not in other_log.text()


def test_password_in_the_url_is_never_printed_nor_sent_in_a_url(tmp_path: Path) -> None:
    with layer_stub(token=SECRET) as (base, log):
        with_userinfo = base.replace("http://", f"http://ags:{PASSWORD}@")
        missing = _pull(f"{with_userinfo}/arcgis/rest/services/missing/FeatureServer/0", tmp_path / "x.geojson")
        pulled = _pull(with_userinfo + LAYER_PATH, tmp_path / "y.geojson")
    for proc in (missing, pulled):
        assert PASSWORD not in proc.stderr and "ags:" not in proc.stderr, proc.stderr
    assert missing.returncode == 1
    assert f"{base}/arcgis/rest/services/missing/FeatureServer/0" in missing.stderr
    # Credentials in the URL are used (as username/password, with a warning), never sent in a URL.
    assert pulled.returncode == 0, pulled.stderr
    assert "credentials in the URL are visible" in pulled.stderr
    for seen in log.requests:
        assert "Authorization" not in seen.headers, "userinfo must not become Basic auth"
        if PASSWORD in seen.text():  # only the token endpoint may see it, in a POST body
            assert seen.method == "POST" and seen.path.endswith("/generateToken") and PASSWORD not in seen.query


def test_a_bad_url_with_a_password_is_not_echoed(tmp_path: Path) -> None:
    proc = ags("pull", f"ftp://ags:{PASSWORD}@example.invalid/x", "-o", str(tmp_path / "x.geojson"))
    assert proc.returncode == 2
    assert PASSWORD not in one_error_line(proc)


def test_help_says_variables_keep_secrets_out_of_ps_and_history() -> None:
    text = " ".join(ags("pull", "--help").stdout.split())
    for option, variable in (("--token", "AGS_ETL_TOKEN"), ("--api-key", "AGS_ETL_API_KEY"),
                             ("--password", "AGS_ETL_PASSWORD")):
        start = text.index(f"{option} TEXT")
        help_text = text[start : start + 200]
        assert variable in help_text and "`ps` and shell history" in help_text, help_text
