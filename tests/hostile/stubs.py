"""Hostile servers on 127.0.0.1 for the hardening tests: each one records what it was sent.

* :class:`TinyLayer` — a three-row ArcGIS table (OBJECTID, NAME) that answers metadata,
  counts, id lists, id queries and generateToken (paths with ``/missing/`` answer error
  400, as for an unknown service); it can demand a token, set a cookie, and redirect
  some of its paths (to itself or to another server);
* :class:`Recorder` — "the other host": records every request and answers a dummy
  layer; no credential should ever reach it;
* :class:`SlowDrip` — sends headers, then one byte a second, forever;
* :class:`GzipBomb` — a 1 MB gzip body that inflates to 1 GiB of zeros.

Each is a :class:`~tests.loopback.JSONHandler` subclass made by a ``*_stub`` function
and run with :func:`serving`; what a server saw is in its
:class:`Log` (method, path, query, headers, body of every request).
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import parse_qsl

import orjson

from tests.loopback import JSONHandler, serving  # noqa: F401 - serving is part of this module's API


ROWS = [{"OBJECTID": 1, "NAME": "one"}, {"OBJECTID": 2, "NAME": "two"}, {"OBJECTID": 3, "NAME": "three"}]
COOKIE = "stubsession=cookie-secret-5f3a"


@dataclass
class Seen:
    """One request as the server received it."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: str

    def text(self) -> str:
        """Everything the client sent, as one string to search for secrets."""
        heads = "\n".join(f"{k}: {v}" for k, v in self.headers.items())
        return f"{self.method} {self.path}?{self.query}\n{heads}\n\n{self.body}"


@dataclass
class Log:
    requests: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, seen: Seen) -> None:
        with self.lock:
            self.requests.append(seen)

    def text(self) -> str:
        with self.lock:
            return "\n----\n".join(s.text() for s in self.requests)


