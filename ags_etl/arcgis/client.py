"""HTTP for ArcGIS REST: requests, retries, error mapping, tokens. Nothing else.

Contract of :meth:`ArcGISClient.request_json`:

* returns the decoded JSON object of a successful answer;
* an ``{"error": …}`` body, which ArcGIS sends with HTTP 200 for nearly every
  failure, becomes a typed error: 498/499 → :class:`TokenError` (after one
  refresh-and-retry when the auth can renew), 400 → :class:`QueryError`,
  500/503/504 ("Error performing query operation") → retried, then
  :class:`TransientError`; anything else → :class:`ServiceError`;
* timeouts, connection resets, HTTP 429 and 5xx are retried ``retries`` times
  with exponential backoff and full jitter (``Retry-After`` honoured), then raise
  :class:`TransientError`;
* TLS verification is always on, against ``ca_bundle`` when given (see
  :func:`ca_bundle_for`); there is no way to turn it off;
* tokens go in the POST body and the ``X-Esri-Authorization`` header, never in
  a URL; every URL in a message or log line passes through :func:`redact`, which
  also hides userinfo (``user:pass@``); userinfo is never sent in a URL, and
  neither ``~/.netrc`` nor URL userinfo becomes an ``Authorization`` header.

Redirects are followed here, not by requests, at most :data:`MAX_REDIRECTS` hops,
each hop re-sending the same method and parameters (an ArcGIS operation *is* its
parameters: turning a POSTed query into a body-less GET, as browsers do on
301/302/303, would silently ask another question). Which hops are followed is
decided by the pure :func:`redirect_allowed`:

* same scheme, host and port: followed, credentials included;
* another host, port or scheme: followed only when the request carries no
  credential (token, API key, password, cookie, ``Authorization`` header);
  otherwise :class:`ArcGISError` names both URLs and says to use the final URL
  directly. The token endpoint's POST carries the password, so it is never
  followed to another origin;
* https → http: always refused.

Proxies (:func:`proxies_for`, decided again for every request and every redirect hop): a
``proxy`` given to the client (``--proxy``, ``proxy:``) carries every request and the
environment's proxy variables are ignored; without it ``HTTP_PROXY``/``HTTPS_PROXY``/
``ALL_PROXY`` and ``NO_PROXY`` (either case) apply as requests reads them. Credentials in a
proxy URL (``http://user:pass@proxy:3128``) go to the proxy only, as ``Proxy-Authorization``
(in the ``CONNECT`` for https targets), and are hidden in every message like any userinfo.
Nothing else is read from the environment: ``~/.netrc`` never becomes an ``Authorization``.

``timeout`` is a deadline for the whole request: connecting, every redirect hop
and every byte of the body. The body is streamed; a server that trickles it past
the deadline is abandoned (``no complete answer within N s``) and retried like a
timeout. (Limit: the status line and headers are read by http.client; there every
single read is bounded by what remains of the deadline, but a server trickling its
*headers* one byte at a time is bounded per read, not in total.) The body is
counted after decompression and may not exceed
``max_response_bytes``: a larger answer (a gzip bomb, or a page far beyond any
real one) stops the read at that size with a non-retried :class:`ArcGISError`,
so memory stays bounded.
"""

from __future__ import annotations

import logging
import math
import os
import random
import re
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

import orjson
import requests
import urllib3

from ags_etl import __version__
from ags_etl.arcgis.auth import Auth, NoAuth, split_url_credentials
from ags_etl.errors import (
    ArcGISError,
    ConfigError,
    QueryError,
    ServiceError,
    TokenError,
    TransientError,
)

log = logging.getLogger(__name__)

