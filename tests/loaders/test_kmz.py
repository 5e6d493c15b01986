"""KMZ loader: zip layout, KML 2.2 schema validity, escaping, geometry, GDAL read-back, atomicity."""

from __future__ import annotations

import io
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyogrio
import pytest
import shapely
from lxml import etree
from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, LoadError, OutputExistsError
from ags_etl.loaders.kmz import KML_NS, KMLWriter, KMZLoader
from ags_etl.schema import Field, LayerSchema
from tests.loaders._data_geojson_kmz import (
    FIELDS,
    LONG_TEXT,
    ROWS,
    batch,
    expected_text,
    files_in,
    rounded,
    same_shape,
    schema,
    shifted,
    signed_area,
)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "data" / "kml"
NS = {"k": KML_NS}
GDAL_KML_DRIVER = "LIBKML" if "LIBKML" in pyogrio.list_drivers() else "KML"


@pytest.fixture(scope="module")
def kml_schema() -> etree.XMLSchema:
    # Loads offline: the vendored XSDs import each other by relative path only.
    return etree.XMLSchema(etree.parse(str(SCHEMA_DIR / "ogckml22.xsd")))


def write(loader: KMZLoader, *batches: FeatureBatch, layer: LayerSchema | None = None) -> Path:
    layer = layer or schema()
    loader.check(layer)
    with loader.open(layer) as writer:
        for b in batches:
            writer.write(b)
    assert writer.stats.features == sum(len(b) for b in batches)
    assert writer.stats.outputs == [loader.path]
    return loader.path


def doc_kml(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read("doc.kml")


def placemarks(document: bytes) -> list[etree._Element]:
    root = etree.fromstring(document)
    return root.findall("k:Document/k:Placemark", NS)


def data_values(placemark: etree._Element) -> dict[str, str]:
    return {
        d.get("name"): (d.findtext("k:value", namespaces=NS) or "")
        for d in placemark.findall("k:ExtendedData/k:Data", NS)
    }


def parse_coordinates(text: str) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in item.split(",")) for item in text.split()]


def kml_geometry(element: etree._Element) -> shapely.Geometry:
    """Rebuild a shapely geometry from a KML geometry element (independent of our writer)."""
    tag = etree.QName(element).localname
    if tag == "Point":
        return shapely.Point(parse_coordinates(element.findtext("k:coordinates", namespaces=NS))[0])
    if tag == "LineString":
        return shapely.LineString(parse_coordinates(element.findtext("k:coordinates", namespaces=NS)))
    if tag == "Polygon":
        shell = parse_coordinates(element.findtext("k:outerBoundaryIs/k:LinearRing/k:coordinates", namespaces=NS))
        holes = [parse_coordinates(e.text) for e in element.findall("k:innerBoundaryIs/k:LinearRing/k:coordinates", NS)]
        return shapely.Polygon(shell, holes)
    if tag == "MultiGeometry":
        parts = [kml_geometry(child) for child in element]
        kinds = {p.geom_type for p in parts}
        if kinds == {"Polygon"}:
            return shapely.MultiPolygon(parts)
        if kinds == {"LineString"}:
            return shapely.MultiLineString(parts)
        if kinds == {"Point"}:
            return shapely.MultiPoint(parts)
        return shapely.GeometryCollection(parts)
    raise AssertionError(f"unexpected geometry element {tag}")


GEOMETRY_TAGS = {"Point", "LineString", "Polygon", "MultiGeometry"}


def geometry_of(placemark: etree._Element) -> shapely.Geometry | None:
    found = [c for c in placemark if etree.QName(c).localname in GEOMETRY_TAGS]
    assert len(found) <= 1
    return kml_geometry(found[0]) if found else None


# --------------------------------------------------------------------------- layout and validity


def test_zip_layout(tmp_path: Path) -> None:
    path = write(KMZLoader(tmp_path / "out.kmz"), batch())
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == ["doc.kml"]
        assert infos[0].compress_type == zipfile.ZIP_DEFLATED
        assert zf.testzip() is None


