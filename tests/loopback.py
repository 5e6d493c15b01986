"""Tiny HTTP servers on 127.0.0.1 for tests that need a server to behave in a given way.

:class:`JSONHandler` reads the parameters of a GET or a form-encoded POST the way ArcGIS
does and answers JSON; :func:`serving` runs a handler class on a free port for the length
of a ``with`` block and yields its base URL.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl


class JSONHandler(BaseHTTPRequestHandler):
    """Subclasses implement ``answer(path, params) -> (status, content type, body bytes)``."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib signature
        return

    def params(self) -> tuple[str, dict[str, str]]:
        """(path, parameters from the query string and, for POST, the form body)."""
        path, _, query = self.path.partition("?")
        params = dict(parse_qsl(query, keep_blank_values=True))
        if self.command == "POST":
            length = int(self.headers.get("Content-Length") or 0)
            params.update(parse_qsl(self.rfile.read(length).decode(), keep_blank_values=True))
        return path, params

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def _handle(self) -> None:
        status, ctype, body = self.answer(*self.params())
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._handle()

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._handle()


@contextlib.contextmanager
def serving(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run ``handler`` on 127.0.0.1 (a free port) in a thread; yield ``http://127.0.0.1:PORT``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
