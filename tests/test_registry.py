"""Plugin registry: built-ins, entry points, module:Class names, formats from extensions."""

from __future__ import annotations

import pytest

from ags_etl.errors import ConfigError
from ags_etl.loaders.geoparquet import GeoParquetLoader
from ags_etl.loaders.shapefile import ShapefileLoader
from ags_etl.registry import (
    BUILTIN_EXTENSIONS,
    _extension_table,
    load,
    loader_name_for_path,
    names,
)


def test_builtins_and_entry_points_agree() -> None:
    loaders = names("loaders")
    assert {"geojson", "geojsonl", "shapefile", "kmz", "geoparquet"} <= set(loaders)
    assert load("loaders", "geoparquet") is GeoParquetLoader
    assert load("loaders", "ags_etl.loaders.shapefile:ShapefileLoader") is ShapefileLoader


def test_unknown_names_list_what_is_installed() -> None:
    with pytest.raises(ConfigError, match=r"unknown loader 'gpkg'; installed: feature_service, geojson, geojsonl, geoparquet, kmz"):
        load("loaders", "gpkg")
    with pytest.raises(ConfigError, match="cannot be loaded"):
        load("transformers", "no_such_module:Thing")


@pytest.mark.parametrize(
    "path, name",
    [("a.geojson", "geojson"), ("a.JSON", "geojson"), ("a.geojsonl", "geojsonl"), ("a.shp", "shapefile"),
     ("a.shp.zip", "shapefile"), ("a.zip", "shapefile"), ("a.kmz", "kmz"), ("a.parquet", "geoparquet")],
)
def test_format_from_extension(path: str, name: str) -> None:
    assert loader_name_for_path(path) == name


def test_builtin_extension_table_matches_the_loaders_capabilities() -> None:
    """The static table a pull reads (so it imports no other loader) says what the loaders declare."""
    assert BUILTIN_EXTENSIONS == _extension_table()


def test_format_errors() -> None:
    with pytest.raises(ConfigError, match="--format"):
        loader_name_for_path("a.gpkg")
    with pytest.raises(ConfigError, match="not one of"):
        loader_name_for_path("a.geojson", "gpkg")
    assert loader_name_for_path("a.out", "kmz") == "kmz"