def test_document_validates_against_ogc_kml22_xsd(tmp_path: Path, kml_schema: etree.XMLSchema) -> None:
    path = write(KMZLoader(tmp_path / "out.kmz"), batch(), batch(shifted(ROWS, 100)))
    document = etree.fromstring(doc_kml(path))
    assert kml_schema.validate(document), kml_schema.error_log
    assert document.tag == f"{{{KML_NS}}}kml" and document.prefix is None  # default namespace, no ns0:


def test_validation_catches_a_broken_document(kml_schema: etree.XMLSchema) -> None:
    """The schema check is not a rubber stamp: an id starting with a digit fails it."""
    good = f'<kml xmlns="{KML_NS}"><Document><Placemark id="f1"/></Document></kml>'.encode()
    bad = good.replace(b'id="f1"', b'id="1"')
    assert kml_schema.validate(etree.fromstring(good))
    assert not kml_schema.validate(etree.fromstring(bad))


def test_document_parts(tmp_path: Path) -> None:
    root = etree.fromstring(doc_kml(write(KMZLoader(tmp_path / "out.kmz"), batch())))
    document = root.find("k:Document", NS)
    assert document.findtext("k:name", namespaces=NS) == "test layer & <friends>"
    styles = {s.get("id"): s for s in document.findall("k:Style", NS)}
    assert set(styles) == {"point", "line", "polygon"}
    assert styles["point"].find("k:IconStyle/k:Icon/k:href", NS) is not None
    assert styles["line"].findtext("k:LineStyle/k:width", namespaces=NS)
    assert styles["polygon"].findtext("k:PolyStyle/k:fill", namespaces=NS) == "1"
    marks = document.findall("k:Placemark", NS)
    assert [m.get("id") for m in marks] == [f"f{r['OBJECTID']}" for r in ROWS]
    assert [m.findtext("k:styleUrl", namespaces=NS) for m in marks] == [
        "#point", "#polygon", "#polygon", "#line", "#line", None, "#point",
    ]


# --------------------------------------------------------------------------- values


def test_names_and_extended_data_survive_escaping(tmp_path: Path) -> None:
    marks = placemarks(doc_kml(write(KMZLoader(tmp_path / "out.kmz"), batch())))
    assert len(marks) == len(ROWS)
    for mark, row in zip(marks, ROWS, strict=True):
        assert mark.findtext("k:name", namespaces=NS) == row["NAME"]  # None when NAME is null: no <name>
        values = data_values(mark)
        for f in FIELDS:
            assert values.get(f.name) == expected_text(f.name, row[f.name]), (row["OBJECTID"], f.name)
    assert data_values(marks[0])["NOTE"] == "a & b < c > d \"double\" 'single'"
    assert data_values(marks[0])["CREATED"] == "1965-03-01T00:00:00Z"
    assert data_values(marks[2])["CREATED"] == "1969-12-31T23:59:59.999Z"
    assert data_values(marks[3])["NAME"] == LONG_TEXT
    assert data_values(marks[3])["NOTE"] == ""  # empty string kept, unlike null
    assert "VALUE" not in data_values(marks[1])  # NaN omitted like null
    assert "NOTE" not in data_values(marks[1])


def test_raw_text_is_escaped(tmp_path: Path) -> None:
    raw = doc_kml(write(KMZLoader(tmp_path / "out.kmz"), batch()))
    assert b"a &amp; b &lt; c &gt; d" in raw
    assert b"&lt;![CDATA[ not cdata ]]&gt; &amp;amp; already escaped" in raw
    assert b"<name>test layer &amp; &lt;friends&gt;</name>" in raw


