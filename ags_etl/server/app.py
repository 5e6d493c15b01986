"""The HTTP side of the local FeatureServer: routing, tokens, faults, lifecycle.

URLs (GET or POST form-encoded, parameters case-insensitive, ``f=json|pjson``)::

    /arcgis/rest/info
    /arcgis/tokens/generateToken                      (POST; only with --token-auth)
    /arcgis/rest/services
    /arcgis/rest/services/NAME/FeatureServer
    /arcgis/rest/services/NAME/FeatureServer/layers
    /arcgis/rest/services/NAME/FeatureServer/0
    /arcgis/rest/services/NAME/FeatureServer/0/query  (also f=geojson)
    /arcgis/rest/services/NAME/FeatureServer/0/applyEdits|addFeatures|updateFeatures|deleteFeatures
    /arcgis/rest/services/NAME/FeatureServer/applyEdits   (POST; with --editable: see edits.py)
    /arcgis/rest/services/FOLDER                      (folders and services with several
    /arcgis/rest/services/[FOLDER/]NAME/FeatureServer/ID[/query]   layers: see catalog.py)
    /sharing/rest/content/items/ID, /sharing/rest/search   (portal items: see portal.py)

Any other path answers HTTP 200 ``{"error": {"code": 400, "message": "Invalid URL"}}``
as ArcGIS does. Service names and the ``FeatureServer`` segment match
case-insensitively (ArcGIS Server's are). HTTP/1.1 keep-alive is on, one thread
per connection (``ThreadingHTTPServer``). The access log (logger
``ags_etl.server.access``, INFO, so ``ags-etl -v serve``) holds method, path,
status, size and time — never the query string or body, where tokens and
passwords travel.

No CORS headers are sent unless ``--cors`` allows origins (cors.py). A bind
address that is not loopback gets a warning (:func:`bind_warning`): the server
has no access control beyond ``--token-auth`` and speaks plain HTTP.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import signal
import socket
import sys
import tempfile
import threading
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import unquote, urlsplit

from ags_etl.errors import ConfigError
from ags_etl.server import catalog as catalog_routes
from ags_etl.server import cors, edits, metadata, portal, query
from ags_etl.server.auth import TokenStore, request_token
from ags_etl.server.catalog import Catalog, load_catalog
from ags_etl.server.faults import EditAnswerFaults, FaultInjector
from ags_etl.server.options import ServerOptions
from ags_etl.server.protocol import Params, RestError, invalid_url, json_bytes
from ags_etl.server.sources import find_sources, read_source, service_name
from ags_etl.server.storage import LayerStore

log = logging.getLogger(__name__)
access_log = logging.getLogger("ags_etl.server.access")

#: Largest POST body accepted (long objectIds lists are the big ones).
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = query.JSON_TYPE
    #: Close the connection without sending anything (--drop-edit-answers).
    drop: bool = False


class FeatureServerApp:
    """Routes requests to the layers; independent of the HTTP server, thread-safe."""

    def __init__(self, stores: list[LayerStore], options: ServerOptions, catalog: Catalog | None = None) -> None:
        self.stores = stores
        self.options = options
        #: Folders and services with several layers; without one, every store is a top-level service.
        self.catalog = catalog if catalog is not None else Catalog.of_plain(stores)
        self._by_name = {s.name.lower(): s for s in self.catalog.plain_stores}
        self.tokens = (
            TokenStore(options.token_user, options.token_password, options.token_ttl)
            if options.token_user is not None and options.token_password is not None
            else None
        )
        self.faults = FaultInjector(options.latency_ms, options.fail_rate, options.seed)
        self.edit_faults = EditAnswerFaults(options.drop_edit_answers, options.edit_answer_delay)
        #: Requests being answered now, the most at once, and all answered: GET /ags-etl/stats.
        self._in_flight = 0
        self._max_in_flight = 0
        self._requests = 0
        self._stats_lock = threading.Lock()

    def stats(self) -> dict[str, int]:
        """``requests`` answered or in progress, ``in_flight`` now, ``max_in_flight`` at any moment."""
        with self._stats_lock:
            return {"requests": self._requests, "in_flight": self._in_flight, "max_in_flight": self._max_in_flight}

    def handle(self, method: str, path: str, params: Params, auth_header: str | None, base_url: str) -> Response:
        """Answer one request. Never raises for a client error: those become error bodies."""
        if path.rstrip("/") == "/ags-etl/stats":  # the test server's own counters, not part of the REST API
            return Response(200, json_bytes(self.stats()), query.JSON_TYPE)
        with self._stats_lock:
            self._requests += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            return self._handle(method, path, params, auth_header, base_url)
        finally:
            with self._stats_lock:
                self._in_flight -= 1

    def _handle(self, method: str, path: str, params: Params, auth_header: str | None, base_url: str) -> Response:
        self.faults.delay()
        fmt_pretty = params.text("f", "json").strip().lower() == "pjson"
        try:
            body, content_type = self._route(method, path, params, auth_header, base_url)
        except RestError as err:
            return _error_response(err)
        if isinstance(body, edits.EditAnswer):
            drop = self.edit_faults.after_commit() if body.committed else False
            return Response(200, json_bytes(body.body, pretty=fmt_pretty), content_type, drop=drop)
        if isinstance(body, bytes):
            return Response(200, body, content_type)
        return Response(200, json_bytes(body, pretty=fmt_pretty), content_type)

    def _route(
        self, method: str, path: str, params: Params, auth_header: str | None, base_url: str
    ) -> tuple[Any, str]:
        parts = [unquote(p) for p in path.split("/") if p]
        low = [p.lower() for p in parts]
        if low[:1] == ["sharing"]:
            return self._portal(low, parts, params, auth_header, base_url), query.JSON_TYPE
        if low[:1] != ["arcgis"]:
            raise invalid_url()
        if low[1:] == ["rest", "info"]:
            return metadata.rest_info(self.options, base_url), query.JSON_TYPE
        if low[1:] == ["tokens", "generatetoken"]:
            return self._generate_token(method, params), query.JSON_TYPE
        if low[1:3] != ["rest", "services"]:
            raise invalid_url()
        rest = low[3:]
        resource = catalog_routes.resolve(self.catalog, rest)
        if resource is not None:
            return self._nested(resource, method, params, auth_header)
        if len(rest) not in (0, 2, 3, 4) or (rest and rest[1] != "featureserver"):
            raise invalid_url()
        store = None
        if rest:
            store = self._by_name.get(rest[0])
            if store is None:
                raise invalid_url()
        if len(rest) >= 3 and rest[2] not in ("0", "layers", edits.SERVICE_OPERATION):
            raise invalid_url()
        if len(rest) == 4 and (rest[2] != "0" or rest[3] not in ("query", *edits.LAYER_OPERATIONS)):
            raise invalid_url()
        if self.tokens is not None:
            self.tokens.check(request_token(params, auth_header))
        query.output_format(params)  # an unknown f= is refused on every resource
        if store is None:
            return catalog_routes.root(self.options, self.catalog), query.JSON_TYPE
        if len(rest) == 2:
            return metadata.service(self.options, store), query.JSON_TYPE
        if rest[2] == "layers":
            return metadata.layers(self.options, store), query.JSON_TYPE
        if rest[2] == edits.SERVICE_OPERATION:
            return edits.service_operation({0: store}, method, params, self.options), query.JSON_TYPE
        if len(rest) == 3:
            return metadata.layer(self.options, store), query.JSON_TYPE
        if rest[3] in edits.LAYER_OPERATIONS:
            return edits.layer_operation(store, 0, rest[3], method, params, self.options), query.JSON_TYPE
        self.faults.check_query()
        return query.run_query(store, params, self.options)

    def _nested(
        self, resource: catalog_routes.Resource, method: str, params: Params, auth_header: str | None
    ) -> tuple[Any, str]:
        """Folders, and services in a folder or with several layers (see catalog.py)."""
        if self.tokens is not None:
            self.tokens.check(request_token(params, auth_header))
        query.output_format(params)
        if resource.kind == "service-applyedits":
            assert resource.service is not None
            layers = {lyr.id: lyr.store for lyr in resource.service.layers}
            return edits.service_operation(layers, method, params, self.options), query.JSON_TYPE
        if resource.kind in edits.LAYER_OPERATIONS:
            assert resource.layer is not None
            answer = edits.layer_operation(resource.layer.store, resource.layer.id, resource.kind, method, params, self.options)
            return answer, query.JSON_TYPE
        if resource.kind == "query":
            self.faults.check_query()
        return catalog_routes.answer(self.catalog, resource, self.options, params)

    def _portal(
        self, low: list[str], parts: list[str], params: Params, auth_header: str | None, base_url: str
    ) -> dict[str, Any]:
        """``/sharing/rest/…``: portal items pointing at the served services (see portal.py)."""
        if self.tokens is not None:
            self.tokens.check(request_token(params, auth_header))
        query.output_format(params)
        return portal.route(self.catalog, low, parts, params, base_url)

    def _generate_token(self, method: str, params: Params) -> dict[str, Any]:
        if self.tokens is None:
            # An unsecured ArcGIS Server has no token service to speak of.
            raise RestError(400, "Unable to generate token.", ["Token based authentication is not enabled."])
        if method != "POST":
            # ArcGIS Server turns token generation by GET off by default: credentials stay out of URLs.
            raise RestError(405, "Method not supported.", ["Use POST to generate a token."])
        return self.tokens.generate(params)


def _error_response(err: RestError) -> Response:
    if err.http_status == 500:
        page = b"<html><head><title>500 Internal Server Error</title></head><body>Internal Server Error</body></html>"
        return Response(500, page, "text/html; charset=utf-8")
    if err.http_status == 502:
        return Response(502, b"502 Bad Gateway", "text/plain; charset=utf-8")
    return Response(err.http_status, json_bytes(err.body()), query.JSON_TYPE)


#: Answers this large or larger are gzipped for clients that accept it (as ArcGIS Server
#: does); level 1: most of the size gain for a fraction of the CPU of the default level.
GZIP_MIN_BYTES = 1024
GZIP_LEVEL = 1


def _accepts_gzip(header: str | None) -> bool:
    """True when an Accept-Encoding header lists gzip (or *) without q=0."""
    for part in (header or "").lower().split(","):
        coding, _, params = part.partition(";")
        if coding.strip() in ("gzip", "*") and params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            return True
    return False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, keep-alive clients
    # wait for the delayed ACK (~40 ms) on every request.
    disable_nagle_algorithm = True
    #: Seconds an idle keep-alive connection (and its thread) is kept.
    timeout = 300
    server: "_HTTPServer"
    server_version = "ags-etl-serve"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve("GET", b"")

    def do_POST(self) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            err = RestError(413, f"Request body must have a Content-Length of at most {MAX_BODY_BYTES} bytes", [])
            self._send(Response(413, json_bytes(err.body())))
            self.close_connection = True
            return
        body = self.rfile.read(length) if length else b""
        self._serve("POST", body)

    def do_OPTIONS(self) -> None:
        """CORS preflight: 204, with the Access-Control headers only for allowed origins."""
        self._send(Response(204, b""), preflight=True)

    def _serve(self, method: str, body: bytes) -> None:
        started = time.perf_counter()
        url = urlsplit(self.path)
        content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        form = body.decode("utf-8", "replace") if content_type in ("", "application/x-www-form-urlencoded") else ""
        host = self.headers.get("Host") or f"{self.server.display_host}:{self.server.server_address[1]}"
        try:
            response = self.server.app.handle(
                method, url.path, Params(url.query, form), self.headers.get("X-Esri-Authorization"), f"http://{host}"
            )
        except Exception as exc:  # a bug of ours: answer 500 and keep serving
            log.error("internal error on %s %s: %s\n%s", method, url.path, exc, traceback.format_exc())
            response = Response(500, json_bytes(RestError(500, f"Internal server error: {type(exc).__name__}").body()))
        if response.drop:
            # The lost-answer fault: the edit is committed, the client hears nothing.
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            access_log.info('%s "%s %s" dropped after commit', self.client_address[0], method, url.path)
            return
        self._send(response)
        access_log.info(
            '%s "%s %s" %d %d %.1fms',
            self.client_address[0],
            method,
            url.path,
            response.status,
            len(response.body),
            (time.perf_counter() - started) * 1000,
        )

    def _send(self, response: Response, *, preflight: bool = False) -> None:
        body = response.body
        gzipped = len(body) >= GZIP_MIN_BYTES and _accepts_gzip(self.headers.get("Accept-Encoding"))
        if gzipped:
            body = zlib.compress(body, GZIP_LEVEL, wbits=31)  # wbits 31: the gzip format
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(body)))
        if gzipped:
            self.send_header("Content-Encoding", "gzip")
        if preflight:
            self.send_header("Allow", cors.ALLOW_METHODS)
        for name, value in cors.headers(self.server.app.options.cors_origins, self.headers.get("Origin"), preflight=preflight):
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if body:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """http.server's own lines include the request line (query string, tokens): keep only our access log."""
        return

    def log_error(self, format: str, *args: Any) -> None:
        log.debug("malformed request from %s", self.client_address[0])


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], app: FeatureServerApp) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.app = app
        self.display_host = f"[{address[0]}]" if ":" in address[0] else address[0]
        super().__init__(address, _Handler)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer is routine; anything else is logged (without request data)."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            log.debug("connection from %s dropped: %s", client_address[0], type(exc).__name__)
            return
        log.error("error serving %s: %s\n%s", client_address[0], exc, traceback.format_exc())


