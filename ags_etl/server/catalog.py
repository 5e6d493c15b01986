"""Folders and services with several layers, for ``ags-etl serve``.

Layout of the served folder ``DIR`` (names match case-insensitively in URLs)::

    DIR/roads.geojson                  service  roads            layer 0 (named "roads")
    DIR/Parcels.FeatureServer/         service  Parcels          one layer per data file in it,
        a_lots.geojson                                             ids 0, 1 … in file-name order,
        b_owners.geojson                                           named by the file's stem as is
    DIR/Hydro/                         folder   Hydro
        rivers.geojson                 service  Hydro/rivers     layer 0
        Lakes.FeatureServer/…          service  Hydro/Lakes      layers 0..n

Folders are one level deep, as ArcGIS Server has them; deeper folders are skipped with a
warning. Service and folder names are ``[A-Za-z0-9_]`` (other characters become ``_``; a
taken name gets ``_2``, ``_3`` …); top-level services and folders share one namespace.
A data file of a ``.FeatureServer`` folder whose geometries are all null is a table
(listed under ``tables``, with its id in the same sequence). Layer names in such a
service are the file stems unchanged — spaces, unicode and punctuation included — so
clients meet names that need care before they become file names.

Top-level single files keep the original routes of :mod:`ags_etl.server.app`; this module
answers for folders and for services under a folder or with a ``.FeatureServer`` folder.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ags_etl.errors import ConfigError
from ags_etl.server import metadata, query
from ags_etl.server.options import ServerOptions
from ags_etl.server.protocol import Params, invalid_url
from ags_etl.server.sources import find_sources, service_name
from ags_etl.server.storage import LayerStore, open_store, store_folder

log = logging.getLogger(__name__)

#: Edit operations (lower case) routed to edits.py by app.py: Resource.kind is the operation's name.
LAYER_EDITS = ("applyedits", "addfeatures", "updatefeatures", "deletefeatures")
SERVICE_EDITS = "applyedits"

#: Suffix (any case) of a folder that is one service with several layers.
SERVICE_DIR_SUFFIX = ".featureserver"


@dataclass(frozen=True)
class ServedLayer:
    """One layer (or table) of a service: its id, its name as clients see it, its data."""

    id: int
    name: str
    store: LayerStore

    @property
    def is_table(self) -> bool:
        return self.store.geometry_type is None


@dataclass
class ServedService:
    """A FeatureServer: ``name`` is ``Svc`` or ``Folder/Svc``. ``plain`` marks a top-level
    single file, which the original routes of app.py serve."""

    name: str
    layers: list[ServedLayer]
    plain: bool = False

    def layer(self, layer_id: int) -> ServedLayer | None:
        return next((lyr for lyr in self.layers if lyr.id == layer_id), None)


@dataclass
class Catalog:
    """Every served folder and service; close it to free the stores."""

    folders: list[str] = field(default_factory=list)
    services: list[ServedService] = field(default_factory=list)

    @classmethod
    def of_plain(cls, stores: list[LayerStore]) -> Catalog:
        """Every store a top-level single-layer service named like the store."""
        return cls(services=[ServedService(s.name, [ServedLayer(0, s.name, s)], plain=True) for s in stores])

    @property
    def stores(self) -> list[LayerStore]:
        return [lyr.store for svc in self.services for lyr in svc.layers]

    @property
    def plain_stores(self) -> list[LayerStore]:
        """Stores of the top-level single-file services (served by app.py's own routes)."""
        return [svc.layers[0].store for svc in self.services if svc.plain]

    def service(self, name: str) -> ServedService | None:
        low = name.lower()
        return next((svc for svc in self.services if svc.name.lower() == low), None)

    def folder(self, name: str) -> str | None:
        low = name.lower()
        return next((f for f in self.folders if f.lower() == low), None)

    def close(self) -> None:
        for store in self.stores:
            store.close()


# --------------------------------------------------------------------------- loading


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name) or "service"


def _unique(name: str, used: set[str], what: str) -> str:
    base, n = name, 2
    while name.lower() in used:
        name = f"{base}_{n}"
        n += 1
    if name != base:
        log.warning("%s name %r is taken, serving it as %r", what, base, name)
    used.add(name.lower())
    return name


