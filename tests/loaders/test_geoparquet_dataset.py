"""Partitioned GeoParquet datasets: a job against the local FeatureServer writes a folder of part
files and a manifest that geopandas, pyarrow.dataset and DuckDB read back as one table, exactly
what a single-file output holds; the folder appears complete or not at all."""

from __future__ import annotations

import concurrent.futures
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import geopandas
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import shapely

from ags_etl.build import build_pipeline
from ags_etl.errors import ConfigError, OutputExistsError
from ags_etl.loaders.geoparquet import GeoParquetLoader
from ags_etl.loaders.geoparquet_dataset import MANIFEST_NAME, DatasetWriter, PartInfo, read_manifest
from ags_etl.loaders.storage import OutputLocation
from ags_etl.server.testing import run_server
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, SyncSpec, check_job
from tests.layers import expected_rows, write_layer

from ._data_shp_parquet import make_batches, make_schema
from .test_geoparquet import assert_valid

N = 90


@pytest.fixture(scope="module")
def layer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("dataset-layers")
    write_layer(d / "polygons.geojson", "polygons", N)
    with run_server(d, "--max-record-count", "9") as base:
        yield f"{base}/arcgis/rest/services/polygons/FeatureServer/0"


def job(url: str, path: str, **sink: object) -> JobSpec:
    return JobSpec(name="polygons", source=SourceSpec(url=url, concurrency=2), sink=SinkSpec(type="geoparquet", path=path, **sink))


def sorted_table(table: pa.Table) -> pa.Table:
    return table.replace_schema_metadata(None).sort_by("OBJECTID")


def parts_of(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".parquet")


