"""The feature_service loader: pure planning (ags_etl.arcgis.edits), then runs over HTTP against
``ags-etl serve --editable``."""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import fiona
import numpy as np
import pyarrow as pa
import pytest
import requests
import shapely
from pyproj import CRS, Transformer

from ags_etl.arcgis import edits as plan
from ags_etl.errors import ArcGISError, CapabilityError, EditError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.loaders.feature_service import FeatureServiceLoader
from ags_etl.pipeline import Pipeline, RunResult
from ags_etl.schema import Field, LayerSchema
from ags_etl.server.testing import run_server
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, check_job
from tests.cli.helpers import ags
from tests.loopback import JSONHandler, serving

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
    assert fmap.skipped == ()
    assert (fmap.key_source, fmap.key_target) == ("code", "CODE")
    # a field the server fills itself is left out when it only matches by name
    source = _schema(Field("code", "esriFieldTypeString"), Field("EditDate", "esriFieldTypeDate"))
    target = _schema(Field("code", "esriFieldTypeString"), Field("EditDate", "esriFieldTypeDate"))
    fmap = plan.plan_field_map(source, target, overrides={}, key=None,
                               maintained={"editdate": "editor tracking"}, target_label="T")
    assert [s for s, _ in fmap.pairs] == ["code"] and fmap.skipped == ("EditDate",)


def test_field_map_lists_every_problem_at_once() -> None:
    source = _schema(
        Field("name", "esriFieldTypeString"),
        Field("extra", "esriFieldTypeString"),
        Field("ratio", "esriFieldTypeDouble"),
        Field("Editor", "esriFieldTypeString"),
        Field("who", "esriFieldTypeString"),
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
            source, target, overrides={"nope": "x", "who": "Editor"}, key="id",
            maintained={"objectid": "object id", "editor": "editor tracking"}, target_label="target layer T",
        )
    text = str(info.value)
    assert "'nope' is not a source field" in text
    assert "source field 'extra' has no field 'extra' in target layer T" in text and "{extra: null}" in text
    assert "'ratio' (esriFieldTypeDouble) cannot be written to 'ratio' (esriFieldTypeInteger)" in text
    assert "source field 'who' would be written to 'Editor'" in text and "editor tracking" in text
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


# ---------------------------------------------------------------------------- over HTTP
#
# The source is a read-only `ags-etl serve` of a GeoJSON file in EPSG:4326; the target an
# `ags-etl serve --editable` of a point shapefile in EPSG:3857 (its text fields hold at most 8
# and 12 characters) whose one feature, key "SEED", is not in the source. The target's access
# log counts applyEdits requests.

N = 60


def _source_rows(n: int = N, *, changed: frozenset[int] = frozenset(), skip: frozenset[int] = frozenset()) -> list[dict]:
    rows = []
    for i in range(n):
        if i in skip:
            continue
        rows.append({
            "OBJECTID": i + 1,
            "code": f"K{i:03d}",
            "name": f"n{i}" + ("x" if i in changed else ""),
            "pop": i * 10 + (1 if i in changed else 0),
            "ratio": i / 7,
            "when": f"20{i % 30:02d}-01-02T03:04:05Z",
            "xy": (-122.0 + i * 0.01, 37.0 + (i % 5) * 0.01),
        })
    return rows


