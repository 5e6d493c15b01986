"""Pulling from Koop, a third-party implementation of the GeoServices REST API.

Koop 10.4 (featureserver 9.3) differs from ArcGIS in ways that break naive clients:
it never enforces maxRecordCount, returns ids unsorted, lists multipolygon holes before
their exteriors and ignores resultOffset without resultRecordCount (docs/reference/koop.md).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from tests.extractors.test_feature_layer import assert_same_as_source, collect
from tests.layers import write_layer
from tests.servers_koop import koop_layer_url, koop_server

N_POLYGONS = 60
N_POINTS = 150


@pytest.fixture(scope="module")
def koop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("koop-data")
    write_layer(d / "polygons.geojson", "polygons", N_POLYGONS, koop_max_record_count=10)
    write_layer(d / "points.geojson", "points", N_POINTS, koop_max_record_count=10)
    with koop_server(d) as base:
        yield base


@pytest.mark.parametrize("strategy", [None, "offset", "oid-range"])
def test_polygons_with_holes_and_multiparts_from_koop(koop: str, strategy: str | None) -> None:
    ext = FeatureLayerExtractor(koop_layer_url(koop, "polygons"), strategy=strategy, concurrency=2)
    rows, total = collect(ext)
    assert ext.stats.pages >= N_POLYGONS // 10
    assert_same_as_source(rows, total, "polygons", N_POLYGONS)


def test_points_from_koop(koop: str) -> None:
    ext = FeatureLayerExtractor(koop_layer_url(koop, "points"), page_size=25)
    rows, total = collect(ext)
    assert_same_as_source(rows, total, "points", N_POINTS)
    origin = rows[1]["geometry"]
    assert origin.x == 0 and origin.y == 0


def test_where_from_koop(koop: str) -> None:
    ext = FeatureLayerExtractor(koop_layer_url(koop, "points"), where="COUNT > 0")
    rows, total = collect(ext)
    assert total == len(rows) > 0
    assert all(r["COUNT"] > 0 for r in rows.values())
