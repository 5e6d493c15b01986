"""Token security (--token-auth, --token-ttl) and injected failures (--fail-rate, --seed)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from serve_helpers import layer_url, write_count_layer

from ags_etl.server.testing import run_server

USER, PASSWORD = "tester", "pa:ss w0rd&x"  # a colon and form-encoding characters in the password


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("secured")
    write_count_layer(d / "pts.geojson", 4)
    return d


@pytest.fixture(scope="module")
def secured(small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with run_server(small_dir, "--token-auth", f"{USER}:{PASSWORD}", log_path=log) as base:
        yield base, log


def _token(base: str, **extra: str) -> dict[str, Any]:
    response = requests.post(
        f"{base}/arcgis/tokens/generateToken",
        data={"username": USER, "password": PASSWORD, "f": "json", **extra},
        timeout=30,
    )
    assert response.status_code == 200
    return response.json()


def _error(response: requests.Response) -> dict[str, Any]:
    assert response.status_code == 200  # ArcGIS sends token errors with HTTP 200
    return response.json()["error"]


def test_rest_info_advertises_the_token_service(secured: tuple[str, Path]) -> None:
    base, _ = secured
    info = requests.get(f"{base}/arcgis/rest/info", params={"f": "json"}, timeout=30).json()
    assert info["authInfo"]["isTokenBasedSecurity"] is True
    assert info["authInfo"]["tokenServicesUrl"] == f"{base}/arcgis/tokens/generateToken"


@pytest.mark.parametrize(
    "path", ["/arcgis/rest/services", "/arcgis/rest/services/pts/FeatureServer", "/arcgis/rest/services/pts/FeatureServer/0",
             "/arcgis/rest/services/pts/FeatureServer/0/query"],
)  # fmt: skip
def test_services_need_a_token(secured: tuple[str, Path], path: str) -> None:
    base, _ = secured
    missing = _error(requests.get(base + path, params={"f": "json", "where": "1=1"}, timeout=30))
    assert (missing["code"], missing["message"]) == (499, "Token Required")
    bad = _error(requests.get(base + path, params={"f": "json", "token": "forged"}, timeout=30))
    assert (bad["code"], bad["message"]) == (498, "Invalid Token")


def test_wrong_password_and_get_are_refused(secured: tuple[str, Path]) -> None:
    base, _ = secured
    url = f"{base}/arcgis/tokens/generateToken"
    wrong = requests.post(url, data={"username": USER, "password": "nope", "f": "json"}, timeout=30)
    assert _error(wrong) == {
        "code": 400,
        "message": "Unable to generate token.",
        "details": ["Invalid username or password."],
    }
    by_get = requests.get(url, params={"username": USER, "password": PASSWORD, "f": "json"}, timeout=30)
    assert _error(by_get)["code"] == 405


def test_good_token_by_query_body_and_header(secured: tuple[str, Path]) -> None:
    base, _ = secured
    before = time.time() * 1000
    issued = _token(base)
    assert issued["ssl"] is False
    # default expiration: 60 minutes
    assert before + 59 * 60_000 <= issued["expires"] <= time.time() * 1000 + 60 * 60_000
    token = issued["token"]
    url = layer_url(base, "pts") + "/query"
    by_query = requests.get(url, params={"where": "1=1", "returnCountOnly": "true", "f": "json", "token": token}, timeout=30)
    by_body = requests.post(url, data={"where": "1=1", "returnCountOnly": "true", "f": "json", "token": token}, timeout=30)
    by_header = requests.get(
        url,
        params={"where": "1=1", "returnCountOnly": "true", "f": "json"},
        headers={"X-Esri-Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert by_query.json() == by_body.json() == by_header.json() == {"count": 4}


def test_requested_expiration(secured: tuple[str, Path]) -> None:
    base, _ = secured
    issued = _token(base, expiration="5")
    assert issued["expires"] <= time.time() * 1000 + 5 * 60_000


def test_access_log_never_holds_token_or_password(secured: tuple[str, Path]) -> None:
    base, log = secured
    token = _token(base)["token"]
    requests.get(layer_url(base, "pts"), params={"f": "json", "token": token}, timeout=30).raise_for_status()
    text = ""
    for _ in range(50):  # the line is written right after the answer is sent
        text = log.read_text("utf-8")
        if '"GET /arcgis/rest/services/pts/FeatureServer/0" 200' in text:
            break
        time.sleep(0.1)
    assert '"GET /arcgis/rest/services/pts/FeatureServer/0" 200' in text
    assert '"POST /arcgis/tokens/generateToken" 200' in text
    assert token not in text
    assert PASSWORD not in text and "w0rd" not in text


def test_token_expires_after_ttl(small_dir: Path) -> None:
    with run_server(small_dir, "--token-auth", f"{USER}:{PASSWORD}", "--token-ttl", "2") as base:
        issued = _token(base, expiration="60")  # asks an hour; the TTL wins
        assert issued["expires"] <= time.time() * 1000 + 2_000
        url = layer_url(base, "pts")
        # wait until the token's own expiry time has passed (no timing is asserted)
        time.sleep(max(0.0, issued["expires"] / 1000 - time.time()) + 0.3)
        expired = _error(requests.get(url, params={"f": "json", "token": issued["token"]}, timeout=30))
        assert (expired["code"], expired["message"]) == (498, "Invalid Token")
        fresh = _token(base)["token"]
        layer = requests.get(url, params={"f": "json", "token": fresh}, timeout=30).json()
        assert layer["name"] == "pts"


# --------------------------------------------------------------------------- faults


def _outcomes(base: str, n: int) -> list[str]:
    """n sequential query requests, each followed by metadata requests that must never fail."""
    url = layer_url(base, "pts")
    out: list[str] = []
    with requests.Session() as session:
        for _ in range(n):
            r = session.get(url + "/query", params={"where": "1=1", "returnCountOnly": "true", "f": "json"}, timeout=30)
            if r.status_code != 200:
                out.append(f"http{r.status_code}")
            elif "error" in r.json():
                err = r.json()["error"]
                assert err == {"code": 500, "message": "Error performing query operation", "details": []}
                out.append("error500")
            else:
                assert r.json() == {"count": 4}
                out.append("ok")
            assert session.get(url, params={"f": "json"}, timeout=30).json()["name"] == "pts"
            assert "currentVersion" in session.get(f"{base}/arcgis/rest/info", params={"f": "json"}, timeout=30).json()
    return out


def test_fail_rate_is_deterministic_for_a_seed(small_dir: Path) -> None:
    args = ("--fail-rate", "0.5", "--seed", "7", "--latency-ms", "1")
    with run_server(small_dir, *args) as base:
        first = _outcomes(base, 30)
    with run_server(small_dir, *args) as base:
        second = _outcomes(base, 30)
    with run_server(small_dir, "--fail-rate", "0.5", "--seed", "8") as base:
        other = _outcomes(base, 30)
    assert first == second
    assert first != other
    assert "ok" in first
    assert set(first) - {"ok"}  # some failures
    assert set(first) <= {"ok", "http500", "http502", "error500"}


def test_fail_rate_one_fails_every_query_in_all_three_ways(small_dir: Path) -> None:
    with run_server(small_dir, "--fail-rate", "1", "--seed", "1") as base:
        outcomes = _outcomes(base, 24)
    assert set(outcomes) == {"http500", "http502", "error500"}