class Recording(JSONHandler):
    log: Log

    def params(self) -> tuple[str, dict[str, str]]:
        path, _, query = self.path.partition("?")
        body = b""
        if self.command == "POST":
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.log.add(Seen(self.command, path, query, dict(self.headers.items()), body.decode("latin-1")))
        params = dict(parse_qsl(query, keep_blank_values=True))
        params.update(parse_qsl(body.decode("latin-1"), keep_blank_values=True))
        return path, params

    def reply(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, ctype: str = "application/json"
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        self.respond(*self.params())

    def respond(self, path: str, params: dict[str, str]) -> None:
        status, ctype, body = self.answer(path, params)
        self.reply(status, body, ctype=ctype)


def _json(data: object) -> bytes:
    return orjson.dumps(data)


LAYER_JSON = {
    "currentVersion": 11.1,
    "id": 0,
    "name": "tiny",
    "type": "Table",
    "objectIdField": "OBJECTID",
    "fields": [
        {"name": "OBJECTID", "type": "esriFieldTypeOID", "alias": "OBJECTID"},
        {"name": "NAME", "type": "esriFieldTypeString", "alias": "NAME", "length": 20},
    ],
    "capabilities": "Query",
    "maxRecordCount": 1000,
    "supportedQueryFormats": "JSON",
    "advancedQueryCapabilities": {"supportsPagination": True, "supportsOrderBy": True, "supportsStatistics": False},
}


def layer_answer(path: str, params: dict[str, str]) -> bytes:
    """What the tiny table answers to ``path`` (after any redirect prefix is removed)."""
    if not path.endswith("/query"):
        return _json(LAYER_JSON)
    if params.get("returnCountOnly") == "true":
        return _json({"count": len(ROWS)})
    if params.get("returnIdsOnly") == "true":
        return _json({"objectIdFieldName": "OBJECTID", "objectIds": [r["OBJECTID"] for r in ROWS]})
    rows = ROWS
    if params.get("objectIds"):
        wanted = {int(x) for x in params["objectIds"].split(",")}
        rows = [r for r in ROWS if r["OBJECTID"] in wanted]
    elif params.get("resultOffset") is not None:
        start = int(params["resultOffset"])
        rows = ROWS[start : start + int(params.get("resultRecordCount") or len(ROWS))]
    return _json(
        {
            "objectIdFieldName": "OBJECTID",
            "fields": LAYER_JSON["fields"],
            "features": [{"attributes": r} for r in rows],
        }
    )


@dataclass
class Redirect:
    """Answer paths starting with ``prefix`` with ``status`` and a Location made by
    ``target(path_after_prefix)`` — an absolute URL, or a path on the same server."""

    status: int
    prefix: str
    target: Callable[[str], str]


class TinyLayer(Recording):
    """The three-row table at ``/arcgis/rest/services/tiny/FeatureServer/0``."""

    token: str | None = None
    set_cookie: bool = False
    redirects: tuple[Redirect, ...] = ()

    def respond(self, path: str, params: dict[str, str]) -> None:
        for rule in self.redirects:
            if path.startswith(rule.prefix):
                self.reply(rule.status, headers={"Location": rule.target(path[len(rule.prefix) :])})
                return
        if "/missing/" in path:  # a service the server does not know
            self.reply(200, _json({"error": {"code": 400, "message": "Invalid URL", "details": ["Invalid URL"]}}))
            return
        if path.endswith("/rest/info"):  # public on ArcGIS Server: token discovery falls back to /tokens
            self.reply(200, _json({"currentVersion": 11.1}))
            return
        if path.endswith("/tokens/generateToken"):
            self.reply(200, _json({"token": self.token, "expires": int(time.time() * 1000) + 3_600_000}))
            return
        if self.token is not None:
            given = params.get("token") or self.headers.get("X-Esri-Authorization", "").removeprefix("Bearer ")
            if given != self.token:
                self.reply(200, _json({"error": {"code": 499, "message": "Token Required", "details": []}}))
                return
        headers = {"Set-Cookie": f"{COOKIE}; Path=/"} if self.set_cookie else None
        self.reply(200, layer_answer(path, params), headers=headers)


#: The canonical path of the tiny table on any stub.
LAYER_PATH = "/arcgis/rest/services/tiny/FeatureServer/0"


class Recorder(TinyLayer):
    """"The other host": serves the same table anonymously and records everything."""


@contextlib.contextmanager
def layer_stub(
    *, token: str | None = None, set_cookie: bool = False, redirects: tuple[Redirect, ...] = ()
) -> Iterator[tuple[str, Log]]:
    """Run a :class:`TinyLayer`; yield (base URL, its log)."""
    log = Log()
    attrs = {"log": log, "token": token, "set_cookie": set_cookie, "redirects": redirects}
    handler = type("Layer", (TinyLayer,), attrs)
    with serving(handler) as base:
        yield base, log


@contextlib.contextmanager
def recorder_stub() -> Iterator[tuple[str, Log]]:
    """Run a :class:`Recorder` ("the other host"); yield (base URL, its log)."""
    log = Log()
    with serving(type("Other", (Recorder,), {"log": log})) as base:
        yield base, log


class SlowDrip(Recording):
    """Headers at once (a large Content-Length), then one byte a second until the client leaves."""

    def respond(self, path: str, params: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "1000000")
        self.end_headers()
        try:
            self.wfile.write(b"{")
            self.wfile.flush()
            for _ in range(600):
                time.sleep(1.0)
                self.wfile.write(b" ")
                self.wfile.flush()
        except OSError:  # the client gave up: what the test wants
            return


@contextlib.contextmanager
def slow_drip_stub() -> Iterator[tuple[str, Log]]:
    log = Log()
    with serving(type("Drip", (SlowDrip,), {"log": log})) as base:
        yield base, log


#: Size of the bomb once inflated.
BOMB_INFLATED = 2**30
_BOMB_MEMBER = 2**24


@cache
def gzip_bomb() -> bytes:
    """A gzip body of :data:`BOMB_INFLATED` zero bytes, about 1 MB on the wire.

    Zeros are streamed through ``zlib.compressobj`` (wbits 31: gzip header and trailer)
    into one 16 MiB gzip member, repeated: a gzip body may hold several members
    (RFC 1952 §2.2), and every HTTP client inflates them all. Built in a fraction of
    a second instead of compressing 1 GiB.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = bytes(2**20)
    member = b"".join(packer.compress(block) for _ in range(_BOMB_MEMBER // len(block))) + packer.flush()
    return member * (BOMB_INFLATED // _BOMB_MEMBER)


class GzipBomb(Recording):
    """Answers every request with :func:`gzip_bomb`, ``Content-Encoding: gzip``."""

    def respond(self, path: str, params: dict[str, str]) -> None:
        try:
            self.reply(200, gzip_bomb(), headers={"Content-Encoding": "gzip"})
        except OSError:  # the client stopped reading at its cap
            return


@contextlib.contextmanager
def gzip_bomb_stub() -> Iterator[tuple[str, Log]]:
    log = Log()
    gzip_bomb()  # built before the server starts, not inside the first request
    with serving(type("Bomb", (GzipBomb,), {"log": log})) as base:
        yield base, log
