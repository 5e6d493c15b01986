"""Proxies and CA bundles in the HTTP client (ags_etl.arcgis.client).

The checks of a proxy URL and of a CA bundle are tested as functions; everything else talks
to loopback stubs (tests/hostile/stubs.py) through the forwarding proxy of
tests/forward_proxy.py, and to HTTPS through its TLS terminator with a trustme test CA.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from ags_etl.arcgis.client import (
    ArcGISClient,
    ca_bundle_for,
    check_proxy_url,
    proxies_for,
)
from ags_etl.errors import ArcGISError, ConfigError, TransientError
from tests.forward_proxy import forward_proxy, tls_terminator
from tests.hostile.stubs import LAYER_PATH, Redirect, layer_stub, recorder_stub

SECRET = "pr0xy-s3cret-91c"
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                   "SSL_CERT_FILE")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy or CA variable of the machine running the tests leaks in."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def ca_pem(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


@pytest.fixture
def https_layer(server_tls: ssl.SSLContext) -> Iterator[str]:
    """The tiny layer stub behind TLS with a certificate of the test CA."""
    with layer_stub() as (base, _log), tls_terminator(base, server_tls) as https_base:
        yield https_base


# ---------------------------------------------------------------- pure checks


@pytest.mark.parametrize(
    "proxy",
    [
        "127.0.0.1:3128",  # no scheme
        f"u:{SECRET}@127.0.0.1:3128",  # no scheme, with credentials
        f"socks5://u:{SECRET}@127.0.0.1:1080",
        f"http://u:{SECRET}@/",
        f"http://u:{SECRET}@proxy.example:3128/path",
        f"http://u:{SECRET}@proxy.example:99999",
        f"http://u:{SECRET}@proxy.example:3128?x=1",
    ],
)
def test_a_bad_proxy_url_is_a_config_error_without_its_password(proxy: str) -> None:
    with pytest.raises(ConfigError, match="is not a proxy URL") as info:
        ArcGISClient(proxy=proxy)
    assert SECRET not in str(info.value)
    assert "--proxy" in str(info.value) and "http://host:port" in str(info.value)


@pytest.mark.parametrize("proxy", ["http://127.0.0.1:3128", f"https://u:{SECRET}@proxy.example:8443", "http://proxy/"])
def test_good_proxy_urls(proxy: str) -> None:
    assert check_proxy_url(proxy) == proxy


def test_the_proxy_option_overrides_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy.example:1")
    monkeypatch.setenv("NO_PROXY", "h.example")
    assert proxies_for("https://h.example/x", "http://mine.example:3128") == {
        "http": "http://mine.example:3128", "https": "http://mine.example:3128"
    }
    assert proxies_for("https://h.example/x", None) == {}  # NO_PROXY
    assert proxies_for("https://other.example/x", None)["https"] == "http://env-proxy.example:1"


def test_ca_bundle_precedence(tmp_path: Path, ca_pem: str) -> None:
    other = tmp_path / "other.pem"
    other.write_text(Path(ca_pem).read_text())
    assert ca_bundle_for(None, {}) is None
    assert ca_bundle_for(ca_pem, {"REQUESTS_CA_BUNDLE": str(other)}) == ca_pem
    assert ca_bundle_for(None, {"SSL_CERT_FILE": ca_pem, "REQUESTS_CA_BUNDLE": str(other)}) == str(other)
    assert ca_bundle_for(None, {"REQUESTS_CA_BUNDLE": "", "SSL_CERT_FILE": ca_pem}) == ca_pem
    assert ca_bundle_for(str(tmp_path), {}) == str(tmp_path)  # a directory of hashed certificates


@pytest.mark.parametrize("source", ["--ca-bundle", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"])
def test_a_missing_ca_bundle_is_named_before_any_request(
    source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = str(tmp_path / "corporate-ca.pem")
    if source != "--ca-bundle":
        monkeypatch.setenv(source, missing)
    with layer_stub() as (base, log):
        with pytest.raises(ConfigError) as info:
            with ArcGISClient(ca_bundle=missing if source == "--ca-bundle" else None) as client:
                client.get(base + LAYER_PATH)
    assert f"{source} {missing!r} does not exist" in str(info.value)
    assert log.requests == []


def test_a_file_without_certificates_is_refused(tmp_path: Path) -> None:
    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="holds no readable PEM certificate"):
        ArcGISClient(ca_bundle=str(junk))


# ---------------------------------------------------------------- through a proxy


def test_get_and_post_go_through_the_proxy_with_its_credentials_only() -> None:
    with layer_stub() as (base, log), forward_proxy(("agent", SECRET)) as proxy:
        with ArcGISClient(proxy=proxy.url, retries=0) as client:
            layer = client.get(base + LAYER_PATH)
            page = client.post(base + LAYER_PATH + "/query", {"where": "1=1", "outFields": "*"})
    assert layer["objectIdField"] == "OBJECTID" and len(page["features"]) == 3
    assert proxy.lines == [
        f"GET {base}{LAYER_PATH}?f=json HTTP/1.1",
        f"POST {base}{LAYER_PATH}/query HTTP/1.1",
    ]
    assert all(s.proxy_authorization is not None and s.proxy_authorization.startswith("Basic ") for s in proxy.seen)
    assert len(log.requests) == 2
    for seen in log.requests:  # the server never sees the proxy's credentials
        assert not any(name.lower().startswith("proxy-") for name in seen.headers)
        assert SECRET not in seen.text()


def test_environment_proxy_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    with layer_stub() as (base, log), forward_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with ArcGISClient(retries=0) as client:
            client.get(base + LAYER_PATH)
        assert proxy.lines == [f"GET {base}{LAYER_PATH}?f=json HTTP/1.1"]
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        with ArcGISClient(retries=0) as client:
            client.get(base + LAYER_PATH)
        assert len(proxy.lines) == 1 and len(log.requests) == 2  # the second went direct
        with ArcGISClient(proxy=proxy.url, retries=0) as client:  # the option ignores NO_PROXY
            client.get(base + LAYER_PATH)
        assert len(proxy.lines) == 2


def test_the_option_wins_over_a_dead_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    with layer_stub() as (base, _log), forward_proxy() as proxy:
        with ArcGISClient(proxy=proxy.url, retries=0) as client:
            client.get(base + LAYER_PATH)
    assert len(proxy.lines) == 1


def test_each_redirect_hop_chooses_its_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client follows redirects itself: every hop goes through the proxy, unless NO_PROXY
    names the hop's host."""
    with recorder_stub() as (other, other_log), forward_proxy() as proxy:
        target = other.replace("127.0.0.1", "localhost")
        hop = Redirect(302, "/moved", lambda rest: f"{target}{LAYER_PATH}{rest}")
        with layer_stub(redirects=(hop,)) as (base, _log):
            monkeypatch.setenv("HTTP_PROXY", proxy.url)
            with ArcGISClient(retries=0) as client:
                client.get(base + "/moved")
            assert proxy.lines == [f"GET {base}/moved?f=json HTTP/1.1", f"GET {target}{LAYER_PATH}?f=json HTTP/1.1"]
            monkeypatch.setenv("NO_PROXY", "localhost")
            with ArcGISClient(retries=0) as client:
                client.get(base + "/moved")
    assert proxy.lines[2:] == [f"GET {base}/moved?f=json HTTP/1.1"]  # the second hop went direct
    assert len(other_log.requests) == 2


