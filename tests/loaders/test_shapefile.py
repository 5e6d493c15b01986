"""ShapefileLoader: real files read back with GDAL (pyogrio); no mocks."""

from __future__ import annotations

import datetime as dt
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyogrio
import pytest
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, LoadError, OutputExistsError
from ags_etl.loaders.shapefile import ShapefileLoader, shapefile_field_names
from ags_etl.schema import Field, LayerSchema

from ._data_shp_parquet import (
    LONG_TEXT,
    attribute_rows,
    make_batch,
    make_batches,
    make_geometry,
    make_schema,
    promote,
)

EXPECTED_NAMES = {
    "OBJECTID": "OBJECTID",
    "NAME": "NAME",
    "NOTES": "NOTES",
    "NAME_LONG_1": "NAME_LONG_",
    "NAME_LONG_2": "NAME_LON_1",
    "SHAPE_Length": "SHAPE_Leng",
    "SMALL": "SMALL",
    "COUNT": "COUNT",
    "BIG": "BIG",
    "RATIO": "RATIO",
    "CREATED": "CREATED",
    "DAY": "DAY",
    "AT_TIME": "AT_TIME",
    "GlobalID": "GlobalID",
}


def write(path: Path, schema: LayerSchema, batches: list[FeatureBatch] | Any, **kw: Any) -> Any:
    loader = ShapefileLoader(path, **kw)
    loader.check(schema)
    with loader.open(schema) as writer:
        for b in batches:
            writer.write(b)
    return writer.stats


def read(path: str | Path) -> tuple[dict[str, Any], pa.Table, list[shapely.Geometry | None]]:
    meta, table = pyogrio.read_arrow(str(path))
    geoms = list(shapely.from_wkb(table.column(meta["geometry_name"] or "wkb_geometry").to_pylist()))
    return meta, table, geoms


def leftovers(folder: Path) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith("."))


def expected_value(name: str, value: Any) -> Any:
    """What a value of field ``name`` reads back as from the DBF."""
    if value is None:
        return None
    if name == "CREATED":  # epoch ms → the UTC calendar date
        return (dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(milliseconds=value)).date()
    if name == "AT_TIME":
        t = (dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=value)).time()
        return t.isoformat(timespec="milliseconds")
    if name == "NOTES" and value == LONG_TEXT:
        return LONG_TEXT.encode()[:254].decode()
    return value


# ------------------------------------------------------------------ round trips


def test_points_round_trip_values_types_names_crs_cpg(tmp_path: Path) -> None:
    schema = make_schema("points", CRS.from_epsg(3857))
    n = 60
    stats = write(tmp_path / "pts.shp", schema, make_batches(schema, "points", n, 17))

    assert stats.features == n
    assert stats.outputs == [tmp_path / "pts.shp"]
    assert stats.renamed_fields == {k: v for k, v in EXPECTED_NAMES.items() if k != v}
    assert any("NAME_LONG_1 → NAME_LONG_" in w for w in stats.warnings)
    assert sum("time of day" in w for w in stats.warnings) == 1  # once per run, not per batch
    assert any("'NOTES'" in w and "cut" in w for w in stats.warnings)
    assert leftovers(tmp_path) == []

    info = pyogrio.read_info(tmp_path / "pts.shp")
    assert info["features"] == n
    assert info["geometry_type"] == "Point"
    assert list(info["fields"]) == list(EXPECTED_NAMES.values())
    types = dict(zip(info["fields"], info["ogr_types"], strict=True))
    assert types["OBJECTID"] == types["COUNT"] == types["BIG"] == "OFTInteger64"
    assert types["SMALL"] == "OFTInteger"
    assert types["SHAPE_Leng"] == types["RATIO"] == "OFTReal"
    assert types["CREATED"] == types["DAY"] == "OFTDate"
    assert types["NAME"] == types["AT_TIME"] == types["GlobalID"] == "OFTString"
    assert info["encoding"] == "UTF-8"
    assert (tmp_path / "pts.cpg").read_text().strip().upper() in ("UTF-8", "UTF8")
    prj = (tmp_path / "pts.prj").read_text()
    assert prj.startswith('PROJCS["WGS_1984_Web_Mercator_Auxiliary_Sphere"')  # Esri WKT
    assert CRS.from_wkt(prj).equals(schema.crs, ignore_axis_order=True)

    _, table, geoms = read(tmp_path / "pts.shp")
    source = attribute_rows(0, n)
    for original, written in EXPECTED_NAMES.items():
        got = table.column(written).to_pylist()
        want = [expected_value(original, v) for v in source[original]]
        if original in ("SHAPE_Length", "RATIO"):
            assert [g is None for g in got] == [w is None for w in want], original
            pairs = [(g, w) for g, w in zip(got, want, strict=True) if w is not None]
            assert pairs and all(g == pytest.approx(w, rel=1e-12, abs=1e-9) for g, w in pairs), original
        else:
            assert got == want, original
    for i, g in enumerate(geoms):
        want = make_geometry("points", i)
        if want is None:
            assert g is None
        else:
            assert g is not None and g.equals_exact(want, 1e-9), i
    assert geoms[0] is not None and (geoms[0].x, geoms[0].y) == (0.0, 0.0)


