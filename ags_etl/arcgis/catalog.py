"""Sources wider than one layer: a service, a folder, a services root or a portal item.

A pipeline job may name one layer URL (``…/FeatureServer/3``) or something that holds
several layers; :func:`expand_job` turns the latter into one job per layer:

* a **service** URL (``…/rest/services/[Folder/]Name/FeatureServer`` or ``MapServer``),
* a **folder** (``…/rest/services/Folder``) or the **services root** (``…/rest/services``):
  every FeatureServer and MapServer service under it (folders one level deep, as ArcGIS
  has them); other service types (ImageServer, GPServer …) are skipped,
* a **portal item** (``item: <32-hex id>``, ``portal:`` default ``https://www.arcgis.com``)
  of type "Feature Service" or "Map Service", whose ``url`` is a service or a layer URL.

Selection (``layers:``): an int selects the layer or table with that id, a string is a
case-insensitive ``fnmatch`` wildcard (or plain name) over layer and table names. A
selector matching nothing is an error listing what there is. Without ``layers:`` every
*layer* is read and tables are skipped (select a table by its id or name). Group layers,
raster and other non-feature layers of MapServer services are never selected.

Output paths: the sink path of a job that expands to several layers must hold ``{layer}``
(and may hold ``{service}``); the names filled in come from the server and pass through
:func:`sanitise_filename` first. Two layers whose filled paths would be the same
(case-insensitively) get ``_2``, ``_3`` … on the layer name, in server order.

Credentials: the client passed in carries the source's own auth (the runner builds one
client per source). A portal item whose service lives on another host than the portal is
refused when the source has credentials, so a token never travels to a host the user did
not name (ArcGIS Online's ``*.arcgis.com`` hosts count as one site).
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
import unicodedata
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from ags_etl.arcgis.auth import NoAuth
from ags_etl.arcgis.client import display_url
from ags_etl.errors import ArcGISError, ConfigError, ServiceError

if TYPE_CHECKING:
    from ags_etl.arcgis.client import ArcGISClient
    from ags_etl.spec import JobSpec

UrlKind = Literal["layer", "service", "folder", "root"]

#: Service types whose layers can be queried for features.
FEATURE_SERVICE_TYPES = ("FeatureServer", "MapServer")
#: Every ArcGIS service type segment, lower case (to tell a service URL from a folder).
_SERVICE_TYPES = frozenset(
    t.lower()
    for t in (
        "FeatureServer", "MapServer", "ImageServer", "GPServer", "GeocodeServer", "GeometryServer",
        "GlobeServer", "GeoDataServer", "NAServer", "MobileServer", "SceneServer", "StreamServer",
        "VectorTileServer", "SchematicsServer", "KmlServer", "NetworkDiagramServer", "UtilityNetworkServer",
        "VersionManagementServer", "WFSServer", "WMSServer", "WMTSServer",
    )
)  # fmt: skip
#: Portal item types whose ``url`` is a feature or map service.
PORTAL_SERVICE_TYPES = ("Feature Service", "Map Service")
DEFAULT_PORTAL = "https://www.arcgis.com"
#: Layer types that hold features or rows; group, raster, annotation … layers do not.
_QUERYABLE_TYPES = frozenset({"feature layer", "table"})
_ITEM_ID = re.compile(r"[0-9a-fA-F]{32}")
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
PLACEHOLDERS = ("service", "layer")

#: Characters no file system of Windows, macOS or Linux takes in a name.
_FORBIDDEN = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]')
_WINDOWS_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"] + [f"{p}{n}" for p in ("COM", "LPT") for n in "123456789¹²³"]
)
#: Longest sanitised name in UTF-8 bytes: room for a suffix and an extension within 255.
MAX_NAME_BYTES = 120


# --------------------------------------------------------------------------- pure helpers


def sanitise_filename(name: str) -> str:
    """A server-given name made safe as one file-name component, readable and deterministic.

    NFC-normalised; control characters (NUL included), ``/ \\ : * ? " < > |`` and runs of
    whitespace become ``_``; leading and trailing dots, spaces and ``_`` go (no ``..``, no
    hidden files, nothing Windows would trim); Windows device names (``CON``, ``nul.txt``,
    ``COM1`` …) get ``_`` after the device name (``CON_``, ``nul_.txt``); a name longer than :data:`MAX_NAME_BYTES` UTF-8 bytes
    is cut and ends with ``_`` + 8 hex digits of its SHA-1, so long names stay distinct.
    An empty result is ``unnamed``. Idempotent: ``sanitise_filename(sanitise_filename(x))
    == sanitise_filename(x)``. Letters of any script are kept.
    """
    text = unicodedata.normalize("NFC", name)
    text = _FORBIDDEN.sub("_", text)
    text = re.sub(r"\s+", "_", text)
    text = re.sub(r"_{2,}", "_", text)
    text = text.strip("._ ")
    if not text:
        return "unnamed"
    stem, dot, rest = text.partition(".")
    if stem.upper() in _WINDOWS_RESERVED:  # Windows reserves "CON" with any extension too
        text = f"{stem}_{dot}{rest}"
    encoded = text.encode("utf-8")
    if len(encoded) > MAX_NAME_BYTES:
        digest = hashlib.sha1(encoded).hexdigest()[:8]
        head = encoded[: MAX_NAME_BYTES - 9].decode("utf-8", "ignore").rstrip("._ ")
        text = f"{head}_{digest}"
    return text


def fill_path(template: str, *, service: str | None = None, layer: str | None = None) -> str:
    """``template`` with ``{service}`` and ``{layer}`` replaced by sanitised names.

    Raises ConfigError for any other ``{…}`` placeholder, or for a placeholder whose value
    is not known (``service``/``layer`` None).
    """
    values = {"service": service, "layer": layer}

    def replace(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise ConfigError(
                f"sink path {template!r} has an unknown placeholder {{{key}}}; "
                f"use {{service}} and {{layer}} only"
            )
        value = values[key]
        if value is None:
            raise ConfigError(f"sink path {template!r} uses {{{key}}}, but the source gives no {key} name")
        return sanitise_filename(value)

    return _PLACEHOLDER.sub(replace, template)


def placeholders(template: str | None) -> set[str]:
    """The ``{…}`` names used in a sink path (empty for None)."""
    return set() if template is None else set(_PLACEHOLDER.findall(template))


def classify_url(url: str) -> UrlKind:
    """What an ArcGIS REST URL points at, from its path alone.

    ``…/rest/services`` → root; ``…/rest/services/Folder`` → folder;
    ``…/<Name>/FeatureServer`` (any service type) → service; ``…/FeatureServer/<id>`` or
    ``…/MapServer/<id>`` → layer. Case-insensitive; a trailing ``/`` and a query string
    are ignored. Raises ConfigError for anything else (``…/query``, ``…/layers`` …).
    """
    segments = _segments(url)
    low = [s.lower() for s in segments]
    if len(low) >= 2 and low[-1].isdigit() and low[-2] in _SERVICE_TYPES:
        return "layer"
    if low and low[-1] in _SERVICE_TYPES:
        return "service"
    if low[-2:] == ["rest", "services"]:
        return "root"
    if len(low) >= 3 and low[-3:-1] == ["rest", "services"]:
        return "folder"
    raise ConfigError(
        f"source url {_display(url)!r} is not a layer, service, folder or services root URL; "
        "give …/rest/services, …/rest/services/FOLDER, …/NAME/FeatureServer or …/NAME/FeatureServer/ID"
    )


def service_name(url: str) -> str:
    """``Folder/Name`` of a service or layer URL (the path between ``rest/services/`` and the type)."""
    segments = _segments(url)
    low = [s.lower() for s in segments]
    end = next((i for i in range(len(low) - 1, -1, -1) if low[i] in _SERVICE_TYPES), None)
    if end is None:
        raise ConfigError(f"{_display(url)!r} is not a service or layer URL; it has no …/FeatureServer segment")
    start = 0
    for i in range(end - 1):
        if low[i : i + 2] == ["rest", "services"]:
            start = i + 2
    name = "/".join(segments[start:end])
    return name if name else segments[end - 1] if end > 0 else "service"


def is_queryable(layer: dict[str, Any]) -> bool:
    """A layer or table entry of a service's JSON that can be queried for features.

    Group layers (non-empty ``subLayerIds``) and typed non-feature layers (raster,
    annotation …) are not; entries without ``type`` (servers before 10.x) are, unless grouped.
    """
    if layer.get("subLayerIds"):
        return False
    kind = layer.get("type")
    return kind is None or str(kind).lower() in _QUERYABLE_TYPES


def match_layers(layers: list[dict[str, Any]], selectors: list[int | str] | None) -> list[dict[str, Any]]:
    """The entries of ``layers`` (dicts with ``id`` and ``name``) that ``selectors`` choose.

    An int matches the ``id``; a string is a case-insensitive fnmatch pattern over
    ``name``. The result keeps the order of ``layers``, each entry once. ``None`` selects
    every entry not marked ``"table": True``. Raises ConfigError when a selector matches
    nothing, listing the available ``id: name`` pairs.
    """
    if selectors is None:
        return [layer for layer in layers if not layer.get("table")]
    chosen: set[int] = set()
    for selector in selectors:
        hits = [i for i, layer in enumerate(layers) if _selects(selector, layer)]
        if not hits:
            available = ", ".join(f"{layer.get('id')}: {layer.get('name')!r}" for layer in layers) or "none"
            kind = "id" if isinstance(selector, int) else "name pattern"
            raise ConfigError(
                f"layers: {kind} {selector!r} matches no layer; available layers and tables are {available}; "
                "use one of these ids, names or a wildcard such as 'Parcel*'"
            )
        chosen.update(hits)
    return [layer for i, layer in enumerate(layers) if i in chosen]


def _selects(selector: int | str, layer: dict[str, Any]) -> bool:
    if isinstance(selector, bool):  # YAML true/false is no layer id
        return False
    if isinstance(selector, int):
        return layer.get("id") == selector
    name = str(layer.get("name") or "")
    return fnmatch.fnmatchcase(name.casefold(), selector.casefold())


def portal_item_url(portal: str | None, item: str) -> str:
    """``<portal>/sharing/rest/content/items/<item>``; ``portal`` may already end in ``/sharing[/rest]``.

    Raises ConfigError unless ``item`` is 32 hex digits (portal item ids are) — this also
    keeps the id from changing the path.
    """
    if not _ITEM_ID.fullmatch(item):
        raise ConfigError(f"item {item!r} is not a portal item id; ids are 32 hex digits, as in the item page's URL")
    base = (portal or DEFAULT_PORTAL).strip().rstrip("/")
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"portal {_display(base)!r} is not an http(s) URL; give e.g. https://www.arcgis.com or https://host/portal")
    path = re.sub(r"(?i)/sharing(/rest)?$", "", parts.path)
    return urlunsplit((parts.scheme, parts.netloc, f"{path}/sharing/rest/content/items/{item.lower()}", "", ""))


def same_site(a: str, b: str) -> bool:
    """Whether credentials for URL ``a`` may be sent to URL ``b``: the same host, or both on arcgis.com."""
    ha, hb = (urlsplit(u).hostname or "" for u in (a, b))
    if ha == hb:
        return True
    return all(h == "arcgis.com" or h.endswith(".arcgis.com") for h in (ha, hb))


def _segments(url: str) -> list[str]:
    return [s for s in urlsplit(url.strip()).path.split("/") if s]


def _display(url: str) -> str:
    """For messages: no query string, no user:password@ (display_url)."""
    try:
        return display_url(url.strip())
    except ValueError:  # a port that is no number
        return urlsplit(url.strip()).path


def _base(url: str) -> str:
    """URL without query string or trailing slash (credentials in the host part are kept: they are the user's)."""
    parts = urlsplit(url.strip())
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")).rstrip("/")


# --------------------------------------------------------------------------- the walk


@dataclass(frozen=True)
class LayerRef:
    """One layer found by the walk: its URL, its service's ``Folder/Name`` and its own name."""

    url: str
    service: str
    layer: str
    id: int


def expand_job(job: JobSpec, client: ArcGISClient) -> list[JobSpec]:
    """One job per layer that ``job``'s source names (see the module docstring).

    A job whose URL ends in ``/<digits>`` without ``layers:`` comes back unchanged, with
    no request — unless its sink path uses ``{layer}``/``{service}``, which are filled
    from the layer's metadata. Expanded jobs have ``source.url`` = the layer URL,
    ``layers``/``item``/``portal`` cleared, the sink path filled, and the name
    ``<job>/<service>/<layer>`` (sanitised names, so unique like the paths).
    Raises ConfigError for a bad URL, selector or sink path (naming the job and the fix)
    and ArcGISError for what the servers answer.
    """
    source = job.source
    template = job.sink.path
    used = placeholders(template)
    if source.item is not None:
        url = resolve_item(client, source.item, source.portal)
    elif source.url is not None:
        url = source.url
    else:
        raise ConfigError(f"job {job.name!r}: source needs url: or item:")
    kind = classify_url(url)
    if kind == "layer" and source.layers is not None:
        raise ConfigError(
            f"job {job.name!r}: layers: {source.layers!r} needs a service, folder or services root URL, "
            f"but {_display(url)!r} is one layer; drop layers: or give the service URL"
        )
    if kind == "layer" and source.item is None and not used:
        return [job]
    try:
        refs = find_layers(client, url, source.layers)
    except ConfigError as exc:
        raise ConfigError(f"job {job.name!r}: {exc}") from exc
    if len(refs) > 1 and "layer" not in used:
        raise ConfigError(
            f"job {job.name!r} reads {len(refs)} layers but its sink path {template!r} has no {{layer}}, "
            "so every layer would go to the same file; put {layer} (and {service}) in sink.path, "
            "e.g. out/{service}/{layer}.parquet"
        )
    rename = source.item is not None or kind != "layer"
    return [_job_for(job, ref, layer, path, rename) for ref, (layer, path) in zip(refs, _unique_names(job, refs))]


def _unique_names(job: JobSpec, refs: list[LayerRef]) -> list[tuple[str, str | None]]:
    """(sanitised layer name, filled sink path) per layer; a layer whose path is taken
    (case-insensitively: Windows and macOS file systems) gets ``_2``, ``_3`` … on its name."""
    template = job.sink.path
    taken: set[str] = set()
    out: list[tuple[str, str | None]] = []
    for ref in refs:
        base = sanitise_filename(ref.layer)
        layer, n = base, 2
        if template is None:
            out.append((layer, None))
            continue
        path = fill_path(template, service=ref.service, layer=layer)
        while path.casefold() in taken and "layer" in placeholders(template):
            layer = f"{base}_{n}"
            path = fill_path(template, service=ref.service, layer=layer)
            n += 1
        if path.casefold() in taken:
            raise ConfigError(
                f"job {job.name!r}: layer {ref.layer!r} of service {ref.service!r} and another layer would both "
                f"be written to {path!r}; put {{layer}} in sink.path"
            )
        taken.add(path.casefold())
        out.append((layer, path))
    return out


def _job_for(job: JobSpec, ref: LayerRef, layer: str, path: str | None, rename: bool) -> JobSpec:
    source = job.source.model_copy(update={"url": ref.url, "layers": None, "item": None, "portal": None})
    update: dict[str, Any] = {"source": source}
    if path is not None:
        update["sink"] = job.sink.model_copy(update={"path": path})
    if rename:
        update["name"] = f"{job.name}/{sanitise_filename(ref.service)}/{layer}"
    return job.model_copy(update=update)


def resolve_item(client: ArcGISClient, item: str, portal: str | None) -> str:
    """The service or layer URL of portal item ``item``.

    Raises ConfigError for a malformed id or portal, for an item that is not a feature or
    map service, and (when the client has credentials) for a service on another site
    than the portal; ArcGISError when the portal does not know the item.
    """
    item_url = portal_item_url(portal, item)
    try:
        body = client.get(item_url)
    except ServiceError as exc:
        raise ArcGISError(
            f"portal item {item!r} at {_display(item_url)!r} does not exist or is not shared with this source "
            f"({exc}); check the id and portal:, or give auth: for a private item"
        ) from exc
    kind = body.get("type")
    if kind not in PORTAL_SERVICE_TYPES:
        raise ConfigError(
            f"portal item {item!r} ({body.get('title')!r}) is a {kind!r}, not a feature layer source; "
            f"items of type {' or '.join(map(repr, PORTAL_SERVICE_TYPES))} can be read; use that item's id "
            "or its service URL"
        )
    url = body.get("url")
    if not isinstance(url, str) or not url.strip():
        raise ArcGISError(f"portal item {item!r} ({body.get('title')!r}) has no service url; give the service URL as url:")
    url = _base(url)
    if urlsplit(url).scheme not in ("http", "https"):
        raise ArcGISError(f"portal item {item!r} has url {_display(url)!r}, which is not http(s); give the service URL as url:")
    if not isinstance(client.auth, NoAuth) and not same_site(item_url, url):
        raise ConfigError(
            f"portal item {item!r} points to {_display(url)!r}, on another host than the portal; this source's "
            "credentials are not sent there: give that service URL as url: with its own auth:"
        )
    return url


def find_layers(client: ArcGISClient, url: str, selectors: list[int | str] | None) -> list[LayerRef]:
    """The layers that ``selectors`` choose under ``url`` (any :func:`classify_url` kind).

    A selector must match somewhere in the walk (not in every service). Raises
    ConfigError for a selector matching nothing, listing what there is.
    """
    kind = classify_url(url)
    base = _base(url)
    if kind == "layer":
        body = client.get(base)
        name = str(body.get("name") or base.rsplit("/", 1)[-1])
        lid = int(base.rsplit("/", 1)[-1])
        return [LayerRef(base, service_name(base), name, lid)]
    if kind == "service":
        services = [base]
    else:
        services = _services_under(client, base, kind)
    entries: list[tuple[str, dict[str, Any]]] = []
    for service_url in services:
        entries.extend((service_url, entry) for entry in _service_layers(client, service_url))
    if selectors is None:
        chosen = [(s, e) for s, e in entries if not e.get("table")]
    else:
        for selector in selectors:
            if not any(_selects(selector, e) for _, e in entries):
                match_layers([e for _, e in entries], [selector])  # raises, listing the layers
        chosen = [(s, e) for s, e in entries if any(_selects(sel, e) for sel in selectors)]
    return [LayerRef(f"{s}/{e['id']}", service_name(s), str(e.get("name") or e["id"]), int(e["id"])) for s, e in chosen]


def _services_under(client: ArcGISClient, base: str, kind: UrlKind) -> list[str]:
    """Service URLs (FeatureServer and MapServer) of a services root (with its folders) or folder."""
    root = base if kind == "root" else base.rsplit("/", 1)[0]
    listings = [client.get(base)]
    if kind == "root":
        for folder in listings[0].get("folders") or []:
            listings.append(client.get(f"{root}/{quote(str(folder))}"))
    found: dict[str, str] = {}  # service name → type, in listing order
    for listing in listings:
        for svc in listing.get("services") or []:
            if not isinstance(svc, dict) or svc.get("type") not in FEATURE_SERVICE_TYPES:
                continue
            # A service with feature access is listed twice, as MapServer and FeatureServer:
            # same layers, same data; read it once, through the FeatureServer.
            name = str(svc.get("name", ""))
            if found.get(name) != "FeatureServer":
                found[name] = str(svc["type"])
    # ArcGIS lists a folder's services as "Folder/Name".
    return [f"{root}/{'/'.join(quote(p) for p in name.split('/'))}/{stype}" for name, stype in found.items()]


def _service_layers(client: ArcGISClient, service_url: str) -> list[dict[str, Any]]:
    """The queryable layers (then tables, marked ``"table": True``) of one service, by id."""
    body = client.get(service_url)
    out: list[dict[str, Any]] = []
    for key, is_table in (("layers", False), ("tables", True)):
        for entry in body.get(key) or []:
            if isinstance(entry, dict) and isinstance(entry.get("id"), int) and is_queryable(entry):
                out.append({**entry, "table": is_table})
    return out