def test_netrc_gives_neither_authorization_nor_proxy_authorization(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login netrc-user password {SECRET}\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with layer_stub() as (base, log), forward_proxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        with ArcGISClient(retries=0) as client:
            client.get(base + LAYER_PATH)
    assert [s.proxy_authorization for s in proxy.seen] == [None]
    assert "Authorization" not in log.requests[0].headers


def test_proxy_refusing_credentials_is_named_not_retried(https_layer: str, ca_pem: str) -> None:
    with layer_stub() as (base, _log), forward_proxy(("agent", SECRET)) as proxy:
        wrong = proxy.url.replace(SECRET, "wrong-" + SECRET)
        for url, bundle in ((base + LAYER_PATH, None), (https_layer + LAYER_PATH, ca_pem)):  # forwarded, CONNECT
            with ArcGISClient(proxy=wrong, retries=3, backoff=0.01, ca_bundle=bundle) as client:
                with pytest.raises(ArcGISError, match="HTTP 407") as info:
                    client.get(url)
            assert SECRET not in str(info.value)
            assert f"proxy {proxy.url.replace(f'agent:{SECRET}@', '')} refused" in str(info.value)
    assert len(proxy.seen) == 2


def test_an_unreachable_proxy_is_named_without_credentials() -> None:
    with layer_stub() as (base, log):
        with ArcGISClient(proxy=f"http://agent:{SECRET}@127.0.0.1:9", retries=0) as client:
            with pytest.raises(TransientError) as info:
                client.get(base + LAYER_PATH)
    message = str(info.value)
    assert "proxy http://127.0.0.1:9: connection refused" in message and SECRET not in message
    assert log.requests == []


# ---------------------------------------------------------------- TLS


def test_tls_is_verified_against_the_ca_bundle(https_layer: str, ca_pem: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with ArcGISClient(retries=0) as client:
        with pytest.raises(ArcGISError, match="TLS verification failed for https://127.0.0.1") as info:
            client.get(https_layer + LAYER_PATH)
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value) and "--ca-bundle" in str(info.value)
    with ArcGISClient(retries=0, ca_bundle=ca_pem) as client:
        assert client.get(https_layer + LAYER_PATH)["objectIdField"] == "OBJECTID"
    for variable in ("REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(variable, ca_pem)
        with ArcGISClient(retries=0) as client:
            assert client.get(https_layer + LAYER_PATH)["objectIdField"] == "OBJECTID"
        monkeypatch.delenv(variable)


def test_https_through_a_connect_tunnel(https_layer: str, ca_pem: str) -> None:
    with forward_proxy(("agent", SECRET)) as proxy:
        with ArcGISClient(proxy=proxy.url, retries=0) as client:  # the tunnel does not lift verification
            with pytest.raises(ArcGISError, match="TLS verification failed"):
                client.get(https_layer + LAYER_PATH)
        with ArcGISClient(proxy=proxy.url, retries=0, ca_bundle=ca_pem) as client:
            assert client.get(https_layer + LAYER_PATH)["objectIdField"] == "OBJECTID"
    host = https_layer.removeprefix("https://")
    assert proxy.lines == [f"CONNECT {host} HTTP/1.0", f"CONNECT {host} HTTP/1.0"]
    assert all(s.proxy_authorization is not None for s in proxy.seen)


def test_an_https_proxy_is_verified_even_for_an_http_target(server_tls: ssl.SSLContext, ca_pem: str) -> None:
    """requests alone would not verify the TLS of an https:// proxy that forwards a plain
    http:// request; the client does."""
    with layer_stub() as (base, log), forward_proxy(tls=server_tls) as proxy:
        with ArcGISClient(proxy=proxy.url, retries=0) as client:
            with pytest.raises(ArcGISError, match=f"TLS verification failed for proxy {proxy.url}"):
                client.get(base + LAYER_PATH)
        assert log.requests == []
        with ArcGISClient(proxy=proxy.url, retries=0, ca_bundle=ca_pem) as client:
            assert client.get(base + LAYER_PATH)["objectIdField"] == "OBJECTID"
    assert proxy.lines == [f"GET {base}{LAYER_PATH}?f=json HTTP/1.1"]
