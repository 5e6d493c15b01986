"""Clip agrees with shapely.intersection feature by feature, keeps types consistent, drops and counts empties.

Masks come from every source the transformer reads — GeoJSON, shapefile and GeoParquet
files, inline GeoJSON and inline Esri JSON — each in its own CRS, and are applied both
before a reprojection (stream in EPSG:4326) and after one (stream in EPSG:3857).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fiona
import numpy as np
import pyarrow as pa
import pytest
import shapely
from fiona.model import Feature, Geometry
from pyproj import CRS, Transformer

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError
from ags_etl.schema import LayerSchema
from ags_etl.transformers.clip import Clip, parse_bbox
from ags_etl.transformers.reproject import Reproject

from .helpers import batch, geoms, layer, random_lines, random_polygons

LONLAT = CRS.from_epsg(4326)
MERC = CRS.from_epsg(3857)
AREA = (-122.6, 37.2, -121.6, 38.2)
CENTER = (-122.1, 37.7)

FAMILY_OF = {
    "esriGeometryPolygon": ("Polygon", "MultiPolygon"),
    "esriGeometryPolyline": ("LineString", "MultiLineString"),
    "esriGeometryPoint": ("Point",),
    "esriGeometryMultipoint": ("MultiPoint",),
}


# --- data ----------------------------------------------------------------------


def star_mask(cx: float, cy: float, r: float, points: int = 36) -> shapely.Polygon:
    """A concave star with a round hole in the middle (in whatever units cx/cy/r are)."""
    angles = np.linspace(0, 2 * np.pi, 2 * points, endpoint=False)
    radii = np.where(np.arange(2 * points) % 2 == 0, r, 0.55 * r)
    shell = np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)])
    hole = shapely.Point(cx, cy).buffer(0.15 * r, 16)
    return shapely.Polygon(shell, [np.asarray(hole.exterior.coords)[::-1]])


def to_crs(g: Any, src: CRS, dst: CRS) -> Any:
    t = Transformer.from_crs(src, dst, always_xy=True)
    return shapely.transform(g, t.transform, interleaved=False)


def features_lonlat(kind: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "esriGeometryPolygon":
        g = random_polygons(rng, 200, AREA, 0.03)
    elif kind == "esriGeometryPolyline":
        g = random_lines(rng, 120, AREA, 0.03)
    elif kind == "esriGeometryPoint":
        xy = rng.uniform([AREA[0], AREA[1]], [AREA[2], AREA[3]], (300, 2))
        g = shapely.points(xy)
    else:
        xy = rng.uniform([AREA[0], AREA[1]], [AREA[2], AREA[3]], (80 * 4, 2))
        g = shapely.multipoints(xy, indices=np.repeat(np.arange(80), 4))
    g = np.asarray(g, dtype=object)
    g[5] = None  # features without geometry are dropped and counted
    return g


def stream(kind: str, crs: CRS, seed: int = 0) -> tuple[LayerSchema, FeatureBatch]:
    schema = layer(kind, crs)
    g = features_lonlat(kind, seed)
    if crs != LONLAT:
        g = to_crs(g, LONLAT, crs)
    return schema, batch(schema, g)


# --- the reference check ---------------------------------------------------------


def check_against_intersection(clip: Clip, schema: LayerSchema, b: FeatureBatch) -> FeatureBatch:
    """Run ``clip`` and compare with shapely.intersection(feature, clip.area) per feature."""
    out_schema = clip.bind(schema)
    expected_types = FAMILY_OF[schema.geometry_type]  # type: ignore[index]
    assert out_schema.geometry_types_override == expected_types
    assert out_schema.crs == schema.crs and out_schema.fields == schema.fields
    area = clip.area
    assert area.is_valid and area.area > 0
    res = clip(b)
    ref = shapely.intersection(b.geometry, area)
    if schema.geometry_type == "esriGeometryPolygon":
        measure = shapely.area
        keep = measure(ref) > 0
    elif schema.geometry_type == "esriGeometryPolyline":
        measure = shapely.length
        keep = measure(ref) > 0
    else:
        measure = shapely.get_num_coordinates
        keep = ~shapely.is_missing(ref) & ~shapely.is_empty(ref)
    oids = np.asarray(b.column("OBJECTID"))
    assert list(res.column("OBJECTID").to_pylist()) == list(oids[keep])
    assert res.attributes.equals(b.attributes.filter(pa.array(keep)))
    assert res.crs == b.crs
    got, want = measure(res.geometry), measure(ref[keep])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=0)
    assert set(shapely.get_type_id(res.geometry)) <= {
        {"Point": 0, "LineString": 1, "Polygon": 3, "MultiPoint": 4, "MultiLineString": 5, "MultiPolygon": 6}[t]
        for t in expected_types
    }
    assert not shapely.is_empty(res.geometry).any()
    assert shapely.is_valid(res.geometry).all()
    counters = clip.close()
    assert counters["clip_dropped"] == len(b) - len(res)
    assert counters["clip_dropped_null"] == int(shapely.is_missing(b.geometry).sum())
    # the work was real: some features cut, some kept whole, some dropped
    assert 0 < len(res) < len(b)
    return res


# --- bbox ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(FAMILY_OF))
@pytest.mark.parametrize("crs", [LONLAT, MERC], ids=["4326", "3857"])
def test_bbox_in_stream_crs(kind: str, crs: CRS) -> None:
    schema, b = stream(kind, crs)
    box = shapely.box(-122.3, 37.5, -121.9, 37.9)
    bbox = shapely.bounds(to_crs(box, LONLAT, crs) if crs != LONLAT else box)
    clip = Clip(bbox=tuple(bbox))
    res = check_against_intersection(clip, schema, b)
    # cut features lie inside the box
    assert (shapely.bounds(res.geometry)[:, 0] >= bbox[0] - 1e-9 * abs(bbox[0])).all()
    assert clip.spatial_filter() == (tuple(bbox), crs)


@pytest.mark.parametrize("kind", ["esriGeometryPolygon", "esriGeometryPolyline", "esriGeometryPoint"])
def test_bbox_in_another_crs_is_densified_and_transformed(kind: str) -> None:
    schema, b = stream(kind, MERC)
    bbox = (-122.3, 37.5, -121.9, 37.9)
    clip = Clip(bbox=bbox, crs="EPSG:4326")
    check_against_intersection(clip, schema, b)
    # the transformed box: each edge carries extra vertices, corners where pyproj puts them
    area = clip.area
    assert shapely.get_num_coordinates(area) > 64
    corners = to_crs(shapely.points([(bbox[0], bbox[1]), (bbox[2], bbox[3])]), LONLAT, MERC)
    assert shapely.distance(area.exterior, corners).max() < 1e-6
    # the server filter: the box as moved into the stream's CRS, edges and all
    assert clip.spatial_filter() == (tuple(shapely.bounds(area)), MERC)


def test_point_at_origin_and_on_the_boundary_kept() -> None:
    schema = layer("esriGeometryPoint", 4326)
    g = geoms(["POINT (0 0)", "POINT (10 10)", "POINT (5 10)", "POINT (-0.000001 0)", None, "POINT EMPTY", "POINT (3 4)"])
    clip = Clip(bbox=(0, 0, 10, 10))
    clip.bind(schema)
    res = clip(batch(schema, g))
    assert res.column("OBJECTID").to_pylist() == [1, 2, 3, 7]
    assert res.geometry[0].equals(shapely.Point(0, 0))
    assert clip.close() == {"clip_dropped": 3, "clip_dropped_null": 1}


def test_lines_on_the_box_edge_are_kept_like_intersection_does() -> None:
    schema = layer("esriGeometryPolyline", 4326)
    g = geoms(["LINESTRING (-5 0, 5 0)", "LINESTRING (0 -5, 0 5)", "LINESTRING (-5 -5, -1 -1)"])
    clip = Clip(bbox=(0, 0, 10, 10))
    clip.bind(schema)
    res = clip(batch(schema, g))
    # the first lies along y=0 for x in [0, 5]; the second touches (0, 0..5) on x=0
    assert [round(x, 9) for x in shapely.length(res.geometry)] == [5.0, 5.0]


def test_geometry_collections_keep_only_the_family() -> None:
    """A polygon that overlaps the area and also touches it along an edge: the overlap
    comes back as a Polygon, the edge (a line) is dropped; a touch-only polygon is dropped."""
    schema = layer("esriGeometryPolygon", 4326)
    g = geoms(
        [
            shapely.MultiPolygon([shapely.box(-5, -5, 5, 5), shapely.box(10, 2, 12, 4)]),  # overlap + edge touch
            shapely.box(10, 0, 20, 10),  # touches along x=10 only
            shapely.box(-2, -2, 0, 0),  # touches at the (0, 0) corner only
            shapely.box(2, 2, 3, 3),  # inside
        ]
    )
    for clip in (Clip(bbox=(0, 0, 10, 10)), Clip(mask=shapely.box(0, 0, 10, 10))):
        clip.bind(schema)
        res = clip(batch(schema, g))
        assert res.column("OBJECTID").to_pylist() == [1, 4]
        assert [x.geom_type for x in res.geometry] == ["Polygon", "Polygon"]
        assert res.geometry[0].equals(shapely.box(0, 0, 5, 5))
        assert res.geometry[1] is g[3]  # kept whole, untouched
        assert clip.close()["clip_dropped"] == 2
    # the same through shapely: a GeometryCollection
    assert shapely.intersection(g[0], shapely.box(0, 0, 10, 10)).geom_type == "GeometryCollection"


def test_multipoint_layer_stays_multipoint() -> None:
    schema = layer("esriGeometryMultipoint", 4326)
    g = geoms(["MULTIPOINT (1 1, 20 20)", "MULTIPOINT (1 1, 2 2, 30 30)", "MULTIPOINT (50 50)"])
    for clip in (Clip(bbox=(0, 0, 10, 10)), Clip(mask=shapely.box(0, 0, 10, 10).buffer(0.5))):
        clip.bind(schema)
        res = clip(batch(schema, g))
        assert [x.wkt for x in res.geometry] == ["MULTIPOINT ((1 1))", "MULTIPOINT ((1 1), (2 2))"]


def test_measured_layers_lose_m_consistently() -> None:
    schema = layer("esriGeometryPolyline", 4326, has_m=True)
    g = geoms(["LINESTRING M (1 1 5, 2 2 6)", "LINESTRING M (-5 5 1, 5 5 2)"])
    clip = Clip(bbox=(0, 0, 10, 10))
    out_schema = clip.bind(schema)
    assert out_schema.has_m is False
    res = clip(batch(schema, g))
    assert len(res) == 2 and not shapely.has_m(res.geometry).any()
    assert res.geometry[0].equals(shapely.LineString([(1, 1), (2, 2)]))


def test_invalid_input_polygon_is_repaired_for_the_cut() -> None:
    schema = layer("esriGeometryPolygon", 4326)
    bowtie = shapely.from_wkt("POLYGON ((-5 -5, 5 5, 5 -5, -5 5, -5 -5))")
    assert not bowtie.is_valid
    mask = star_mask(0, 0, 4)
    clip = Clip(mask=mask)
    clip.bind(schema)
    res = clip(batch(schema, geoms([bowtie, "POLYGON ((0 0, 1 0, 1 1, 0 0))"])))
    want = shapely.intersection(shapely.make_valid(bowtie), mask).area
    assert res.geometry[0].area == pytest.approx(want, rel=1e-9)
    assert res.geometry[0].is_valid


# --- masks from every source, before and after reprojection -------------------------


def write_geojson(path: Path, mask: shapely.Geometry) -> Path:
    fc = {"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"id": 1}, "geometry": shapely.geometry.mapping(mask)}]}
    path.write_text(json.dumps(fc))
    return path


def write_shapefile(path: Path, mask: shapely.Geometry, crs: CRS) -> Path:
    schema = {"geometry": "Polygon", "properties": {"id": "int"}}
    with fiona.open(path, "w", driver="ESRI Shapefile", crs_wkt=crs.to_wkt("WKT1_ESRI"), schema=schema) as dst:
        dst.write(Feature(geometry=Geometry.from_dict(shapely.geometry.mapping(mask)), properties={"id": 1}))
    return path


def write_geoparquet(path: Path, mask: shapely.Geometry, crs: CRS) -> Path:
    import geopandas

    geopandas.GeoDataFrame({"id": [1]}, geometry=[mask], crs=crs).to_parquet(path)
    return path


MASK_LONLAT = star_mask(*CENTER, 0.3)


def mask_source(kind: str, tmp_path: Path) -> tuple[dict[str, Any], CRS]:
    """Clip keyword arguments for a mask source, and the CRS the mask is written in."""
    if kind == "geojson_file":  # RFC 7946: lon/lat
        return {"mask": str(write_geojson(tmp_path / "mask.geojson", MASK_LONLAT))}, LONLAT
    if kind == "shapefile":  # California state plane, feet, .prj in Esri WKT
        crs = CRS.from_epsg(2227)
        return {"mask": str(write_shapefile(tmp_path / "mask.shp", to_crs(MASK_LONLAT, LONLAT, crs), crs))}, crs
    if kind == "geoparquet":  # UTM 10N
        crs = CRS.from_epsg(32610)
        return {"mask": str(write_geoparquet(tmp_path / "mask.parquet", to_crs(MASK_LONLAT, LONLAT, crs), crs))}, crs
    if kind == "inline_geojson":  # lon/lat, said with crs=
        return {"mask": shapely.geometry.mapping(MASK_LONLAT), "crs": "EPSG:4326"}, LONLAT
    if kind == "inline_esri_json":  # Web Mercator, said by its spatialReference
        merc = to_crs(MASK_LONLAT, LONLAT, MERC)
        rings = [list(merc.exterior.coords)[::-1]] + [list(r.coords)[::-1] for r in merc.interiors]  # Esri winding
        return {"mask": {"rings": rings, "spatialReference": {"wkid": 102100, "latestWkid": 3857}}}, MERC
    raise AssertionError(kind)


SOURCES = ["geojson_file", "shapefile", "geoparquet", "inline_geojson", "inline_esri_json"]


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("stream_crs", [LONLAT, MERC], ids=["before_reproject_4326", "after_reproject_3857"])
@pytest.mark.parametrize("kind", ["esriGeometryPolygon", "esriGeometryPolyline", "esriGeometryPoint"])
def test_mask_sources_each_in_own_crs(source: str, stream_crs: CRS, kind: str, tmp_path: Path) -> None:
    kwargs, mask_crs = mask_source(source, tmp_path)
    schema, b = stream(kind, stream_crs)
    clip = Clip(**kwargs)
    check_against_intersection(clip, schema, b)
    # The area in the stream's CRS is the mask moved there: every vertex of the mask as
    # written lies on the area's boundary, and the edges between (densified before the
    # move, so they bend a little) stay close to the independently moved mask.
    independent = to_crs(MASK_LONLAT, LONLAT, stream_crs)
    size = independent.area**0.5
    written = to_crs(MASK_LONLAT, LONLAT, mask_crs)
    vertices = to_crs(shapely.points(shapely.get_coordinates(written)), mask_crs, stream_crs)
    assert shapely.distance(clip.area.boundary, vertices).max() < 1e-7 * size
    assert shapely.hausdorff_distance(clip.area, independent) < 1e-3 * size
    assert len(clip.area.interiors) == 1  # the hole survived
    # Before bind the filter is the mask's bbox in its own CRS; after, the bbox of the
    # area in the stream's CRS, which covers every feature that can survive the clip.
    unbound = Clip(**kwargs).spatial_filter()
    assert unbound is not None
    assert unbound[1].equals(mask_crs, ignore_axis_order=True)
    np.testing.assert_allclose(unbound[0], shapely.bounds(to_crs(MASK_LONLAT, LONLAT, mask_crs)), rtol=1e-9)
    bounds, crs = clip.spatial_filter()  # type: ignore[misc]
    assert crs == stream_crs
    assert bounds == tuple(shapely.bounds(clip.area))
    res = clip(b)
    assert shapely.covered_by(res.geometry, shapely.box(*bounds)).all()


def test_clip_before_and_after_reproject_keep_the_same_features(tmp_path: Path) -> None:
    """Pipeline order matters only for where the cut is made, not for which features survive."""
    kwargs, _ = mask_source("shapefile", tmp_path)
    schema, b = stream("esriGeometryPolygon", LONLAT, seed=3)

    clip1, rp1 = Clip(**kwargs), Reproject(3857)
    rp1.bind(clip1.bind(schema))
    before = rp1(clip1(b))

    rp2, clip2 = Reproject(3857), Clip(**kwargs)
    clip2.bind(rp2.bind(schema))
    after = clip2(rp2(b))

    assert before.column("OBJECTID").to_pylist() == after.column("OBJECTID").to_pylist()
    assert before.crs == after.crs == MERC
    a1, a2 = shapely.area(before.geometry), shapely.area(after.geometry)
    np.testing.assert_allclose(a1, a2, rtol=1e-3)  # cut in different CRSs: close, not equal


def test_inline_geojson_forms_and_default_crs() -> None:
    schema, b = stream("esriGeometryPolygon", LONLAT)
    feature = {"type": "Feature", "properties": {}, "geometry": shapely.geometry.mapping(MASK_LONLAT)}
    fc = {"type": "FeatureCollection", "features": [feature]}
    legacy = dict(fc, crs={"type": "name", "properties": {"name": "urn:ogc:def:crs:OGC:1.3:CRS84"}})
    for mask in (feature, fc, legacy, shapely.geometry.mapping(MASK_LONLAT)):
        clip = Clip(mask=mask)  # no crs: the stream's (here lon/lat)
        check_against_intersection(clip, schema, b)
        assert clip.area.equals(MASK_LONLAT)


def test_esri_envelope_mask() -> None:
    schema, b = stream("esriGeometryPolygon", LONLAT)
    env = {"xmin": -122.3, "ymin": 37.5, "xmax": -121.9, "ymax": 37.9, "spatialReference": {"wkid": 4326}}
    clip = Clip(mask=env)
    check_against_intersection(clip, schema, b)


def test_shapefile_without_prj_uses_crs_option(tmp_path: Path) -> None:
    crs = CRS.from_epsg(2227)
    path = write_shapefile(tmp_path / "noprj.shp", to_crs(MASK_LONLAT, LONLAT, crs), crs)
    path.with_suffix(".prj").unlink()
    schema, b = stream("esriGeometryPolygon", LONLAT)
    clip = Clip(mask=str(path), crs=2227)
    check_against_intersection(clip, schema, b)
    assert shapely.hausdorff_distance(clip.area, MASK_LONLAT) < 1e-3 * MASK_LONLAT.area**0.5


# --- spatial_filter, from_cli, errors -----------------------------------------------


def test_spatial_filter_default_crs_known_after_bind() -> None:
    clip = Clip(bbox=[1, 2, 3, 4])
    assert clip.spatial_filter() is None
    clip.bind(layer("esriGeometryPoint", 2227))
    assert clip.spatial_filter() == ((1.0, 2.0, 3.0, 4.0), CRS.from_epsg(2227))


def test_from_cli() -> None:
    assert Clip.from_cli(None, None, None) is None
    clip = Clip.from_cli("-122.6, 37.6,-122.3,37.9", None, "EPSG:4326")
    assert clip is not None
    assert clip.spatial_filter() == ((-122.6, 37.6, -122.3, 37.9), LONLAT)
    with pytest.raises(ConfigError, match="exclude each other"):
        Clip.from_cli("0,0,1,1", "mask.shp", None)
    with pytest.raises(ConfigError, match="--clip-crs"):
        Clip.from_cli(None, None, "EPSG:4326")
    with pytest.raises(ConfigError, match="3 values, not 4"):
        Clip.from_cli("0,0,1", None, None)


def test_from_cli_mask_file(tmp_path: Path) -> None:
    path = write_geojson(tmp_path / "m.geojson", MASK_LONLAT)
    clip = Clip.from_cli(None, str(path), None)
    assert clip is not None
    bounds, crs = clip.spatial_filter()  # type: ignore[misc]
    assert crs.equals(LONLAT, ignore_axis_order=True)
    assert bounds == tuple(shapely.bounds(MASK_LONLAT))


@pytest.mark.parametrize(
    "value, needle",
    [
        ((1, 2, 3), "4"),
        ((0, 0, 0, 1), "no area"),
        ((10, 0, 5, 1), "antimeridian"),
        ((0, 0, float("nan"), 1), "non-finite"),
        (("a", 0, 1, 1), "not a number"),
        ("1,2,x,4", "not a number"),
        (5, "not a list"),
    ],
)
def test_bad_bbox(value: object, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_bbox(value)
    with pytest.raises(ConfigError):
        Clip(bbox=value)  # type: ignore[arg-type]


def test_bbox_with_zero_corner_is_fine() -> None:
    assert parse_bbox([0, 0, 1, 1]) == (0.0, 0.0, 1.0, 1.0)


def test_construction_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        Clip()
    with pytest.raises(ConfigError, match="exactly one"):
        Clip(bbox=(0, 0, 1, 1), mask=shapely.box(0, 0, 1, 1))
    with pytest.raises(ConfigError, match="does not exist"):
        Clip(mask=str(tmp_path / "nope.shp"))
    with pytest.raises(ConfigError, match="no polygon"):
        Clip(mask={"type": "LineString", "coordinates": [[0, 0], [1, 1]]})
    with pytest.raises(ConfigError, match="neither GeoJSON"):
        Clip(mask={"foo": 1})
    with pytest.raises(ConfigError, match="EPSG:4326"):
        Clip(bbox=(0, 0, 1, 1), crs="EPSG:99999")
    with pytest.raises(ConfigError, match="spatialReference"):
        Clip(mask={"rings": [[[0, 0], [0, 1], [1, 1], [0, 0]]], "spatialReference": {"wkid": 999999}})
    with pytest.raises(ConfigError, match="curve"):
        Clip(mask={"curveRings": [[[0, 0], {"c": [[1, 1], [0.5, 0.5]]}]]})
    bad = tmp_path / "junk.geojson"
    bad.write_text("this is not json")
    with pytest.raises(ConfigError, match="cannot be read"):
        Clip(mask=str(bad))
    pq_path = tmp_path / "plain.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1]}), pq_path)
    with pytest.raises(ConfigError, match="GeoParquet"):
        Clip(mask=str(pq_path))


def test_bind_errors() -> None:
    with pytest.raises(ConfigError, match="table"):
        Clip(bbox=(0, 0, 1, 1)).bind(layer(None, None))
    with pytest.raises(ConfigError, match="unknown"):
        Clip(bbox=(0, 0, 1, 1), crs=4326).bind(layer("esriGeometryPoint", None))
    with pytest.raises(ConfigError, match="domain"):
        # a lon/lat box past the pole cannot become Web Mercator
        Clip(bbox=(-10, 0, 10, 95), crs=4326).bind(layer("esriGeometryPolygon", 3857))


def test_unknown_stream_crs_with_plain_bbox_works() -> None:
    schema = layer("esriGeometryPoint", None)
    clip = Clip(bbox=(0, 0, 10, 10))
    clip.bind(schema)
    assert clip.spatial_filter() is None  # nothing to tell the server in which CRS
    assert len(clip(batch(schema, geoms(["POINT (1 1)", "POINT (11 1)"])))) == 1


def test_concurrent_batches_match_sequential_and_counters_add_up() -> None:
    """Pipelines may run a transformer on several batches at once in worker threads."""
    from concurrent.futures import ThreadPoolExecutor

    schema, b = stream("esriGeometryPolygon", LONLAT, seed=9)
    parts = [b.take(np.arange(i, len(b), 8)) for i in range(8)]
    seq = Clip(mask=MASK_LONLAT)
    seq.bind(schema)
    want = [seq(p) for p in parts]
    conc = Clip(mask=MASK_LONLAT)
    conc.bind(schema)
    with ThreadPoolExecutor(max_workers=4) as pool:
        got = list(pool.map(conc, parts * 4))
    for i, res in enumerate(got):
        ref = want[i % 8]
        assert res.column("OBJECTID").equals(ref.column("OBJECTID"))
        assert list(shapely.to_wkb(res.geometry)) == list(shapely.to_wkb(ref.geometry))
    assert conc.close()["clip_dropped"] == 4 * seq.close()["clip_dropped"]
