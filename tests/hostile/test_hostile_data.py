"""Hostile feature data, end to end: a stub layer on 127.0.0.1 answers crafted features and
`ags-etl pull` (a real process, or the Pipeline in-process where only the message matters)
either keeps them exactly or fails with one message naming the feature, the value and the fix.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pyogrio
import pytest
import shapely

from ags_etl.errors import AgsEtlError, ArcGISError, CapabilityError, GeometryError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.loaders.geojson import GeoJSONLoader, GeoJSONSeqLoader
from ags_etl.loaders.kmz import KMZLoader
from ags_etl.pipeline import Pipeline
from ags_etl.transformers.reproject import Reproject
from tests.cli.helpers import ags, one_error_line
from tests.hostile.data_stubs import feature, point, stub_layer

FIX = "the server sent malformed geometry; report it, or exclude the feature with --where"
FIX_FEATURE = "the server sent a malformed feature; report it, or exclude the feature with --where"
EDGE = [(1, 1e308, -1e308), (2, -1e308, 1e308), (3, 5e-324, -5e-324), (4, 0.0, 1.0), (5, -0.0, 1.0),
        (6, 1.7976931348623157e308, 2.5)]
SQUARE = {"rings": [[[0, 0], [0, 1], [1, 1], [1, 0], [0, 0]]]}


def bits(value: float) -> bytes:
    """The IEEE 754 bytes of a double (so -0.0 and 0.0 differ)."""
    return struct.pack("<d", value)


def pull(url: str, out: Path, *extra: str) -> Any:
    proc = ags("pull", url, "-o", str(out), *extra)
    return proc


# --------------------------------------------------------------------------- extreme coordinates


@pytest.mark.parametrize("suffix", [".geojson", ".geojsonl", ".parquet", ".shp"])
def test_extreme_finite_coordinates_are_written_as_sent(suffix: str, tmp_path: Path) -> None:
    """1e308 used to come out of the GeoJSON writer as [null, null] (rounding overflowed)."""
    out = tmp_path / f"edge{suffix}"
    with stub_layer([point(oid, x, y) for oid, x, y in EDGE], [oid for oid, _, _ in EDGE]) as stub:
        proc = pull(stub.url, out)
    assert proc.returncode == 0, proc.stderr
    if suffix in (".geojson", ".geojsonl"):
        text = out.read_text()
        feats = json.loads(text)["features"] if suffix == ".geojson" else [json.loads(s) for s in text.splitlines()]
        got = {f["id"]: f["geometry"]["coordinates"] for f in feats}
        # Finite values are kept whatever their size; rounding to 7 decimals makes 5e-324 zero
        # and -0.0 is written 0.0 (the documented GeoJSON form).
        assert got == {1: [1e308, -1e308], 2: [-1e308, 1e308], 3: [0.0, 0.0], 4: [0.0, 1.0], 5: [0.0, 1.0],
                       6: [1.7976931348623157e308, 2.5]}
        assert "null" not in text and "Infinity" not in text
        return
    if suffix == ".parquet":
        table = pq.read_table(out)
        oids = table.column("OBJECTID").to_pylist()
        geoms = [shapely.from_wkb(g) for g in table.column("geometry").to_pylist()]
    else:
        df = pyogrio.read_dataframe(out)
        oids = [int(o) for o in df["OBJECTID"]]
        geoms = list(df.geometry.values)
    got_bits = {o: (bits(g.x), bits(g.y)) for o, g in zip(oids, geoms, strict=True)}
    assert got_bits == {oid: (bits(x), bits(y)) for oid, x, y in EDGE}  # binary formats: every bit kept


def test_kmz_refuses_a_coordinate_it_cannot_write_naming_the_feature(tmp_path: Path) -> None:
    out = tmp_path / "edge.kmz"
    with stub_layer([point(1, 3.0, 4.0), point(7, 1e308, 2.0)], [1, 7]) as stub:
        proc = pull(stub.url, out)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "OBJECTID=7" in line and "1e+308" in line and "--where" in line
    assert not out.exists() and [p.name for p in tmp_path.iterdir()] == []


# --------------------------------------------------------------------------- a geometry of another type


def test_polygon_in_a_point_layer_is_kept_where_the_format_can_hold_it(tmp_path: Path) -> None:
    """It used to become a null geometry without a word."""
    feats = [point(1, 3.0, 4.0), feature(2, SQUARE)]
    with stub_layer(feats, [1, 2]) as stub:
        proc = pull(stub.url, tmp_path / "mixed.geojson")
        assert proc.returncode == 0, proc.stderr
        proc = pull(stub.url, tmp_path / "mixed.parquet")
        assert proc.returncode == 0, proc.stderr
        shp = pull(stub.url, tmp_path / "mixed.shp")
    doc = json.loads((tmp_path / "mixed.geojson").read_text())
    types = {f["id"]: f["geometry"]["type"] for f in doc["features"]}
    assert types == {1: "Point", 2: "Polygon"}
    polygon = next(f for f in doc["features"] if f["id"] == 2)["geometry"]
    assert shapely.geometry.shape(polygon).equals(shapely.box(0, 0, 1, 1))
    geo = json.loads(pq.read_metadata(tmp_path / "mixed.parquet").metadata[b"geo"])
    assert geo["columns"]["geometry"]["geometry_types"] == ["Point", "Polygon"]
    assert shp.returncode == 1
    line = one_error_line(shp)
    assert "OBJECTID=2" in line and "Polygon" in line and "--where" in line
    assert not list(tmp_path.glob("mixed.s*"))


# --------------------------------------------------------------------------- malformed features

MALFORMED: list[tuple[str, Any, type[AgsEtlError], list[str]]] = [
    ("x not a number", [point(1, 1.0, 2.0), point(2, "abc", 2.0)], GeometryError, ["OBJECTID=2", "'abc'", FIX]),
    ("WKT string", [feature(4, "POINT (1 2)")], GeometryError, ["OBJECTID=4", "'POINT (1 2)'", FIX]),
    ("geometry a number", [feature(5, 5)], GeometryError, ["OBJECTID=5", "geometry is 5", FIX]),
    ("ragged rings", [feature(6, {"rings": [[[0, 0], [1], [1, 1], [0, 0]]]})], GeometryError,
     ["OBJECTID=6", "[1]", FIX]),
    ("non-numeric paths", [feature(7, {"paths": [[[0, 0], ["a", "b"]]]})], GeometryError,
     ["OBJECTID=7", "'a'", FIX]),
    ("points not vertices", [feature(8, {"points": [1, 2, 3]})], GeometryError, ["OBJECTID=8", FIX]),
    ("ring of two points", [feature(9, {"rings": [[[0, 0], [1, 1]]]})], GeometryError,
     ["OBJECTID=9", "[[0.0, 0.0], [1.0, 1.0]]", "a ring needs 3", FIX]),
    ("ring of one point", [feature(10, {"rings": [[[0, 0]]]})], GeometryError, ["OBJECTID=10", FIX]),
    ("attributes missing", [point(1, 1.0, 2.0), {"geometry": {"x": 1, "y": 2}}], ArcGISError,
     ["index 1", "no attributes", FIX_FEATURE]),
    ("attributes a list", [{"attributes": [11], "geometry": None}], ArcGISError,
     ["index 0", "attributes [11]", FIX_FEATURE]),
    ("features not a list", {"OBJECTID": 12}, ArcGISError, ["features member is {'OBJECTID': 12}", FIX_FEATURE]),
    ("feature not an object", [point(1, 1.0, 2.0), "feature"], ArcGISError,
     ["index 1", "'feature'", FIX_FEATURE]),
    ("value too long to show", [feature(13, "POINT (" + "1 " * 500 + ")")], GeometryError, ["OBJECTID=13", "…", FIX]),
]


@pytest.mark.parametrize(
    "features, error, parts", [pytest.param(f, e, p, id=name) for name, f, e, p in MALFORMED]
)
def test_malformed_features_fail_naming_feature_value_and_fix(
    features: Any, error: type[AgsEtlError], parts: list[str], tmp_path: Path
) -> None:
    geometry_type = "esriGeometryPolygon" if "rings" in json.dumps(features) else "esriGeometryPoint"
    out = tmp_path / "x.geojson"
    with stub_layer(features, [1, 2, 3], geometry_type=geometry_type) as stub:
        with pytest.raises(error) as info:
            Pipeline(FeatureLayerExtractor(stub.url), [], GeoJSONLoader(out)).run()
    message = str(info.value)
    for part in parts:
        assert part in message, message
    assert len(message) < 400, message  # values are truncated
    assert not out.exists()


@pytest.mark.parametrize("name", ["x not a number", "features not a list"])
def test_malformed_features_give_one_line_and_exit_1(name: str, tmp_path: Path) -> None:
    features, _, parts = next((f, e, p) for n, f, e, p in MALFORMED if n == name)
    out = tmp_path / "x.geojson"
    with stub_layer(features, [1, 2, 3]) as stub:
        proc = pull(stub.url, out)
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert all(part in line for part in parts), line
    assert "Traceback" not in proc.stderr and not out.exists()


def test_empty_points_follow_the_esri_convention(tmp_path: Path) -> None:
    """x null or "NaN" is an empty point: a feature without geometry, kept."""
    feats = [point(1, "NaN", "NaN"), point(2, None, 3.0), point(3, 1.5, 2.5)]
    out = tmp_path / "empty.geojson"
    with stub_layer(feats, [1, 2, 3]) as stub:
        result = Pipeline(FeatureLayerExtractor(stub.url), [], GeoJSONLoader(out)).run()
    assert result.features == 3
    geoms = {f["id"]: f["geometry"] for f in json.loads(out.read_text())["features"]}
    assert geoms == {1: None, 2: None, 3: {"type": "Point", "coordinates": [1.5, 2.5]}}


# --------------------------------------------------------------------------- a CRS the format cannot hold


@pytest.mark.parametrize("suffix, fmt", [(".geojson", "geojson"), (".kmz", "kmz")])
def test_t_srs_that_the_format_cannot_hold_fails_before_the_first_page(suffix: str, fmt: str, tmp_path: Path) -> None:
    """--t-srs EPSG:3857 with a GeoJSON output used to be undone silently by a reprojection to EPSG:4326."""
    assert fmt in suffix
    out = tmp_path / f"x{suffix}"
    with stub_layer([point(1, 1.0, 2.0)], [1], wkid=3857) as stub:
        proc = pull(stub.url, out, "--t-srs", "EPSG:3857")
        assert stub.pages == 0
    # Known offline from the options alone: a usage error before any request.
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "--t-srs:" in line and "EPSG:4326" in line and "EPSG:3857" in line
    assert "drop it" in line and "geoparquet" in line
    assert not out.exists()


def test_geojsonl_refuses_another_crs_and_the_automatic_reprojection_still_works(tmp_path: Path) -> None:
    with stub_layer([point(1, 0.0, 0.0)], [1], wkid=3857) as stub:
        with pytest.raises(CapabilityError, match=r"newline-delimited GeoJSON .* --t-srs EPSG:3857"):
            Pipeline(FeatureLayerExtractor(stub.url), [Reproject("EPSG:3857")],
                     GeoJSONSeqLoader(tmp_path / "x.geojsonl")).run()
        assert stub.pages == 0
        # Without a --t-srs the Web Mercator layer is reprojected to EPSG:4326, as before.
        Pipeline(FeatureLayerExtractor(stub.url), [], KMZLoader(tmp_path / "ok.kml")).run()
        out = tmp_path / "ok.geojson"
        Pipeline(FeatureLayerExtractor(stub.url), [], GeoJSONLoader(out)).run()
    coords = json.loads(out.read_text())["features"][0]["geometry"]["coordinates"]
    assert all(math.isclose(c, 0.0, abs_tol=1e-9) for c in coords)
    assert "<coordinates>0.0000000,0.0000000</coordinates>" in (tmp_path / "ok.kml").read_text()
