"""Redirects, URL userinfo and ambient credentials in the HTTP client (ags_etl.arcgis.client).

The pure decisions (:func:`redirect_allowed`, :func:`redact`, :func:`display_url`,
:func:`split_url_credentials`, ``build_auth``) are tested as functions; the client talks
to loopback stubs from tests/hostile/stubs.py, one of them "the other host".
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from ags_etl.arcgis.auth import ApiKeyAuth, Auth, TokenAuth, UserPasswordAuth, split_url_credentials
from ags_etl.arcgis.client import MAX_REDIRECTS, ArcGISClient, display_url, redact, redirect_allowed
from ags_etl.cli._common import URL_CREDENTIALS_WARNING, build_auth
from ags_etl.errors import ArcGISError, ConfigError, TokenError
from tests.hostile.stubs import LAYER_PATH, ROWS, Log, Redirect, layer_stub, recorder_stub

SECRET = "s3cret-7e1d0a"


# ---------------------------------------------------------------- pure decisions


@pytest.mark.parametrize(
    ("src", "dst", "credentials", "refused"),
    [
        ("https://a.example/x", "https://a.example/y", True, None),
        ("https://a.example/x", "https://A.EXAMPLE:443/y", True, None),  # same origin, spelled out
        ("http://a.example/x", "http://a.example:80/y", True, None),
        ("https://a.example/x", "https://b.example/x", False, None),
        ("https://a.example/x", "https://b.example/x", True, "another host"),
        ("https://a.example/x", "https://a.example:8443/x", True, "another host"),
        ("http://a.example/x", "https://a.example/x", True, "another host"),  # another scheme is another origin
        ("https://a.example/x", "http://a.example/x", False, "leaves https for http"),
        ("https://a.example/x", "http://a.example/x", True, "leaves https for http"),
        ("https://a.example/x", "ftp://a.example/x", False, "not an http(s) URL"),
        ("https://a.example/x", "https:///x", False, "not an http(s) URL"),
    ],
)
def test_redirect_allowed(src: str, dst: str, credentials: bool, refused: str | None) -> None:
    reason = redirect_allowed(src, dst, credentials)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None and refused in reason


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h.example/a/b", ("https://h.example/a/b", None, None)),
        ("https://ags:pw@h.example:8443/a?x=1", ("https://h.example:8443/a?x=1", "ags", "pw")),
        ("https://ags:p%40ss%3Aw@h.example/a", ("https://h.example/a", "ags", "p@ss:w")),
        ("https://ags:p@ss@h.example/a", ("https://h.example/a", "ags", "p@ss")),  # unencoded @: the last one counts
        ("https://ags@h.example/a", ("https://h.example/a", "ags", None)),
        ("https://ags:@h.example/a", ("https://h.example/a", "ags", None)),
        ("https://:pw@h.example/a", ("https://h.example/a", None, "pw")),
    ],
)
def test_split_url_credentials(url: str, expected: tuple[str, str | None, str | None]) -> None:
    assert split_url_credentials(url) == expected


def test_redact_and_display_url_hide_userinfo() -> None:
    text = "failed: GET https://ags:p@ss@h.example/arcgis?token=abc&f=json (http://u:pw@other/x)"
    clean = redact(text)
    assert "p@ss" not in clean and "pw" not in clean and "ags:" not in clean and "abc" not in clean
    assert "https://h.example/arcgis?token=<redacted>&f=json" in clean and "http://other/x" in clean
    assert display_url("https://ags:pw@H.example:8443/a/b?token=x") == "https://h.example:8443/a/b"
    assert display_url("http://[::1]:8080/a") == "http://[::1]:8080/a"


def test_build_auth_takes_url_credentials_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        auth = build_auth(None, None, None, None, None, url="https://ags:pw@h.example/arcgis/rest/services/x/FeatureServer/0")
    assert isinstance(auth, UserPasswordAuth) and auth.username == "ags"
    assert URL_CREDENTIALS_WARNING in caplog.text and "`ps`" in caplog.text and "pw" not in repr(auth)
    with pytest.raises(ConfigError, match="--username gives another"):
        build_auth(None, None, "other", None, None, url="https://ags:pw@h.example/x")
    with pytest.raises(ConfigError, match="--token, --username"):
        build_auth("tok", None, None, None, None, url="https://ags:pw@h.example/x")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert isinstance(build_auth("tok", None, None, None, None, url="https://h.example/x"), TokenAuth)
        assert isinstance(build_auth("tok", None, None, None, None), TokenAuth)  # the old call still works
    assert caplog.text == ""


# ---------------------------------------------------------------- the client against stubs


@pytest.fixture
def other() -> Iterator[tuple[str, Log]]:
    with recorder_stub() as served:
        yield served


def _everything_to(other_base: str, status: int) -> Redirect:
    return Redirect(status, "/arcgis", lambda rest: f"{other_base}/arcgis{rest}")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("auth", [TokenAuth(SECRET), ApiKeyAuth(SECRET)], ids=["token", "api-key"])
def test_credentials_never_reach_another_host(status: int, auth: Auth, other: tuple[str, Log]) -> None:
    other_base, other_log = other
    with layer_stub(redirects=(_everything_to(other_base, status),)) as (base, _):
        with ArcGISClient(auth=auth, retries=0) as client:
            with pytest.raises(ArcGISError) as caught:
                client.post(base + LAYER_PATH + "/query", {"where": "1=1", "returnCountOnly": True})
    message = str(caught.value)
    assert f"{base}{LAYER_PATH}/query redirected (HTTP {status}) to {other_base}{LAYER_PATH}/query" in message
    assert "use the final URL directly" in message and SECRET not in message
    assert other_log.requests == [] and SECRET not in other_log.text()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_same_origin_redirect_resends_the_query_with_its_token(status: int) -> None:
    moved = Redirect(status, "/moved/", lambda rest: f"/arcgis/rest/services/tiny/{rest}")
    with layer_stub(token=SECRET, redirects=(moved,)) as (base, log):
        with ArcGISClient(auth=TokenAuth(SECRET), retries=0) as client:
            answer = client.post(f"{base}/moved/FeatureServer/0/query", {"objectIds": "1,3", "outFields": "*"})
    assert [f["attributes"] for f in answer["features"]] == [ROWS[0], ROWS[2]]
    assert [(s.method, s.path) for s in log.requests] == [
        ("POST", "/moved/FeatureServer/0/query"),
        ("POST", "/arcgis/rest/services/tiny/FeatureServer/0/query"),
    ]
    assert f"token={SECRET}" in log.requests[1].body and SECRET not in log.requests[1].query


def test_password_is_never_forwarded_by_a_token_endpoint(other: tuple[str, Log]) -> None:
    other_base, other_log = other
    with layer_stub(token="tok", redirects=(_everything_to(other_base, 307),)) as (base, _):
        auth = UserPasswordAuth("ags", SECRET, token_url=f"{base}/arcgis/tokens/generateToken")
        with ArcGISClient(auth=auth, retries=0) as client:
            with pytest.raises(ArcGISError, match="use the final URL directly") as caught:
                client.get(base + LAYER_PATH)
    assert not isinstance(caught.value, TokenError), "not mistaken for a wrong password"
    assert SECRET not in str(caught.value)
    assert other_log.requests == []


def test_anonymous_get_follows_another_host(other: tuple[str, Log]) -> None:
    other_base, other_log = other
    with layer_stub(redirects=(_everything_to(other_base, 302),)) as (base, _):
        with ArcGISClient(retries=0) as client:
            assert client.get(base + LAYER_PATH)["name"] == "tiny"
    assert [(s.method, s.path) for s in other_log.requests] == [("GET", LAYER_PATH)]


def test_redirect_loop_stops(tmp_path: Path) -> None:
    loop = Redirect(302, "/loop/", lambda rest: f"/loop/{int(rest) + 1}" if rest.isdigit() else "/loop/1")
    with layer_stub(redirects=(loop,)) as (base, log):
        with ArcGISClient(retries=3) as client:
            with pytest.raises(ArcGISError, match=f"redirected more than {MAX_REDIRECTS} times"):
                client.get(f"{base}/loop/0")
    assert len(log.requests) == MAX_REDIRECTS + 1, "not retried"


def test_userinfo_and_netrc_never_become_an_authorization_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login netrc-user password netrc-secret\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with layer_stub() as (base, log):
        with ArcGISClient(retries=0) as client:
            client.get(base + LAYER_PATH)
            client.get(base.replace("http://", f"http://ags:{SECRET}@") + LAYER_PATH)
    assert len(log.requests) == 2
    for seen in log.requests:
        assert "Authorization" not in seen.headers and SECRET not in seen.text()