def test_characters_xml_cannot_hold_are_replaced_and_reported(tmp_path: Path, kml_schema: etree.XMLSchema) -> None:
    rows = [{**ROWS[0], "NAME": "bell\x07 vt\x0b nul\x00 ok", "NOTE": "cr\r\nlf\ttab \ufffe"}]
    loader = KMZLoader(tmp_path / "out.kmz")
    with loader.open(schema()) as writer:
        writer.write(batch(rows))
    assert any("U+FFFD" in w for w in writer.stats.warnings)
    root = etree.fromstring(doc_kml(loader.path))
    assert kml_schema.validate(root), kml_schema.error_log
    mark = root.find("k:Document/k:Placemark", NS)
    assert mark.findtext("k:name", namespaces=NS) == "bell\ufffd vt\ufffd nul\ufffd ok"
    assert data_values(mark)["NOTE"] == "cr\r\nlf\ttab \ufffd"  # \r kept through &#13;


def test_name_field_option_and_default(tmp_path: Path) -> None:
    marks = placemarks(doc_kml(write(KMZLoader(tmp_path / "a.kmz", name_field="NOTE"), batch())))
    assert marks[0].findtext("k:name", namespaces=NS) == ROWS[0]["NOTE"]
    with pytest.raises(ConfigError, match="NOPE"):
        KMZLoader(tmp_path / "b.kmz", name_field="NOPE").check(schema())
    no_strings = schema(fields=[f for f in FIELDS if f.esri_type != "esriFieldTypeString"])
    marks = placemarks(doc_kml(write(KMZLoader(tmp_path / "c.kmz"), batch(layer=no_strings), layer=no_strings)))
    assert [m.findtext("k:name", namespaces=NS) for m in marks] == [str(r["OBJECTID"]) for r in ROWS]


def test_without_oid_ids_are_row_numbers(tmp_path: Path, kml_schema: etree.XMLSchema) -> None:
    layer = schema(oid_field=None)
    path = write(KMZLoader(tmp_path / "out.kmz"), batch(layer=layer), batch(layer=layer), layer=layer)
    root = etree.fromstring(doc_kml(path))
    assert [m.get("id") for m in root.findall("k:Document/k:Placemark", NS)] == [f"row{i}" for i in range(1, 15)]
    assert kml_schema.validate(root), kml_schema.error_log


# --------------------------------------------------------------------------- geometry


def test_geometries_match_input(tmp_path: Path) -> None:
    marks = placemarks(doc_kml(write(KMZLoader(tmp_path / "out.kmz"), batch())))
    for mark, row in zip(marks, ROWS, strict=True):
        got = geometry_of(mark)
        expected = None if row["geometry"] is None else rounded(row["geometry"])
        assert same_shape(got, expected, tolerance=0), (row["OBJECTID"], got, expected)
    point = marks[0].find("k:Point/k:coordinates", NS).text
    assert point == "0.0000000,0.0000000"  # the point at (0, 0) is written, with 7 decimals
    assert marks[6].find("k:Point/k:coordinates", NS).text == "-0.1234568,51.9876543"
    assert geometry_of(marks[5]) is None  # placemark kept, without geometry


def test_polygon_rings_follow_the_right_hand_rule(tmp_path: Path) -> None:
    marks = placemarks(doc_kml(write(KMZLoader(tmp_path / "out.kmz"), batch())))
    polygons = [p for m in marks for p in m.iter(f"{{{KML_NS}}}Polygon")]
    assert len(polygons) == 3
    holes = 0
    for polygon in polygons:
        outer = parse_coordinates(polygon.findtext("k:outerBoundaryIs/k:LinearRing/k:coordinates", namespaces=NS))
        assert signed_area(outer) > 0
        for inner in polygon.findall("k:innerBoundaryIs/k:LinearRing/k:coordinates", NS):
            assert signed_area(parse_coordinates(inner.text)) < 0
            holes += 1
    assert holes == 3


