"""GeoParquetLoader: files checked with geoparquet-validator, read back with pyarrow and geopandas."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import geopandas
import geoparquet_validator as gpv
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError, LoadError, OutputExistsError
from ags_etl.loaders.geoparquet import GeoParquetLoader
from ags_etl.schema import Field, LayerSchema

from ._data_shp_parquet import make_batch, make_batches, make_schema


def write(path: Path, schema: LayerSchema, batches: Any, **kw: Any) -> Any:
    loader = GeoParquetLoader(path, **kw)
    loader.check(schema)
    with loader.open(schema) as writer:
        for b in batches:
            writer.write(b)
    return writer.stats


def geo(path: Path) -> dict[str, Any]:
    return json.loads(pq.ParquetFile(path).metadata.metadata[b"geo"])


def assert_valid(path: Path) -> None:
    report = gpv.check(str(path))
    assert gpv.conformant(report, "core"), gpv.failed(report)
    assert gpv.conformant(report, "covering"), gpv.failed(report)
    passed = {o["id"] for o in report["outcomes"] if o["status"] == "pass"}
    assert "/conf/core/geo-metadata" in passed


def leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


@pytest.mark.parametrize(
    ("kind", "crs", "types"),
    [
        ("points", CRS.from_epsg(4326), ["Point"]),
        ("polygons", CRS.from_epsg(3857), ["Polygon", "MultiPolygon"]),
        ("lines", CRS.from_epsg(2227), ["LineString", "MultiLineString"]),
        ("multipoints", CRS.from_epsg(4326), ["Point", "MultiPoint"]),
    ],
)
def test_round_trip_validator_geopandas_and_metadata(tmp_path: Path, kind: str, crs: CRS, types: list[str]) -> None:
    schema = make_schema(kind, crs)
    batches = list(make_batches(schema, kind, 70, 13))
    target = tmp_path / f"{kind}.parquet"
    stats = write(target, schema, batches, row_group_size=32)
    assert stats.features == 70 and stats.outputs == [target]
    assert leftovers(tmp_path) == []
    assert_valid(target)

    source = FeatureBatch.concat(batches)
    # attributes: exact Arrow types and values (timestamps stay timestamp[ms, UTC])
    table = pq.read_table(target)
    attrs = table.select(schema.arrow_schema().names)
    assert attrs.schema.equals(schema.arrow_schema(), check_metadata=False)
    assert attrs.to_pylist() == source.attributes.to_pylist()
    assert table.schema.field("CREATED").type == pa.timestamp("ms", tz="UTC")

    # geopandas: same geometries, attributes, dtypes and crs
    df = geopandas.read_parquet(target)
    assert df.crs is not None and df.crs.equals(crs)
    expected = source.attributes.to_pandas()
    pd.testing.assert_frame_equal(pd.DataFrame(df.drop(columns="geometry")), expected)
    got = df.geometry.values
    for i, want in enumerate(source.geometry):
        if want is None:
            assert got[i] is None
        else:
            assert got[i].equals_exact(want, 1e-9), i
    assert any(g is not None and g.equals(shapely.Point(0, 0)) for g in got) or kind != "points"

    # geo metadata
    meta = geo(target)
    assert meta["version"] == "1.1.0" and meta["primary_column"] == "geometry"
    col = meta["columns"]["geometry"]
    assert col["encoding"] == "WKB"
    assert col["geometry_types"] == types
    assert CRS.from_json_dict(col["crs"]).equals(crs)
    assert col["bbox"] == pytest.approx(list(shapely.total_bounds(source.geometry)), abs=0)
    assert col["covering"] == {"bbox": {k: ["bbox", k] for k in ("xmin", "ymin", "xmax", "ymax")}}

    # covering column: the bounds of each geometry, null where there is none
    bbox = table.column("bbox").to_pylist()
    for g, b in zip(source.geometry, bbox, strict=True):
        if g is None:
            assert b is None
        else:
            assert (b["xmin"], b["ymin"], b["xmax"], b["ymax"]) == tuple(shapely.bounds(g))

    # bounded row groups
    meta_pq = pq.ParquetFile(target).metadata
    assert meta_pq.num_row_groups == 3
    assert [meta_pq.row_group(i).num_rows for i in range(3)] == [32, 32, 6]
    assert meta_pq.row_group(0).column(0).compression == "ZSTD"


def test_row_groups_are_also_bounded_by_bytes(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    batches = list(make_batches(schema, "polygons", 60, 10))
    # 1 byte: every batch passes the cap, so each is written at once as its own row group
    write(tmp_path / "b.parquet", schema, batches, row_group_size=1_000, row_group_bytes=1)
    meta = pq.ParquetFile(tmp_path / "b.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [10] * 6
    assert_valid(tmp_path / "b.parquet")
    # a cap of 25 batches' worth of bytes is never reached: one row group
    write(tmp_path / "c.parquet", schema, batches, row_group_size=1_000, row_group_bytes=25 * 2**20)
    assert pq.ParquetFile(tmp_path / "c.parquet").metadata.num_row_groups == 1


def test_3d_types_get_a_z_suffix(tmp_path: Path) -> None:
    schema = make_schema("points", has_z=True)
    batch = make_batch(schema, "points", 0, 10)
    geoms = batch.geometry.copy()
    geoms[1] = shapely.Point(5, 6)  # one 2D point among 3D ones
    write(tmp_path / "z.parquet", schema, [batch.replace(geometry=geoms)])
    assert_valid(tmp_path / "z.parquet")
    assert geo(tmp_path / "z.parquet")["columns"]["geometry"]["geometry_types"] == ["Point", "Point Z"]
    df = geopandas.read_parquet(tmp_path / "z.parquet")
    assert df.geometry.values[2].has_z and df.geometry.values[2].z == 2.0


def test_table_without_geometry_is_plain_parquet(tmp_path: Path) -> None:
    schema = make_schema("table")
    stats = write(tmp_path / "t.parquet", schema, make_batches(schema, "table", 25, 10))
    assert stats.features == 25
    pf = pq.ParquetFile(tmp_path / "t.parquet")
    assert b"geo" not in (pf.metadata.metadata or {})
    assert pf.schema_arrow.names == schema.arrow_schema().names
    assert pq.read_table(tmp_path / "t.parquet").num_rows == 25


def test_empty_stream(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    write(tmp_path / "e.parquet", schema, [])
    assert_valid(tmp_path / "e.parquet")
    col = geo(tmp_path / "e.parquet")["columns"]["geometry"]
    assert col["geometry_types"] == [] and "bbox" not in col
    assert pq.read_table(tmp_path / "e.parquet").num_rows == 0


def test_all_geometries_null(tmp_path: Path) -> None:
    schema = make_schema("points")
    batch = make_batch(schema, "points", 0, 4)
    write(tmp_path / "n.parquet", schema, [batch.replace(geometry=np.array([None] * 4, dtype=object))])
    assert_valid(tmp_path / "n.parquet")
    col = geo(tmp_path / "n.parquet")["columns"]["geometry"]
    assert col["geometry_types"] == [] and "bbox" not in col


def test_attribute_named_geometry_or_bbox(tmp_path: Path) -> None:
    fields = (
        Field("OBJECTID", "esriFieldTypeOID"),
        Field("geometry", "esriFieldTypeString"),
        Field("bbox", "esriFieldTypeDouble"),
    )
    schema = LayerSchema(fields, "OBJECTID", "esriGeometryPoint", CRS.from_epsg(4326))
    table = pa.table({"OBJECTID": pa.array([1, 2], pa.int64()), "geometry": ["a", "b"], "bbox": [1.0, 2.0]})
    geoms = np.array([shapely.Point(1, 2), shapely.Point(0, 0)], dtype=object)
    stats = write(tmp_path / "g.parquet", schema, [FeatureBatch(table, geoms, schema.crs)])
    assert len(stats.warnings) == 2
    assert_valid(tmp_path / "g.parquet")
    meta = geo(tmp_path / "g.parquet")
    assert meta["primary_column"] == "geometry_1"
    assert meta["columns"]["geometry_1"]["covering"]["bbox"]["xmin"] == ["bbox_1", "xmin"]
    got = pq.read_table(tmp_path / "g.parquet")
    assert got.column("geometry").to_pylist() == ["a", "b"] and got.column("bbox").to_pylist() == [1.0, 2.0]


def test_batch_in_another_crs_is_a_load_error(tmp_path: Path) -> None:
    schema = make_schema("points")
    batch = make_batch(schema, "points", 0, 3).replace(crs=CRS.from_epsg(3857))
    with pytest.raises(LoadError, match="reproject"):
        write(tmp_path / "p.parquet", schema, [batch])
    assert os.listdir(tmp_path) == []


def test_bad_options_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="row_group_size"):
        GeoParquetLoader(tmp_path / "a.parquet", row_group_size=0)
    with pytest.raises(ConfigError, match="row_group_bytes"):
        GeoParquetLoader(tmp_path / "a.parquet", row_group_bytes=-1)
    with pytest.raises(ConfigError, match="unknown option"):
        GeoParquetLoader(tmp_path / "a.parquet", compression="gzip")


def test_existing_output_without_overwrite(tmp_path: Path) -> None:
    schema = make_schema("points")
    write(tmp_path / "p.parquet", schema, [make_batch(schema, "points", 0, 5)])
    before = (tmp_path / "p.parquet").read_bytes()
    loader = GeoParquetLoader(tmp_path / "p.parquet")
    with pytest.raises(OutputExistsError):
        loader.check(schema)
    with pytest.raises(OutputExistsError):
        with loader.open(schema):
            pass
    assert (tmp_path / "p.parquet").read_bytes() == before
    write(tmp_path / "p.parquet", schema, [make_batch(schema, "points", 0, 9)], overwrite=True)
    assert pq.read_table(tmp_path / "p.parquet").num_rows == 9


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    loader = GeoParquetLoader(tmp_path / "nope" / "p.parquet")
    with pytest.raises(ConfigError, match="does not exist"):
        loader.check(make_schema("points"))


def test_exception_in_block_leaves_earlier_output_byte_identical(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    write(tmp_path / "p.parquet", schema, [make_batch(schema, "polygons", 0, 5)])
    before = (tmp_path / "p.parquet").read_bytes()
    loader = GeoParquetLoader(tmp_path / "p.parquet", overwrite=True, row_group_size=4)
    with pytest.raises(RuntimeError, match="boom"):
        with loader.open(schema) as writer:
            for b in make_batches(schema, "polygons", 30, 6):  # row groups already written
                writer.write(b)
            raise RuntimeError("boom")
    assert (tmp_path / "p.parquet").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["p.parquet"]


def test_exception_in_block_without_earlier_output_leaves_nothing(tmp_path: Path) -> None:
    schema = make_schema("points")
    with pytest.raises(RuntimeError):
        with GeoParquetLoader(tmp_path / "p.parquet").open(schema) as writer:
            writer.write(make_batch(schema, "points", 0, 5))
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