def _write_source(folder: Path, rows: list[dict], name: str = "src") -> str:
    folder.mkdir(parents=True, exist_ok=True)
    feats = [
        {"type": "Feature", "properties": {k: v for k, v in r.items() if k != "xy"},
         "geometry": {"type": "Point", "coordinates": list(r["xy"])}}
        for r in rows
    ]
    (folder / f"{name}.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return name


def _write_target(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    schema = {"geometry": "Point",
              "properties": {"code": "str:8", "name": "str:12", "pop": "int", "ratio": "float", "when": "date"}}
    with fiona.open(folder / "tgt.shp", "w", driver="ESRI Shapefile", schema=schema, crs="EPSG:3857") as dst:
        dst.write({"geometry": {"type": "Point", "coordinates": (1000.0, 2000.0)},
                   "properties": {"code": "SEED", "name": "seed", "pop": 1, "ratio": 0.5, "when": "2001-01-01"}})


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a read-only server with layers src (N points), changed (3 values differ,
    2 features gone), long (one name too long for the target)."""
    folder = tmp_path_factory.mktemp("fs-source")
    _write_source(folder, _source_rows())
    _write_source(folder, _source_rows(changed=frozenset({1, 2, 3}), skip=frozenset({10, 11})), "changed")
    long_rows = _source_rows()
    long_rows[7]["name"] = "much too long a name"
    _write_source(folder, long_rows, "long")
    with run_server(folder) as base:
        yield base


#: Access log → base URL of the server writing it.
_SERVERS: dict[Path, str] = {}


@contextlib.contextmanager
def _target(tmp_path: Path, *args: str) -> Iterator[tuple[str, Path]]:
    """(target layer URL, access log) of a fresh editable server."""
    _write_target(tmp_path / "tgt")
    log = tmp_path / "access.log"
    with run_server(tmp_path / "tgt", "--editable", "--store", str(tmp_path / "store"), *args, log_path=log) as base:
        _SERVERS[log] = base
        yield f"{base}/arcgis/rest/services/tgt/FeatureServer/0", log


def post_json(url: str, **params: object) -> dict:
    response = requests.post(url, data={"f": "json", **params}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _edit_requests(log: Path) -> int:
    """applyEdits requests in the access log, once a marker request sent now has been logged and
    the log stopped growing (the server logs each request after answering it)."""
    marker = f"/arcgis/rest/info/{time.monotonic_ns()}"
    requests.get(_SERVERS[log] + marker, timeout=30)
    for _ in range(200):
        text = log.read_text()
        if marker in text:
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"the server never logged {marker}")
    # a request answered just before the marker may still be on its way to the log (another thread)
    while True:
        time.sleep(0.3)
        again = log.read_text()
        if again == text:
            return sum(1 for line in text.splitlines() if "/applyEdits" in line)
        text = again


def _features(layer: str, **params: object) -> list[dict]:
    answer = post_json(f"{layer}/query", where="1=1", outFields="*", returnGeometry="true", **params)
    return answer["features"]


def _by_code(layer: str) -> dict[str, dict]:
    feats = _features(layer)
    codes = [f["attributes"]["code"] for f in feats]
    assert len(codes) == len(set(codes)), "a key is in the target twice"
    return {f["attributes"]["code"]: f for f in feats}


def _run(source_url: str, loader: FeatureServiceLoader) -> RunResult:
    return Pipeline(FeatureLayerExtractor(source_url), [], loader).run()


def _layer(base: str, name: str = "src") -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


def test_upsert_reprojects_then_a_second_upsert_sends_nothing(source: str, tmp_path: Path) -> None:
    with _target(tmp_path) as (target, log):
        result = _run(_layer(source), FeatureServiceLoader(target, mode="upsert", key="code"))
        assert result.load.features == N
        held = _by_code(target)
        assert set(held) == {f"K{i:03d}" for i in range(N)} | {"SEED"}  # upsert keeps what the source lacks
        to_merc = Transformer.from_crs(4326, 3857, always_xy=True)
        for row in _source_rows():
            f = held[row["code"]]
            x, y = to_merc.transform(*row["xy"])
            assert f["geometry"]["x"] == pytest.approx(x, abs=1e-6) and f["geometry"]["y"] == pytest.approx(y, abs=1e-6)
            assert (f["attributes"]["name"], f["attributes"]["pop"]) == (row["name"], row["pop"])
            assert f["attributes"]["ratio"] == pytest.approx(row["ratio"], rel=1e-12)
        sent = _edit_requests(log)
        assert sent >= 1
        again = _run(_layer(source), FeatureServiceLoader(target, mode="upsert", key="code"))
        assert _edit_requests(log) == sent, "an immediate second upsert sent applyEdits"
        assert (again.load.added, again.load.updated, again.load.unchanged) == (0, 0, N)  # type: ignore[attr-defined]


def test_mirror_updates_only_what_changed_and_deletes_what_is_gone(source: str, tmp_path: Path) -> None:
    with _target(tmp_path) as (target, _log):
        _run(_layer(source), FeatureServiceLoader(target, mode="mirror", key="code"))
        before = _by_code(target)
        assert "SEED" not in before and len(before) == N
        result = _run(_layer(source, "changed"), FeatureServiceLoader(target, mode="mirror", key="code"))
        stats = result.load
        assert (stats.added, stats.updated, stats.deleted, stats.unchanged) == (0, 3, 2, N - 5)  # type: ignore[attr-defined]
        after = _by_code(target)
        assert set(after) == {f"K{i:03d}" for i in range(N)} - {"K010", "K011"}
        assert after["K001"]["attributes"]["name"] == "n1x"
        # updates keep the feature (same OBJECTID); unchanged features were not touched
        assert after["K001"]["attributes"]["OBJECTID"] == before["K001"]["attributes"]["OBJECTID"]
        assert after["K020"]["attributes"]["EditDate"] == before["K020"]["attributes"]["EditDate"]


def test_append_adds_and_replace_empties_first(source: str, tmp_path: Path) -> None:
    with _target(tmp_path) as (target, _log):
        _run(_layer(source), FeatureServiceLoader(target, mode="append"))
        _run(_layer(source), FeatureServiceLoader(target, mode="append"))
        assert len(_features(target)) == 2 * N + 1
        _run(_layer(source), FeatureServiceLoader(target, mode="replace"))
        codes = sorted(f["attributes"]["code"] for f in _features(target))
        assert codes == sorted(f"K{i:03d}" for i in range(N))


def test_mapping_problems_are_reported_before_any_edit(source: str, tmp_path: Path) -> None:
    with _target(tmp_path) as (target, log):
        before = _by_code(target)
        loader = FeatureServiceLoader(target, mode="upsert", key="code", fields={"pop": "population", "nope": "x"})
        with pytest.raises(CapabilityError) as info:
            _run(_layer(source), loader)
        text = str(info.value)
        assert "source field 'pop' has no field 'population'" in text and "'nope' is not a source field" in text
        missing_key = FeatureServiceLoader(target, mode="upsert", key="code", fields={"code": None})
        with pytest.raises(CapabilityError, match="key 'code' maps to no field"):
            _run(_layer(source), missing_key)
        assert _edit_requests(log) == 0
        assert _by_code(target).keys() == before.keys()


def test_lost_answers_never_duplicate(source: str, tmp_path: Path) -> None:
    with _target(tmp_path, "--drop-edit-answers", "2") as (target, log):
        result = _run(_layer(source), FeatureServiceLoader(target, mode="upsert", key="code", batch_size=16, timeout=10))
        held = _by_code(target)  # asserts every key once
        assert set(held) == {f"K{i:03d}" for i in range(N)} | {"SEED"}
        assert result.load.lost_answers == 2 and result.load.added == N  # type: ignore[attr-defined]
        assert "dropped after commit" in log.read_text()
        # without a key, the layer's count tells whether the lost batch arrived
    with _target(tmp_path / "nokey", "--drop-edit-answers", "1") as (target, _log):
        _run(_layer(source), FeatureServiceLoader(target, mode="append", batch_size=25, timeout=10))
        assert len(_features(target)) == N + 1


def test_dry_run_prints_the_edits_and_sends_nothing(source: str, tmp_path: Path) -> None:
    with _target(tmp_path) as (target, log):
        _run(_layer(source, "changed"), FeatureServiceLoader(target, mode="upsert", key="code"))
        sent = _edit_requests(log)
        pipeline_file = tmp_path / "p.yaml"
        pipeline_file.write_text(json.dumps({"version": 1, "jobs": [{
            "name": "push", "source": {"url": _layer(source)},
            "sink": {"type": "feature_service", "url": target, "mode": "mirror", "key": "code"},
        }]}))
        proc = ags("run", str(pipeline_file), "--dry-run", "-q")
        assert proc.returncode == 0, proc.stderr
        lines = [line.split(": ", 2)[2] for line in proc.stdout.splitlines() if line.startswith("dry run: ")]
        assert sorted(lines) == sorted(
            ["add key='K010'", "add key='K011'"]
            + [f"update key='K00{i}' objectid={held}" for i, held in
               ((i, _by_code(target)[f"K00{i}"]["attributes"]["OBJECTID"]) for i in (1, 2, 3))]
            + [f"delete key='SEED' objectid={_by_code(target)['SEED']['attributes']['OBJECTID']}"]
        ), proc.stdout
        assert _edit_requests(log) == sent


def test_values_the_target_cannot_hold_are_reported_and_the_rest_arrives(source: str, tmp_path: Path) -> None:
    with _target(tmp_path, "--token-auth", "editor:s3cret-pw", "--token-ttl", "1", "--latency-ms", "150") as (target, log):
        pipeline_file = tmp_path / "p.yaml"
        pipeline_file.write_text(json.dumps({"version": 1, "jobs": [{
            "name": "push", "source": {"url": _layer(source, "long")},
            "sink": {"type": "feature_service", "url": target, "mode": "upsert", "key": "code", "batch_size": 4,
                     "auth": {"username": "editor", "password": "${TARGET_PW}"}},
        }]}))
        report = tmp_path / "report.json"
        proc = ags("run", str(pipeline_file), "--report", str(report), env={"TARGET_PW": "s3cret-pw"})
        assert proc.returncode == 1, proc.stderr
        assert "'K007'" in proc.stderr and "holds at most 12 characters" in proc.stderr
        held = _by_code_auth(target)
        assert set(held) == {f"K{i:03d}" for i in range(N) if i != 7} | {"SEED"}
        for text in (proc.stdout, proc.stderr, report.read_text()):
            assert "s3cret-pw" not in text
        _edit_requests(log)
        assert log.read_text().count("/tokens/generateToken") >= 3  # the 1 s token was renewed mid-run


def _by_code_auth(layer: str) -> dict[str, dict]:
    base = layer.split("/arcgis/")[0]
    token = post_json(f"{base}/arcgis/tokens/generateToken", username="editor", password="s3cret-pw",
                      client="referer", referer="t")["token"]
    feats = post_json(f"{layer}/query", where="1=1", outFields="code", returnGeometry="false", token=token)["features"]
    codes = [f["attributes"]["code"] for f in feats]
    assert len(codes) == len(set(codes))
    return {c: f for c, f in zip(codes, feats, strict=True)}


class _PickyLayer(JSONHandler):
    """An editable point layer that fails requests of more than 8 adds (HTTP 500), refuses a whole
    request holding key K007 (error 400) and fails the add of K013 alone (code 1000)."""

    held: ClassVar[dict[str, dict]] = {}
    sizes: ClassVar[list[int]] = []
    layer: ClassVar[dict] = {
        "name": "picky", "type": "Feature Layer", "geometryType": "esriGeometryPoint", "objectIdField": "OBJECTID",
        "spatialReference": {"wkid": 4326}, "capabilities": "Create,Delete,Query,Update,Editing", "maxRecordCount": 1000,
        "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID"},
                   {"name": "code", "type": "esriFieldTypeString", "length": 10},
                   {"name": "name", "type": "esriFieldTypeString", "length": 50},
                   {"name": "pop", "type": "esriFieldTypeInteger"}],
    }

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        if path.endswith("/applyEdits"):
            adds = json.loads(params["adds"])
            self.sizes.append(len(adds))
            if len(adds) > 8:
                return 500, "text/html", b"<html>busy</html>"
            if any(a["attributes"]["code"] == "K007" for a in adds):
                error = {"code": 400, "message": "Unable to complete operation.", "details": ["K007 is cursed"]}
                return 200, "application/json", json.dumps({"error": error}).encode()
            results = []
            for a in adds:
                if a["attributes"]["code"] == "K013":
                    results.append({"objectId": None, "success": False, "error": {"code": 1000, "description": "bad value"}})
                else:
                    self.held[a["attributes"]["code"]] = a
                    results.append({"objectId": len(self.held), "success": True})
            return 200, "application/json", json.dumps({"addResults": results}).encode()
        if path.endswith("/query"):
            asked = re.findall(r"'([^']*)'", params.get("where", ""))
            feats = [{"attributes": {"code": c}} for c in asked if c in self.held]
            return 200, "application/json", json.dumps({"features": feats}).encode()
        return 200, "application/json", json.dumps(self.layer).encode()


def test_failed_batches_are_halved_and_faulty_features_reported_alone(source: str) -> None:
    with serving(_PickyLayer) as base:
        target = f"{base}/arcgis/rest/services/picky/FeatureServer/0"
        loader = FeatureServiceLoader(target, mode="append", key="code", batch_size=16, fields={"ratio": None, "when": None})
        with pytest.raises(EditError) as info:
            _run(_layer(source), loader)
    text = str(info.value)
    assert "2 feature(s) could not be written" in text
    assert "add of key 'K007' failed: error 400: K007 is cursed" in text
    assert "add of key 'K013' failed: error 1000: bad value" in text
    assert set(_PickyLayer.held) == {f"K{i:03d}" for i in range(N)} - {"K007", "K013"}
    sizes = _PickyLayer.sizes
    assert sizes[:2] == [16, 8] and 1 in sizes  # halved after the failure, down to one for K007
    assert all(b <= 8 for a, b in itertools.pairwise(sizes) if a > 8)  # every failure halves
    assert sizes.count(16) >= 2  # and good requests grow the batch back
