"""Plugin registry: extractors, transformers and loaders by name, all through entry points.

Entry-point groups ``ags_etl.extractors``, ``ags_etl.transformers`` and ``ags_etl.loaders``
map names to classes (``name = "pkg.module:Class"``). The built-ins are registered the same
way, by ags_etl's own package metadata (``pyproject.toml``); :data:`FALLBACK` is used only
when that metadata is missing (running from a source tree that was never installed).

A name may also be given as ``pkg.module:Class`` directly. Classes are imported lazily, on
:func:`load`; listing names (:func:`names`, :func:`plugins`) imports nothing. An unknown
name raises ConfigError listing the known names.

Every plugin class declares its options as a class attribute ``Options``: a pydantic
``BaseModel`` with ``extra="forbid"`` (see :func:`options_model`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from functools import cache
from importlib.metadata import PackageNotFoundError, distribution, entry_points
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ags_etl.errors import ConfigError

log = logging.getLogger(__name__)

#: The plugin kinds, each the suffix of an entry-point group ``ags_etl.<kind>``.
KINDS: tuple[str, ...] = ("extractors", "transformers", "loaders")

#: Our distribution's name: its entry points are the built-ins.
DISTRIBUTION = "ags_etl"

#: Built-ins, used only when ags_etl's package metadata cannot be found. Keep in step with
#: the ``[project.entry-points]`` tables of pyproject.toml (tests/test_registry.py checks).
FALLBACK: dict[str, dict[str, str]] = {
    "extractors": {"arcgis": "ags_etl.extractors.feature_layer:FeatureLayerExtractor"},
    "transformers": {
        "reproject": "ags_etl.transformers.reproject:Reproject",
        "clip": "ags_etl.transformers.clip:Clip",
        "fields": "ags_etl.transformers.fields:Fields",
    },
    "loaders": {
        "geojson": "ags_etl.loaders.geojson:GeoJSONLoader",
        "geojsonl": "ags_etl.loaders.geojson:GeoJSONSeqLoader",
        "shapefile": "ags_etl.loaders.shapefile:ShapefileLoader",
        "kmz": "ags_etl.loaders.kmz:KMZLoader",
        "geoparquet": "ags_etl.loaders.geoparquet:GeoParquetLoader",
        "feature_service": "ags_etl.loaders.feature_service:FeatureServiceLoader",
    },
}


@dataclass(frozen=True)
class Plugin:
    """One registered name: its kind, target (``module:Class``) and where it comes from.

    ``origin`` is ``"built-in"`` or ``"<distribution> <version>"``.
    """

    kind: str
    name: str
    target: str
    origin: str

    @property
    def builtin(self) -> bool:
        return self.origin == "built-in"


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"plugin kind {kind!r} is not one of {', '.join(KINDS)}")


@cache
def _has_own_metadata() -> bool:
    try:
        distribution(DISTRIBUTION)
    except PackageNotFoundError:
        return False
    return True


def plugins(kind: str) -> list[Plugin]:
    """Every name of ``kind``: built-ins first, then third parties by name.

    Raises ConfigError when two distributions register the same name for different classes.
    """
    _check_kind(kind)
    found: dict[str, Plugin] = {}
    if not _has_own_metadata():
        for name, target in FALLBACK[kind].items():
            found[name] = Plugin(kind, name, target, "built-in")
    for ep in entry_points(group=f"ags_etl.{kind}"):
        dist = ep.dist
        dist_name = dist.metadata["Name"] if dist is not None else None
        own = dist_name is not None and dist_name.replace("-", "_").lower() == DISTRIBUTION
        origin = "built-in" if own else f"{dist_name or 'unknown distribution'} {dist.version if dist else '?'}"
        previous = found.get(ep.name)
        if previous is not None and previous.target != ep.value:
            raise ConfigError(
                f"two plugins register the {kind[:-1]} name {ep.name!r} ({previous.target} from "
                f"{previous.origin}, {ep.value} from {origin}); uninstall one of them"
            )
        found[ep.name] = Plugin(kind, ep.name, ep.value, origin)
    return sorted(found.values(), key=lambda p: (not p.builtin, p.name))


def names(kind: str) -> dict[str, str]:
    """All known names of a kind → their ``module:Class`` target (built-ins first)."""
    return {p.name: p.target for p in plugins(kind)}


def load(kind: str, name: str) -> Any:
    """The class registered as ``name`` in ``kind`` (or given as ``module:Class``)."""
    known = names(kind)
    target = known.get(name)
    if target is None and ":" in name:
        target = name
    if target is None:
        raise ConfigError(f"unknown {kind[:-1]} {name!r}; installed: {', '.join(sorted(known))}")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind[:-1]} {name!r} ({target}) cannot be loaded: {exc}") from exc


def options_model(cls: type, kind: str, name: str) -> type[BaseModel]:
    """The plugin's ``Options`` class attribute, checked to be a pydantic model that forbids extra keys.

    Raises ConfigError naming the class and what its author must add.
    """
    opts = getattr(cls, "Options", None)
    where = f"{kind[:-1]} {name!r} ({cls.__module__}.{cls.__qualname__})"
    if opts is None:
        raise ConfigError(
            f"{where} declares no options model; its author must add a class attribute Options, "
            "a pydantic BaseModel with model_config = ConfigDict(extra='forbid')"
        )
    if not (isinstance(opts, type) and issubclass(opts, BaseModel)):
        raise ConfigError(f"{where}: Options is {opts!r}, not a pydantic BaseModel subclass; its author must fix it")
    if opts.model_config.get("extra") != "forbid":
        raise ConfigError(
            f"{where}: Options does not forbid unknown keys; its author must set model_config = ConfigDict(extra='forbid')"
        )
    return opts


def _extension_table() -> dict[str, str]:
    """Output extension → loader name, from the built-in loaders' ``capabilities.extensions``."""
    table: dict[str, str] = {}
    for p in plugins("loaders"):
        if not p.builtin:
            continue
        for ext in load("loaders", p.name).capabilities.extensions:
            table.setdefault(ext.lower(), p.name)
    return table


