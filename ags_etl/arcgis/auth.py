"""Authentication for ArcGIS REST: anonymous, a given token, an API key, username/password.

A username/password auth finds its token endpoint the way ArcGIS clients do:
``<site>/rest/info`` → ``authInfo.tokenServicesUrl`` (ArcGIS Server
``/tokens/generateToken``); when the site is federated (``owningSystemUrl``) the
portal's ``/sharing/rest/generateToken`` is used. Tokens are refreshed shortly
before they expire and once when a server answers 498, transparently, mid-run.

Secrets never leave this module except as the ``token`` form field / the
``X-Esri-Authorization`` header: ``repr()`` hides them and no message holds them.
The password goes only to the token endpoint, in a POST body; the client refuses to
follow that endpoint's redirect to another origin, so the password cannot be forwarded.

Credentials written into a URL (``https://user:pass@host/…``) are taken apart by
:func:`split_url_credentials`; the userinfo itself is never sent in a URL.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

from ags_etl.errors import ServiceError, TokenError

if TYPE_CHECKING:
    from ags_etl.arcgis.client import ArcGISClient


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


class Auth(ABC):
    """Supplies a token for requests; None means anonymous."""

    @abstractmethod
    def token(self, client: ArcGISClient, url: str) -> str | None:
        """A token valid for ``url`` now (fetching or refreshing it if needed)."""

    def invalidate(self) -> bool:
        """Forget the current token after a 498. Returns True if a new one can be had."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"


class NoAuth(Auth):
    def token(self, client: ArcGISClient, url: str) -> str | None:
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

    def token(self, client: ArcGISClient, url: str) -> str | None:
        return self._token


class ApiKeyAuth(TokenAuth):
    """An ArcGIS API key: sent like a token, valid up to a year."""

    kind = "API key"


class UserPasswordAuth(Auth):
    """Username and password exchanged for short-lived tokens at the site's token service.

    ``token_url`` overrides discovery. ``expiration_minutes`` is asked of the server,
    which may grant less; the token is refreshed ``refresh_margin`` before its expiry
    (at most 5 minutes, at most a tenth of its lifetime).
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
        #: How many tokens were fetched (1 + refreshes); for run reports and tests.
        self.tokens_fetched = 0

    def __repr__(self) -> str:
        return f"UserPasswordAuth(username={self.username!r}, password=<redacted>)"

    def _discover(self, client: ArcGISClient, url: str) -> str:
        root = site_root(url)
        info = client.request_json(f"{root}/rest/info", {}, method="GET", authenticate=False)
        auth_info = info.get("authInfo") or {}
        owning = info.get("owningSystemUrl")
        if owning:
            return owning.rstrip("/") + "/sharing/rest/generateToken"
        if auth_info.get("tokenServicesUrl"):
            return str(auth_info["tokenServicesUrl"])
        if root.lower().endswith("/sharing") or "/sharing/" in url.lower():
            return root + "/rest/generateToken"
        return root + "/tokens/generateToken"

    def _fetch(self, client: ArcGISClient, url: str) -> None:
        if self.token_url is None:
            self.token_url = self._discover(client, url)
        data: dict[str, Any] = {
            "username": self.username,
            "password": self._password,
            "client": "referer",
            "referer": self.referer,
            "expiration": self.expiration_minutes,
            "f": "json",
        }
        try:
            answer = client.request_json(self.token_url, data, method="POST", authenticate=False)
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

    def token(self, client: ArcGISClient, url: str) -> str | None:
        with self._lock:
            if self._token is None or time.time() >= self._refresh_at:
                self._fetch(client, url)
            return self._token

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
        return True
