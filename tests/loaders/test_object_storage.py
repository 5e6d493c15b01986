"""Object-storage outputs on a local S3 endpoint (moto's server mode on 127.0.0.1): GeoParquet
files and datasets and GeoJSON files written to ``s3://`` read back exactly what the same job
writes locally; a failed run leaves no object, no manifest and no part; secrets are never printed."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas
import pyarrow.parquet as pq
import pytest

from ags_etl.build import build_pipeline
from ags_etl.errors import ConfigError, LoadError, OutputExistsError
from ags_etl.loaders.geojson import GeoJSONLoader
from ags_etl.loaders.geoparquet import GeoParquetLoader
from ags_etl.loaders.geoparquet_dataset import MANIFEST_NAME, read_manifest
from ags_etl.server.testing import run_server
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, TransformSpec
from tests.cli.helpers import ags
from tests.layers import write_layer
from tests.s3_server import ACCESS_KEY, SECRET_KEY, SESSION_TOKEN, s3_endpoint, s3_environment

from ._data_shp_parquet import make_batches, make_schema

s3fs = pytest.importorskip("s3fs")

N = 60
BUCKET = "ags-etl-test"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    """The S3 endpoint, with the AWS variables pointing at it for this module's tests."""
    with s3_endpoint() as url:
        saved = {k: os.environ.get(k) for k in s3_environment(url)}
        os.environ.update(s3_environment(url))
        try:
            yield url
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def fs(endpoint: str) -> Iterator[Any]:
    """A fresh, empty bucket per test and an s3fs file system to read it with."""
    filesystem = s3fs.S3FileSystem(skip_instance_cache=True)
    if filesystem.exists(BUCKET):
        filesystem.rm(BUCKET, recursive=True)
    filesystem.mkdir(BUCKET)
    yield filesystem


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("s3-layers")
    write_layer(d / "polygons.geojson", "polygons", N)
    with run_server(d, "--max-record-count", "9") as base:
        yield f"{base}/arcgis/rest/services/polygons/FeatureServer/0"


def job(url: str, sink_type: str, path: str, **sink: Any) -> JobSpec:
    transforms = [TransformSpec(type="reproject", to="EPSG:3857")] if sink_type == "geoparquet" else []
    return JobSpec(
        name="polygons",
        source=SourceSpec(url=url, concurrency=2),
        transforms=transforms,
        sink=SinkSpec(type=sink_type, path=path, **sink),
    )


def keys(fs: Any) -> list[str]:
    fs.invalidate_cache()
    return sorted(fs.find(BUCKET))


def test_geoparquet_file_reads_back_exactly(layer: str, fs: Any, tmp_path: Path) -> None:
    local = tmp_path / "x.parquet"
    build_pipeline(job(layer, "geoparquet", str(local))).run()
    result = build_pipeline(job(layer, "geoparquet", f"s3://{BUCKET}/out/x.parquet")).run()
    assert result.features == N
    assert keys(fs) == [f"{BUCKET}/out/x.parquet"], "one object, no temp key left"
    with fs.open(f"{BUCKET}/out/x.parquet", "rb") as fh:
        remote = pq.read_table(fh)
    assert remote.equals(pq.read_table(local))
    with fs.open(f"{BUCKET}/out/x.parquet", "rb") as fh:
        assert json.loads(pq.ParquetFile(fh).metadata.metadata[b"geo"])["version"] == "1.1.0"


def test_geojson_file_reads_back_byte_for_byte(layer: str, fs: Any, tmp_path: Path) -> None:
    local = tmp_path / "x.geojson"
    build_pipeline(job(layer, "geojson", str(local))).run()
    build_pipeline(job(layer, "geojson", f"s3://{BUCKET}/x.geojson")).run()
    assert fs.cat(f"{BUCKET}/x.geojson") == local.read_bytes()
    with pytest.raises(OutputExistsError, match=f"'s3://{BUCKET}/x.geojson' exists; pass --overwrite"):
        build_pipeline(job(layer, "geojson", f"s3://{BUCKET}/x.geojson")).run()
    build_pipeline(job(layer, "geojson", f"s3://{BUCKET}/x.geojson", overwrite=True)).run()
    assert keys(fs) == [f"{BUCKET}/x.geojson"]


