"""`ags-etl pull`, `inspect` and `run` through a proxy and over TLS with a custom CA, as a user runs
them: real processes, the local server (`ags-etl serve`), the loopback forwarding proxy and TLS
terminator of tests/forward_proxy.py, a test CA made by trustme."""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from ags_etl.server.testing import run_server
from tests.cli.helpers import N, ags, one_error_line, url
from tests.forward_proxy import forward_proxy, tls_terminator
from tests.layers import expected_rows, write_layer

SECRET = "pr0xy-Pa55-4d2f"
USER = "agent"
#: Every proxy and CA variable blank (requests and the client read an empty value as unset), so
#: the machine running the tests does not leak its own settings into a run.
CLEAN = {name: "" for base in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY") for name in (base, base.lower())}
CLEAN |= {"REQUESTS_CA_BUNDLE": "", "CURL_CA_BUNDLE": "", "SSL_CERT_FILE": ""}


def proxy_env(**variables: str) -> dict[str, str]:
    """CLEAN with these proxy variables set in both cases (a blank lowercase one would win)."""
    return CLEAN | variables | {name.lower(): value for name, value in variables.items()}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("proxy-layers")
    write_layer(data / "points.geojson", "points", N)
    with run_server(data, "--max-record-count", "25") as base:
        yield base


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def https_server(server: str, ca: trustme.CA) -> Iterator[str]:
    """The local server behind TLS with a certificate of the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with tls_terminator(server, context) as base:
        yield base


def features_in(path: Path) -> list[int]:
    return sorted(f["properties"]["OBJECTID"] for f in json.loads(path.read_text())["features"])


def test_pull_through_the_proxy_option_credentials_never_printed(server: str, tmp_path: Path) -> None:
    out = tmp_path / "points.geojson"
    with forward_proxy((USER, SECRET)) as proxy:
        proc = ags("-vv", "pull", url(server, "points"), "-o", str(out), "--proxy", proxy.url, env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    assert features_in(out) == sorted(expected_rows("points", N))
    assert f"GET {url(server, 'points')}?f=json HTTP/1.1" in proxy.lines
    queries = [line for line in proxy.lines if line.startswith(f"POST {url(server, 'points')}/query ")]
    assert len(queries) >= N // 25, proxy.lines  # every page came through the proxy
    assert all(line.split()[1].startswith(server) for line in proxy.lines)
    basic = "Basic " + base64.b64encode(f"{USER}:{SECRET}".encode()).decode()
    assert {s.proxy_authorization for s in proxy.seen} == {basic}
    assert "DEBUG" in proc.stderr  # -vv did log
    for text in (proc.stdout, proc.stderr):
        assert SECRET not in text and basic.split()[1] not in text


def test_http_proxy_variable_then_no_proxy(server: str, tmp_path: Path) -> None:
    with forward_proxy() as proxy:
        used = ags("pull", url(server, "points"), "-o", str(tmp_path / "a.geojson"),
                   env=proxy_env(HTTP_PROXY=proxy.url))
        through = len(proxy.lines)
        bypassed = ags("pull", url(server, "points"), "-o", str(tmp_path / "b.geojson"),
                       env=proxy_env(HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1"))
    assert used.returncode == 0, used.stderr
    assert bypassed.returncode == 0, bypassed.stderr
    assert through > 2 and len(proxy.lines) == through  # the second run sent nothing to the proxy
    assert features_in(tmp_path / "a.geojson") == features_in(tmp_path / "b.geojson") == sorted(
        expected_rows("points", N))


def test_tls_verified_against_the_ca_bundle_directly_and_through_connect(
    https_server: str, ca_pem: str, tmp_path: Path
) -> None:
    layer = url(https_server, "points")
    refused = ags("pull", layer, "-o", str(tmp_path / "x.geojson"), "--retries", "0", env=CLEAN)
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert f"TLS verification failed for {layer}" in line and "CERTIFICATE_VERIFY_FAILED" in line
    assert "--ca-bundle" in line
    assert not (tmp_path / "x.geojson").exists()

    direct = ags("pull", layer, "-o", str(tmp_path / "direct.geojson"), "--ca-bundle", ca_pem, env=CLEAN)
    assert direct.returncode == 0, direct.stderr
    assert features_in(tmp_path / "direct.geojson") == sorted(expected_rows("points", N))

    with forward_proxy((USER, SECRET)) as proxy:
        tunnel = ags("-vv", "pull", layer, "-o", str(tmp_path / "tunnel.geojson"), "--ca-bundle", ca_pem,
                     env=proxy_env(HTTPS_PROXY=proxy.url))
    assert tunnel.returncode == 0, tunnel.stderr
    assert features_in(tmp_path / "tunnel.geojson") == sorted(expected_rows("points", N))
    host = https_server.removeprefix("https://")
    assert proxy.lines and set(proxy.lines) == {f"CONNECT {host} HTTP/1.0"}
    assert SECRET not in tunnel.stderr


def test_missing_ca_bundle_is_a_usage_error_before_any_request(server: str, tmp_path: Path) -> None:
    missing = tmp_path / "corp" / "root-ca.pem"
    with forward_proxy() as proxy:
        proc = ags("pull", url(server, "points"), "-o", str(tmp_path / "x.geojson"), "--proxy", proxy.url,
                   "--ca-bundle", str(missing), env=CLEAN)
        bad_proxy = ags("inspect", url(server, "points"), "--proxy", f"{USER}:{SECRET}@127.0.0.1:3128", env=CLEAN)
    assert proc.returncode == 2
    assert f"--ca-bundle {str(missing)!r} does not exist" in one_error_line(proc)
    assert bad_proxy.returncode == 2
    assert "is not a proxy URL" in one_error_line(bad_proxy) and SECRET not in bad_proxy.stderr
    assert proxy.seen == []


def test_inspect_through_the_proxy_over_tls(https_server: str, ca_pem: str) -> None:
    with forward_proxy((USER, SECRET)) as proxy:
        proc = ags("inspect", url(https_server, "points"), "--json", "--proxy", proxy.url, "--ca-bundle", ca_pem,
                   env=CLEAN)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["count"] == N
    assert proxy.lines and all(line.startswith("CONNECT ") for line in proxy.lines)


def test_pipeline_source_proxy_and_ca_bundle(https_server: str, ca_pem: str, tmp_path: Path) -> None:
    """``proxy:`` and ``ca_bundle:`` on a source reach both the service expansion (layers:) and
    the layer's extractor; the proxy URL comes from a variable and is never printed."""
    pipeline = tmp_path / "pipeline.yaml"
    pipeline.write_text("""\
version: 1
jobs:
  - name: points
    source:
      url: "${SERVER}/arcgis/rest/services/points/FeatureServer"
      layers: [0]
      proxy: "${CORP_PROXY}"
      ca_bundle: "${CORP_CA}"
    sink: {type: geojson, path: "${OUT}/points.geojson"}
""")
    with forward_proxy((USER, SECRET)) as proxy:
        proc = ags("-vv", "run", str(pipeline),
                   env={**CLEAN, "SERVER": https_server, "CORP_PROXY": proxy.url, "CORP_CA": ca_pem,
                        "OUT": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    assert features_in(tmp_path / "points.geojson") == sorted(expected_rows("points", N))
    assert len(proxy.lines) >= 2 and all(line.startswith("CONNECT ") for line in proxy.lines)
    assert SECRET not in proc.stderr and SECRET not in proc.stdout