def test_dataset_reads_back_exactly_with_geopandas_pyarrow_and_duckdb(layer: str, tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    single = tmp_path / "one.parquet"
    result = build_pipeline(job(layer, f"{folder}/", rows_per_part=25)).run()
    build_pipeline(job(layer, str(single))).run()
    assert result.features == N
    assert sorted(os.listdir(tmp_path)) == ["ds", "one.parquet"], "no staging folder is left"

    parts = parts_of(folder)
    assert len(parts) >= 3 and sorted(os.listdir(folder)) == sorted([*parts, MANIFEST_NAME])
    for name in parts:
        assert_valid(folder / name)  # every part is a GeoParquet 1.1 file of its own

    manifest = read_manifest(str(folder))
    assert manifest["rows"] == N and [p["path"] for p in manifest["parts"]] == parts
    assert sum(p["rows"] for p in manifest["parts"]) == N
    assert sum(pq.ParquetFile(folder / p["path"]).metadata.num_rows for p in manifest["parts"]) == N
    for p in manifest["parts"]:
        geo = json.loads(pq.ParquetFile(folder / p["path"]).metadata.metadata[b"geo"])
        assert geo["columns"]["geometry"]["bbox"] == p["bbox"]
    assert manifest["crs"]["id"] == {"authority": "EPSG", "code": 4326}

    # pyarrow.dataset: the same table as the single-file output, value for value.
    assert sorted_table(pads.dataset(folder).to_table()).equals(sorted_table(pq.read_table(single)))
    # DuckDB over the part files.
    assert duckdb.sql(f"SELECT count(*), count(DISTINCT OBJECTID) FROM read_parquet('{folder}/*.parquet')").fetchall() == [(N, N)]
    # geopandas takes the folder as one GeoDataFrame, with its CRS and the source's features.
    frame = geopandas.read_parquet(folder).sort_values("OBJECTID")
    assert frame.crs.to_epsg() == 4326
    expected = expected_rows("polygons", N)
    assert list(frame["OBJECTID"]) == sorted(expected)
    for oid, name, geom in zip(frame["OBJECTID"], frame["NAME"], frame.geometry):
        want = expected[oid]
        assert (name if isinstance(name, str) else None) == want["NAME"]
        if want["geometry"] is None:
            assert geom is None
        else:
            assert shapely.equals(geom, want["geometry"]), oid


def test_partitioned_option_and_overwrite_replace_the_whole_folder(layer: str, tmp_path: Path) -> None:
    folder = tmp_path / "ds"
    build_pipeline(job(layer, str(folder), partitioned=True, rows_per_part=30)).run()
    first = parts_of(folder)
    assert len(first) == 3
    with pytest.raises(OutputExistsError, match="exists; pass --overwrite"):
        build_pipeline(job(layer, str(folder), partitioned=True)).run()
    assert parts_of(folder) == first
    build_pipeline(job(layer, str(folder), partitioned=True, overwrite=True)).run()  # one part now
    assert parts_of(folder) == ["part-00000.parquet"]
    assert sorted(os.listdir(tmp_path)) == ["ds"], "the earlier folder was renamed away and removed"
    assert pads.dataset(folder).count_rows() == N


def test_error_in_the_block_leaves_no_folder_and_keeps_an_earlier_one(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    folder = tmp_path / "ds"
    loader = GeoParquetLoader(f"{folder}/", rows_per_part=10)
    with pytest.raises(RuntimeError), loader.open(schema) as writer:
        for batch in make_batches(schema, "polygons", 40, 7):
            writer.write(batch)
        raise RuntimeError("the extraction failed")
    assert os.listdir(tmp_path) == []

    with loader.open(schema) as writer:
        writer.write(next(make_batches(schema, "polygons", 5, 5)))
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    again = GeoParquetLoader(f"{folder}/", overwrite=True, rows_per_part=10)
    with pytest.raises(RuntimeError), again.open(schema) as writer:
        for batch in make_batches(schema, "polygons", 40, 7):
            writer.write(batch)
        raise RuntimeError("the extraction failed")
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert os.listdir(tmp_path) == ["ds"]


def test_empty_stream_gives_one_empty_part(tmp_path: Path) -> None:
    schema = make_schema("points")
    with GeoParquetLoader(f"{tmp_path / 'ds'}/").open(schema):
        pass
    assert parts_of(tmp_path / "ds") == ["part-00000.parquet"]
    assert_valid(tmp_path / "ds" / "part-00000.parquet")
    assert len(geopandas.read_parquet(tmp_path / "ds")) == 0
    assert read_manifest(str(tmp_path / "ds"))["rows"] == 0


def _worker_write(writer: DatasetWriter, name: str, start: int) -> PartInfo:
    schema = make_schema("points")
    return writer.write_part(name, list(make_batches(schema, "points", 10, 4)))


def test_parts_written_by_other_processes_and_committed_by_the_driver(tmp_path: Path) -> None:
    schema = make_schema("points")
    target = OutputLocation.parse(tmp_path / "ds", folder=True)
    writer = DatasetWriter.begin(target, schema)
    staging = Path(writer.staging)
    assert staging.parent == tmp_path and staging.name.startswith(".ds.") and staging.name.endswith(".part")
    context = multiprocessing.get_context("fork")  # the writer still crosses by pickle; fork only saves start-up time
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=context) as pool:
        infos = list(pool.map(_worker_write, [writer] * 3, ["a", "b", "a"], [0, 10, 0]))
    assert [i.file for i in infos] == ["part-a.parquet", "part-b.parquet", "part-a.parquet"]
    assert not (tmp_path / "ds").exists(), "nothing is visible before the commit"
    writer.commit(infos[:2])  # a retried task ("a" twice) overwrote its part rather than adding one
    assert parts_of(tmp_path / "ds") == ["part-a.parquet", "part-b.parquet"]
    assert pads.dataset(tmp_path / "ds").count_rows() == 20
    assert read_manifest(str(tmp_path / "ds"))["rows"] == 20
    assert os.listdir(tmp_path) == ["ds"]


def test_killed_run_leaves_no_target_folder(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    data = tmp_path_factory.mktemp("slow-layer")
    write_layer(data / "points.geojson", "points", N)
    folder = tmp_path / "ds"
    with run_server(data, "--max-record-count", "3", "--latency-ms", "100") as base:
        pipeline = tmp_path / "p.yaml"
        pipeline.write_text(json.dumps({"version": 1, "jobs": [{
            "name": "points",
            "source": {"url": f"{base}/arcgis/rest/services/points/FeatureServer/0", "concurrency": 1},
            "sink": {"type": "geoparquet", "path": f"{folder}/", "rows_per_part": 3},
        }]}))
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(pipeline), "--quiet"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 30
        try:
            while not [p for p in tmp_path.glob(".ds.*.part/part-*.parquet")]:
                assert proc.poll() is None, f"the run ended before writing a part: {proc.communicate()}"
                assert time.monotonic() < deadline, "the run never wrote a part"
                time.sleep(0.02)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=10)
    assert not folder.exists()
    assert [p.name.startswith(".ds.") for p in tmp_path.iterdir() if p.name != "p.yaml"] == [True]


def test_spec_takes_partitioned_and_refuses_urls_for_other_sinks(tmp_path: Path) -> None:
    url = "https://example.com/arcgis/rest/services/x/FeatureServer/0"
    assert check_job(job(url, str(tmp_path / "ds"), partitioned=True)) == []
    bad = JobSpec(name="x", source=SourceSpec(url=url), sink=SinkSpec(type="shapefile", path="s3://bucket/x.shp"))
    (issue,) = check_job(bad)
    assert issue.loc == ("sink", "path")
    assert "cannot write to a URL (s3://); object storage takes geoparquet and geojson sinks only" in issue.message
    for path in ("s3://bucket/x.parquet", str(tmp_path / "ds") + "/"):
        synced = job(url, path).model_copy(update={"sync": SyncSpec(cursor_field="WHEN")})
        assert [(i.loc, "merges into a single local file" in i.message) for i in check_job(synced)] == [(("sync",), True)]
    with pytest.raises(ConfigError, match="storage_options apply to object-storage URLs"):
        GeoParquetLoader(str(tmp_path / "x.parquet"), storage_options={"endpoint_url": "http://127.0.0.1:1"})
