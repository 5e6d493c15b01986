"""Plugin registry: built-in loaders/transformers/extractors plus entry points.

Entry-point groups ``ags_etl.extractors``, ``ags_etl.transformers`` and ``ags_etl.loaders``
map names to classes (``name = "pkg.module:Class"``). A name may also be given as
``pkg.module:Class`` directly. Lookups are lazy; an unknown name raises ConfigError
listing the installed names.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ags_etl.errors import ConfigError

BUILTIN: dict[str, dict[str, str]] = {
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
    },
}

#: Output file extension → loader name (for `pull -o PATH`).
EXTENSIONS: dict[str, str] = {
    ".geojson": "geojson",
    ".json": "geojson",
    ".geojsonl": "geojsonl",
    ".geojsons": "geojsonl",
    ".ndjson": "geojsonl",
    ".shp": "shapefile",
    ".zip": "shapefile",
    ".kmz": "kmz",
    ".kml": "kmz",
    ".parquet": "geoparquet",
    ".geoparquet": "geoparquet",
}


def names(kind: str) -> dict[str, str]:
    """All known names of a kind (built-ins, then entry points; duplicates rejected)."""
    found = dict(BUILTIN[kind])
    for ep in entry_points(group=f"ags_etl.{kind}"):
        if ep.name in found and found[ep.name] != ep.value:
            raise ConfigError(
                f"two plugins register the {kind[:-1]} name {ep.name!r} ({found[ep.name]} and {ep.value}); "
                f"uninstall one of them"
            )
        found[ep.name] = ep.value
    return found


def load(kind: str, name: str) -> Any:
    """The class registered as ``name`` in ``kind`` (or given as ``module:Class``)."""
    target = names(kind).get(name)
    if target is None and ":" in name:
        target = name
    if target is None:
        raise ConfigError(f"unknown {kind[:-1]} {name!r}; installed: {', '.join(sorted(names(kind)))}")
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{kind[:-1]} {name!r} ({target}) cannot be loaded: {exc}") from exc


def loader_name_for_path(path: str | Path, fmt: str | None = None) -> str:
    """Loader name from ``--format`` or the output file's extension."""
    if fmt is not None:
        if fmt not in names("loaders"):
            raise ConfigError(f"--format {fmt!r} is not one of {', '.join(sorted(names('loaders')))}")
        return fmt
    p = Path(path)
    suffixes = [s.lower() for s in p.suffixes]
    if suffixes[-2:] == [".shp", ".zip"]:
        return "shapefile"
    ext = suffixes[-1] if suffixes else ""
    if ext not in EXTENSIONS:
        raise ConfigError(
            f"cannot tell the output format from {str(path)!r}; use one of "
            f"{', '.join(sorted(EXTENSIONS))} or pass --format"
        )
    return EXTENSIONS[ext]
