"""Authentication for ArcGIS REST: anonymous, a given token, an API key, username/password.

A username/password auth finds its token endpoint the way ArcGIS clients do:
``<site>/rest/info`` → ``authInfo.tokenServicesUrl`` (ArcGIS Server
``/tokens/generateToken``); when the site is federated (``owningSystemUrl``) the
portal's ``/sharing/rest/generateToken`` is used. Tokens are refreshed shortly
before they expire and once when a server answers 498, transparently, mid-run.

An auth object fetches its tokens itself, with its own small ``requests`` session
(:meth:`Auth.use_transport` gives it the client's timeout, CA bundle and proxy once, at
the client's construction); it never calls back into the client that asks it for a
token. Like a ``requests.auth.AuthBase`` it can also be called on a prepared request
(it adds the ``X-Esri-Authorization`` header). An auth object pickles without its token,
lock or session (a spec a worker process can rebuild from).

Secrets never leave this module except as the ``token`` form field / the
``X-Esri-Authorization`` header: ``repr()`` hides them and no message holds them.
The password goes only to the token endpoint, in a POST body; a redirect of that
endpoint to another origin is refused, so the password cannot be forwarded.

Credentials written into a URL (``https://user:pass@host/…``) are taken apart by
:func:`split_url_credentials`; the userinfo itself is never sent in a URL.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import orjson
import requests

from ags_etl.errors import ArcGISError, ServiceError, TokenError, TransientError

#: Largest token-service answer read (a real one is a few hundred bytes).
MAX_TOKEN_ANSWER_BYTES = 1 << 20
#: Attempts at a token request that fails to connect or answers HTTP 5xx/429.
TOKEN_ATTEMPTS = 3
#: Redirect hops followed by a token-service request.
MAX_TOKEN_REDIRECTS = 5


def split_url_credentials(url: str) -> tuple[str, str | None, str | None]:
    """``https://user:pa%40ss@h/x`` → ``("https://h/x", "user", "pa@ss")``.

    Pure. The userinfo (everything before the last ``@`` of the network location) is
    removed from the URL and percent-decoded; an absent or empty user name or password
    is None. A URL without userinfo comes back unchanged with ``(None, None)``.
    """
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, unquote(user) or None, (unquote(password) or None) if colon else None


def site_root(url: str) -> str:
    """``https://h/arcgis/rest/services/X/FeatureServer/0`` → ``https://h/arcgis``."""
    parts = urlsplit(url)
    path = parts.path
    idx = path.lower().find("/rest/")
    root = path[:idx] if idx >= 0 else path.rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, root, "", ""))


class Auth(ABC, requests.auth.AuthBase):
    """Supplies a token for requests; None means anonymous."""

    timeout: float = 60.0
    verify: bool | str = True
    proxy: str | None = None

    @abstractmethod
    def token(self, url: str) -> str | None:
        """A token valid for ``url`` now (fetching or refreshing it if needed)."""

    def invalidate(self) -> bool:
        """Forget the current token after a 498. Returns True if a new one can be had."""
        return False

    def use_transport(self, *, timeout: float, verify: bool | str = True, proxy: str | None = None) -> None:
        """The settings of token requests: deadline per attempt, CA bundle (never False), proxy."""
        self.timeout = timeout
        self.verify = verify
        self.proxy = proxy

    def close(self) -> None:
        """Release what token requests hold open (nothing for a fixed token); reopened on demand."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        """requests' auth hook: the token as ``X-Esri-Authorization`` (nothing when anonymous)."""
        token = self.token(request.url or "")
        if token is not None:
            request.headers["X-Esri-Authorization"] = f"Bearer {token}"
        return request

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"


class NoAuth(Auth):
    def token(self, url: str) -> str | None:
        return None

    def __repr__(self) -> str:
        return "NoAuth()"


class TokenAuth(Auth):
    """A token (or API key) given by the user; it cannot be renewed by us."""

    kind = "token"

    def __init__(self, token: str) -> None:
        if not token:
            raise ValueError("an empty token was given")
        self._token = token

    def token(self, url: str) -> str | None:
        return self._token


class ApiKeyAuth(TokenAuth):
    """An ArcGIS API key: sent like a token, valid up to a year."""

    kind = "API key"


