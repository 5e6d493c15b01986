"""Extractor → transformers → loader, from the Python API and from `pull` flags, against the
local server; outputs read back with GDAL/geopandas and compared with shapely/pyproj."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import geopandas
import numpy as np
import pyogrio
import pytest
import shapely
from pyproj import CRS, Transformer

from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.loaders.geojson import GeoJSONLoader
from ags_etl.loaders.geoparquet import GeoParquetLoader
from ags_etl.pipeline import Pipeline
from ags_etl.server.testing import run_server
from ags_etl.transformers.clip import Clip
from ags_etl.transformers.reproject import Reproject
from tests.layers import expected_rows, write_layer

N = 60
BOX = (-122.46, 37.70, -122.40, 37.715)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("pipeline-layers")
    write_layer(d / "polygons.geojson", "polygons", N)
    with run_server(d, "--max-record-count", "9") as base:
        yield base


def url(base: str) -> str:
    return f"{base}/arcgis/rest/services/polygons/FeatureServer/0"


def to_crs(geom: shapely.Geometry, to: str | int) -> shapely.Geometry:
    """``geom`` from EPSG:4326 into ``to`` with pyproj's own transformer (the reference)."""
    t = Transformer.from_crs(4326, to, always_xy=True)
    return shapely.transform(geom, lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])))


def expected_clipped(box: tuple[float, float, float, float], to: str | None) -> dict[int, shapely.Geometry]:
    area = shapely.box(*box)
    out = {}
    for oid, row in expected_rows("polygons", N).items():
        g = row["geometry"]
        if g is None:
            continue
        cut = shapely.intersection(g, area)
        if cut.is_empty or cut.area == 0:
            continue
        if to is not None:
            cut = to_crs(cut, to)
        out[oid] = cut
    return out


def assert_geoms_match(got: dict[int, shapely.Geometry], exp: dict[int, shapely.Geometry], tol: float) -> None:
    assert sorted(got) == sorted(exp)
    for oid, g in exp.items():
        assert got[oid].geom_type in ("Polygon", "MultiPolygon")
        assert got[oid].symmetric_difference(g).area <= tol * max(g.area, 1e-12), oid


def test_python_api_clip_then_reproject_to_geoparquet(server: str, tmp_path: Path) -> None:
    out = tmp_path / "clipped.parquet"
    ext = FeatureLayerExtractor(url(server), concurrency=2)
    result = Pipeline(ext, [Clip(bbox=BOX), Reproject("EPSG:3857")], GeoParquetLoader(out)).run()
    expected = expected_clipped(BOX, "EPSG:3857")
    # The clip's envelope went to the server: features outside were never downloaded.
    assert result.extract.expected is not None and result.extract.expected < N
    assert result.features == len(expected)
    df = geopandas.read_parquet(out)
    assert df.crs.equals(CRS.from_epsg(3857))
    assert_geoms_match(dict(zip(df["OBJECTID"].astype(int), df.geometry.values, strict=True)), expected, 1e-9)


def test_pull_flags_clip_reproject(server: str, tmp_path: Path) -> None:
    out = tmp_path / "clipped.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url(server), "-o", str(out),
         "--clip", ",".join(map(str, BOX)), "--t-srs", "EPSG:3857"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    df = geopandas.read_parquet(out)
    assert_geoms_match(dict(zip(df["OBJECTID"].astype(int), df.geometry.values, strict=True)),
                       expected_clipped(BOX, "EPSG:3857"), 1e-9)


def test_pull_clip_file_in_another_crs_to_geojson(server: str, tmp_path: Path) -> None:
    mask_3857 = to_crs(shapely.box(*BOX).segmentize(0.0005), 3857)
    mask_file = tmp_path / "mask.geojson"
    geopandas.GeoDataFrame(geometry=[mask_3857], crs=3857).to_file(mask_file)
    out = tmp_path / "clipped.geojson"
    proc = subprocess.run(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url(server), "-o", str(out),
         "--clip-file", str(mask_file)],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "crs" not in json.loads(out.read_text())
    df = pyogrio.read_dataframe(out)
    # The mask was densified in 3857; allow for the curve of its edges in 4326.
    assert_geoms_match(dict(zip(df["OBJECTID"].astype(int), df.geometry.values, strict=True)), expected_clipped(BOX, None), 1e-4)


def test_geojson_refuses_another_target_crs_before_the_first_page(server: str, tmp_path: Path) -> None:
    # A Reproject to EPSG:3857 used to be followed silently by one back to EPSG:4326.
    from ags_etl.errors import CapabilityError

    out = tmp_path / "back.geojson"
    ext = FeatureLayerExtractor(url(server))
    with pytest.raises(CapabilityError, match=r"GeoJSON \(RFC 7946\) holds EPSG:4326 coordinates only; --t-srs EPSG:3857"):
        Pipeline(ext, [Reproject("EPSG:3857")], GeoJSONLoader(out)).run()
    assert ext.stats.pages == 0
    assert not out.exists()


def test_pull_field_options_and_server_side_reprojection(server: str, tmp_path: Path) -> None:
    out = tmp_path / "fields.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url(server), "-o", str(out),
         "--rename", "NAME=LABEL", "--drop", "VALUE", "--cast", "COUNT=double"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    df = geopandas.read_parquet(out)
    assert "LABEL" in df.columns and "NAME" not in df.columns and "VALUE" not in df.columns
    assert str(df["COUNT"].dtype) == "float64"
    exp = expected_rows("polygons", N)
    for oid, label in zip(df["OBJECTID"].astype(int), df["LABEL"], strict=True):
        assert (label if isinstance(label, str) else None) == exp[oid]["NAME"]

    server_side = tmp_path / "server_side.parquet"
    proc = subprocess.run(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url(server), "-o", str(server_side),
         "--t-srs", "EPSG:3857", "--server-side-reproject"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = geopandas.read_parquet(server_side)
    assert got.crs.equals(CRS.from_epsg(3857))
    client = tmp_path / "client.parquet"
    Pipeline(FeatureLayerExtractor(url(server)), [Reproject("EPSG:3857")], GeoParquetLoader(client)).run()
    mine = geopandas.read_parquet(client)
    for a, b in zip(got.sort_values("OBJECTID").geometry.values, mine.sort_values("OBJECTID").geometry.values, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert shapely.normalize(a).equals_exact(shapely.normalize(b), 1e-3)  # metres


def test_a_sink_need_not_be_a_file(server: str) -> None:
    """A sink without a path (as the feature-service loader will be) runs through the pipeline:
    it keeps the OIDs it got and commits them only when its writer block ends without error."""
    import contextlib

    from ags_etl.loaders.base import Loader, LoaderCapabilities, LoadStats

    committed: list[int] = []
    preflights: list[bool] = []

    class MemorySink(Loader):
        name = "memory"
        capabilities = LoaderCapabilities(extensions=())

        def preflight(self) -> None:
            preflights.append(True)

        @contextlib.contextmanager
        def open(self, schema):  # type: ignore[no-untyped-def]
            class W:
                stats = LoadStats()
                got: list[int] = []

                def write(self, batch) -> None:  # type: ignore[no-untyped-def]
                    self.got.extend(batch.column(schema.oid_field).to_pylist())
                    self.stats.features += len(batch)

            w = W()
            yield w
            committed.extend(w.got)

    sink = MemorySink()
    assert sink.target is None and not hasattr(sink, "path")
    result = Pipeline(FeatureLayerExtractor(url(server)), [], sink).run()
    assert preflights == [True]
    assert sorted(committed) == sorted(expected_rows("polygons", N))
    assert result.load.features == N
