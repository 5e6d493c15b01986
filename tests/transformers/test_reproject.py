"""Reproject agrees with pyproj coordinate by coordinate, keeps Z/M/None/(0, 0), fails loudly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import shapely
from pyproj import CRS, Transformer

from ags_etl.errors import ConfigError, TransformError
from ags_etl.transformers.reproject import Reproject

from .helpers import batch, geoms, layer, random_lines, random_polygons

CA_LONLAT = (-122.6, 37.2, -121.6, 38.2)  # around San Francisco Bay: inside EPSG:2227 and UTM 10N


def _mixed_polygons(rng: np.random.Generator) -> np.ndarray:
    polys = random_polygons(rng, 30, CA_LONLAT, 0.02)
    out = np.empty(len(polys) + 3, dtype=object)
    out[: len(polys)] = polys
    out[len(polys)] = None  # feature without geometry
    out[len(polys) + 1] = shapely.from_wkt("POLYGON EMPTY")
    out[len(polys) + 2] = shapely.box(-122.5, 37.5, -122.4, 37.6)
    return out


def _reference(src: CRS, dst: CRS, geometries: np.ndarray) -> np.ndarray:
    """Every coordinate through pyproj one point at a time (independent of our code path)."""
    t = Transformer.from_crs(src, dst, always_xy=True)
    coords = shapely.get_coordinates(geometries)
    return np.array([t.transform(float(x), float(y)) for x, y in coords]).reshape(-1, 2)


def _check_against_pyproj(src: CRS | str | int, to: object, geometries: np.ndarray, dst: CRS) -> None:
    schema = layer("esriGeometryPolygon", src)
    rp = Reproject(to)  # type: ignore[arg-type]
    out_schema = rp.bind(schema)
    assert out_schema.crs == dst
    assert out_schema.fields == schema.fields
    b = batch(schema, geometries)
    before = shapely.to_wkb(geometries[~shapely.is_missing(geometries)])
    result = rp(b)
    assert result.crs == dst
    assert result.attributes.equals(b.attributes)
    # the input batch is left as it was
    assert list(shapely.to_wkb(b.geometry[~shapely.is_missing(b.geometry)])) == list(before)
    # same missing / empty features, same types, same part and ring structure
    assert list(shapely.is_missing(result.geometry)) == list(shapely.is_missing(geometries))
    assert list(shapely.get_type_id(result.geometry)) == list(shapely.get_type_id(geometries))
    assert list(shapely.get_num_coordinates(result.geometry)) == list(shapely.get_num_coordinates(geometries))
    got = shapely.get_coordinates(result.geometry)
    want = _reference(schema.crs, dst, geometries)  # type: ignore[arg-type]
    scale = max(1.0, float(np.abs(want).max()))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * scale)


def test_4326_to_3857_matches_pyproj_and_the_mercator_formula() -> None:
    rng = np.random.default_rng(1)
    g = _mixed_polygons(rng)
    _check_against_pyproj(4326, "EPSG:3857", g, CRS.from_epsg(3857))
    # Independent check: spherical Mercator on the WGS 84 semi-major axis.
    rp = Reproject(3857)
    rp.bind(layer("esriGeometryPoint", 4326))
    pts = geoms(["POINT (-122.4194 37.7749)", "POINT (0 0)", "POINT (179.5 -60)"])
    out = shapely.get_coordinates(rp(batch(layer("esriGeometryPoint", 4326), pts)).geometry)
    r = 6378137.0
    for (lon, lat), (x, y) in zip(shapely.get_coordinates(pts), out, strict=True):
        assert x == pytest.approx(r * math.radians(lon), abs=1e-6)
        assert y == pytest.approx(r * math.log(math.tan(math.pi / 4 + math.radians(lat) / 2)), abs=1e-6)


def test_esri_102100_to_4326() -> None:
    rng = np.random.default_rng(2)
    g = random_polygons(rng, 25, (-13_650_000, 4_530_000, -13_600_000, 4_580_000), 2_000)
    _check_against_pyproj("ESRI:102100", "EPSG:4326", g, CRS.from_epsg(4326))


def test_4326_to_california_state_plane_feet() -> None:
    rng = np.random.default_rng(3)
    g = _mixed_polygons(rng)
    _check_against_pyproj(4326, "EPSG:2227", g, CRS.from_epsg(2227))
    # Sanity: US survey feet, false easting 6,561,666.667 ft at the central meridian.
    rp = Reproject("EPSG:2227")
    schema = layer("esriGeometryPoint", 4326)
    rp.bind(schema)
    x, _ = shapely.get_coordinates(rp(batch(schema, geoms(["POINT (-120.5 37.5)"]))).geometry)[0]
    assert x == pytest.approx(6561666.667, abs=0.01)


def test_4326_to_utm_zone_10n() -> None:
    rng = np.random.default_rng(4)
    g = random_lines(rng, 30, CA_LONLAT, 0.02)
    _check_against_pyproj(4326, 32610, g, CRS.from_epsg(32610))


def test_target_as_wkt() -> None:
    rng = np.random.default_rng(5)
    wkt = CRS.from_epsg(32610).to_wkt()
    _check_against_pyproj(4326, wkt, _mixed_polygons(rng), CRS.from_wkt(wkt))


def test_target_as_esri_wkt_from_a_prj() -> None:
    rng = np.random.default_rng(6)
    esri_wkt = CRS.from_epsg(2227).to_wkt("WKT1_ESRI")
    _check_against_pyproj(4326, esri_wkt, _mixed_polygons(rng), CRS.from_user_input(esri_wkt))


def test_target_as_proj_string() -> None:
    rng = np.random.default_rng(7)
    proj = "+proj=aea +lat_1=34 +lat_2=40.5 +lat_0=0 +lon_0=-120 +x_0=0 +y_0=-4000000 +datum=NAD83 +units=m +no_defs"
    _check_against_pyproj(4326, proj, _mixed_polygons(rng), CRS.from_proj4(proj))


def test_source_as_esri_wkt_layer() -> None:
    rng = np.random.default_rng(8)
    src = CRS.from_user_input(CRS.from_epsg(2227).to_wkt("WKT1_ESRI"))
    g = random_polygons(rng, 10, (5_990_000, 2_090_000, 6_020_000, 2_120_000), 800)
    _check_against_pyproj(src, 4326, g, CRS.from_epsg(4326))


def test_z_is_transformed_with_xy_and_2d_stays_2d() -> None:
    schema = layer("esriGeometryPolyline", 4326, has_z=True)
    g = geoms(
        [
            "LINESTRING Z (-122.4 37.7 10, -122.3 37.8 25.5)",
            "LINESTRING (-122.4 37.7, -122.3 37.8)",
            "LINESTRING Z (-122.4 37.7 NaN, -122.3 37.8 3)",
            "MULTILINESTRING Z ((0 0 -5, 1 1 -6), (2 2 0, 3 3 0))",
        ]
    )
    rp = Reproject("EPSG:3857")
    rp.bind(schema)
    out = rp(batch(schema, g)).geometry
    assert list(shapely.has_z(out)) == [True, False, True, True]
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    z_in = shapely.get_coordinates(g[[0, 2, 3]], include_z=True)
    z_out = shapely.get_coordinates(out[[0, 2, 3]], include_z=True)
    # a horizontal-only operation: Z values pass through, NaN stays NaN
    np.testing.assert_array_equal(z_out[:, 2], z_in[:, 2])
    want = np.array([t.transform(x, y) for x, y in z_in[:, :2]])
    np.testing.assert_allclose(z_out[:, :2], want, rtol=0, atol=1e-6)


def test_m_values_are_carried_over() -> None:
    schema = layer("esriGeometryPolyline", 4326, has_z=True, has_m=True)
    g = geoms(["LINESTRING ZM (-122.4 37.7 10 100, -122.3 37.8 20 200)", "LINESTRING M (1 2 7, 3 4 8)"])
    rp = Reproject(3857)
    rp.bind(schema)
    out = rp(batch(schema, g)).geometry
    assert shapely.has_m(out).all()
    zm = shapely.get_coordinates(out[0], include_z=True, include_m=True)
    np.testing.assert_array_equal(zm[:, 2:], [[10, 100], [20, 200]])
    m = shapely.get_coordinates(out[1], include_m=True)
    np.testing.assert_array_equal(m[:, 2], [7, 8])
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    np.testing.assert_allclose(m[:, :2], [t.transform(1, 2), t.transform(3, 4)], atol=1e-6)


def test_null_geometry_and_the_point_at_origin_are_kept() -> None:
    schema = layer("esriGeometryPoint", 4326)
    g = geoms(["POINT (0 0)", None, "POINT (-122 37)", "POINT EMPTY"])
    rp = Reproject(3857)
    rp.bind(schema)
    out = rp(batch(schema, g))
    assert len(out) == 4
    assert out.geometry[0].equals(shapely.Point(0, 0))
    assert out.geometry[1] is None
    assert out.geometry[3].is_empty
    assert out.column("OBJECTID").to_pylist() == [1, 2, 3, 4]


def test_from_crs_override_and_unknown_layer_crs() -> None:
    schema = layer("esriGeometryPoint", None)
    with pytest.raises(ConfigError, match="unknown; set from_crs"):
        Reproject(4326).bind(schema)
    rp = Reproject(4326, from_crs="EPSG:3857")
    assert rp.bind(schema).crs == CRS.from_epsg(4326)
    out = rp(batch(schema, geoms(["POINT (-13627361 4544761)"])))
    lon, lat = shapely.get_coordinates(out.geometry)[0]
    want = Transformer.from_crs(3857, 4326, always_xy=True).transform(-13627361, 4544761)
    assert (lon, lat) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("bad", ["EPSG:99999", "not a crs", "", 123456789])
def test_bad_crs_fails_at_construction(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        Reproject(bad)  # type: ignore[arg-type]
    assert "EPSG:4326" in str(info.value)
    with pytest.raises(ConfigError):
        Reproject(4326, from_crs=bad)  # type: ignore[arg-type]


def test_out_of_domain_is_a_transform_error_naming_the_count() -> None:
    schema = layer("esriGeometryPoint", 4326)
    rp = Reproject(3857)
    rp.bind(schema)
    g = geoms(["POINT (0 0)", "POINT (10 95)", "POINT (10 10)", "POINT (0 -100)"])  # latitudes past the pole
    with pytest.raises(TransformError) as info:
        rp(batch(schema, g, start_oid=41))
    msg = str(info.value)
    assert "2 of 4 features" in msg
    assert "[42, 44]" in msg


def test_same_crs_only_relabels() -> None:
    schema = layer("esriGeometryPoint", "EPSG:4326")
    rp = Reproject("OGC:CRS84")  # same datum, other axis order: nothing to do with always_xy
    assert rp.bind(schema).crs == CRS.from_user_input("OGC:CRS84")
    g = geoms(["POINT (-122 37)"])
    out = rp(batch(schema, g))
    assert out.geometry[0] is g[0]
    assert out.crs == CRS.from_user_input("OGC:CRS84")


def test_server_side_relabels_only() -> None:
    schema = layer("esriGeometryPoint", None)  # the server knows; we need not
    rp = Reproject("EPSG:4326", server_side=True)
    assert rp.server_side is True
    assert rp.target_crs == CRS.from_epsg(4326)
    assert rp.bind(schema).crs == CRS.from_epsg(4326)
    g = geoms(["POINT (-122.4 37.7)", None])
    out = rp(batch(schema, g))
    assert out.crs == CRS.from_epsg(4326)
    assert out.geometry[0] is g[0] and out.geometry[1] is None


def test_tables_pass_through() -> None:
    schema = layer(None, None)
    rp = Reproject(4326)
    assert rp.bind(schema) == schema
    b = batch(schema, None)
    assert rp(b) is b


def test_call_before_bind_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="bind"):
        Reproject(4326)(batch(layer("esriGeometryPoint", 4326), geoms(["POINT (0 0)"])))


def test_points_with_z() -> None:
    schema = layer("esriGeometryPoint", 4326, has_z=True)
    g = geoms(["POINT Z (-122.4 37.7 12.5)", "POINT Z (0 0 -3)"])
    rp = Reproject(3857)
    rp.bind(schema)
    out = shapely.get_coordinates(rp(batch(schema, g)).geometry, include_z=True)
    t = Transformer.from_crs(4326, 3857, always_xy=True)
    np.testing.assert_allclose(out[:, :2], [t.transform(-122.4, 37.7), (0, 0)], atol=1e-6)
    np.testing.assert_array_equal(out[:, 2], [12.5, -3])