USER_AGENT = f"ags-etl/{__version__} (+https://pypi.org/project/ags-etl/)"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Error-body codes that a retry can cure (the server was busy or the page too big).
RETRY_ERROR_CODES = frozenset({500, 502, 503, 504})
SECRET_KEYS = ("token", "password", "api_key", "apikey", "client_secret", "key")
_SECRET_RE = re.compile(r"(?i)\b(" + "|".join(SECRET_KEYS) + r")=([^&\s]*)")
#: ``scheme://user:pass@`` — greedy up to the last ``@`` before the path, as urlsplit reads it.
_USERINFO_RE = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s/?#]*@")
#: Headers that carry a credential; a request holding one is not sent to another origin.
CREDENTIAL_HEADERS = ("authorization", "x-esri-authorization", "cookie", "proxy-authorization")
#: Parameters that carry a credential (the token endpoint's ``password`` among them).
CREDENTIAL_PARAMS = frozenset(SECRET_KEYS)
REDIRECT_STATUS = frozenset({301, 302, 303, 307, 308})
#: Redirect hops followed per request before giving up.
MAX_REDIRECTS = 5
#: Default cap on one answer after decompression: far above any real page (a 2000-row
#: page of detailed polygons is tens of MB) and far below a decompression bomb.
DEFAULT_MAX_RESPONSE_BYTES = 256 * 2**20
#: Bytes asked of the socket per read; each read returns what has arrived (read1), so the
#: deadline is checked at least every ``timeout`` seconds even when a server trickles.
_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: Environment variables naming a CA bundle, in the order they are consulted when no
#: ``ca_bundle`` is given (the first two as requests reads them; SSL_CERT_FILE as OpenSSL does).
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE")


