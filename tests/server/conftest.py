"""Fixtures for the local FeatureServer tests: the main data folder and a running server.

Every server is a real ``ags-etl serve`` subprocess (``run_server``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyproj import CRS
from serve_helpers import write_geoparquet, write_points, write_polygons, write_shapefile, write_table

from ags_etl.server.testing import run_server


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The main data folder: every kind of file the server reads."""
    d = tmp_path_factory.mktemp("serve-data")
    write_points(d / "points.geojson")
    write_polygons(d / "polygons.json")
    write_table(d / "lookup table.geojson")
    write_shapefile(d / "lots_utm.shp", 32633)
    write_shapefile(d / "lots_merc.shp", 3857)
    write_geoparquet(d / "pq_points.parquet", CRS.from_epsg(3035))
    write_geoparquet(d / "pq_custom.parquet", CRS.from_proj4("+proj=laea +lat_0=10 +lon_0=20 +datum=WGS84 +units=m"))
    write_geoparquet(d / "pq_nocrs.parquet", None)
    write_geoparquet(d / "pq_table.parquet", None, with_geo=False)
    (d / "readme.txt").write_text("not served")
    return d


@pytest.fixture(scope="session")
def server(data_dir: Path) -> Iterator[str]:
    """The main server (defaults) on the main data folder."""
    with run_server(data_dir) as base:
        yield base


