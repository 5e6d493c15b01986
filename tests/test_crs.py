"""parse_crs and crs_from_spatial_reference: every accepted form, and the errors."""

from __future__ import annotations

import json

import pytest
from pyproj import CRS, Transformer

from ags_etl.crs import crs_from_spatial_reference, describe_crs, parse_crs, sr_json, transform_bounds, transformer
from ags_etl.errors import ConfigError

WGS84 = CRS.from_epsg(4326)
WEB_MERCATOR = CRS.from_epsg(3857)
CA3 = CRS.from_epsg(2227)  # NAD83 / California zone 3 (ftUS)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("EPSG:4326", WGS84),
        ("epsg:4326", WGS84),
        ("4326", WGS84),
        (" 4326 ", WGS84),
        (4326, WGS84),
        (2227, CA3),
        ("urn:ogc:def:crs:EPSG::2227", CA3),
        (CA3.to_wkt(), CA3),  # WKT2
        (CA3.to_wkt("WKT1_GDAL"), CA3),
        ({"wkid": 2227}, CA3),
        ('{"wkid": 102100, "latestWkid": 3857}', WEB_MERCATOR),
        (CA3.to_json_dict(), CA3),  # PROJJSON dict
        (CA3.to_json(), CA3),  # PROJJSON text
    ],
)
def test_parse_crs_forms(value: object, expected: CRS) -> None:
    assert parse_crs(value) == expected  # type: ignore[arg-type]


def test_parse_crs_returns_crs_objects_unchanged() -> None:
    assert parse_crs(CA3) is CA3


def test_parse_crs_esri_wkt_as_in_a_prj_file() -> None:
    esri_wkt = CA3.to_wkt("WKT1_ESRI")
    assert esri_wkt.startswith('PROJCS["NAD_1983_StatePlane_California_III')
    crs = parse_crs(esri_wkt)
    assert crs.to_epsg() == 2227
    # Same numbers as the EPSG definition.
    t1 = Transformer.from_crs(4326, crs, always_xy=True)
    t2 = Transformer.from_crs(4326, CA3, always_xy=True)
    assert t1.transform(-122.4, 37.8) == pytest.approx(t2.transform(-122.4, 37.8), abs=1e-6)


def test_parse_crs_proj_string() -> None:
    crs = parse_crs("+proj=utm +zone=10 +datum=WGS84 +units=m +no_defs")
    assert crs.is_projected
    x, y = Transformer.from_crs(4326, crs, always_xy=True).transform(-123.0, 0.0)
    assert x == pytest.approx(500000.0, abs=1e-6)  # -123 is zone 10's central meridian
    assert y == pytest.approx(0.0, abs=1e-6)


def test_esri_code_without_epsg_falls_back_to_esri_authority() -> None:
    for value in (102100, "102100", "ESRI:102100", {"wkid": 102100}):
        crs = parse_crs(value)  # type: ignore[arg-type]
        assert crs.to_authority() == ("ESRI", "102100")
        assert crs == WEB_MERCATOR  # pyproj: the same CRS as EPSG:3857


def test_spatial_reference_latest_wkid_first() -> None:
    crs = crs_from_spatial_reference({"wkid": 102100, "latestWkid": 3857})
    assert crs is not None
    assert crs.to_authority() == ("EPSG", "3857")


def test_spatial_reference_wkid_102100_equals_3857() -> None:
    crs = crs_from_spatial_reference({"wkid": 102100})
    assert crs is not None
    assert crs.to_authority() == ("ESRI", "102100")
    assert crs.equals(WEB_MERCATOR, ignore_axis_order=True)
    a = Transformer.from_crs(crs, 4326, always_xy=True).transform(-13627361.0, 4544761.0)
    b = Transformer.from_crs(3857, 4326, always_xy=True).transform(-13627361.0, 4544761.0)
    assert a == pytest.approx(b, abs=1e-12)


def test_spatial_reference_wkt_only() -> None:
    # Some servers (Kent MI, 10.22) send only Esri WKT1.
    crs = crs_from_spatial_reference({"wkt": CA3.to_wkt("WKT1_ESRI")})
    assert crs is not None and crs.to_epsg() == 2227


def test_spatial_reference_falls_through_unknown_code_to_wkt() -> None:
    crs = crs_from_spatial_reference({"wkid": 999999, "wkt": CA3.to_wkt("WKT1_ESRI")})
    assert crs is not None and crs.to_epsg() == 2227