def test_dataset_reads_back_exactly_and_overwrite_removes_old_parts(layer: str, fs: Any, tmp_path: Path) -> None:
    local = tmp_path / "x.parquet"
    build_pipeline(job(layer, "geoparquet", str(local))).run()
    build_pipeline(job(layer, "geoparquet", f"s3://{BUCKET}/ds/", rows_per_part=25)).run()
    manifest = read_manifest(f"s3://{BUCKET}/ds/")
    listed = [p["path"] for p in manifest["parts"]]
    assert len(listed) == 3 and manifest["rows"] == N
    assert keys(fs) == sorted([f"{BUCKET}/ds/{MANIFEST_NAME}"] + [f"{BUCKET}/ds/{p}" for p in listed])
    frame = geopandas.read_parquet(f"{BUCKET}/ds", filesystem=fs)
    assert frame.crs.to_epsg() == 3857
    remote = pq.read_table(f"{BUCKET}/ds", filesystem=fs).replace_schema_metadata(None).sort_by("OBJECTID")
    assert remote.equals(pq.read_table(local).replace_schema_metadata(None).sort_by("OBJECTID"))

    with pytest.raises(OutputExistsError, match="holds a dataset"):
        build_pipeline(job(layer, "geoparquet", f"s3://{BUCKET}/ds/")).run()
    fs.pipe(f"{BUCKET}/ds/part-19990101T000000deadbeef-00000.parquet", b"a part of a killed run")
    build_pipeline(job(layer, "geoparquet", f"s3://{BUCKET}/ds/", overwrite=True)).run()
    again = read_manifest(f"s3://{BUCKET}/ds/")
    assert again["run_id"] != manifest["run_id"] and len(again["parts"]) == 1
    assert keys(fs) == sorted([f"{BUCKET}/ds/{MANIFEST_NAME}", f"{BUCKET}/ds/{again['parts'][0]['path']}"]), (
        "the earlier run's parts and the killed run's part are removed once the new manifest is written"
    )


@pytest.mark.parametrize("path", [f"s3://{BUCKET}/x.parquet", f"s3://{BUCKET}/ds/"])
def test_failed_run_leaves_no_object_manifest_or_part(fs: Any, path: str) -> None:
    schema = make_schema("polygons")
    loader = GeoParquetLoader(path, rows_per_part=10)
    with pytest.raises(RuntimeError), loader.open(schema) as writer:
        for batch in make_batches(schema, "polygons", 35, 7):
            writer.write(batch)
        raise RuntimeError("the extraction failed")
    assert keys(fs) == []


def test_failed_geojson_run_keeps_the_earlier_object(fs: Any) -> None:
    schema = make_schema("points")
    fs.pipe(f"{BUCKET}/x.geojson", b"earlier")
    loader = GeoJSONLoader(f"s3://{BUCKET}/x.geojson", overwrite=True)
    with pytest.raises(RuntimeError), loader.open(schema):
        raise RuntimeError("the extraction failed")
    assert fs.cat(f"{BUCKET}/x.geojson") == b"earlier"


def test_missing_bucket_is_one_load_error_without_secrets(fs: Any) -> None:
    schema = make_schema("points")
    with pytest.raises(LoadError) as caught, GeoParquetLoader("s3://no-such-bucket-here/x.parquet").open(schema):
        pass
    text = str(caught.value)
    assert "could not upload 's3://no-such-bucket-here/x.parquet'" in text and "check the bucket exists" in text
    assert SECRET_KEY not in text and SESSION_TOKEN not in text


def test_run_debug_output_never_shows_credentials(layer: str, fs: Any, tmp_path: Path, endpoint: str) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({"version": 1, "jobs": [
        {"name": "ok", "source": {"url": layer}, "sink": {"type": "geoparquet", "path": f"s3://{BUCKET}/cli/"}},
        {"name": "bad", "source": {"url": layer}, "sink": {"type": "geojson", "path": "s3://no-such-bucket-here/x.geojson"}},
    ]}))
    report = tmp_path / "report.json"
    proc = ags("-vv", "run", str(pipeline), "--report", str(report), env=s3_environment(endpoint))
    assert proc.returncode == 1, proc.stderr
    assert read_manifest(f"s3://{BUCKET}/cli/")["rows"] == N
    assert "could not upload 's3://no-such-bucket-here/x.geojson'" in proc.stderr
    shown = proc.stdout + proc.stderr + report.read_text()
    for secret in (SECRET_KEY, SESSION_TOKEN, ACCESS_KEY):
        assert secret not in shown


def test_validate_refuses_urls_for_other_sinks_and_secret_storage_options(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(json.dumps({"version": 1, "jobs": [
        {"name": "shp", "source": {"url": "https://h/arcgis/rest/services/x/FeatureServer/0"},
         "sink": {"type": "shapefile", "path": "s3://b/x.shp"}},
        {"name": "secret", "source": {"url": "https://h/arcgis/rest/services/x/FeatureServer/0"},
         "sink": {"type": "geoparquet", "path": "s3://b/x.parquet",
                  "storage_options": {"secret": "hunter22", "endpoint_url": "http://127.0.0.1:9"}}},
    ]}))
    proc = ags("validate", str(pipeline))
    assert proc.returncode == 78, proc.stderr
    assert "cannot write to a URL (s3://); object storage takes geoparquet and geojson sinks only" in proc.stderr
    assert "storage_options ['secret'] look like secrets" in proc.stderr
    assert "hunter22" not in proc.stderr


def test_missing_backend_names_the_cloud_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # as if the cloud extra were not installed
    loader = GeoParquetLoader(f"s3://{BUCKET}/x.parquet")
    with pytest.raises(ConfigError, match=r"writing to s3:// needs s3fs, which is not installed; run pip install 'ags_etl\[cloud\]'"):
        loader.preflight()