@pytest.mark.parametrize("kind", ["polygons", "lines", "multipoints"])
def test_geometry_families_round_trip(tmp_path: Path, kind: str) -> None:
    schema = make_schema(kind, CRS.from_epsg(2227))
    n = 40
    write(tmp_path / f"{kind}.shp", schema, make_batches(schema, kind, n, 9))
    info = pyogrio.read_info(tmp_path / f"{kind}.shp")
    assert info["geometry_type"] == {"polygons": "Polygon", "lines": "LineString", "multipoints": "MultiPoint"}[kind]
    assert CRS.from_wkt((tmp_path / f"{kind}.prj").read_text()).equals(schema.crs, ignore_axis_order=True)
    _, table, geoms = read(tmp_path / f"{kind}.shp")
    assert table.column("OBJECTID").to_pylist() == list(range(1, n + 1))
    for i, g in enumerate(geoms):
        want = promote(make_geometry(kind, i))
        if want is None:
            assert g is None, i
        else:
            assert promote(g).equals_exact(want, 1e-9), (i, g.wkt, want.wkt)
    if kind == "polygons":  # holes survive: interior rings in the read-back
        assert sum(shapely.get_num_interior_rings(shapely.get_parts(np.array(geoms))).tolist()) > 0


def test_3d_points(tmp_path: Path) -> None:
    schema = make_schema("points", has_z=True)
    write(tmp_path / "z.shp", schema, [make_batch(schema, "points", 0, 10)])
    assert pyogrio.read_info(tmp_path / "z.shp")["geometry_type"] == "Point Z"
    _, _, geoms = read(tmp_path / "z.shp")
    for i, g in enumerate(geoms):
        want = make_geometry("points", i, has_z=True)
        assert (g is None) if want is None else (g.has_z and g.equals_exact(want, 1e-9) and g.z == want.z)