def _is_service_dir(path: Path) -> bool:
    return path.is_dir() and path.name.lower().endswith(SERVICE_DIR_SUFFIX) and len(path.name) > len(SERVICE_DIR_SUFFIX)


def load_catalog(directory: Path, workdir: Path, *, editable: bool = False) -> Catalog:
    """Read every data file under ``directory`` (see the module docstring) into stores under ``workdir``.

    ``editable``: editable stores, one per layer in ``workdir/<store_folder(key)>``, reused when
    their source has not changed (storage.py).

    Raises ConfigError when there is nothing to serve or a file cannot be read.
    """
    catalog = Catalog()
    used: set[str] = set()
    try:
        for path in find_sources(directory):
            name = _unique(service_name(path), used, "service")
            store = _store(path, name, name, workdir, editable)
            catalog.services.append(ServedService(name, [ServedLayer(0, name, store)], plain=True))
        subdirs = sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))
        for sub in subdirs:
            if _is_service_dir(sub):
                _add_service_dir(catalog, sub, _unique(service_name(sub), used, "service"), workdir, editable)
        for sub in subdirs:
            if not _is_service_dir(sub):
                _add_folder(catalog, sub, used, workdir, editable)
    except BaseException:
        catalog.close()
        raise
    if not catalog.services:
        raise ConfigError(
            f"no .geojson, .json, .shp or .parquet files in {str(directory)!r} or its folders; "
            "put data files there or pass another folder"
        )
    return catalog


def _add_folder(catalog: Catalog, folder: Path, used: set[str], workdir: Path, editable: bool) -> None:
    files = find_sources(folder)
    service_dirs = [p for p in sorted(folder.iterdir()) if _is_service_dir(p)]
    for deeper in sorted(p for p in folder.iterdir() if p.is_dir() and not _is_service_dir(p)):
        log.warning("%s: folders are one level deep (as in ArcGIS Server); skipping it", deeper)
    if not files and not service_dirs:
        log.info("%s: no data files, not served as a folder", folder)
        return
    fname = _unique(_safe(folder.name), used, "folder")
    catalog.folders.append(fname)
    inner: set[str] = set()
    for path in files:
        short = _unique(service_name(path), inner, "service")
        store = _store(path, short, f"{fname}/{short}", workdir, editable)
        catalog.services.append(ServedService(f"{fname}/{short}", [ServedLayer(0, short, store)]))
    for sub in service_dirs:
        _add_service_dir(catalog, sub, f"{fname}/{_unique(service_name(sub), inner, 'service')}", workdir, editable)


def _add_service_dir(catalog: Catalog, directory: Path, name: str, workdir: Path, editable: bool) -> None:
    files = find_sources(directory)
    if not files:
        log.warning("%s: no data files, not served", directory)
        return
    layers = [
        ServedLayer(i, path.stem, _store(path, f"layer{i}", f"{name}/{i}", workdir, editable))
        for i, path in enumerate(files)
    ]
    catalog.services.append(ServedService(name, layers))


def _store(path: Path, name: str, key: str, workdir: Path, editable: bool = False) -> LayerStore:
    """The store of one data file, in its own sub-folder of ``workdir`` (store file names
    never collide); ``name`` is the store's, ``key`` the URL path logged. An editable
    store's sub-folder is named by ``key``, so the next start finds it again."""
    started = time.perf_counter()
    if editable:
        target = workdir / store_folder(key)
        target.mkdir(exist_ok=True)
    else:
        target = workdir / f"s{sum(1 for _ in workdir.iterdir())}"
        target.mkdir()
    store = open_store(path, name, target, editable=editable)
    log.info("%s: %d features as %r in %.1fs", path.name, store.count, key, time.perf_counter() - started)
    return store


# --------------------------------------------------------------------------- answering


@dataclass(frozen=True)
class Resource:
    """What a URL under ``/rest/services`` names in the catalog: ``kind`` is
    folder|service|layers|layer|query."""

    kind: str
    folder: str | None = None
    service: ServedService | None = None
    layer: ServedLayer | None = None