def test_z_and_collections(tmp_path: Path, kml_schema: etree.XMLSchema) -> None:
    rows = [
        {**ROWS[0], "OBJECTID": 1, "geometry": shapely.LineString([(1, 2, 3.5), (4, 5, -6)])},
        {**ROWS[0], "OBJECTID": 2, "geometry": shapely.LineString([(7, 8), (9, 10)])},
        {**ROWS[0], "OBJECTID": 3, "geometry": shapely.GeometryCollection(
            [shapely.Point(1, 1), shapely.MultiLineString([[(0, 0), (1, 0)], [(2, 2), (3, 3)]])])},
        {**ROWS[0], "OBJECTID": 4, "geometry": shapely.MultiPoint([(0, 0), (-1, -1)])},
        {**ROWS[0], "OBJECTID": 5, "geometry": shapely.from_wkt("LINESTRING EMPTY")},
    ]
    root = etree.fromstring(doc_kml(write(KMZLoader(tmp_path / "out.kmz"), batch(rows))))
    assert kml_schema.validate(root), kml_schema.error_log
    marks = root.findall("k:Document/k:Placemark", NS)
    assert marks[0].findtext("k:LineString/k:coordinates", namespaces=NS) == "1.0000000,2.0000000,3.5000000 4.0000000,5.0000000,-6.0000000"
    assert marks[1].findtext("k:LineString/k:coordinates", namespaces=NS) == "7.0000000,8.0000000 9.0000000,10.0000000"
    collection = marks[2].find("k:MultiGeometry", NS)
    assert [etree.QName(c).localname for c in collection] == ["Point", "LineString", "LineString"]  # flattened
    assert same_shape(geometry_of(marks[3]), rows[3]["geometry"])
    assert geometry_of(marks[4]) is None


# --------------------------------------------------------------------------- read-back with GDAL


def test_read_back_with_gdal(tmp_path: Path) -> None:
    path = write(KMZLoader(tmp_path / "out.kmz"), batch())
    df = pyogrio.read_dataframe(path, driver=GDAL_KML_DRIVER)
    assert len(df) == len(ROWS)

    def text(value: Any) -> str | None:
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)

    for i, row in enumerate(ROWS):
        # Name comes from <name> (the NAME field by default).
        assert text(df["Name"][i]) == row["NAME"]
        expected = None if row["geometry"] is None else rounded(row["geometry"])
        assert same_shape(df.geometry[i], expected), (i, df.geometry[i], expected)
    if GDAL_KML_DRIVER == "LIBKML":
        # LIBKML turns ExtendedData into string fields; a Data named like its own
        # "Name" field (NAME) is folded into that field, so it is not compared here.
        assert list(df["id"]) == [f"f{r['OBJECTID']}" for r in ROWS]
        for f in FIELDS:
            if f.name == "NAME":
                continue
            got = [text(v) for v in df[f.name]]
            assert got == [expected_text(f.name, r[f.name]) for r in ROWS], f.name


def test_plain_kml_target_is_the_same_document(tmp_path: Path, kml_schema: etree.XMLSchema) -> None:
    kmz = write(KMZLoader(tmp_path / "out.kmz"), batch())
    kml = write(KMZLoader(tmp_path / "out.kml"), batch())
    assert kml.read_bytes() == doc_kml(kmz)
    assert kml_schema.validate(etree.parse(str(kml))), kml_schema.error_log
    assert len(pyogrio.read_dataframe(kml)) == len(ROWS)


def test_output_is_deterministic(tmp_path: Path) -> None:
    a = write(KMZLoader(tmp_path / "a.kmz"), batch())
    b = write(KMZLoader(tmp_path / "b.kmz"), batch())
    assert a.read_bytes() == b.read_bytes()


def test_compresslevel_option(tmp_path: Path) -> None:
    stored = write(KMZLoader(tmp_path / "stored.kmz", compresslevel=0), batch())
    with zipfile.ZipFile(stored) as zf:
        assert zf.infolist()[0].compress_type == zipfile.ZIP_STORED
    best = write(KMZLoader(tmp_path / "best.kmz", compresslevel=9), batch())
    assert doc_kml(best) == doc_kml(stored)
    for bad in (10, -1, "6", True):
        with pytest.raises(ConfigError, match="compresslevel"):
            KMZLoader(tmp_path / "x.kmz", compresslevel=bad)
    with pytest.raises(ConfigError, match="unknown option"):
        KMZLoader(tmp_path / "x.kmz", name_feld="NAME")