def test_empty_stream_writes_an_empty_shapefile(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    stats = write(tmp_path / "empty.shp", schema, [])
    info = pyogrio.read_info(tmp_path / "empty.shp")
    assert stats.features == 0 and info["features"] == 0
    assert list(info["fields"]) == list(EXPECTED_NAMES.values())


def test_strings_cut_at_254_bytes_on_a_character_boundary_and_widened_for_utf8(tmp_path: Path) -> None:
    fields = (Field("OBJECTID", "esriFieldTypeOID"), Field("S", "esriFieldTypeString", length=4))
    schema = LayerSchema(fields, "OBJECTID", "esriGeometryPoint", CRS.from_epsg(4326))
    values = ["x" * 252 + "🌳", "公园公园", "ab", "", "🌳" * 100]
    table = pa.table({"OBJECTID": pa.array(range(5), pa.int64()), "S": values})
    geoms = np.array([shapely.Point(i, i) for i in range(5)], dtype=object)
    stats = write(tmp_path / "s.shp", schema, [FeatureBatch(table, geoms, schema.crs)])
    _, got, _ = read(tmp_path / "s.shp")
    # 256 bytes → 252 (the emoji does not fit whole); 12 bytes in a 4-character field are
    # kept (GDAL widens the field); DBF cannot tell "" from null; 400 bytes → 63 emoji.
    assert got.column("S").to_pylist() == ["x" * 252, "公园公园", "ab", None, "🌳" * 63]
    assert any("'S': 2 value(s) longer than 254 bytes" in w for w in stats.warnings)


def test_numbers_a_dbf_cannot_hold_become_null_with_a_warning(tmp_path: Path) -> None:
    fields = (Field("OBJECTID", "esriFieldTypeOID"), Field("V", "esriFieldTypeDouble"))
    schema = LayerSchema(fields, "OBJECTID", "esriGeometryPoint", CRS.from_epsg(4326))
    values = [1.5, float("nan"), float("inf"), 1e30, -123456789012.125, 0.0, None]
    table = pa.table({"OBJECTID": pa.array(range(7), pa.int64()), "V": values})
    geoms = np.array([shapely.Point(0, 0)] * 7, dtype=object)
    stats = write(tmp_path / "v.shp", schema, [FeatureBatch(table, geoms, schema.crs)])
    _, got, _ = read(tmp_path / "v.shp")
    assert got.column("V").to_pylist() == [1.5, None, None, None, -123456789012.125, 0.0, None]
    assert any("'V': 3 value(s)" in w for w in stats.warnings)


# ------------------------------------------------------------------ capability checks


def test_mixed_geometry_families_are_refused_before_writing(tmp_path: Path) -> None:
    schema = make_schema("points").replace(geometry_types_override=("Point", "Polygon"))
    loader = ShapefileLoader(tmp_path / "mixed.shp")
    with pytest.raises(CapabilityError, match="GeoJSON or GeoParquet"):
        loader.check(schema)
    with pytest.raises(CapabilityError):
        with loader.open(schema):
            pass
    assert os.listdir(tmp_path) == []


def test_table_is_refused_naming_the_fix(tmp_path: Path) -> None:
    loader = ShapefileLoader(tmp_path / "t.shp")
    with pytest.raises(CapabilityError, match="GeoParquet"):
        loader.check(make_schema("table"))


def test_a_geometry_outside_the_family_is_a_load_error(tmp_path: Path) -> None:
    schema = make_schema("points")
    batch = make_batch(schema, "points", 0, 3)
    geoms = batch.geometry.copy()
    geoms[2] = shapely.box(0, 0, 1, 1)
    with pytest.raises(LoadError, match="Polygon geometry"):
        write(tmp_path / "p.shp", schema, [batch.replace(geometry=geoms)])
    assert os.listdir(tmp_path) == []


def test_batch_in_another_crs_is_a_load_error(tmp_path: Path) -> None:
    schema = make_schema("points")
    batch = make_batch(schema, "points", 0, 3).replace(crs=CRS.from_epsg(3857))
    with pytest.raises(LoadError, match="reproject"):
        write(tmp_path / "p.shp", schema, [batch])
    assert os.listdir(tmp_path) == []


def test_bad_options_and_paths_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="max_part_bytes"):
        ShapefileLoader(tmp_path / "a.shp", max_part_bytes=0)
    with pytest.raises(ConfigError, match="split"):
        ShapefileLoader(tmp_path / "a.shp", split="no")
    with pytest.raises(ConfigError, match="unknown option"):
        ShapefileLoader(tmp_path / "a.shp", encoding="latin1")
    with pytest.raises(ConfigError, match=r"\.shp"):
        ShapefileLoader(tmp_path / "a.geojson")


