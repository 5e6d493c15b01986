"""GeoJSON / GeoJSONL loaders: RFC 7946 structure, values, winding, read-back with GDAL, atomicity."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyogrio
import pytest
import shapely
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, GeometryError, OutputExistsError
from ags_etl.loaders.geojson import GeoJSONLoader, GeoJSONSeqLoader
from ags_etl.schema import Field
from tests.loaders._data_geojson_kmz import (
    FIELDS,
    LONG_TEXT,
    POLY_CW,
    ROWS,
    batch,
    expected_json_value,
    files_in,
    geometry_array,
    rounded,
    same_shape,
    schema,
    shifted,
    signed_area,
)


def write(loader: GeoJSONLoader | GeoJSONSeqLoader, *batches: FeatureBatch, layer: Any = None) -> Path:
    layer = layer or schema()
    loader.check(layer)
    with loader.open(layer) as writer:
        for b in batches:
            writer.write(b)
    assert writer.stats.features == sum(len(b) for b in batches)
    assert writer.stats.outputs == [loader.path]
    return loader.path


def load_collection(path: Path) -> dict[str, Any]:
    data = orjson.loads(path.read_bytes())
    assert isinstance(data, dict)
    return data


def polygons_of(geometry: dict[str, Any]) -> list[list[list[list[float]]]]:
    if geometry["type"] == "Polygon":
        return [geometry["coordinates"]]
    if geometry["type"] == "MultiPolygon":
        return list(geometry["coordinates"])
    return []


def all_positions(geometry: dict[str, Any]) -> list[list[float]]:
    out: list[list[float]] = []

    def walk(node: Any) -> None:
        if node and isinstance(node[0], (int, float)):
            out.append(node)
        else:
            for child in node:
                walk(child)

    walk(geometry["coordinates"])
    return out


# --------------------------------------------------------------------------- FeatureCollection


def test_collection_structure_ids_and_properties(tmp_path: Path) -> None:
    path = write(GeoJSONLoader(tmp_path / "out.geojson"), batch())
    data = load_collection(path)
    assert data["type"] == "FeatureCollection"
    assert "crs" not in data
    assert data["name"] == "test layer & <friends>"
    features = data["features"]
    assert len(features) == len(ROWS)
    for feature, row in zip(features, ROWS, strict=True):
        assert feature["type"] == "Feature"
        assert "crs" not in feature
        assert feature["id"] == row["OBJECTID"]
        assert list(feature["properties"]) == [f.name for f in FIELDS]
        for f in FIELDS:
            assert feature["properties"][f.name] == expected_json_value(f.name, row[f.name]), f.name
    # spot checks written out literally, independent of the helper above
    assert features[0]["properties"]["CREATED"] == "1965-03-01T00:00:00Z"
    assert features[1]["properties"]["CREATED"] == "1901-12-13T20:45:52Z"
    assert features[2]["properties"]["CREATED"] == "1969-12-31T23:59:59.999Z"
    assert features[0]["properties"]["DAY"] == "1965-03-01"
    assert features[1]["properties"]["VALUE"] is None  # NaN
    assert features[2]["properties"]["RATIO"] == 0.1  # float32 written in its short form
    assert features[3]["properties"]["NAME"] == LONG_TEXT
    assert features[1]["properties"]["NAME"] == "Zürich – 東京 – Ελλάδα"
    assert features[2]["properties"]["NAME"] == "emoji 🗺️🚀 and ünïcödé"


def test_geometries_rounded_wound_and_in_range(tmp_path: Path) -> None:
    data = load_collection(write(GeoJSONLoader(tmp_path / "out.geojson"), batch()))
    features = data["features"]
    assert features[0]["geometry"] == {"type": "Point", "coordinates": [0.0, 0.0]}  # (0, 0) is a point, not "missing"
    assert features[5]["geometry"] is None
    assert features[6]["geometry"]["coordinates"] == [-0.1234568, 51.9876543]
    assert [f["geometry"]["type"] for f in features if f["geometry"]] == [
        "Point", "Polygon", "MultiPolygon", "LineString", "MultiLineString", "Point",
    ]
    checked_rings = 0
    for feature in features:
        if feature["geometry"] is None:
            continue
        for lon, lat, *rest in all_positions(feature["geometry"]):
            assert -180 <= lon <= 180 and -90 <= lat <= 90
            assert rest == []
            assert round(lon, 7) == lon and round(lat, 7) == lat
        for polygon in polygons_of(feature["geometry"]):
            assert signed_area(polygon[0]) > 0, "exterior ring must be counter-clockwise"
            for hole in polygon[1:]:
                assert signed_area(hole) < 0, "holes must be clockwise"
            checked_rings += len(polygon)
    assert checked_rings == 6  # 1 + 1 hole, 1 + 2 holes, 1


def test_read_back_with_gdal(tmp_path: Path) -> None:
    path = write(GeoJSONLoader(tmp_path / "out.geojson"), batch())
    df = pyogrio.read_dataframe(path)
    assert len(df) == len(ROWS)
    assert list(df["OBJECTID"]) == [r["OBJECTID"] for r in ROWS]
    for i, row in enumerate(ROWS):
        assert (None if df["NAME"].isna()[i] else df["NAME"][i]) == row["NAME"]
        note = df["NOTE"][i]
        assert (None if note is None or (isinstance(note, float) and math.isnan(note)) else note) == row["NOTE"]
        expected = row["geometry"] if row["geometry"] is None else rounded(row["geometry"])
        assert same_shape(df.geometry[i], expected), (i, df.geometry[i], expected)
    assert df["VALUE"].dtype.kind == "f"  # 100.0 and 0.0 were written as reals, not integers
    assert math.isnan(df["VALUE"][1]) and df["VALUE"][4] == 100.0


def test_several_batches_and_empty_ones(tmp_path: Path) -> None:
    empty = batch([])
    path = write(GeoJSONLoader(tmp_path / "out.geojson"), empty, batch(), empty, batch(shifted(ROWS, 100)))
    features = load_collection(path)["features"]
    assert [f["id"] for f in features] == [r["OBJECTID"] for r in ROWS] + [r["OBJECTID"] + 100 for r in ROWS]
    assert len(pyogrio.read_dataframe(path)) == 2 * len(ROWS)


def test_no_batches_gives_an_empty_valid_collection(tmp_path: Path) -> None:
    path = write(GeoJSONLoader(tmp_path / "out.geojson"))
    assert load_collection(path) == {"type": "FeatureCollection", "name": "test layer & <friends>", "features": []}


def test_table_without_geometry(tmp_path: Path) -> None:
    layer = schema(geometry_type=None, crs=None)
    path = write(GeoJSONLoader(tmp_path / "table.geojson"), batch(layer=layer, with_geometry=False, crs=None), layer=layer)
    features = load_collection(path)["features"]
    assert len(features) == len(ROWS)
    assert all(f["geometry"] is None for f in features)
    assert features[3]["properties"]["NAME"] == LONG_TEXT


def test_layer_without_oid_has_no_ids(tmp_path: Path) -> None:
    layer = schema(oid_field=None)
    path = write(GeoJSONLoader(tmp_path / "out.geojson"), batch(layer=layer), layer=layer)
    features = load_collection(path)["features"]
    assert all("id" not in f for f in features)
    assert [f["properties"]["OBJECTID"] for f in features] == [r["OBJECTID"] for r in ROWS]


def test_awkward_values_survive(tmp_path: Path) -> None:
    fields = (Field("OBJECTID", "esriFieldTypeOID"), Field("T", "esriFieldTypeString"), Field("D", "esriFieldTypeDouble"),
              Field("B", "esriFieldTypeBigInteger"))
    layer = schema(fields=fields)
    rows = [
        {"OBJECTID": 1, "T": "ctl \x00\x01\x08\x0c\x1f end", "D": 5e-324, "B": 2**53 + 1, "geometry": shapely.Point(1, 1)},
        {"OBJECTID": 2, "T": "\u2028\u2029 \ufeff", "D": 1.7976931348623157e308, "B": -(2**63), "geometry": shapely.Point(2, 2)},
        {"OBJECTID": 3, "T": '"quoted" \\ /slash/', "D": -0.0, "B": 2**63 - 1, "geometry": shapely.Point(3, 3)},
        {"OBJECTID": 4, "T": "inf", "D": float("inf"), "B": 0, "geometry": shapely.Point(4, 4)},
        {"OBJECTID": 5, "T": "small", "D": 1 / 3, "B": 1, "geometry": shapely.Point(5, 5)},
    ]
    path = write(GeoJSONLoader(tmp_path / "out.geojson"), batch(rows, layer=layer), layer=layer)
    props = [f["properties"] for f in load_collection(path)["features"]]
    assert [p["T"] for p in props] == [r["T"] for r in rows]
    assert [p["B"] for p in props] == [r["B"] for r in rows]
    assert props[0]["D"] == 5e-324 and props[1]["D"] == 1.7976931348623157e308
    assert props[2]["D"] == 0.0 and props[3]["D"] is None and props[4]["D"] == 1 / 3


def test_mixed_z_collections_and_empty_geometries(tmp_path: Path) -> None:
    rows = [
        {**ROWS[0], "OBJECTID": 1, "geometry": shapely.LineString([(1, 2, 3.25), (4, 5, -6)])},
        {**ROWS[0], "OBJECTID": 2, "geometry": shapely.LineString([(7, 8), (9, 10)])},
        {**ROWS[0], "OBJECTID": 3, "geometry": shapely.Point(1.5, 2.5, 100.125)},
        {**ROWS[0], "OBJECTID": 4, "geometry": shapely.from_wkt("POLYGON EMPTY")},
        {**ROWS[0], "OBJECTID": 5, "geometry": shapely.GeometryCollection([shapely.Point(1, 1), POLY_CW])},
        {**ROWS[0], "OBJECTID": 6, "geometry": shapely.MultiPoint([(0, 0), (1, 1)])},
    ]
    path = write(GeoJSONLoader(tmp_path / "out.geojson"), batch(rows))
    geoms = [f["geometry"] for f in load_collection(path)["features"]]
    assert geoms[0] == {"type": "LineString", "coordinates": [[1.0, 2.0, 3.25], [4.0, 5.0, -6.0]]}
    assert geoms[1] == {"type": "LineString", "coordinates": [[7.0, 8.0], [9.0, 10.0]]}
    assert geoms[2] == {"type": "Point", "coordinates": [1.5, 2.5, 100.125]}
    assert geoms[3] is None
    assert geoms[4]["type"] == "GeometryCollection"
    assert signed_area(geoms[4]["geometries"][1]["coordinates"][0]) > 0
    assert geoms[5] == {"type": "MultiPoint", "coordinates": [[0.0, 0.0], [1.0, 1.0]]}


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_coordinates_are_refused(tmp_path: Path) -> None:
    bad = batch([{**ROWS[0], "geometry": shapely.LineString([(0, 0), (float("nan"), 1)])}])
    loader = GeoJSONLoader(tmp_path / "out.geojson")
    with pytest.raises(GeometryError, match="NaN or infinite"):
        with loader.open(schema()) as writer:
            writer.write(bad)
    assert files_in(tmp_path) == []


def test_precision_option(tmp_path: Path) -> None:
    path = write(GeoJSONLoader(tmp_path / "out.geojson", precision=3), batch())
    features = load_collection(path)["features"]
    assert features[6]["geometry"]["coordinates"] == [-0.123, 51.988]
    with pytest.raises(ConfigError, match="precision"):
        GeoJSONLoader(tmp_path / "x.geojson", precision=16)
    with pytest.raises(ConfigError, match="precision"):
        GeoJSONLoader(tmp_path / "x.geojson", precision="7")
    with pytest.raises(ConfigError, match="unknown option"):
        GeoJSONLoader(tmp_path / "x.geojson", precison=3)


# --------------------------------------------------------------------------- GeoJSON sequences


def test_geojsonl_one_feature_per_line(tmp_path: Path) -> None:
    path = write(GeoJSONSeqLoader(tmp_path / "out.geojsonl"), batch(), batch(shifted(ROWS, 100)))
    raw = path.read_bytes()
    assert b"\x1e" not in raw and raw.endswith(b"\n")
    lines = raw.split(b"\n")[:-1]
    assert len(lines) == 2 * len(ROWS)
    features = [orjson.loads(line) for line in lines]
    assert all(f["type"] == "Feature" for f in features)
    assert [f["id"] for f in features] == [r["OBJECTID"] for r in ROWS] + [r["OBJECTID"] + 100 for r in ROWS]
    assert features[3]["properties"]["NAME"] == LONG_TEXT
    df = pyogrio.read_dataframe(path)
    assert len(df) == 2 * len(ROWS)
    assert same_shape(df.geometry[1], ROWS[1]["geometry"])


def test_geojsons_uses_rfc8142_record_separators(tmp_path: Path) -> None:
    path = write(GeoJSONSeqLoader(tmp_path / "out.geojsons"), batch())
    records = path.read_bytes().split(b"\x1e")
    assert records[0] == b""
    assert len(records) == len(ROWS) + 1
    assert all(r.endswith(b"\n") and orjson.loads(r)["type"] == "Feature" for r in records[1:])
    assert len(pyogrio.read_dataframe(path)) == len(ROWS)
    # the option wins over the extension
    plain = write(GeoJSONSeqLoader(tmp_path / "plain.geojsons", rs=False), batch())
    assert b"\x1e" not in plain.read_bytes()
    with pytest.raises(ConfigError, match="rs"):
        GeoJSONSeqLoader(tmp_path / "x.geojsonl", rs="yes")


# --------------------------------------------------------------------------- contract: targets and atomicity

LOADERS = [(GeoJSONLoader, "out.geojson"), (GeoJSONSeqLoader, "out.geojsonl")]


@pytest.mark.parametrize(("cls", "name"), LOADERS)
def test_existing_target_is_refused_and_kept(tmp_path: Path, cls: type, name: str) -> None:
    target = tmp_path / name
    target.write_bytes(b"earlier output")
    loader = cls(target)
    with pytest.raises(OutputExistsError):
        loader.check(schema())
    with pytest.raises(OutputExistsError):
        with loader.open(schema()) as writer:
            writer.write(batch())
    assert target.read_bytes() == b"earlier output"
    assert files_in(tmp_path) == [name]
    write(cls(target, overwrite=True), batch())
    assert target.read_bytes() != b"earlier output"


@pytest.mark.parametrize(("cls", "name"), LOADERS)
def test_missing_folder_is_a_config_error(tmp_path: Path, cls: type, name: str) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        cls(tmp_path / "missing" / name).check(schema())


@pytest.mark.parametrize(("cls", "name"), LOADERS)
def test_failure_inside_the_block_leaves_no_trace(tmp_path: Path, cls: type, name: str) -> None:
    target = tmp_path / name
    write(cls(target), batch())
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with cls(target, overwrite=True).open(schema()) as writer:
            writer.write(batch(shifted(ROWS, 1000)))
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert files_in(tmp_path) == [name]
    fresh = tmp_path / ("fresh" + Path(name).suffix)
    with pytest.raises(RuntimeError):
        with cls(fresh).open(schema()) as writer:
            writer.write(batch())
            raise RuntimeError("boom")
    assert not fresh.exists()
    assert files_in(tmp_path) == [name]


@pytest.mark.parametrize(("cls", "name"), LOADERS)
def test_wrong_crs_is_a_capability_error(tmp_path: Path, cls: type, name: str) -> None:
    mercator = CRS.from_epsg(3857)
    with pytest.raises(CapabilityError, match="EPSG:4326"):
        cls(tmp_path / name).check(schema(crs=mercator))
    with pytest.raises(CapabilityError, match="EPSG:4326"):
        with cls(tmp_path / name).open(schema(crs=mercator)):
            pass
    with pytest.raises(CapabilityError, match="EPSG:3857"):
        with cls(tmp_path / name).open(schema()) as writer:
            writer.write(batch(crs=mercator))
    assert files_in(tmp_path) == []


def test_capabilities() -> None:
    assert GeoJSONLoader.capabilities.required_crs is not None
    assert GeoJSONLoader.capabilities.required_crs.to_epsg() == 4326
    assert GeoJSONLoader.capabilities.supports_tables
    assert ".geojson" in GeoJSONLoader.capabilities.extensions and ".json" in GeoJSONLoader.capabilities.extensions
    assert ".geojsonl" in GeoJSONSeqLoader.capabilities.extensions
    assert GeoJSONSeqLoader.capabilities.required_crs == GeoJSONLoader.capabilities.required_crs


# --------------------------------------------------------------------------- helpers


def test_dates_as_written_by_pyarrow_timestamp_units(tmp_path: Path) -> None:
    """Seconds and microseconds timestamps (not only Esri's ms) come out as ISO UTC too."""
    table = pa.table(
        {
            "S": pa.array([dt.datetime(1950, 5, 6, 7, 8, 9)], pa.timestamp("s", tz="UTC")),
            "US": pa.array([dt.datetime(1950, 5, 6, 7, 8, 9, 123456)], pa.timestamp("us")),
        }
    )
    layer = schema(fields=(Field("S", "esriFieldTypeDate"), Field("US", "esriFieldTypeDate")), oid_field=None)
    b = FeatureBatch(table, geometry_array([shapely.Point(1, 1)]), CRS.from_epsg(4326))
    props = load_collection(write(GeoJSONLoader(tmp_path / "out.geojson"), b, layer=layer))["features"][0]["properties"]
    assert props == {"S": "1950-05-06T07:08:09Z", "US": "1950-05-06T07:08:09.123Z"}


def test_large_batch_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 3000
    x, y = rng.uniform(-180, 180, n), rng.uniform(-90, 90, n)
    rows = [{"OBJECTID": i + 1, "NAME": f"p{i}", "VALUE": float(v), "geometry": None} for i, v in enumerate(rng.normal(size=n))]
    layer = schema(fields=FIELDS[:2] + (FIELDS[4],))
    b = batch(rows, layer=layer).replace(geometry=np.asarray(shapely.points(x, y), dtype=object))
    features = load_collection(write(GeoJSONLoader(tmp_path / "out.geojson"), b, layer=layer))["features"]
    coords = np.array([f["geometry"]["coordinates"] for f in features])
    assert np.array_equal(coords, np.round(np.column_stack([x, y]), 7))
    assert [f["properties"]["VALUE"] for f in features] == [r["VALUE"] for r in rows]
