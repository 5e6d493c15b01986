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
* TLS verification is always on;
* tokens go in the POST body and the ``X-Esri-Authorization`` header, never in
  a URL; every URL in a message or log line passes through :func:`redact`.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import requests

from ags_etl import __version__
from ags_etl.arcgis.auth import Auth, NoAuth
from ags_etl.errors import ArcGISError, QueryError, ServiceError, TokenError, TransientError

log = logging.getLogger(__name__)

USER_AGENT = f"ags-etl/{__version__} (+https://pypi.org/project/ags-etl/)"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
#: Error-body codes that a retry can cure (the server was busy or the page too big).
RETRY_ERROR_CODES = frozenset({500, 502, 503, 504})
SECRET_KEYS = ("token", "password", "api_key", "apikey", "client_secret", "key")
_SECRET_RE = re.compile(r"(?i)\b(" + "|".join(SECRET_KEYS) + r")=([^&\s]*)")


def redact(text: str) -> str:
    """Hide ``token=…``/``password=…`` values in a URL or message."""
    return _SECRET_RE.sub(lambda m: f"{m.group(1)}=<redacted>", text)


def display_url(url: str) -> str:
    """URL without query string or credentials, for messages."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port is not None:
        netloc = f"{netloc}:{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class ArcGISClient:
    """A requests.Session with ArcGIS error handling. Use as a context manager.

    ``timeout`` is seconds per request (connect and read); ``retries`` the number of
    re-tries after the first attempt for transient failures; ``backoff`` the base delay.
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
    ) -> None:
        self.auth = auth if auth is not None else NoAuth()
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.session = requests.Session()
        self.session.verify = True
        self.session.headers["User-Agent"] = user_agent
        adapter = requests.adapters.HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.requests_made = 0
        self.retries_made = 0

    def __enter__(self) -> "ArcGISClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    # ------------------------------------------------------------------ public

    def get(self, url: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Metadata request (``f=json`` added). Sent as POST when a token is in use."""
        return self.request_json(url, dict(params or {}), method="GET")

    def post(self, url: str, data: Mapping[str, Any]) -> dict[str, Any]:
        """Query request, form-encoded POST (long where clauses and objectIds lists fit)."""
        return self.request_json(url, dict(data), method="POST")

    def request_json(
        self, url: str, params: dict[str, Any], *, method: str = "POST", authenticate: bool = True
    ) -> dict[str, Any]:
        params = {k: _form_value(v) for k, v in params.items() if v is not None}
        params.setdefault("f", "json")
        refreshed = False
        while True:
            headers: dict[str, str] = {}
            send_method = method
            if authenticate:
                token = self.auth.token(self, url)
                if token is not None:
                    params["token"] = token
                    headers["X-Esri-Authorization"] = f"Bearer {token}"
                    send_method = "POST"  # keep the token out of the URL
            try:
                return self._with_retries(send_method, url, params, headers)
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

    def _with_retries(self, method: str, url: str, params: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
        where = display_url(url)
        last: str = ""
        for attempt in range(self.retries + 1):
            retry_after: float | None = None
            try:
                self.requests_made += 1
                if method == "GET":
                    resp = self.session.get(url, params=params, headers=headers, timeout=self.timeout)
                else:
                    resp = self.session.post(url, data=params, headers=headers, timeout=self.timeout)
            except requests.exceptions.SSLError as exc:
                raise ArcGISError(
                    f"TLS verification failed for {where}: {redact(str(exc).splitlines()[0])[:200]}; "
                    f"fix the server certificate or install its CA (REQUESTS_CA_BUNDLE); verification stays on"
                ) from exc
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = _connection_reason(exc, self.timeout)
                if attempt < self.retries:
                    log.info("%s %s failed (%s); retrying", method, where, type(exc).__name__)
                    self._sleep(attempt)
                    continue
                tries = "1 attempt" if attempt == 0 else f"{attempt + 1} attempts"
                raise TransientError(
                    f"could not reach {where} after {tries} ({last}); "
                    f"check the URL and your network, or raise --timeout"
                ) from exc
            except requests.exceptions.RequestException as exc:
                raise ArcGISError(f"request to {where} failed: {redact(str(exc))[:200]}; check the URL") from exc

            status = resp.status_code
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
            if status == 404:
                raise ArcGISError(f"{where} was not found (HTTP 404); check the URL")
            if status >= 400:
                raise ArcGISError(f"{where} answered HTTP {status}; check the URL and parameters")
            try:
                body = orjson.loads(resp.content)
            except orjson.JSONDecodeError as exc:
                snippet = resp.text[:80].replace("\n", " ")
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