def resolve(catalog: Catalog, rest: list[str]) -> Resource | None:
    """The resource of path segments after ``/arcgis/rest/services`` (lower case), or None
    for the root and for top-level single-file services (app.py's own routes). ``kind``
    is folder|service|layers|layer|query, a layer edit operation (LAYER_EDITS) or
    ``service-applyedits``.

    Raises RestError "Invalid URL" for a folder path that names nothing.
    """
    if not rest:
        return None
    folder = catalog.folder(rest[0])
    if folder is not None and (len(rest) == 1 or (len(rest) >= 3 and rest[2] == "featureserver")):
        if len(rest) == 1:
            return Resource("folder", folder=folder)
        service = catalog.service(f"{folder}/{rest[1]}")
        tail = rest[3:]
    elif len(rest) >= 2 and rest[1] == "featureserver":
        service = catalog.service(rest[0])
        if service is None or service.plain:
            return None
        tail = rest[2:]
    else:
        return None
    if service is None:
        raise invalid_url()
    if not tail:
        return Resource("service", service=service)
    if tail == ["layers"]:
        return Resource("layers", service=service)
    if tail == [SERVICE_EDITS]:
        return Resource("service-applyedits", service=service)
    if not tail[0].isdigit() or len(tail) > 2 or (len(tail) == 2 and tail[1] not in ("query", *LAYER_EDITS)):
        raise invalid_url()
    layer = service.layer(int(tail[0]))
    if layer is None:
        raise invalid_url()
    return Resource(tail[1] if len(tail) == 2 else "layer", service=service, layer=layer)


def root(options: ServerOptions, catalog: Catalog) -> dict[str, Any]:
    """``/arcgis/rest/services``: folders and top-level services."""
    return {
        "currentVersion": options.current_version,
        "folders": list(catalog.folders),
        "services": [{"name": s.name, "type": "FeatureServer"} for s in catalog.services if "/" not in s.name],
    }


def answer(catalog: Catalog, resource: Resource, options: ServerOptions, params: Params) -> tuple[Any, str]:
    """The body of a resolved resource (queries run against the layer's store)."""
    if resource.kind == "folder":
        prefix = f"{resource.folder}/".lower()
        return {
            "currentVersion": options.current_version,
            "folders": [],
            "services": [
                {"name": s.name, "type": "FeatureServer"} for s in catalog.services if s.name.lower().startswith(prefix)
            ],
        }, query.JSON_TYPE
    service = resource.service
    assert service is not None
    if resource.kind == "service":
        return service_json(options, service), query.JSON_TYPE
    if resource.kind == "layers":
        bodies = [layer_json(options, lyr) for lyr in service.layers]
        return {
            "layers": [b for b, lyr in zip(bodies, service.layers) if not lyr.is_table],
            "tables": [b for b, lyr in zip(bodies, service.layers) if lyr.is_table],
        }, query.JSON_TYPE
    layer = resource.layer
    assert layer is not None
    if resource.kind == "layer":
        return layer_json(options, layer), query.JSON_TYPE
    return query.run_query(layer.store, params, options)


def service_json(options: ServerOptions, service: ServedService) -> dict[str, Any]:
    """``…/FeatureServer`` of a service: the first spatial layer's extent and CRS, every
    layer and table as ``{id, name, parentLayerId, …, geometryType}``."""
    main = next((lyr for lyr in service.layers if not lyr.is_table), service.layers[0])
    body = metadata.service(options, main.store)
    entries = []
    for lyr in service.layers:
        entry: dict[str, Any] = {
            "id": lyr.id,
            "name": lyr.name,
            "parentLayerId": -1,
            "defaultVisibility": True,
            "subLayerIds": None,
            "minScale": 0,
            "maxScale": 0,
            "type": "Table" if lyr.is_table else "Feature Layer",
        }
        if not lyr.is_table:
            entry["geometryType"] = lyr.store.geometry_type
        entries.append((lyr, entry))
    body["layers"] = [e for lyr, e in entries if not lyr.is_table]
    body["tables"] = [e for lyr, e in entries if lyr.is_table]
    body["description"] = f"Served by ags-etl: {len(service.layers)} layer(s)"
    return body


def layer_json(options: ServerOptions, layer: ServedLayer) -> dict[str, Any]:
    """``…/FeatureServer/<id>``: the layer's metadata with its id and name in the service."""
    body = metadata.layer(options, layer.store)
    body["id"] = layer.id
    body["name"] = layer.name
    return body