def test_a_document_too_large_for_a_plain_zip_entry_is_refused() -> None:
    out = io.BytesIO()
    writer = KMLWriter(out, schema(), precision=7, name_field="NAME", size_limit=2_000)
    writer.write(batch(ROWS[:1]))
    with pytest.raises(LoadError, match="ZIP64"):
        writer.write(batch(ROWS[3:4]))  # the 10,000-character name passes the limit
    assert writer.stats.features == 1


# --------------------------------------------------------------------------- contract: targets and atomicity


def test_existing_target_is_refused_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "out.kmz"
    target.write_bytes(b"earlier output")
    with pytest.raises(OutputExistsError):
        KMZLoader(target).check(schema())
    with pytest.raises(OutputExistsError):
        with KMZLoader(target).open(schema()) as writer:
            writer.write(batch())
    assert target.read_bytes() == b"earlier output"
    assert files_in(tmp_path) == ["out.kmz"]
    write(KMZLoader(target, overwrite=True), batch())
    assert len(placemarks(doc_kml(target))) == len(ROWS)


def test_missing_folder_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        KMZLoader(tmp_path / "missing" / "out.kmz").check(schema())


@pytest.mark.parametrize("name", ["out.kmz", "out.kml"])
def test_failure_inside_the_block_leaves_no_trace(tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    write(KMZLoader(target), batch())
    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="boom"):
        with KMZLoader(target, overwrite=True).open(schema()) as writer:
            writer.write(batch(shifted(ROWS, 1000)))
            raise RuntimeError("boom")
    assert target.read_bytes() == before
    assert files_in(tmp_path) == [name]
    with pytest.raises(RuntimeError):
        with KMZLoader(tmp_path / ("fresh" + Path(name).suffix)).open(schema()) as writer:
            writer.write(batch())
            raise RuntimeError("boom")
    assert files_in(tmp_path) == [name]


def test_wrong_crs_and_tables_are_capability_errors(tmp_path: Path) -> None:
    mercator = CRS.from_epsg(3857)
    with pytest.raises(CapabilityError, match="EPSG:4326"):
        KMZLoader(tmp_path / "out.kmz").check(schema(crs=mercator))
    with pytest.raises(CapabilityError, match="EPSG:3857"):
        with KMZLoader(tmp_path / "out.kmz").open(schema()) as writer:
            writer.write(batch(crs=mercator))
    with pytest.raises(CapabilityError, match="no geometry"):
        KMZLoader(tmp_path / "out.kmz").check(schema(geometry_type=None, crs=None))
    assert files_in(tmp_path) == []


def test_capabilities() -> None:
    caps = KMZLoader.capabilities
    assert caps.required_crs is not None and caps.required_crs.to_epsg() == 4326
    assert ".kmz" in caps.extensions and ".kml" in caps.extensions
    assert not caps.supports_tables


def test_many_points_validate_and_read_back(tmp_path: Path, kml_schema: etree.XMLSchema) -> None:
    rng = np.random.default_rng(3)
    n = 2500
    x, y = rng.uniform(-180, 180, n), rng.uniform(-90, 90, n)
    layer = schema(fields=(Field("OBJECTID", "esriFieldTypeOID"), Field("LABEL", "esriFieldTypeString")))
    rows = [{"OBJECTID": i + 1, "LABEL": f"<{i}> & co", "geometry": None} for i in range(n)]
    b = batch(rows, layer=layer).replace(geometry=np.asarray(shapely.points(x, y), dtype=object))
    path = write(KMZLoader(tmp_path / "out.kmz"), b.take(np.arange(0, 1000)), b.take(np.arange(1000, n)), layer=layer)
    root = etree.fromstring(doc_kml(path))
    assert kml_schema.validate(root), kml_schema.error_log
    coords = np.array([parse_coordinates(e.text)[0] for e in root.iter(f"{{{KML_NS}}}coordinates")])
    assert np.allclose(coords, np.column_stack([x, y]), atol=5e-8, rtol=0)
    df = pyogrio.read_dataframe(path, driver=GDAL_KML_DRIVER)
    assert len(df) == n and list(df["Name"][:2]) == ["<0> & co", "<1> & co"]