def is_loopback(host: str) -> bool:
    """True when ``host`` (an address or a name) can only be reached from this machine."""
    text = host.strip().strip("[]")
    if text.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, None) if text else []
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


def bind_warning(host: str) -> str | None:
    """The warning to print when serving on ``host`` exposes the server to other machines, else None."""
    if is_loopback(host):
        return None
    shown = host if host.strip() else "all addresses"
    return (
        f"serving on {shown}: reachable from other machines; the server has no access control beyond "
        "--token-auth and speaks plain HTTP (data and tokens unencrypted); use --host 127.0.0.1 to keep it local"
    )


def load_stores(directory: Path, workdir: Path) -> list[LayerStore]:
    """Read every data file of ``directory`` into SQLite files under ``workdir``.

    Service names are file stems made ``[A-Za-z0-9_]``; a name already taken
    (``a-b.geojson`` and ``a_b.geojson``) gets ``_2``, ``_3``… in file-name order.
    Raises ConfigError naming the file that cannot be served.
    """
    paths = find_sources(directory)
    if not paths:
        raise ConfigError(
            f"no .geojson, .json, .shp or .parquet files in {str(directory)!r}; put data files there or pass another folder"
        )
    stores: list[LayerStore] = []
    used: set[str] = set()
    try:
        for path in paths:
            name = service_name(path)
            base, n = name, 2
            while name.lower() in used:
                name = f"{base}_{n}"
                n += 1
            if name != base:
                log.warning("%s: service name %r is taken, serving it as %r", path.name, base, name)
            used.add(name.lower())
            started = time.perf_counter()
            source = read_source(path, name)
            stores.append(LayerStore.create(source, workdir))
            log.info("%s: %d features as %r in %.1fs", path.name, source.count, name, time.perf_counter() - started)
    except BaseException:
        for store in stores:
            store.close()
        raise
    return stores