def test_unknown_crs_writes_no_prj(tmp_path: Path) -> None:
    schema = make_schema("points").replace(crs=None)
    batch = make_batch(schema, "points", 0, 3)
    stats = write(tmp_path / "p.shp", schema, [batch])
    assert not (tmp_path / "p.prj").exists()
    assert any("no .prj" in w for w in stats.warnings)


# ------------------------------------------------------------------ field names


def test_field_names_are_cut_deterministically_and_unique() -> None:
    names = ["SHAPE_Length", "NAME_LONG_1", "NAME_LONG_2", "NAME_LONG_3", "name", "NAME", "Straße_Länge"]
    got = shapefile_field_names(names)
    assert got == {
        "SHAPE_Length": "SHAPE_Leng",
        "NAME_LONG_1": "NAME_LONG_",
        "NAME_LONG_2": "NAME_LON_1",
        "NAME_LONG_3": "NAME_LON_2",
        "name": "name",
        "NAME": "NAME_1",  # DBF names are case-insensitive
        "Straße_Länge": "Straße_L",  # 10 UTF-8 bytes, cut between characters
    }
    assert shapefile_field_names(names) == got
    assert len({v.upper() for v in got.values()}) == len(names)
    assert all(len(v.encode()) <= 10 for v in got.values())
    # a name that already fits keeps it even when a longer name is cut onto it
    assert shapefile_field_names(["ABCDEFGHIJK", "ABCDEFGHIJ"]) == {
        "ABCDEFGHIJK": "ABCDEFGH_1",
        "ABCDEFGHIJ": "ABCDEFGHIJ",
    }


# ------------------------------------------------------------------ size limit and parts