class UserPasswordAuth(Auth):
    """Username and password exchanged for short-lived tokens at the site's token service.

    ``token_url`` overrides discovery. ``expiration_minutes`` is asked of the server,
    which may grant less; the token is refreshed ``refresh_margin`` before its expiry
    (at most 5 minutes, at most a tenth of its lifetime). Token requests go through this
    object's own session (see the module docstring).
    """

    def __init__(
        self,
        username: str,
        password: str,
        *,
        token_url: str | None = None,
        expiration_minutes: int = 60,
        referer: str = "ags-etl",
    ) -> None:
        self.username = username
        self._password = password
        self.token_url = token_url
        self.expiration_minutes = expiration_minutes
        self.referer = referer
        self._token: str | None = None
        self._expires_at = 0.0
        self._refresh_at = 0.0
        self._lock = threading.Lock()
        self._session: requests.Session | None = None
        #: How many tokens were fetched (1 + refreshes); for run reports and tests.
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"UserPasswordAuth(username={self.username!r}, password=<redacted>)"

    def __getstate__(self) -> dict[str, Any]:
        """The spec only: no token, lock or session cross a process boundary."""
        state = dict(self.__dict__)
        state.update(_token=None, _expires_at=0.0, _refresh_at=0.0, _lock=None, _session=None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def close(self) -> None:
        """Close the token session (a new one is opened if another token is needed)."""
        session, self._session = self._session, None
        if session is not None:
            session.close()

    # ------------------------------------------------------------------ token requests

    def _request(self, url: str, data: dict[str, Any], *, method: str, secret: bool) -> dict[str, Any]:
        """One token-service exchange: retried on connection failures, 429 and 5xx; redirects
        followed within the origin, or to another one only when ``secret`` is False."""
        # Pure helpers only: the client module is imported here because it imports this one.
        from ags_etl.arcgis.client import display_url, proxies_for, redirect_allowed

        if self._session is None:
            self._session = requests.Session()
            self._session.trust_env = False  # proxies below; ~/.netrc is never read
        where = display_url(url)
        last = ""
        for attempt in range(TOKEN_ATTEMPTS):
            target = url
            try:
                for _hop in range(MAX_TOKEN_REDIRECTS + 1):
                    resp = self._session.request(
                        method,
                        target,
                        params=data if method == "GET" else None,
                        data=data if method != "GET" else None,
                        timeout=(self.timeout, self.timeout),
                        allow_redirects=False,
                        verify=self.verify,
                        proxies=proxies_for(target, self.proxy),
                        stream=True,
                        auth=lambda r: r,  # no Basic auth from ~/.netrc or URL userinfo
                    )
                    with resp:
                        location = resp.headers.get("Location")
                        if resp.status_code in (301, 302, 303, 307, 308) and location is not None:
                            nxt = split_url_credentials(urljoin(target, location))[0]
                            refusal = redirect_allowed(target, nxt, secret)
                            if refusal is not None:
                                raise ArcGISError(
                                    f"{display_url(target)} redirected (HTTP {resp.status_code}) to "
                                    f"{display_url(nxt)}, which ags-etl does not follow: {refusal}; "
                                    f"use the final URL directly if you trust it"
                                )
                            target = nxt
                            continue
                        if resp.status_code == 429 or resp.status_code >= 500:
                            last = f"HTTP {resp.status_code}"
                            break
                        if resp.status_code >= 400:
                            raise ArcGISError(f"token service {where} answered HTTP {resp.status_code}; check the URL")
                        body = resp.raw.read(MAX_TOKEN_ANSWER_BYTES + 1, decode_content=True)
                        return _answer_json(body, where)
                else:
                    raise ArcGISError(f"{where} redirected more than {MAX_TOKEN_REDIRECTS} times; use the final URL")
            except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
                last = type(exc).__name__
            if attempt + 1 < TOKEN_ATTEMPTS:
                time.sleep(0.2 * 2**attempt)
        raise TransientError(f"token service {where} gave no usable answer after {TOKEN_ATTEMPTS} attempts ({last})")

    def _discover(self, url: str) -> str:
        root = site_root(url)
        info = self._request(f"{root}/rest/info", {"f": "json"}, method="GET", secret=False)
        auth_info = info.get("authInfo") or {}
        owning = info.get("owningSystemUrl")
        if owning:
            return owning.rstrip("/") + "/sharing/rest/generateToken"
        if auth_info.get("tokenServicesUrl"):
            return str(auth_info["tokenServicesUrl"])
        if root.lower().endswith("/sharing") or "/sharing/" in url.lower():
            return root + "/rest/generateToken"
        return root + "/tokens/generateToken"

    def _fetch(self, url: str) -> None:
        if self.token_url is None:
            self.token_url = self._discover(url)
        data: dict[str, Any] = {
            "username": self.username,
            "password": self._password,
            "client": "referer",
            "referer": self.referer,
            "expiration": self.expiration_minutes,
            "f": "json",
        }
        try:
            answer = self._request(self.token_url, data, method="POST", secret=True)
        except ServiceError as exc:
            # Only the service's own refusal (an error body) means "wrong credentials";
            # an unreachable endpoint or a refused redirect keeps its own message.
            raise TokenError(
                f"token service {self.token_url} refused username {self.username!r}: {exc}; "
                f"check the username and password (--username/--password or AGS_ETL_USERNAME/AGS_ETL_PASSWORD)"
            ) from exc
        token = answer.get("token")
        if not token:
            raise TokenError(
                f"token service {self.token_url} gave no token for username {self.username!r}; "
                f"check that the URL is an ArcGIS token endpoint"
            )
        now = time.time()
        expires_ms = answer.get("expires")
        expires_at = float(expires_ms) / 1000.0 if expires_ms is not None else now + self.expiration_minutes * 60
        lifetime = max(expires_at - now, 0.0)
        self.tokens_fetched += 1
        self._token = str(token)
        self._expires_at = expires_at
        self._refresh_at = expires_at - min(300.0, lifetime / 10.0)

    def token(self, url: str) -> str | None:
        with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                self._fetch(url)
            return self._token

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
        return True


def _answer_json(body: bytes, where: str) -> dict[str, Any]:
    """A token-service body → its JSON object; an ``{"error": …}`` body → ServiceError."""
    if len(body) > MAX_TOKEN_ANSWER_BYTES:
        raise ArcGISError(f"token service {where} answered more than {MAX_TOKEN_ANSWER_BYTES} bytes; check the URL")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ArcGISError(f"token service {where} did not answer JSON; check the URL") from exc
    if not isinstance(data, dict):
        raise ArcGISError(f"token service {where} answered JSON that is not an object; check the URL")
    error = data.get("error")
    if error is not None:
        detail = error.get("message") if isinstance(error, dict) else str(error)
        code = error.get("code") if isinstance(error, dict) else None
        raise ServiceError(f"{where}: {detail or 'error'}" + (f" (code {code})" if code is not None else ""))
    return data
