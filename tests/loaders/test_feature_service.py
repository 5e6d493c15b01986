"""The feature_service loader: pure planning (ags_etl.arcgis.edits), then runs over HTTP against
``ags-etl serve --editable``."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest
import shapely
from pyproj import CRS

from ags_etl.arcgis import edits as plan
from ags_etl.errors import ArcGISError, CapabilityError
from ags_etl.schema import Field, LayerSchema
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, check_job

WGS84 = CRS.from_epsg(4326)
MERCATOR = CRS.from_epsg(3857)


def _schema(*fields: Field, geometry: str | None = "esriGeometryPoint", oid: str | None = "OBJECTID") -> LayerSchema:
    all_fields = (Field("OBJECTID", "esriFieldTypeOID", nullable=False), *fields) if oid else fields
    return LayerSchema(all_fields, oid_field=oid, geometry_type=geometry, crs=WGS84 if geometry else None)


# ---------------------------------------------------------------------------- field mapping


def test_field_map_by_name_with_overrides_drops_and_source_oid_left_out() -> None:
    source = _schema(Field("code", "esriFieldTypeString"), Field("Pop", "esriFieldTypeInteger"),
                     Field("Shape__Area", "esriFieldTypeDouble"))
    target = _schema(Field("CODE", "esriFieldTypeString", length=10), Field("population", "esriFieldTypeDouble"))
    fmap = plan.plan_field_map(
        source, target, overrides={"Pop": "population", "Shape__Area": None}, key="code",
        maintained={"objectid": "object id"}, target_label="T",
    )
    assert [(s, t.name) for s, t in fmap.pairs] == [("code", "CODE"), ("Pop", "population")]
    assert (fmap.key_source, fmap.key_target) == ("code", "CODE")


def test_field_map_lists_every_problem_at_once() -> None:
    source = _schema(
        Field("name", "esriFieldTypeString"),
        Field("extra", "esriFieldTypeString"),
        Field("ratio", "esriFieldTypeDouble"),
        Field("Editor", "esriFieldTypeString"),
        geometry="esriGeometryPolygon",
    )
    target = _schema(
        Field("name", "esriFieldTypeString"),
        Field("ratio", "esriFieldTypeInteger"),
        Field("Editor", "esriFieldTypeString"),
        Field("must", "esriFieldTypeString", nullable=False),
    )
    with pytest.raises(CapabilityError) as info:
        plan.plan_field_map(
            source, target, overrides={"nope": "x"}, key="id",
            maintained={"objectid": "object id", "editor": "editor tracking"}, target_label="target layer T",
        )
    text = str(info.value)
    assert "'nope' is not a source field" in text
    assert "source field 'extra' has no field 'extra' in target layer T" in text and "{extra: null}" in text
    assert "'ratio' (esriFieldTypeDouble) cannot be written to 'ratio' (esriFieldTypeInteger)" in text
    assert "'Editor'" in text and "editor tracking" in text
    assert "key 'id' is not a source field" in text
    assert "target field 'must' of target layer T may not be null" in text
    assert "holds esriGeometryPoint geometries, the source has esriGeometryPolygon" in text


def test_field_map_key_missing_on_the_target_side() -> None:
    source = _schema(Field("code", "esriFieldTypeString"))
    target = _schema(Field("other", "esriFieldTypeString"))
    with pytest.raises(CapabilityError, match="'code' has no field 'code'"):
        plan.plan_field_map(source, target, overrides={}, key="code", maintained={}, target_label="T")
    # a required target field with a default value needs no source field
    target = _schema(Field("code", "esriFieldTypeString"), Field("must", "esriFieldTypeInteger", nullable=False))
    fmap = plan.plan_field_map(source, target, overrides={}, key="code", maintained={}, target_label="T",
                               defaults=frozenset({"must"}))
    assert fmap.key_target == "code"


# ---------------------------------------------------------------------------- values


def test_target_values_dates_nan_and_ints_into_floats() -> None:
    stamps = pa.array([dt.datetime(1969, 12, 31, 23, 59, 59, 500000), None], type=pa.timestamp("us", tz="UTC"))
    assert plan.target_values(stamps, Field("d", "esriFieldTypeDate")) == [-500, None]
    assert plan.target_values(pa.array([dt.date(1970, 1, 2)]), Field("d", "esriFieldTypeDate")) == [86_400_000]
    assert plan.target_values(pa.array([dt.date(1970, 1, 2)]), Field("d", "esriFieldTypeDateOnly")) == ["1970-01-02"]
    assert plan.target_values(pa.array([1.5, float("nan"), None]), Field("f", "esriFieldTypeDouble")) == [1.5, None, None]
    ints = plan.target_values(pa.array([3, None], type=pa.int32()), Field("f", "esriFieldTypeDouble"))
    assert ints == [3.0, None] and isinstance(ints[0], float)


def test_value_problems_name_each_row() -> None:
    text = Field("label", "esriFieldTypeString", length=5, nullable=False)
    assert plan.value_problems(["ok", "too long", None, "12345"], text) == {
        1: "'label' holds at most 5 characters, the value has 8",
        2: "'label' may not be null",
    }
    small = Field("n", "esriFieldTypeSmallInteger")
    assert plan.value_problems([32767, 32768, None], small) == {1: "'n' (esriFieldTypeSmallInteger) cannot hold 32768"}


# ---------------------------------------------------------------------------- comparison


def test_canonical_geometries_ignore_ring_order_orientation_and_subgrid_noise() -> None:
    ccw = shapely.Polygon([(0, 0), (10, 0), (10, 10), (0, 10)])
    cw_other_start = shapely.Polygon([(10, 10), (10, 0), (0, 0), (0, 10)])
    noisy = shapely.Polygon([(0, 0), (10 + 1e-7, 0), (10, 10), (0, 10)])
    moved = shapely.Polygon([(0, 0), (10.001, 0), (10, 10), (0, 10)])
    geoms = np.array([ccw, cw_other_start, noisy, moved, None, shapely.Point()], dtype=object)
    out = plan.canonical_geometries(geoms, grid=1e-4, has_z=False)
    assert out[0] == out[1] == out[2]
    assert out[3] != out[0]
    assert out[4] is None and out[5] is None
    # Z is dropped unless the target has Z; -0.0 and 0.0 compare equal
    z = plan.canonical_geometries(np.array([shapely.Point(1, 2, 3), shapely.Point(1, 2)], dtype=object), grid=1e-9, has_z=False)
    assert z[0] == z[1]
    zero = plan.canonical_geometries(np.array([shapely.Point(-0.0, 0.0), shapely.Point(0.0, -0.0)], dtype=object), grid=1e-9, has_z=False)
    assert zero[0] == zero[1]


def test_row_digests_compare_values_as_the_target_holds_them() -> None:
    fields = [Field("v", "esriFieldTypeDouble"), Field("s", "esriFieldTypeSingle"), Field("g", "esriFieldTypeGUID")]
    a = plan.row_digests([[1, 0.1], [0.30000001, 1.0], ["{ab-1}", None]], fields, None, 2)
    b = plan.row_digests([[1.0, 0.1 + 1e-15], [0.3, 1.0], ["AB-1", None]], fields, None, 2)
    assert a == b
    c = plan.row_digests([[1.0, 0.2], [0.3, 1.0], ["AB-1", None]], fields, None, 2)
    assert c[0] == a[0] and c[1] != a[1]
    with_geom = plan.row_digests([[1.0]], fields[:1], [b"wkb"], 1)
    assert with_geom != plan.row_digests([[1.0]], fields[:1], [None], 1)


def test_classify_and_duplicates() -> None:
    target = {"a": (1, b"x"), "b": (2, b"y")}
    adds, updates, same = plan.classify(["a", "b", "c"], [b"x", b"z", b"w"], target)
    assert (adds, updates, same) == ([2], [(1, 2)], 1)
    assert plan.duplicates(["a", "b", "a", None, None, "b", "a"]) == ["a", "b"]


# ---------------------------------------------------------------------------- batches and results


def test_batch_sizes_by_geometry_halving_and_growing_back() -> None:
    assert plan.initial_batch_size("esriGeometryPoint", None) > plan.initial_batch_size("esriGeometryPolygon", None)
    assert plan.initial_batch_size("esriGeometryPolygon", 7) == 7
    sizer = plan.BatchSizer.start(100)
    for _ in range(10):
        sizer.failed()
    assert sizer.size == 1
    for _ in range(3):
        sizer.succeeded()
    assert sizer.size == 8
    for _ in range(10):
        sizer.succeeded()
    assert sizer.size == 100


def test_chunk_bounds_by_count_and_bytes() -> None:
    assert plan.chunk_bounds([10] * 7, 3) == [(0, 3), (3, 6), (6, 7)]
    assert plan.chunk_bounds([40, 40, 40, 200, 10], 100, max_bytes=100) == [(0, 2), (2, 3), (3, 4), (4, 5)]
    assert plan.chunk_bounds([], 5) == []


def test_parse_results_failures_carry_key_code_and_description() -> None:
    answer = {"addResults": [
        {"objectId": 7, "success": True},
        {"objectId": None, "success": False, "error": {"code": 1000, "description": "String too long"}},
        {"success": False},
    ]}
    ok, failures = plan.parse_results(answer, "add", ["k1", "k2", "k3"], "http://h/L/0")
    assert ok == 1
    assert [(f.key, f.code, f.description) for f in failures] == [
        ("k2", 1000, "String too long"), ("k3", None, "the server gave no reason")]
    assert str(failures[0]) == "add of key 'k2' failed: error 1000: String too long"
    with pytest.raises(ArcGISError, match="answered 1 addResults for 2 adds"):
        plan.parse_results({"addResults": [{"success": True}]}, "add", ["a", "b"], "http://h/L/0")


def test_key_where_quotes_text() -> None:
    assert plan.key_where("K", ["O'Hare", "b"]) == "K IN ('O''Hare', 'b')"
    assert plan.key_where("K", [1, 2.5]) == "K IN (1, 2.5)"


# ---------------------------------------------------------------------------- options (offline)


def _job(**sink: object) -> JobSpec:
    return JobSpec(
        name="j",
        source=SourceSpec(url="http://127.0.0.1:1/arcgis/rest/services/S/FeatureServer/0"),
        sink=SinkSpec.model_validate({"type": "feature_service", **sink}),
    )


def test_options_checked_offline() -> None:
    url = "http://127.0.0.1:1/arcgis/rest/services/T/FeatureServer/0"
    assert check_job(_job(url=url, mode="append")) == []
    assert check_job(_job(url=url, mode="upsert", key="code", auth={"token": "s3cret"})) == []
    issues = [str(i) for i in check_job(_job(url=url, mode="upsert"))]
    assert any("mode upsert needs key" in i for i in issues), issues
    issues = [str(i) for i in check_job(_job(url=url, mode="merge"))]
    assert any("sink.mode" in i for i in issues), issues
    issues = [str(i) for i in check_job(_job(url=url, mode="append", path="out.geojson"))]
    assert any("takes url, not path" in i for i in issues), issues
    issues = [str(i) for i in check_job(_job(url="http://u:pw@127.0.0.1:1/x/FeatureServer/0", mode="append"))]
    assert issues and all("pw" not in i for i in issues)
