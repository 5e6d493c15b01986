"""Start Koop (a third-party GeoServices REST server, Node.js) on GeoJSON files for tests.

Koop is written by other people than ags_etl's own local FeatureServer, so pulling from it
checks the extractor against an independent reading of the ArcGIS REST API. It is read-only.
Versions are pinned in ``tests/koop/package.json`` and ``package-lock.json``:
@koopjs/koop-core 10.4.19 with @koopjs/provider-file-geojson 2.2.0 (output-geoservices 8.1.25,
featureserver 9.3.0, winnow 5.0.4). Install once with::

    npm ci --omit=optional --prefix tests/koop

``--omit=optional`` skips the native ``farmhash`` build (auto-generated object ids would then
differ between machines; ``write_koop_geojson`` gives every feature its own OBJECTID anyway).

Usage::

    write_koop_geojson(features, tmp / "parks.geojson", max_record_count=10, date_fields={"OPENED"})
    with koop_server(tmp) as base:
        layer = koop_layer_url(base, "parks")  # .../file-geojson/rest/services/parks/FeatureServer/0

Where Koop differs from ArcGIS Server (see docs/reference/koop.md): it never enforces
maxRecordCount, ``exceededTransferLimit`` only means "more rows after this page" when
``resultRecordCount`` is given, rows come in file order unless ``orderByFields`` is set, and
multipolygon holes are listed before their exterior ring.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

#: Folder holding server.js, package.json and package-lock.json (and node_modules once installed).
KOOP_DIR = Path(__file__).resolve().parent / "koop"
NPM_CI_COMMAND = "npm ci --omit=optional --prefix tests/koop"
#: Koop answers /status about 0.6 s after start on a 2-core machine; allow for a slow CI runner.
STARTUP_TIMEOUT_S = 20.0
#: Packages that must be present in node_modules for server.js to start.
REQUIRED_PACKAGES = ("@koopjs/koop-core", "@koopjs/provider-file-geojson")
#: Koop field type names (metadata.fields[].type) by Python value kind.
KOOP_INTEGER, KOOP_DOUBLE, KOOP_STRING, KOOP_DATE = "Integer", "Double", "String", "Date"
#: Environment variables that would let configuration leak into the server; removed before start.
#: (node-config reads NODE_CONFIG / NODE_ENV; the file provider reads DATA_DIR as a fallback.)
_SCRUBBED_ENV = ("NODE_CONFIG", "NODE_ENV", "NODE_APP_INSTANCE", "DATA_DIR", "KOOP_LOG_LEVEL", "LOG_LEVEL")


class KoopUnavailableError(RuntimeError):
    """Koop cannot be started here: ``node`` is missing or ``tests/koop/node_modules`` is not installed."""


class KoopStartError(RuntimeError):
    """Koop was launched but did not answer ``GET /status`` with ``{"success": true}`` in time."""


def node_executable() -> str | None:
    """Return the path of ``node`` on PATH, or None when Node.js is not installed."""
    return shutil.which("node")


def koop_layer_url(base_url: str, stem: str) -> str:
    """URL of the FeatureServer layer Koop serves for ``<data dir>/<stem>.geojson``."""
    return f"{base_url}/file-geojson/rest/services/{stem}/FeatureServer/0"


def _free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _check_installed(koop_dir: Path) -> str:
    """Return the node executable; raise KoopUnavailableError naming what is missing and the fix."""
    node = node_executable()
    if node is None:
        raise KoopUnavailableError(
            "Koop tests need Node.js: no `node` on PATH. Install Node.js 18+ and run "
            f"`{NPM_CI_COMMAND}` from the repository root."
        )
    missing = [pkg for pkg in REQUIRED_PACKAGES if not (koop_dir / "node_modules" / pkg / "package.json").is_file()]
    if missing:
        raise KoopUnavailableError(
            f"Koop's npm packages are not installed: {', '.join(missing)} missing from "
            f"{koop_dir / 'node_modules'}. Run `{NPM_CI_COMMAND}` from the repository root."
        )
    return node


def _tail(path: Path, limit: int = 4000) -> str:
    text = path.read_text(encoding="utf-8", errors="replace")
    return text[-limit:] if text.strip() else "(no output)"


@contextmanager
def koop_server(
    data_dir: Path,
    *,
    koop_dir: Path = KOOP_DIR,
    log_level: str = "warn",
    startup_timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Run Koop on the ``*.geojson`` files of ``data_dir``; yield its base URL ``http://127.0.0.1:PORT``.

    The server listens on 127.0.0.1 only, on a port picked by binding to port 0. It runs with
    ``cwd=koop_dir``; server.js turns ``data_dir`` into a path relative to that cwd because
    provider-file-geojson 2.2.0 joins its data dir onto the cwd. ``NODE_CONFIG_DIR`` points at a
    fresh empty folder so no ``config/*.json`` can override options (koop-core 10.4.19 merges
    node-config over its constructor options). The process is terminated on exit (killed
    after 5 s if it does not stop).

    Raises KoopUnavailableError when ``node`` or the npm packages are missing (the message gives
    the ``npm ci`` command), KoopStartError when the server does not become ready within
    ``startup_timeout_s`` (the message includes the server's output), and FileNotFoundError for
    a missing ``data_dir``.
    """
    data_dir = Path(data_dir).resolve()
    if not data_dir.is_dir():
        raise FileNotFoundError(f"Koop data directory {data_dir} does not exist; create it and write *.geojson files")
    node = _check_installed(koop_dir)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="koop-") as scratch_name:
        scratch = Path(scratch_name)
        config_dir = scratch / "config"
        config_dir.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        env["NODE_CONFIG_DIR"] = str(config_dir)
        env["SUPPRESS_NO_CONFIG_WARNING"] = "1"
        log_path = scratch / "koop.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [node, str(koop_dir / "server.js"), str(data_dir), str(port), log_level],
                cwd=koop_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait_ready(proc, base_url, log_path, startup_timeout_s)
            yield base_url
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def _wait_ready(proc: subprocess.Popen[bytes], base_url: str, log_path: Path, timeout_s: float) -> None:
    """Poll ``GET /status`` until it answers ``{"success": true}``; raise KoopStartError otherwise."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            raise KoopStartError(
                f"Koop exited with code {code} before answering {base_url}/status; output:\n{_tail(log_path)}"
            )
        try:
            response = requests.get(f"{base_url}/status", timeout=2)
            if response.status_code == 200 and response.json() == {"success": True}:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]!r}"
        except (requests.ConnectionError, requests.Timeout, ValueError) as exc:
            last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.1)
    raise KoopStartError(
        f"Koop did not answer {base_url}/status within {timeout_s} s (last: {last_error}); output:\n{_tail(log_path)}"
    )


# --------------------------------------------------------------------------- data files


def _as_geojson_feature(feature: Any) -> Mapping[str, Any]:
    """A GeoJSON-like mapping for a dict, a fiona.Feature or anything with ``__geo_interface__``."""
    # __geo_interface__ first: a fiona.Feature is also a Mapping, but its values are fiona
    # objects that json cannot write.
    interface = getattr(feature, "__geo_interface__", None)
    if isinstance(interface, Mapping):
        return interface
    if isinstance(feature, Mapping):
        return feature
    raise TypeError(f"cannot read {type(feature).__name__} as a GeoJSON feature: expected a mapping or __geo_interface__")


def _geometry_json(geometry: Any) -> Any:
    """GeoJSON geometry (a mapping, or None) from a mapping, a shapely/fiona geometry or None."""
    if geometry is None:
        return None
    interface = getattr(geometry, "__geo_interface__", None)
    if isinstance(interface, Mapping):
        return dict(interface)
    if isinstance(geometry, Mapping):
        return dict(geometry)
    raise TypeError(f"cannot write geometry of type {type(geometry).__name__} to GeoJSON")


def _date_json(name: str, oid: int, value: Any) -> str | int | None:
    """Normalise a date value to what Koop parses with ``new Date(value)``.

    datetime (timezone-aware) → ISO 8601 UTC with milliseconds and ``Z``; date → midnight UTC;
    int → epoch milliseconds unchanged; ISO string → parsed and rewritten as UTC. Naive
    datetimes are refused: their instant is unknown.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"date field {name!r} of OBJECTID {oid} holds a boolean {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value) if "T" in value else dt.date.fromisoformat(value)
        except ValueError as exc:
            raise ValueError(
                f"date field {name!r} of OBJECTID {oid} holds {value!r}, not an ISO 8601 date; "
                "pass a datetime, a date, epoch milliseconds or an ISO string"
            ) from exc
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"date field {name!r} of OBJECTID {oid} holds the naive datetime {value.isoformat()}; "
                "give it a timezone (e.g. tzinfo=datetime.timezone.utc)"
            )
        return value.astimezone(dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return f"{value.isoformat()}T00:00:00.000Z"
    raise TypeError(f"date field {name!r} of OBJECTID {oid} holds {type(value).__name__} {value!r}")


def _infer_type(name: str, values: list[Any]) -> str:
    """Koop type of a non-date property from all its non-null values (Koop itself samples one feature)."""
    present = [v for v in values if v is not None]
    if not present:
        return KOOP_STRING
    if all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return KOOP_INTEGER
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return KOOP_DOUBLE
    if all(isinstance(v, str) for v in present):
        return KOOP_STRING
    kinds = sorted({type(v).__name__ for v in present})
    raise TypeError(
        f"property {name!r} mixes value types {kinds}; pass field_types={{{name!r}: 'String'|'Double'|...}} "
        "and values of that type"
    )


def write_koop_geojson(
    features: Iterable[Any],
    path: Path,
    *,
    max_record_count: int,
    date_fields: Collection[str] = (),
    id_field: str = "OBJECTID",
    field_types: Mapping[str, str] | None = None,
) -> Path:
    """Write ``features`` as a GeoJSON FeatureCollection that Koop serves faithfully; return ``path``.

    ``features``: GeoJSON-like mappings (or fiona features / objects with ``__geo_interface__``)
    whose ``geometry`` is a GeoJSON mapping, a shapely geometry or None. Every feature must carry
    a unique integer ``id_field`` property: without ``metadata.idField`` Koop invents 31-bit hash
    ids. Top-level ``metadata`` declares ``idField``, ``maxRecordCount`` and every field with its
    type: ``date_fields`` become ``Date`` (values written as ISO 8601 UTC strings, see
    ``_date_json``), the others Integer/Double/String from all their values unless
    ``field_types`` names them (Koop would otherwise guess from the first feature only and make
    epoch milliseconds a 32-bit Integer). Properties missing from a feature are written as null.
    NaN/Infinity are refused (not JSON). The file is written beside ``path`` and renamed.
    """
    if isinstance(max_record_count, bool) or not isinstance(max_record_count, int) or max_record_count <= 0:
        raise ValueError(f"max_record_count must be a positive integer, got {max_record_count!r}")
    path = Path(path)
    if path.suffix != ".geojson":
        raise ValueError(f"Koop's file provider serves <name>.geojson files; {path.name!r} has another extension")
    rows: list[tuple[Any, dict[str, Any]]] = []
    names: list[str] = []
    seen_oids: set[int] = set()
    for index, raw in enumerate(features):
        feature = _as_geojson_feature(raw)
        props = dict(feature.get("properties") or {})
        oid = props.get(id_field)
        if isinstance(oid, bool) or not isinstance(oid, int):
            raise ValueError(f"feature #{index} has {id_field}={oid!r}; every feature needs an integer {id_field}")
        if oid in seen_oids:
            raise ValueError(f"feature #{index} repeats {id_field}={oid}; object ids must be unique")
        seen_oids.add(oid)
        for key in props:
            if key not in names:
                names.append(key)
        rows.append((_geometry_json(feature.get("geometry")), props))
    unknown_dates = set(date_fields) - set(names)
    if unknown_dates:
        raise ValueError(f"date_fields {sorted(unknown_dates)} are not properties of any feature; known: {names}")

    types: dict[str, str] = {}
    for name in names:
        if field_types is not None and name in field_types:
            types[name] = field_types[name]
        elif name in date_fields:
            types[name] = KOOP_DATE
        elif name == id_field:
            types[name] = KOOP_INTEGER
        else:
            types[name] = _infer_type(name, [props.get(name) for _, props in rows])

    out_features = []
    for geometry, props in rows:
        oid = props[id_field]
        properties = {}
        for name in names:
            value = props.get(name)
            if types[name] == KOOP_DATE:
                value = _date_json(name, oid, value)
            elif isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"property {name!r} of {id_field} {oid} is {value!r}, which JSON cannot hold; use None")
            properties[name] = value
        out_features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    collection = {
        "type": "FeatureCollection",
        "metadata": {
            "idField": id_field,
            "maxRecordCount": max_record_count,
            "fields": [{"name": name, "type": types[name]} for name in names],
        },
        "features": out_features,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(collection, handle, ensure_ascii=False, allow_nan=False)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path
