"""Token security of the local FeatureServer, shaped like ArcGIS Server's built-in tokens.

``POST /arcgis/tokens/generateToken`` with ``username``, ``password`` and
``expiration`` (minutes, default 60) answers ``{"token", "expires" (epoch ms),
"ssl": false}``. Every ``/arcgis/rest/services`` request then needs a token, in
the ``token`` parameter or the header ``X-Esri-Authorization: Bearer <token>``.
Errors come with HTTP 200, as ArcGIS sends them: 499 "Token Required" when no
token is given, 498 "Invalid Token" when it is unknown or expired, 400 "Unable
to generate token." for wrong credentials. Tokens and passwords are never logged.
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable

from ags_etl.server.protocol import Params, RestError

DEFAULT_EXPIRATION_MINUTES = 60
#: ArcGIS Server caps long-lived tokens (maximum token timeout, 1 year by default in 10.x).
MAX_EXPIRATION_MINUTES = 525_600


class TokenStore:
    """Issued tokens and their expiry times. Thread-safe.

    ``ttl_seconds`` (``--token-ttl``) overrides the requested expiration when it is
    shorter. ``clock`` returns seconds since the epoch (tests may pass their own).
    """

    def __init__(
        self, username: str, password: str, ttl_seconds: int | None = None, clock: Callable[[], float] = time.time
    ) -> None:
        self._username = username
        self._password = password
        self._ttl = ttl_seconds
        self._clock = clock
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def generate(self, params: Params) -> dict[str, object]:
        """Answer a generateToken request (raises RestError 400 for bad credentials)."""
        username = params.text("username", "")
        password = params.text("password", "")
        user_ok = hmac.compare_digest(username.encode(), self._username.encode())
        password_ok = hmac.compare_digest(password.encode(), self._password.encode())
        if not (user_ok and password_ok):
            raise RestError(400, "Unable to generate token.", ["Invalid username or password."])
        minutes = params.integer("expiration", minimum=1)
        seconds = 60 * min(minutes if minutes is not None else DEFAULT_EXPIRATION_MINUTES, MAX_EXPIRATION_MINUTES)
        if self._ttl is not None and self._ttl < seconds:
            seconds = self._ttl
        now = self._clock()
        expires = now + seconds
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._tokens = {t: e for t, e in self._tokens.items() if e > now}
            self._tokens[token] = expires
        return {"token": token, "expires": int(expires * 1000), "ssl": False}

    def check(self, token: str | None) -> None:
        """Raise RestError 499 when ``token`` is missing, 498 when unknown or expired."""
        if token is None or token == "":
            raise RestError(499, "Token Required", [])
        with self._lock:
            expires = self._tokens.get(token)
        if expires is None or expires <= self._clock():
            raise RestError(498, "Invalid Token", [])


def request_token(params: Params, header: str | None) -> str | None:
    """The token of a request: ``token`` parameter first, then ``X-Esri-Authorization: Bearer``."""
    token = params.get("token")
    if token is not None:
        return token.strip()
    if header:
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
    return None