class _Stop(Exception):
    """Raised in the main thread by SIGTERM or SIGINT to leave serve_forever."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signum)


#: Default store folder of an editable server, inside the served folder (dot: not served itself).
STORE_DIR_NAME = ".ags_etl_serve"


def _workdir(directory: Path, options: ServerOptions) -> contextlib.AbstractContextManager[str]:
    """Where the stores go: a temp folder removed on exit, or the editable server's store folder."""
    if not options.editable:
        return tempfile.TemporaryDirectory(prefix="ags-etl-serve-")
    store_dir = Path(options.store_dir) if options.store_dir is not None else directory / STORE_DIR_NAME
    try:
        store_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the store folder {str(store_dir)!r}: {exc.strerror or exc}; pass a writable --store DIR"
        ) from exc
    return contextlib.nullcontext(str(store_dir))


@contextlib.contextmanager
def running_server(directory: Path, options: ServerOptions) -> Iterator[tuple[_HTTPServer, str]]:
    """Load the data and bind the socket; yields (server, base URL). Nothing is served until
    the caller runs ``serve_forever``; on exit the socket, connections and temp files go."""
    with _workdir(directory, options) as workdir:
        catalog = load_catalog(directory, Path(workdir), editable=options.editable)
        stores = catalog.stores
        try:
            app = FeatureServerApp(stores, options, catalog)
            try:
                server = _HTTPServer((options.host, options.port), app)
            except OSError as exc:
                raise ConfigError(
                    f"cannot listen on {options.host}:{options.port}: {exc.strerror or exc}; "
                    "pick another --port (0 picks a free one)"
                ) from exc
            try:
                port = server.server_address[1]
                yield server, f"http://{server.display_host}:{port}"
            finally:
                server.server_close()
        finally:
            for store in stores:
                store.close()


def serve(directory: Path, options: ServerOptions, ready: Callable[[str, int], None]) -> None:
    """Serve ``directory`` until Ctrl-C or SIGTERM. ``ready(base_url, layer_count)`` is
    called once the socket listens. Must run in the main thread (signal handling)."""
    # SIGINT too: a shell that starts a job in the background leaves SIGINT ignored.
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        with running_server(directory, options) as (server, base_url):
            ready(base_url, len(server.app.stores))
            server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, _Stop):
        log.info("stopped")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve_in_thread(directory: Path, options: ServerOptions) -> contextlib.AbstractContextManager[str]:
    """In-process server for benchmarks and debugging: yields the base URL, stops on exit."""

    @contextlib.contextmanager
    def _run() -> Iterator[str]:
        with running_server(directory, options) as (server, base_url):
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            try:
                yield base_url
            finally:
                server.shutdown()
                thread.join()

    return _run()