@pytest.mark.parametrize("sr", [None, {}, {"vcsWkid": 5703}, {"wkid": None}])
def test_spatial_reference_without_crs_is_none(sr: dict | None) -> None:
    assert crs_from_spatial_reference(sr) is None


def test_spatial_reference_unknown_is_none_unless_strict() -> None:
    sr = {"wkid": 999999}
    assert crs_from_spatial_reference(sr) is None
    with pytest.raises(ConfigError, match="999999"):
        crs_from_spatial_reference(sr, strict=True)


def test_spatial_reference_float_wkid() -> None:
    crs = crs_from_spatial_reference({"wkid": 4326.0})
    assert crs == WGS84


@pytest.mark.parametrize(
    "value, needle",
    [
        ("nonsense", "'nonsense'"),
        ("EPSG:99999", "EPSG:99999"),
        ("", "empty"),
        ("   ", "empty"),
        (999999, "999999"),
        (True, "True"),
        (None, "None"),
        (4326.5, "float"),
        ({"wkid": "abc"}, "abc"),
        ({"foo": 1}, "neither"),
        ("{not json", "does not parse"),
        ("[4326]", "[4326]"),
        ({"wkt": "PROJCS[broken"}, "PROJCS"),
    ],
)
def test_parse_crs_errors_name_value_and_fix(value: object, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_crs(value)  # type: ignore[arg-type]
    message = str(info.value)
    assert needle in message
    assert "EPSG:4326" in message  # the fix: what to give instead


def test_parse_crs_error_shortens_long_wkt() -> None:
    bad = "PROJCS[" + "x" * 5000
    with pytest.raises(ConfigError) as info:
        parse_crs(bad)
    assert len(str(info.value)) < 1500


def test_describe_crs() -> None:
    assert describe_crs(WGS84) == "EPSG:4326 (WGS 84)"
    assert describe_crs(None) == "unknown CRS"
    assert json.dumps(describe_crs(parse_crs("+proj=merc +lon_0=10 +ellps=GRS80")))


# --------------------------------------------------------------------------- one codec, one cache


@pytest.mark.parametrize(
    "crs, expected",
    [
        (WGS84, {"wkid": 4326, "latestWkid": 4326}),
        (CRS.from_user_input("OGC:CRS84"), {"wkid": 4326, "latestWkid": 4326}),
        (WEB_MERCATOR, {"wkid": 102100, "latestWkid": 3857}),
        (CRS.from_authority("ESRI", 102100), {"wkid": 102100, "latestWkid": 3857}),
        (CA3, {"wkid": 2227, "latestWkid": 2227}),
        (CRS.from_authority("ESRI", 54009), {"wkid": 54009}),  # Mollweide: ESRI code, no EPSG one
    ],
)
def test_sr_json_round_trips_through_the_spatial_reference_reader(crs: CRS, expected: dict) -> None:
    assert sr_json(crs) == expected
    assert crs_from_spatial_reference(sr_json(crs)).equals(crs, ignore_axis_order=True)


def test_sr_json_of_a_crs_without_code_is_esri_wkt_that_reads_back() -> None:
    custom = CRS.from_proj4("+proj=tmerc +lat_0=1 +lon_0=2.5 +k=0.9 +x_0=100 +y_0=7 +ellps=GRS80 +units=m")
    out = sr_json(custom)
    assert list(out) == ["wkt"] and out["wkt"].startswith("PROJCS[")
    back = crs_from_spatial_reference(out)
    assert back is not None  # the datum's name changes in Esri WKT; the coordinates may not
    assert transformer(WGS84, back).transform(3.0, 1.5) == pytest.approx(transformer(WGS84, custom).transform(3.0, 1.5))


def test_client_server_and_reproject_share_one_transformer_cache() -> None:
    from ags_etl.server import spatialref
    from ags_etl.transformers.reproject import get_transformer

    made = transformer(WGS84, WEB_MERCATOR)
    assert transformer(WGS84, WEB_MERCATOR) is made
    assert get_transformer(CRS.from_epsg(4326), CRS.from_epsg(3857)) is made
    assert spatialref.transformer(spatialref.parse(4326, "inSR"), spatialref.parse(3857, "outSR")) is made


def test_transform_bounds_holds_the_curved_edges() -> None:
    xmin, ymin, xmax, ymax = transform_bounds((-10.0, 40.0, 10.0, 60.0), WGS84, WEB_MERCATOR)
    assert xmin == pytest.approx(-1113194.9, abs=1) and xmax == pytest.approx(1113194.9, abs=1)
    assert ymin == pytest.approx(4865942.3, abs=1) and ymax == pytest.approx(8399737.9, abs=1)