def test_split_into_parts_below_the_limit(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    n, limit = 45, 12_000
    stats = write(tmp_path / "big.shp", schema, make_batches(schema, "polygons", n, 10), max_part_bytes=limit)
    parts = stats.outputs
    assert len(parts) >= 3
    assert parts == [tmp_path / f"big_{k}.shp" for k in range(1, len(parts) + 1)]
    assert not (tmp_path / "big.shp").exists()
    assert leftovers(tmp_path) == []
    oids: list[int] = []
    geoms: list[shapely.Geometry | None] = []
    for part in parts:
        for ext in (".shp", ".dbf"):
            size = part.with_suffix(ext).stat().st_size
            assert size <= limit, (part.name, ext, size)
        assert part.with_suffix(".prj").exists() and part.with_suffix(".cpg").exists()
        _, table, g = read(part)
        oids += table.column("OBJECTID").to_pylist()
        geoms += g
    assert oids == list(range(1, n + 1))  # union of parts == input, in order
    for i, g in enumerate(geoms):
        want = promote(make_geometry("polygons", i))
        assert (g is None) if want is None else promote(g).equals_exact(want, 1e-9)
    # the estimate is not wildly pessimistic: every part but the last is more than half full
    for part in parts[:-1]:
        assert max(part.stat().st_size, part.with_suffix(".dbf").stat().st_size) > limit // 2


def test_part_size_estimate_is_exact(tmp_path: Path) -> None:
    """A limit equal to the size of 20 features' files gives parts of exactly 20 features."""
    schema = make_schema("polygons", has_z=True)
    write(tmp_path / "one.shp", schema, make_batches(schema, "polygons", 20, 7))
    limit = max((tmp_path / "one.shp").stat().st_size, (tmp_path / "one.dbf").stat().st_size)
    # one byte more per part would hold 21 features, one byte less 19; features 20-39 need
    # no more bytes than 0-19 (same shapes, DBF records of fixed width)
    stats = write(tmp_path / "two.shp", schema, make_batches(schema, "polygons", 40, 7), max_part_bytes=limit)
    assert [pyogrio.read_info(p)["features"] for p in stats.outputs] == [20, 20]


@pytest.mark.parametrize("kind", ["polygons", "lines", "multipoints", "points"])
def test_part_size_estimate_is_exact_when_the_shp_is_the_larger_file(tmp_path: Path, kind: str) -> None:
    fields = (Field("OBJECTID", "esriFieldTypeOID"),)
    schema = make_schema(kind).replace(fields=fields)

    def batches(n: int) -> list[FeatureBatch]:
        table = pa.table({"OBJECTID": pa.array(range(n), pa.int64())})
        geoms = np.array([make_geometry(kind, i) for i in range(n)], dtype=object)
        return [FeatureBatch(table, geoms, schema.crs)]

    write(tmp_path / "one.shp", schema, batches(20))
    shp, dbf = (tmp_path / "one.shp").stat().st_size, (tmp_path / "one.dbf").stat().st_size
    assert shp > dbf
    stats = write(tmp_path / "two.shp", schema, batches(40), max_part_bytes=shp)
    counts = [pyogrio.read_info(p)["features"] for p in stats.outputs]
    assert counts[0] == 20 and sum(counts) == 40
    assert all(p.stat().st_size <= shp for p in stats.outputs)


def test_split_accounts_for_fields_gdal_widens(tmp_path: Path) -> None:
    fields = (Field("OBJECTID", "esriFieldTypeOID"), Field("S", "esriFieldTypeString", length=1))
    schema = LayerSchema(fields, "OBJECTID", "esriGeometryPoint", CRS.from_epsg(4326))
    n, limit = 60, 1_500
    values = ["é" * i for i in range(n)]  # 2 bytes per character: the field keeps growing
    table = pa.table({"OBJECTID": pa.array(range(n), pa.int64()), "S": values})
    geoms = np.array([shapely.Point(i, 0) for i in range(n)], dtype=object)
    stats = write(tmp_path / "w.shp", schema, [FeatureBatch(table, geoms, schema.crs)], max_part_bytes=limit)
    got: list[Any] = []
    for part in stats.outputs:
        assert part.with_suffix(".dbf").stat().st_size <= limit
        got += read(part)[1].column("S").to_pylist()
    assert len(stats.outputs) > 2
    assert got == [None] + values[1:]  # "" reads back as null


def test_split_false_raises_and_leaves_nothing(tmp_path: Path) -> None:
    schema = make_schema("points")
    earlier = tmp_path / "keep.txt"
    earlier.write_text("unrelated")
    with pytest.raises(LoadError, match="split=True"):
        write(tmp_path / "big.shp", schema, make_batches(schema, "points", 50, 10), max_part_bytes=6_000, split=False)
    assert os.listdir(tmp_path) == ["keep.txt"]


def test_limit_too_small_for_one_feature(tmp_path: Path) -> None:
    schema = make_schema("points")
    with pytest.raises(LoadError, match="too small"):
        write(tmp_path / "p.shp", schema, [make_batch(schema, "points", 0, 2)], max_part_bytes=500)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ zip


@pytest.mark.parametrize("name", ["roads.zip", "roads.shp.zip"])
def test_zip_output_is_readable_through_vsizip(tmp_path: Path, name: str) -> None:
    schema = make_schema("lines")
    stats = write(tmp_path / name, schema, make_batches(schema, "lines", 30, 8))
    target = tmp_path / name
    assert stats.outputs == [target]
    assert sorted(os.listdir(tmp_path)) == [name]
    with zipfile.ZipFile(target) as zf:
        assert sorted(zf.namelist()) == ["roads.cpg", "roads.dbf", "roads.prj", "roads.shp", "roads.shx"]
    df = pyogrio.read_dataframe(f"/vsizip/{target}/roads.shp")
    assert len(df) == 30 and list(df["OBJECTID"]) == list(range(1, 31))
    assert df.crs is not None and CRS(df.crs).equals(schema.crs, ignore_axis_order=True)


def test_zip_with_parts(tmp_path: Path) -> None:
    schema = make_schema("points")
    write(tmp_path / "p.zip", schema, make_batches(schema, "points", 40, 10), max_part_bytes=8_000)
    with zipfile.ZipFile(tmp_path / "p.zip") as zf:
        shps = sorted(n for n in zf.namelist() if n.endswith(".shp"))
    assert len(shps) >= 2 and shps[0] == "p_1.shp"
    total = sum(pyogrio.read_info(f"/vsizip/{tmp_path / 'p.zip'}/{s}")["features"] for s in shps)
    assert total == 40


# ------------------------------------------------------------------ atomic behaviour


def snapshot(folder: Path) -> dict[str, bytes]:
    return {n: (folder / n).read_bytes() for n in sorted(os.listdir(folder))}


def test_existing_output_without_overwrite(tmp_path: Path) -> None:
    schema = make_schema("points")
    write(tmp_path / "p.shp", schema, [make_batch(schema, "points", 0, 5)])
    before = snapshot(tmp_path)
    loader = ShapefileLoader(tmp_path / "p.shp")
    with pytest.raises(OutputExistsError):
        loader.check(schema)
    with pytest.raises(OutputExistsError):
        with loader.open(schema):
            pass
    assert snapshot(tmp_path) == before


def test_overwrite_replaces_the_set_and_removes_stale_sidecars(tmp_path: Path) -> None:
    schema = make_schema("points")
    write(tmp_path / "p.shp", schema, [make_batch(schema, "points", 0, 5)])
    (tmp_path / "p.qix").write_bytes(b"old spatial index")
    write(tmp_path / "p.shp", schema, [make_batch(schema, "points", 0, 8)], overwrite=True)
    assert pyogrio.read_info(tmp_path / "p.shp")["features"] == 8
    assert sorted(os.listdir(tmp_path)) == ["p.cpg", "p.dbf", "p.prj", "p.shp", "p.shx"]
    # overwritten by a split output: the old p.* set goes, the parts stay
    write(tmp_path / "p.shp", schema, make_batches(schema, "points", 40, 10), overwrite=True, max_part_bytes=8_000)
    names = sorted(os.listdir(tmp_path))
    assert not any(n.startswith("p.") for n in names) and "p_1.shp" in names


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    schema = make_schema("points")
    loader = ShapefileLoader(tmp_path / "nope" / "p.shp")
    with pytest.raises(ConfigError, match="does not exist"):
        loader.check(schema)
    with pytest.raises(ConfigError):
        with loader.open(schema):
            pass


@pytest.mark.parametrize("name", ["p.shp", "p.zip"])
def test_exception_in_block_leaves_earlier_output_byte_identical(tmp_path: Path, name: str) -> None:
    schema = make_schema("points")
    write(tmp_path / name, schema, [make_batch(schema, "points", 0, 5)])
    before = snapshot(tmp_path)
    loader = ShapefileLoader(tmp_path / name, overwrite=True)
    with pytest.raises(RuntimeError, match="boom"):
        with loader.open(schema) as writer:
            writer.write(make_batch(schema, "points", 0, 20))
            raise RuntimeError("boom")
    assert snapshot(tmp_path) == before
    assert leftovers(tmp_path) == []


def test_exception_in_block_without_earlier_output_leaves_nothing(tmp_path: Path) -> None:
    schema = make_schema("polygons")
    loader = ShapefileLoader(tmp_path / "p.shp", max_part_bytes=6_000)
    with pytest.raises(RuntimeError):
        with loader.open(schema) as writer:
            for b in make_batches(schema, "polygons", 40, 10):  # several parts already written
                writer.write(b)
            raise RuntimeError("boom")
    assert os.listdir(tmp_path) == []
