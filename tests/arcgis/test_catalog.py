"""The pure decisions of arcgis/catalog.py: URL kinds, layer selection, safe file names, paths.

The HTTP walk is tested against real servers in tests/extractors/test_multi_layer.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ags_etl.arcgis.catalog import (
    MAX_NAME_BYTES,
    classify_url,
    fill_path,
    is_queryable,
    match_layers,
    portal_item_url,
    same_site,
    sanitise_filename,
    service_name,
)
from ags_etl.errors import ConfigError

ROOT = "https://h.example.com/arcgis/rest/services"


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        (ROOT, "root"),
        (ROOT + "/", "root"),
        (ROOT + "?f=json", "root"),
        (ROOT + "/Hydro", "folder"),
        (ROOT + "/Parcels/FeatureServer", "service"),
        (ROOT + "/Hydro/Rivers/MapServer/", "service"),
        (ROOT + "/Hydro/Rivers/ImageServer", "service"),
        (ROOT + "/Parcels/featureserver/12", "layer"),
        (ROOT + "/Hydro/Rivers/MapServer/0", "layer"),
        ("http://127.0.0.1:8080/koop/rest/services/x/FeatureServer/0", "layer"),
        ("https://services3.arcgis.com/AbC/arcgis/rest/services/P/FeatureServer", "service"),
    ],
)
def test_classify_url(url: str, kind: str) -> None:
    assert classify_url(url) == kind


@pytest.mark.parametrize(
    "url",
    [ROOT + "/Parcels/FeatureServer/0/query", ROOT + "/Parcels/FeatureServer/layers", "https://h/other/page", ""],
)
def test_classify_url_refuses_other_paths_and_says_what_is_accepted(url: str) -> None:
    with pytest.raises(ConfigError, match=r"is not a layer, service, folder or services root URL; give …/rest/services"):
        classify_url(url)


def test_service_name_keeps_the_folder() -> None:
    assert service_name(ROOT + "/Hydro/Rivers/MapServer/3") == "Hydro/Rivers"
    assert service_name(ROOT + "/Parcels/FeatureServer") == "Parcels"


LAYERS = [
    {"id": 0, "name": "Parcels 2020"},
    {"id": 1, "name": "parcels_2021"},
    {"id": 3, "name": "Roads"},
    {"id": 7, "name": "Owners", "table": True},
]


@pytest.mark.parametrize(
    ("selectors", "ids"),
    [
        (None, [0, 1, 3]),  # tables only when asked for
        (["PARCELS*"], [0, 1]),  # case-insensitive wildcard
        (["roads", 0], [0, 3]),  # plain name and id; result in service order
        ([3, "R*", 3], [3]),  # each layer once
        ([7], [7]),  # a table by id
        (["own*"], [7]),  # … or by name
        (["*"], [0, 1, 3, 7]),
        (["parcels_202?"], [1]),
    ],
)
def test_match_layers(selectors: list[int | str] | None, ids: list[int]) -> None:
    assert [layer["id"] for layer in match_layers(LAYERS, selectors)] == ids


@pytest.mark.parametrize(("selector", "kind"), [("Hydrants*", "name pattern"), (5, "id"), ("0", "name pattern")])
def test_a_selector_matching_nothing_lists_the_layers(selector: int | str, kind: str) -> None:
    with pytest.raises(ConfigError) as info:
        match_layers(LAYERS, ["Parcels*", selector])
    message = str(info.value)
    assert f"{kind} {selector!r} matches no layer" in message
    assert "0: 'Parcels 2020', 1: 'parcels_2021', 3: 'Roads', 7: 'Owners'" in message


def test_yaml_booleans_select_no_layer() -> None:
    with pytest.raises(ConfigError, match="True"):
        match_layers([{"id": 1, "name": "a"}], [True])


@pytest.mark.parametrize(
    ("entry", "queryable"),
    [
        ({"id": 0, "name": "a", "type": "Feature Layer"}, True),
        ({"id": 0, "name": "a"}, True),  # 10.0 services list no type
        ({"id": 0, "name": "g", "type": "Group Layer", "subLayerIds": [1, 2]}, False),
        ({"id": 0, "name": "g", "subLayerIds": [1]}, False),
        ({"id": 0, "name": "r", "type": "Raster Layer"}, False),
        ({"id": 0, "name": "t", "type": "Table"}, True),
    ],
)
def test_is_queryable(entry: dict[str, object], queryable: bool) -> None:
    assert is_queryable(entry) is queryable


# --------------------------------------------------------------------------- file names


@pytest.mark.parametrize(
    ("name", "safe"),
    [
        ("Parcels 2020", "Parcels_2020"),
        ("../../etc/passwd", "etc_passwd"),
        ("..\\..\\windows\\system32", "windows_system32"),
        ("/etc/passwd", "etc_passwd"),
        ("C:\\Users\\x", "C_Users_x"),
        ("a:b*c?d\"e<f>g|h", "a_b_c_d_e_f_g_h"),
        ("nul\x00byte", "nul_byte"),
        ("tab\tand\nnewline", "tab_and_newline"),
        ("..", "unnamed"),
        (".hidden", "hidden"),
        ("trailing. ", "trailing"),
        ("", "unnamed"),
        ("CON", "CON_"),
        ("con.txt", "con_.txt"),
        ("nul.tar.gz", "nul_.tar.gz"),
        ("Lpt9", "Lpt9_"),
        ("COM10", "COM10"),
        ("CONSOLE", "CONSOLE"),
        ("Zürich Straßen", "Zürich_Straßen"),
        ("東京 公园", "東京_公园"),
        ("Cafe\u0301", "Café"),  # NFD becomes NFC: one spelling, one file
        ("a   b", "a_b"),
    ],
)
def test_sanitise_filename(name: str, safe: str) -> None:
    assert sanitise_filename(name) == safe


def test_long_names_are_cut_with_a_hash_so_they_stay_distinct() -> None:
    a, b = "x" * 300 + "a", "x" * 300 + "b"
    sa, sb = sanitise_filename(a), sanitise_filename(b)
    assert sa != sb
    assert len(sa.encode()) <= MAX_NAME_BYTES and len(sb.encode()) <= MAX_NAME_BYTES
    assert sa.startswith("x" * 100)
    long_unicode = sanitise_filename("東" * 200)
    assert len(long_unicode.encode()) <= MAX_NAME_BYTES
    assert long_unicode.startswith("東" * 30)


HOSTILE_TEXT = st.text(alphabet=st.characters(codec="utf-8") | st.sampled_from(list("./\\:*?\"<>|\x00 ")), max_size=300)
RESERVED = st.sampled_from(["CON", "con", "Nul", "aux", "LPT1", "com9", "PRN"])


@settings(max_examples=400, deadline=None)
@given(HOSTILE_TEXT | st.builds(lambda r, t: r + t, RESERVED, HOSTILE_TEXT))
def test_sanitised_names_are_safe_and_stable(name: str) -> None:
    safe = sanitise_filename(name)
    assert safe and safe not in (".", "..")
    assert not any(c in safe for c in '/\\:*?"<>|\x00')
    assert not any(ord(c) < 32 or ord(c) == 127 for c in safe)
    assert safe[0] not in ". " and safe[-1] not in ". "
    assert len(safe.encode("utf-8")) <= MAX_NAME_BYTES
    assert safe.split(".")[0].upper() not in ("CON", "PRN", "AUX", "NUL", "COM9", "LPT1")
    assert sanitise_filename(safe) == safe


def test_fill_path_sanitises_the_names() -> None:
    path = fill_path("out/{service}/{layer}.parquet", service="Hydro/Rivers", layer="../../etc/passwd")
    assert path == "out/Hydro_Rivers/etc_passwd.parquet"


def test_fill_path_refuses_unknown_placeholders() -> None:
    with pytest.raises(ConfigError, match=r"unknown placeholder \{layer_name\}; use \{service\} and \{layer\} only"):
        fill_path("out/{layer_name}.geojson", service="s", layer="l")
    with pytest.raises(ConfigError, match=r"uses \{layer\}, but the source gives no layer name"):
        fill_path("out/{layer}.geojson", service="s")


# --------------------------------------------------------------------------- portal


def test_portal_item_url() -> None:
    item = "a" * 32
    assert portal_item_url(None, item) == f"https://www.arcgis.com/sharing/rest/content/items/{item}"
    assert portal_item_url("https://gis.example.com/portal/", item.upper()) == (
        f"https://gis.example.com/portal/sharing/rest/content/items/{item}"
    )
    assert portal_item_url("https://gis.example.com/portal/sharing/rest", item).startswith(
        "https://gis.example.com/portal/sharing/rest/content/items/"
    )


@pytest.mark.parametrize("item", ["abc", "../" + "a" * 29, "g" * 32, "a" * 31 + "/", "a" * 33])
def test_portal_item_ids_are_32_hex_digits(item: str) -> None:
    with pytest.raises(ConfigError, match="is not a portal item id; ids are 32 hex digits"):
        portal_item_url(None, item)


def test_portal_must_be_http() -> None:
    with pytest.raises(ConfigError, match="is not an http"):
        portal_item_url("file:///etc", "a" * 32)


def test_same_site() -> None:
    assert same_site("https://www.arcgis.com/sharing", "https://services3.arcgis.com/x/arcgis/rest/services/a")
    assert same_site("http://127.0.0.1:1/sharing", "http://127.0.0.1:2/arcgis")
    assert not same_site("https://gis.city.gov/portal", "https://evil.example.com/arcgis")
    assert not same_site("https://www.arcgis.com/sharing", "https://arcgis.com.evil.net/x")

