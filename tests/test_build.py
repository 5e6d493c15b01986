"""build_pipeline: a JobSpec made in Python becomes a Pipeline that runs against the local server,
for every sink type, with a clip and a reproject; problems are refused before any request."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import geopandas
import pyogrio
import pytest
from pyproj import CRS

from ags_etl.build import build_pipeline
from ags_etl.errors import ConfigError
from ags_etl.server.testing import run_server
from ags_etl.spec import AuthSpec, JobSpec, SinkSpec, SourceSpec, TransformSpec
from tests.layers import write_layer
from tests.test_pipeline import BOX, N, expected_clipped


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("build-layers")
    write_layer(d / "polygons.geojson", "polygons", N)
    with run_server(d, "--max-record-count", "9") as base:
        yield f"{base}/arcgis/rest/services/polygons/FeatureServer/0"


def job(url: str, sink: SinkSpec, to: str) -> JobSpec:
    return JobSpec(
        name="polygons",
        source=SourceSpec(url=url, concurrency=2),
        transforms=[
            TransformSpec(type="clip", bbox=list(BOX), crs="EPSG:4326"),
            TransformSpec(type="reproject", to=to),
        ],
        sink=sink,
    )


@pytest.mark.parametrize(
    "sink_type, name, to",
    [
        ("geoparquet", "p.parquet", "EPSG:3857"),
        ("shapefile", "p.shp", "EPSG:3857"),
        ("geojson", "p.geojson", "EPSG:4326"),
        ("geojsonl", "p.geojsonl", "EPSG:4326"),
        ("kmz", "p.kmz", "EPSG:4326"),
    ],
)
def test_every_sink_with_clip_and_reproject(layer: str, tmp_path: Path, sink_type: str, name: str, to: str) -> None:
    out = tmp_path / name
    expected = expected_clipped(BOX, None)
    result = build_pipeline(job(layer, SinkSpec(type=sink_type, path=str(out)), to)).run()
    assert result.features == len(expected) > 0
    assert result.extract.expected is not None and result.extract.expected < N  # the clip's bbox went to the server
    if sink_type == "kmz":
        with zipfile.ZipFile(out) as zf:
            assert zf.read("doc.kml").count(b"<Placemark") == len(expected)
        return
    if sink_type == "geojsonl":
        assert len(out.read_text(encoding="utf-8").splitlines()) == len(expected)
        return
    df = geopandas.read_parquet(out) if sink_type == "geoparquet" else pyogrio.read_dataframe(out)
    assert sorted(df["OBJECTID"].astype(int)) == sorted(expected)
    assert CRS.from_user_input(df.crs).equals(CRS.from_user_input(to))


def test_loader_options_and_overwrite_reach_the_loader(layer: str, tmp_path: Path) -> None:
    out = tmp_path / "p.kmz"
    out.write_bytes(b"old")
    sink = SinkSpec(type="kmz", path=str(out), overwrite=True, name_field="NAME", compresslevel=0)
    pipeline = build_pipeline(JobSpec(name="k", source=SourceSpec(url=layer), sink=sink))
    assert pipeline.loader.name_field == "NAME" and pipeline.loader.compresslevel == 0
    pipeline.run()
    with zipfile.ZipFile(out) as zf:
        assert zf.infolist()[0].compress_type == zipfile.ZIP_STORED


def test_problems_are_refused_before_any_request(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0"  # nothing listens on port 9
    bad = JobSpec(
        name="bad",
        source=SourceSpec(url=url, auth=AuthSpec(token="t0ken-value")),
        transforms=[TransformSpec(type="reproject", to="EPSG:3857"), TransformSpec(type="fields", selct=["A"])],
        sink=SinkSpec(type="geojson", path=str(tmp_path / "x.geojson")),
    )
    with pytest.raises(ConfigError, match=r"job 'bad': transforms\[1\]\.selct: unknown key 'selct' \(did you mean 'select'\?\)"):
        build_pipeline(bad)
    many = JobSpec(name="m", source=SourceSpec(url=url.rsplit("/", 1)[0], layers=["Parcel*"]),
                   sink=SinkSpec(type="geoparquet", path=str(tmp_path / "{layer}.parquet")))
    with pytest.raises(ConfigError, match="expand_job"):
        build_pipeline(many)
    placeholder = JobSpec(name="p", source=SourceSpec(url=url), sink=SinkSpec(type="geoparquet", path=str(tmp_path / "{layer}.parquet")))
    with pytest.raises(ConfigError, match=r"still holds \{layer\}"):
        build_pipeline(placeholder)
