"""A forwarding HTTP proxy and a TLS terminator on 127.0.0.1, for tests of proxies and CA bundles.

:func:`forward_proxy` runs the kind of proxy ``--proxy``/``HTTPS_PROXY`` point at: absolute-URI
``GET``/``POST`` requests (``GET http://host/path HTTP/1.1``) for http targets are forwarded, and
``CONNECT host:port`` opens a byte tunnel for https targets. Every request line it receives and
the ``Proxy-Authorization`` header that came with it are recorded in :attr:`ForwardProxy.seen`.
With ``credentials`` it answers 407 to requests without the matching Basic credentials, as a
corporate proxy does; with ``tls`` the proxy itself speaks TLS (an ``https://`` proxy).

:func:`tls_terminator` puts TLS with a given certificate in front of a plain-HTTP server (the
local FeatureServer): bytes are relayed both ways once the handshake is done.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import select
import socket
import socketserver
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

#: Headers a proxy consumes instead of forwarding (hop-by-hop).
_HOP_HEADERS = frozenset({"proxy-authorization", "proxy-connection", "connection", "keep-alive"})


@dataclass
class Seen:
    """One request the proxy received: its request line and its Proxy-Authorization (or None)."""

    line: str
    proxy_authorization: str | None


@dataclass
class ForwardProxy:
    """A running proxy: its URL (with the credentials it requires, if any) and what it saw."""

    url: str
    seen: list[Seen] = field(default_factory=list)

    @property
    def lines(self) -> list[str]:
        return [s.line for s in self.seen]


def _relay(a: socket.socket, b: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [a, b]
    while True:
        readable, _, broken = select.select(sockets, [], sockets, 30)
        if broken or not readable:
            return
        for sock in readable:
            try:
                data = sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            (b if sock is a else a).sendall(data)


class _ProxyHandler(BaseHTTPRequestHandler):
    record: ForwardProxy
    expected_auth: str | None

    def log_message(self, format: str, *args: object) -> None:
        return

    def _admitted(self) -> bool:
        """Record the request; answer 407 and return False when the credentials do not match."""
        given = self.headers.get("Proxy-Authorization")
        self.record.seen.append(Seen(self.requestline, given))
        if self.expected_auth is None or given == self.expected_auth:
            return True
        self.send_response(407)
        self.send_header("Proxy-Authenticate", 'Basic realm="test proxy"')
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        return False

    def _forward(self) -> None:
        if not self._admitted():
            return
        target = urlsplit(self.path)
        if target.scheme != "http" or target.hostname is None:
            self.send_error(400, "absolute http URI expected")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
        path = target.path + (f"?{target.query}" if target.query else "")
        upstream = http.client.HTTPConnection(target.hostname, target.port or 80, timeout=30)
        try:
            upstream.request(self.command, path or "/", body=body, headers=headers)
            answer = upstream.getresponse()
            data = answer.read()
            self.send_response(answer.status, answer.reason)
            for name, value in answer.getheaders():
                if name.lower() not in _HOP_HEADERS and name.lower() not in ("transfer-encoding", "content-length"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
        finally:
            upstream.close()

    do_GET = _forward
    do_POST = _forward

    def do_CONNECT(self) -> None:
        if not self._admitted():
            return
        host, _, port = self.path.rpartition(":")
        try:
            upstream = socket.create_connection((host, int(port)), timeout=30)
        except OSError:
            self.send_error(502, "cannot reach the target")
            return
        with upstream:
            self.send_response(200, "Connection established")
            self.end_headers()
            self.wfile.flush()
            _relay(self.connection, upstream)
        self.close_connection = True


class _TLSServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer whose accepted connections speak TLS (handshake in the handler thread)."""

    context: ssl.SSLContext | None = None

    def finish_request(self, request: socket.socket, client_address: tuple[str, int]) -> None:  # type: ignore[override]
        if self.context is not None:
            try:
                request = self.context.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # a client that refuses our certificate: nothing to serve
        super().finish_request(request, client_address)


@contextlib.contextmanager
def forward_proxy(credentials: tuple[str, str] | None = None, tls: ssl.SSLContext | None = None) -> Iterator[ForwardProxy]:
    """Run a forwarding proxy on a free port of 127.0.0.1 for the length of the block.

    ``credentials`` (user, password) are required from clients (407 otherwise) and appear in the
    yielded URL; ``tls`` makes it an https proxy with that server context.
    """
    expected = None
    if credentials is not None:
        expected = "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
    record = ForwardProxy(url="")
    handler = type("Handler", (_ProxyHandler,), {"record": record, "expected_auth": expected})
    server = _TLSServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    server.context = tls
    userinfo = f"{credentials[0]}:{credentials[1]}@" if credentials is not None else ""
    scheme = "https" if tls is not None else "http"
    record.url = f"{scheme}://{userinfo}127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield record
    finally:
        server.shutdown()
        server.server_close()


class _Terminator(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    context: ssl.SSLContext
    upstream: tuple[str, int]


class _TerminatorHandler(socketserver.BaseRequestHandler):
    server: _Terminator

    def handle(self) -> None:
        try:
            tls = self.server.context.wrap_socket(self.request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # the client refused the certificate (verification on): the point of some tests
        with tls, socket.create_connection(self.server.upstream, timeout=30) as upstream:
            _relay(tls, upstream)


@contextlib.contextmanager
def tls_terminator(upstream: str, context: ssl.SSLContext) -> Iterator[str]:
    """Serve TLS with ``context`` on a free port of 127.0.0.1, relaying to the http ``upstream``
    base URL; yield ``https://127.0.0.1:PORT``."""
    parts = urlsplit(upstream)
    assert parts.hostname is not None and parts.port is not None
    server = _Terminator(("127.0.0.1", 0), _TerminatorHandler)
    server.context = context
    server.upstream = (parts.hostname, parts.port)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