def redact(text: str) -> str:
    """Hide ``token=…``/``password=…`` values and URL userinfo (``user:pass@``) in a URL or message."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}=<redacted>", _USERINFO_RE.sub(r"\1", text))


def display_url(url: str) -> str:
    """URL without query string or credentials, for messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if ":" in netloc:  # IPv6 literal
        netloc = f"[{netloc}]"
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    return scheme, (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(scheme)


def redirect_allowed(from_url: str, to_url: str, has_credentials: bool) -> str | None:
    """Whether a redirect from ``from_url`` to ``to_url`` may be followed: None if yes, else why not.

    Pure. https → http is always refused (the answer, and any later request, would travel
    in clear text); another origin (scheme, host or port) is refused when the request
    carries a credential; a target that is not an http(s) URL is refused.
    """
    target = urlsplit(to_url)
    if target.scheme.lower() not in _DEFAULT_PORTS or not target.hostname:
        return "the target is not an http(s) URL"
    if urlsplit(from_url).scheme.lower() == "https" and target.scheme.lower() == "http":
        return "it leaves https for http"
    if _origin(from_url) != _origin(to_url) and has_credentials:
        return (
            "it leads to another host and the request carries credentials, "
            "which stay with the host they were given for"
        )
    return None


def check_proxy_url(proxy: str) -> str:
    """``proxy`` when it is an ``http://`` or ``https://`` URL of a proxy (host, optional port and
    ``user:pass@``, no path or query); else :class:`ConfigError` (the value shown redacted)."""
    parts = urlsplit(proxy)
    try:
        port_ok = parts.port is None or parts.port > 0
    except ValueError:
        port_ok = False
    if (
        parts.scheme.lower() not in _DEFAULT_PORTS
        or not parts.hostname
        or not port_ok
        or parts.path not in ("", "/")
        or parts.query
        or parts.fragment
    ):
        shown = redact(proxy)
        if "@" in shown:  # userinfo that redact cannot see (no scheme://): show only the host part
            shown = "<credentials>@" + shown.rpartition("@")[2]
        raise ConfigError(
            f"--proxy {shown!r} is not a proxy URL; give http://host:port or https://host:port, "
            f"with user:pass@ before the host if the proxy asks for credentials"
        )
    return proxy


def proxies_for(url: str, proxy: str | None) -> dict[str, str]:
    """The requests ``proxies`` mapping for one request to ``url``.

    With ``proxy`` (``--proxy``/``proxy:``) every request goes through it, whatever the
    environment says. Without it, the environment decides for this URL as requests reads it:
    ``NO_PROXY``/``no_proxy`` first (an empty mapping: direct), then ``HTTP_PROXY``,
    ``HTTPS_PROXY``, ``ALL_PROXY`` (lowercase preferred).
    """
    if proxy is not None:
        return {"http": proxy, "https": proxy}
    return dict(requests.utils.get_environ_proxies(url))


def ca_bundle_for(ca_bundle: str | None, environ: Mapping[str, str]) -> str | None:
    """The CA bundle to verify servers against: ``ca_bundle`` if given, else the first non-empty
    one of :data:`CA_BUNDLE_VARIABLES` in ``environ``, else None (certifi's bundle).

    Checked before any request: a path that is neither a file nor a directory, or a file that
    holds no PEM certificate, is a :class:`ConfigError` naming where the path came from.
    """
    source = "--ca-bundle"
    path = ca_bundle
    if path is None:
        for name in CA_BUNDLE_VARIABLES:
            if environ.get(name):
                source, path = name, environ[name]
                break
    if path is None:
        return None
    if os.path.isdir(path):
        return path
    if not os.path.isfile(path):
        raise ConfigError(
            f"{source} {path!r} does not exist; give the path of a PEM file of CA certificates "
            f"(TLS verification cannot be turned off)"
        )
    try:
        ssl.create_default_context(cafile=path)
    except (ssl.SSLError, OSError, ValueError) as exc:
        raise ConfigError(
            f"{source} {path!r} holds no readable PEM certificate ({exc}); give a PEM file of CA certificates"
        ) from exc
    return path


class _VerifyingAdapter(requests.adapters.HTTPAdapter):
    """An HTTPAdapter that verifies every TLS connection it makes.

    requests decides verification by the request URL's scheme, so the TLS connection to an
    ``https://`` proxy that forwards a plain ``http://`` request would go unverified; here any
    pool that speaks TLS is verified against the same CA bundle.
    """

    def cert_verify(self, conn: Any, url: str, verify: Any, cert: Any) -> None:
        tls = getattr(conn, "scheme", "") == "https"
        super().cert_verify(conn, "https://" if tls else url, verify, cert)


def _no_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """An auth hook that adds nothing: with it, requests neither reads ``~/.netrc`` nor turns
    URL userinfo into an ``Authorization`` header."""
    return request


class _Broken(Exception):
    """An exchange that failed in a way a retry may cure (connection, timeout, deadline)."""

    def __init__(self, reason: str, *, reached: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        #: False when no connection was made (the message then says "could not reach").
        self.reached = reached


class _Answer:
    """Status, headers and (for 2xx/3xx without redirect) the decoded body of one exchange."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytearray) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class ArcGISClient:
    """A requests.Session with ArcGIS error handling. Use as a context manager.

    ``timeout`` is the deadline in seconds for each attempt of a request (connect,
    redirects and the whole body); ``retries`` the number of re-tries after the first
    attempt for transient failures; ``backoff`` the base delay; ``max_response_bytes``
    the largest answer accepted, counted after decompression; ``proxy`` the proxy URL for
    every request (else the environment's, see :func:`proxies_for`); ``ca_bundle`` a PEM file
    (or directory) of CA certificates to verify servers against (else the environment's, see
    :func:`ca_bundle_for`). A ``timeout`` that is not a positive number, negative ``retries``,
    a ``max_response_bytes`` below 1, a ``proxy`` that is not an http(s) URL or a ``ca_bundle``
    that is missing raise :class:`ConfigError` naming the option.
    """

    def __init__(
        self,
        *,
        auth: Auth | None = None,
        timeout: float = 60.0,
        retries: int = 5,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        user_agent: str = USER_AGENT,
        pool_size: int = 16,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        proxy: str | None = None,
        ca_bundle: str | None = None,
    ) -> None:
        if not (isinstance(timeout, (int, float)) and math.isfinite(timeout) and timeout > 0):
            raise ConfigError(f"--timeout must be a number of seconds above 0, got {timeout!r}; e.g. --timeout 60")
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"--retries must be 0 or more, got {retries!r}; give 0 for no retries, e.g. --retries 5")
        if not isinstance(max_response_bytes, int) or max_response_bytes < 1:
            raise ConfigError(
                f"--max-response-mb must be at least 1 MB, got {max_response_bytes!r} bytes; e.g. --max-response-mb 256"
            )
        self.proxy = check_proxy_url(proxy) if proxy is not None else None
        #: Passed as requests' ``verify``: a CA bundle path, or True for certifi's; never False.
        self.verify: str | bool = ca_bundle_for(ca_bundle, os.environ) or True
        self.auth = auth if auth is not None else NoAuth()
        # The auth fetches tokens with its own session (it never calls back into this client),
        # through the same deadline, CA bundle and proxy.
        self.auth.use_transport(timeout=float(timeout), verify=self.verify, proxy=self.proxy)
        self.timeout = float(timeout)
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_response_bytes = max_response_bytes
        self.session = requests.Session()
        # Proxies and the CA bundle are read from the environment here (proxies_for,
        # ca_bundle_for), not by requests: with trust_env off ~/.netrc is never read, and every
        # request also carries the no-op auth hook.
        self.session.trust_env = False
        self.session.verify = self.verify
        self.session.headers["User-Agent"] = user_agent
        adapter = _VerifyingAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.requests_made = 0
        self.retries_made = 0

    def __enter__(self) -> ArcGISClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()
        self.auth.close()  # its token session; a shared auth reopens it when asked again

    # ------------------------------------------------------------------ public

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Metadata request (``f=json`` added). Sent as POST when a token is in use."""
        return self.request_json(url, dict(params or {}), method="GET")

    def post(self, url: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Query request, form-encoded POST (long where clauses and objectIds lists fit)."""
        return self.request_json(url, dict(data), method="POST")

    def post_binary(self, url: str, data: Mapping[str, Any]) -> bytes:
        """Query request answered in a binary format (``f=pbf``): the raw body. An answer that
        starts like JSON is read as JSON, so ArcGIS error bodies raise as they do for :meth:`post`."""
        answer = self.request_json(url, dict(data), method="POST", binary=True)
        if not isinstance(answer, bytes):
            raise ArcGISError(f"{display_url(url)} answered JSON where {data.get('f')} was asked for")
        return answer

    def post_raw(self, url: str, data: Mapping[str, Any]) -> bytes | dict[str, Any]:
        """Query request whose JSON answer is handed back unparsed, for a bulk decoder.

        The body comes back as bytes when it starts like a JSON object and holds no
        ``"error"`` string (so it cannot be an ArcGIS error answer); any other answer is
        parsed and checked exactly as :meth:`post` does, and returned as a dict.
        """
        answer: bytes | dict[str, Any] = self.request_json(url, dict(data), method="POST", raw=True)
        return answer

    def request_json(
        self,
        url: str,
        params: dict[str, Any],
        *,
        method: str = "POST",
        authenticate: bool = True,
        binary: bool = False,
        raw: bool = False,
    ) -> Any:
        url = split_url_credentials(url)[0]  # userinfo is never sent (nor shown)
        params = {k: _form_value(v) for k, v in params.items() if v is not None}
        params.setdefault("f", "json")
        refreshed = False
        while True:
            headers: dict[str, str] = {}
            send_method = method
            if authenticate:
                token = self.auth.token(url)
                if token is not None:
                    params["token"] = token
                    headers["X-Esri-Authorization"] = f"Bearer {token}"
                    send_method = "POST"  # keep the token out of the URL
            try:
                return self._with_retries(send_method, url, params, headers, binary, raw)
            except TokenError:
                if authenticate and not refreshed and self.auth.invalidate():
                    refreshed = True
                    log.info("token rejected by %s; fetching a new one", display_url(url))
                    continue
                raise

    # ------------------------------------------------------------------ internals

    def _sleep(self, attempt: int, retry_after: float | None = None) -> None:
        ceiling = min(self.max_backoff, self.backoff * (2**attempt))
        delay = random.uniform(ceiling / 2, ceiling)  # jitter spreads concurrent retries
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        self.retries_made += 1
        time.sleep(delay)

    def _with_retries(
        self,
        method: str,
        url: str,
        params: dict[str, Any],
        headers: dict[str, str],
        binary: bool = False,
        raw: bool = False,
    ) -> Any:
        where = display_url(url)
        last: str = ""
        for attempt in range(self.retries + 1):
            retry_after: float | None = None
            try:
                resp = self._exchange(method, url, params, headers)
            except _Broken as exc:
                last = exc.reason
                if attempt < self.retries:
                    log.info("%s %s failed (%s); retrying", method, where, exc.reason)
                    self._sleep(attempt)
                    continue
                tries = "1 attempt" if attempt == 0 else f"{attempt + 1} attempts"
                if not exc.reached:
                    raise TransientError(
                        f"could not reach {where} after {tries} ({last}); "
                        f"check the URL and your network, or raise --timeout"
                    ) from exc
                raise TransientError(
                    f"{where} gave no usable answer after {tries} ({last}); "
                    f"raise --timeout if the server is slow, or try again later"
                ) from exc

            status = resp.status
            if status in RETRY_STATUS:
                last = f"HTTP {status}"
                header = resp.headers.get("Retry-After")
                if header is not None and header.isdigit():
                    retry_after = float(header)
                if attempt < self.retries:
                    log.info("%s %s answered HTTP %s; retrying", method, where, status)
                    self._sleep(attempt, retry_after)
                    continue
                raise TransientError(f"{where} answered HTTP {status} {attempt + 1} times; try again later")
            if status in (498, 499):
                raise TokenError(_token_message(status, where))
            if status == 407:
                raise ArcGISError(_proxy_refused(self._proxy_of(url)))
            if status == 404:
                raise ArcGISError(f"{where} was not found (HTTP 404); check the URL")
            if status >= 400:
                raise ArcGISError(f"{where} answered HTTP {status}; check the URL and parameters")
            if binary and not bytes(resp.body[:64]).lstrip().startswith(b"{"):
                return bytes(resp.body)  # a protocol buffer never starts with "{" (field 15, wire type 3)
            if raw and b'"error"' not in resp.body and bytes(resp.body[:64]).lstrip().startswith(b"{"):
                return bytes(resp.body)  # an error answer needs the key "error"; this one is a page
            try:
                body = orjson.loads(resp.body)
            except orjson.JSONDecodeError as exc:
                snippet = bytes(resp.body[:80]).decode("utf-8", "replace").replace("\n", " ")
                raise ArcGISError(
                    f"{where} did not answer JSON (starts {snippet!r}); is it an ArcGIS REST endpoint?"
                ) from exc
            if not isinstance(body, dict):
                raise ArcGISError(f"{where} answered JSON that is not an object; is it an ArcGIS REST endpoint?")
            error = body.get("error")
            if error is None and body.get("status") == "error":  # admin API style
                error = {"code": body.get("code"), "message": "; ".join(map(str, body.get("messages") or []))}
            if error is None:
                return body
            code, message, details = _error_parts(error)
            if code in (498, 499):
                raise TokenError(_token_message(code, where))
            if code in RETRY_ERROR_CODES or (message is not None and "error performing" in message.lower()):
                last = f"error {code}: {message}"
                if attempt < self.retries:
                    log.info("%s %s answered error %s (%s); retrying", method, where, code, message)
                    self._sleep(attempt)
                    continue
                raise TransientError(
                    f"{where} answered error {code} ({message}) {attempt + 1} times; "
                    f"the server may be overloaded: try a smaller --page-size or later"
                )
            text = f"{where} answered error {code}: {message}"
            if details:
                text += " (" + "; ".join(details)[:300] + ")"
            text = redact(text)
            if code == 400:
                raise QueryError(text, code=code, details=details)
            raise ServiceError(text, code=code, details=details)
        raise TransientError(f"{where}: {last}")  # pragma: no cover - loop always returns or raises

    def _exchange(self, method: str, url: str, params: dict[str, Any], headers: dict[str, str]) -> _Answer:
        """One attempt: send, follow redirects (see the module docstring), read the body.

        Raises :class:`_Broken` for what a retry may cure, :class:`ArcGISError` otherwise.
        """
        deadline = time.monotonic() + self.timeout
        for _hop in range(MAX_REDIRECTS + 1):
            prepared = self.session.prepare_request(
                requests.Request(
                    method,
                    url,
                    params=params if method == "GET" else None,
                    data=params if method != "GET" else None,
                    headers=headers,
                    auth=_no_auth,
                )
            )
            resp = self._send(prepared, deadline)
            with resp:
                location = resp.headers.get("Location")
                if resp.status_code not in REDIRECT_STATUS or location is None:
                    body = bytearray()
                    if resp.status_code < 400:  # error statuses are judged by their code alone
                        body = self._read_body(resp, deadline, url)
                    return _Answer(resp.status_code, resp.headers, body)
            target = split_url_credentials(urljoin(url, location))[0]
            # Prepared only to see what would go along: the session's cookies for the target.
            hop = self.session.prepare_request(requests.Request(method, target, headers=headers, auth=_no_auth))
            carries = _carries_credentials(params, hop.headers)
            refusal = redirect_allowed(url, target, carries)
            if refusal is not None:
                raise ArcGISError(
                    f"{display_url(url)} redirected (HTTP {resp.status_code}) to {display_url(target)}, "
                    f"which ags-etl does not follow: {refusal}; use the final URL directly if you trust it"
                )
            log.debug("%s redirected (HTTP %s) to %s", display_url(url), resp.status_code, display_url(target))
            url = target
        raise ArcGISError(
            f"{display_url(url)} redirected more than {MAX_REDIRECTS} times; use the final URL directly"
        )

    def _send(self, prepared: requests.PreparedRequest, deadline: float) -> requests.Response:
        """Send one prepared request with what remains of the deadline; headers only (stream)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Broken(f"no complete answer within {self.timeout:g} s", reached=True)
        assert prepared.url is not None
        proxies = proxies_for(prepared.url, self.proxy)  # per hop: NO_PROXY may send a redirect direct
        try:
            self.requests_made += 1
            return self.session.send(
                prepared,
                timeout=(remaining, remaining),
                allow_redirects=False,
                stream=True,
                verify=self.verify,
                proxies=proxies,
                cert=None,
            )
        except requests.exceptions.SSLError as exc:
            raise ArcGISError(
                f"TLS verification failed for {display_url(prepared.url)}: "
                f"{_tls_reason(exc)}; fix the server certificate, or give its CA with --ca-bundle "
                f"(ca_bundle:, REQUESTS_CA_BUNDLE); verification stays on"
            ) from exc
        except requests.exceptions.ProxyError as exc:
            proxy = requests.utils.select_proxy(prepared.url, proxies) or ""
            if "407" in str(exc):
                raise ArcGISError(_proxy_refused(proxy)) from exc
            if "[SSL" in str(exc):  # the TLS handshake with an https:// proxy
                raise ArcGISError(
                    f"TLS verification failed for proxy {display_url(proxy)}: {_tls_reason(exc)}; "
                    f"give the proxy's CA with --ca-bundle (ca_bundle:, REQUESTS_CA_BUNDLE); verification stays on"
                ) from exc
            raise _Broken(
                f"proxy {display_url(proxy)}: {_connection_reason(exc, self.timeout)}", reached=False
            ) from exc
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
            reached = isinstance(exc, requests.exceptions.ReadTimeout) or "remotedisconnected" in str(exc).lower()
            raise _Broken(_connection_reason(exc, self.timeout), reached=reached) from exc
        except requests.exceptions.RequestException as exc:
            raise ArcGISError(
                f"request to {display_url(prepared.url)} failed: {redact(str(exc))[:200]}; check the URL"
            ) from exc

    def _read_body(self, resp: requests.Response, deadline: float, url: str) -> bytearray:
        """The decoded body, read chunk by chunk until the deadline or the size cap stops it."""
        raw: urllib3.HTTPResponse = resp.raw
        body = bytearray()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise _Broken(f"no complete answer within {self.timeout:g} s", reached=True)
            sock = getattr(raw.connection, "sock", None)
            if sock is not None:
                sock.settimeout(remaining)  # no single read may outlast the deadline
            try:
                # read1 returns what has arrived (read() would wait for a full chunk, however
                # slowly it trickles in); decoding is bounded by the size asked for.
                chunk = raw.read1(_CHUNK, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise _Broken(f"no complete answer within {self.timeout:g} s", reached=True) from exc
            except urllib3.exceptions.DecodeError as exc:
                raise _Broken("the answer could not be decompressed", reached=True) from exc
            except (urllib3.exceptions.ProtocolError, OSError) as exc:
                raise _Broken("connection broken during the answer", reached=True) from exc
            if not chunk:
                return body
            body += chunk
            if len(body) > self.max_response_bytes:
                host = urlsplit(url).hostname or display_url(url)
                raise ArcGISError(
                    f"answer from {host} exceeded {self.max_response_bytes / 2**20:g} MB after decompression; "
                    f"lower --page-size, or raise --max-response-mb if the layer really has pages this large"
                )


    def _proxy_of(self, url: str) -> str:
        """The proxy a request to ``url`` goes through ("" when direct)."""
        return requests.utils.select_proxy(url, proxies_for(url, self.proxy)) or ""


def _proxy_refused(proxy: str) -> str:
    shown = display_url(proxy) if proxy else "the proxy"
    return (
        f"proxy {shown} refused the request (HTTP 407 Proxy Authentication Required); "
        f"give its user and password in the proxy URL, e.g. --proxy http://USER:PASS@host:port "
        f"(or in HTTPS_PROXY/HTTP_PROXY)"
    )


def _tls_reason(exc: requests.exceptions.RequestException) -> str:
    """The certificate problem of a failed handshake, short (urllib3 wraps it in the URL)."""
    text = str(exc)
    match = re.search(r"\[SSL: [A-Z_]+\][^')\"(]*", text)
    reason = match.group(0).strip() if match is not None else text.splitlines()[0]
    return redact(reason)[:200]


def _carries_credentials(params: Mapping[str, Any], headers: Mapping[str, Any]) -> bool:
    """Whether a request with these parameters and (prepared) headers holds a credential."""
    if any(key.lower() in CREDENTIAL_PARAMS for key in params):
        return True
    return any(name.lower() in CREDENTIAL_HEADERS for name in headers)


_REASONS = (
    ("refused", "connection refused"),
    ("name or service not known", "host name not found"),
    ("nodename nor servname", "host name not found"),
    ("temporary failure in name resolution", "host name not found"),
    ("reset by peer", "connection reset"),
    ("remotedisconnected", "connection closed by the server"),
    ("network is unreachable", "network unreachable"),
)


def _connection_reason(exc: requests.exceptions.RequestException, timeout: float) -> str:
    """A short cause for a failed connection (urllib3's text repeats the URL with its query)."""
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return f"no connection within {timeout:g} s"
    if isinstance(exc, requests.exceptions.Timeout):
        return f"no answer within {timeout:g} s"
    text = str(exc).lower()
    for needle, reason in _REASONS:
        if needle in text:
            return reason
    return type(exc).__name__


def _error_parts(error: Any) -> tuple[int | None, str | None, list[str]]:
    if not isinstance(error, dict):
        return None, str(error), []
    code = error.get("code")
    try:
        code = int(code) if code is not None else None
    except (TypeError, ValueError):
        code = None
    details = error.get("details") or []  # pyesridump crashed when `details` was missing
    if not isinstance(details, list):
        details = [str(details)]
    message = error.get("message") or error.get("description")
    return code, message, [str(d) for d in details]


def _token_message(code: int, where: str) -> str:
    if code == 499:
        return f"{where} needs a token (error 499); pass --token, or --username and --password"
    return (
        f"{where} rejected the token (error 498: invalid or expired); pass a fresh --token, "
        f"or --username and --password so tokens are renewed"
    )


def _form_value(value: Any) -> Any:
    """Form encoding: bools as 'true'/'false', dicts/lists as JSON, the rest as is."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return orjson.dumps(value).decode()
    return value
