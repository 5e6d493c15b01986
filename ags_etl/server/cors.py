"""CORS: which browser origins may read the local FeatureServer's answers (``--cors``).

By default no ``Access-Control-*`` header is sent, so a web page on another
origin cannot read the server's data through a visitor's browser (the server
usually runs on a workstation, next to the browser). ``--cors ORIGIN`` allows
one origin (repeatable); ``--cors '*'`` allows any. An allowed request's
``Origin`` is echoed back with ``Vary: Origin`` (``*`` is sent as is), and
preflight ``OPTIONS`` requests get the methods and headers the API uses.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from ags_etl.errors import ConfigError

ANY = "*"
#: Methods and request headers the REST API uses (tokens travel in X-Esri-Authorization).
ALLOW_METHODS = "GET, POST, OPTIONS"
ALLOW_HEADERS = "X-Esri-Authorization, Content-Type"
#: Seconds a browser may cache a preflight answer.
MAX_AGE = "600"


def normalize_origin(value: str) -> str:
    """``*`` or ``scheme://host[:port]`` in lower case; ConfigError naming the value otherwise."""
    text = value.strip()
    if text == ANY:
        return ANY
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigError(
            f"--cors {value!r} is not an origin; give scheme://host[:port] such as https://example.org, or '*'"
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


def headers(allowed: tuple[str, ...], origin: str | None, *, preflight: bool = False) -> list[tuple[str, str]]:
    """The CORS headers of one answer, given the allowed origins and the request's ``Origin``.

    Nothing when no origin is allowed; ``Vary: Origin`` alone when the request's
    origin is not among the allowed ones (the answer depends on it).
    """
    if not allowed:
        return []
    if ANY in allowed:
        allow = ANY
    elif origin is not None and origin.strip().rstrip("/").lower() in allowed:
        allow = origin.strip().rstrip("/")
    else:
        return [("Vary", "Origin")]
    out = [("Access-Control-Allow-Origin", allow), ("Access-Control-Allow-Headers", ALLOW_HEADERS)]
    if preflight:
        out += [("Access-Control-Allow-Methods", ALLOW_METHODS), ("Access-Control-Max-Age", MAX_AGE)]
    if allow != ANY:
        out.append(("Vary", "Origin"))
    return out