#: Output extension → built-in loader: what :func:`_extension_table` reads from the built-ins'
#: ``capabilities.extensions`` (tests/test_registry.py holds the two equal), known without
#: importing any loader, so a pull imports its own loader only: no fiona unless shapefile, and
#: no pyarrow.compute (13 MB resident, imported by the GeoJSON and feature-service loaders)
#: for GeoParquet.
BUILTIN_EXTENSIONS: dict[str, str] = {
    ".geojson": "geojson", ".json": "geojson",
    ".geojsonl": "geojsonl", ".geojsons": "geojsonl", ".ndjson": "geojsonl",
    ".parquet": "geoparquet", ".geoparquet": "geoparquet",
    ".kmz": "kmz", ".kml": "kmz",
    ".shp": "shapefile", ".zip": "shapefile",
}


def _builtin_for_extension(ext: str) -> str | None:
    """The built-in loader declaring ``ext`` (as :func:`_extension_table` picks it), from
    :data:`BUILTIN_EXTENSIONS`, importing no loader."""
    return BUILTIN_EXTENSIONS.get(ext)


def _plugin_for_extension(ext: str) -> str | None:
    """A third-party loader declaring ``ext`` in its capabilities (imported only when needed)."""
    for p in plugins("loaders"):
        if p.builtin:
            continue
        try:
            cls = load("loaders", p.name)
        except ConfigError as exc:
            log.warning("%s", exc)
            continue
        caps = getattr(cls, "capabilities", None)
        if caps is not None and ext in (e.lower() for e in caps.extensions):
            return p.name
    return None


def loader_name_for_path(path: str | Path, fmt: str | None = None) -> str:
    """Loader name from ``--format`` or the output file's extension (built-ins win over plugins)."""
    if fmt is not None:
        if fmt not in names("loaders"):
            raise ConfigError(f"--format {fmt!r} is not one of {', '.join(sorted(names('loaders')))}")
        return fmt
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes[-2:] == [".shp", ".zip"]:
        return "shapefile"
    ext = suffixes[-1] if suffixes else ""
    builtin = _builtin_for_extension(ext) if ext else None
    if builtin is not None:
        return builtin
    table = _extension_table()
    plugin = _plugin_for_extension(ext) if ext else None
    if plugin is not None:
        return plugin
    raise ConfigError(
        f"cannot tell the output format from {str(path)!r}; use one of {', '.join(sorted(table))} or pass --format"
    )
