"""Catalog, service and layer JSON of ``ags-etl serve``; start, bind and stop of the process."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from serve_helpers import POINT_OIDS, get_json, layer_url, post_json, write_count_layer

from ags_etl.server.testing import ServerStartError, run_server


def test_catalog_lists_every_data_file_with_sanitised_names(server: str) -> None:
    body = get_json(f"{server}/arcgis/rest/services")
    assert body["folders"] == []
    names = [s["name"] for s in body["services"]]
    assert names == sorted(
        ["lookup_table", "lots_merc", "lots_utm", "points", "polygons", "pq_custom", "pq_nocrs", "pq_points", "pq_table"]
    )
    assert {s["type"] for s in body["services"]} == {"FeatureServer"}


def test_rest_info_without_token_auth(server: str) -> None:
    body = get_json(f"{server}/arcgis/rest/info")
    assert body["currentVersion"] == 10.81
    assert body["authInfo"] == {"isTokenBasedSecurity": False}


def test_service_json_of_a_layer_and_of_a_table(server: str) -> None:
    svc = get_json(f"{server}/arcgis/rest/services/points/FeatureServer")
    assert svc["capabilities"] == "Query"
    assert svc["maxRecordCount"] == 1000
    assert svc["currentVersion"] == 10.81
    assert svc["spatialReference"] == {"wkid": 4326, "latestWkid": 4326}
    assert [(entry["id"], entry["name"]) for entry in svc["layers"]] == [(0, "points")]
    assert svc["tables"] == []
    table = get_json(f"{server}/arcgis/rest/services/lookup_table/FeatureServer")
    assert table["layers"] == []
    assert [(entry["id"], entry["name"]) for entry in table["tables"]] == [(0, "lookup_table")]


def test_point_layer_json(server: str) -> None:
    layer = get_json(layer_url(server, "points"))
    assert layer["type"] == "Feature Layer"
    assert layer["id"] == 0
    assert layer["geometryType"] == "esriGeometryPoint"
    assert layer["objectIdField"] == "OBJECTID"
    assert layer["maxRecordCount"] == 1000
    assert layer["capabilities"] == "Query"
    assert layer["supportedQueryFormats"] == "JSON, geoJSON, PBF"
    assert layer["supportsPagination"] is True
    assert layer["supportsStatistics"] is True
    assert layer["supportsAdvancedQueries"] is True
    assert layer["hasZ"] is False and layer["hasM"] is False
    adv = layer["advancedQueryCapabilities"]
    assert adv["supportsPagination"] and adv["supportsOrderBy"] and adv["supportsStatistics"]
    assert adv["supportsReturningQueryExtent"]
    fields = {f["name"]: f for f in layer["fields"]}
    assert fields["OBJECTID"]["type"] == "esriFieldTypeOID"
    assert fields["name"]["type"] == "esriFieldTypeString"
    assert fields["name"]["length"] == len("Null Island East")  # longest value: GeoJSON declares no width
    assert fields["pop"]["type"] == "esriFieldTypeInteger"
    assert fields["ratio"]["type"] == "esriFieldTypeDouble"
    assert fields["born"]["type"] == "esriFieldTypeDate"
    assert fields["Shape"]["type"] == "esriFieldTypeGeometry"
    extent = layer["extent"]
    assert (extent["xmin"], extent["ymin"], extent["xmax"], extent["ymax"]) == (-87.9, -33.87, 151.2, 47.37)
    assert extent["spatialReference"] == {"wkid": 4326, "latestWkid": 4326}


def test_oid_values_with_gaps_are_kept(server: str) -> None:
    ids = get_json(layer_url(server, "points") + "/query", where="1=1", returnIdsOnly="true")
    assert ids["objectIds"] == POINT_OIDS


def test_tables_have_no_geometry(server: str) -> None:
    for name in ("lookup_table", "pq_table"):
        layer = get_json(layer_url(server, name))
        assert layer["type"] == "Table"
        assert "geometryType" not in layer
        assert "extent" not in layer
        assert all(f["type"] != "esriFieldTypeGeometry" for f in layer["fields"])
        # no OBJECTID in the source: 1..N assigned
        assert get_json(layer_url(server, name) + "/query", returnIdsOnly="true")["objectIds"][:2] == [1, 2]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lots_utm", {"wkid": 32633, "latestWkid": 32633}),  # shapefile .prj
        ("lots_merc", {"wkid": 102100, "latestWkid": 3857}),  # Web Mercator, Esri style
        ("pq_points", {"wkid": 3035, "latestWkid": 3035}),  # GeoParquet PROJJSON
        ("pq_nocrs", {"wkid": 4326, "latestWkid": 4326}),  # GeoParquet without crs = OGC:CRS84
        ("polygons", {"wkid": 4326, "latestWkid": 4326}),  # GeoJSON
    ],
)
def test_spatial_reference_from_source(server: str, name: str, expected: dict[str, int]) -> None:
    layer = get_json(layer_url(server, name))
    assert layer["extent"]["spatialReference"] == expected
    assert get_json(layer_url(server, name) + "/query", where="1=1")["spatialReference"] == expected


def test_crs_without_epsg_code_is_sent_as_wkt(server: str) -> None:
    sr = get_json(layer_url(server, "pq_custom"))["extent"]["spatialReference"]
    assert set(sr) == {"wkt"}
    assert "Lambert_Azimuthal_Equal_Area" in sr["wkt"]


def test_shapefile_fields_keep_declared_widths(server: str) -> None:
    fields = {f["name"]: f for f in get_json(layer_url(server, "lots_utm"))["fields"]}
    assert fields["NAME"]["length"] == 20
    assert fields["AREA"]["type"] == "esriFieldTypeDouble"
    assert fields["CODE"]["type"] == "esriFieldTypeInteger"
    assert fields["SURVEYED"]["type"] == "esriFieldTypeDate"


def test_dates_without_time_zone_or_time(server: str) -> None:
    """Naive timestamps are UTC; date-only values are midnight UTC; shapefile D fields too."""
    polygons = get_json(layer_url(server, "polygons") + "/query", where="1=1", outFields="stamp,day")
    assert [f["attributes"] for f in polygons["features"]] == [
        {"OBJECTID": 1, "stamp": -457_452_000_000, "day": -14256000000},
        {"OBJECTID": 2, "stamp": None, "day": None},
        {"OBJECTID": 3, "stamp": 1_000_000_000_000, "day": 86_400_000},
    ]
    lots = get_json(layer_url(server, "lots_utm") + "/query", where="1=1", outFields="SURVEYED")
    assert [f["attributes"]["SURVEYED"] for f in lots["features"]] == [-626_054_400_000, 320_803_200_000, None]


def test_geoparquet_field_types(server: str) -> None:
    fields = {f["name"]: f["type"] for f in get_json(layer_url(server, "pq_points"))["fields"]}
    assert fields == {
        "OBJECTID": "esriFieldTypeOID",
        "label": "esriFieldTypeString",
        "when": "esriFieldTypeDate",
        "day": "esriFieldTypeDate",
        "flag": "esriFieldTypeSmallInteger",
        "count": "esriFieldTypeInteger",
        "Shape": "esriFieldTypeGeometry",
    }


def test_pjson_is_json_and_post_equals_get(server: str) -> None:
    url = layer_url(server, "points")
    pretty = requests.get(url, params={"f": "pjson"}, timeout=30)
    assert pretty.status_code == 200
    assert "\n" in pretty.text
    assert pretty.json() == get_json(url) == post_json(url)


def test_layers_resource(server: str) -> None:
    body = get_json(f"{server}/arcgis/rest/services/polygons/FeatureServer/layers")
    assert [layer["name"] for layer in body["layers"]] == ["polygons"]
    assert body["tables"] == []


@pytest.mark.parametrize(
    "path",
    [
        "/arcgis/rest/services/nope/FeatureServer",
        "/arcgis/rest/services/points/FeatureServer/1",
        "/arcgis/rest/services/points/MapServer/0",
        "/arcgis/rest/services/points/FeatureServer/0/queryx",
        "/arcgis/rest/nothing",
        "/elsewhere",
    ],
)
def test_unknown_path_is_invalid_url_with_http_200(server: str, path: str) -> None:
    response = requests.get(server + path, params={"f": "json"}, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"error": {"code": 400, "message": "Invalid URL", "details": []}}


def test_service_names_match_case_insensitively(server: str) -> None:
    body = get_json(f"{server}/arcgis/rest/services/POINTS/featureserver/0")
    assert body["name"] == "points"


def test_binds_loopback_only(data_dir: Path, server: str) -> None:
    assert server.startswith("http://127.0.0.1:")
    port = int(server.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    # Another loopback address reaches the machine but not a socket bound to 127.0.0.1 only.
    with pytest.raises(OSError):  # ConnectionRefusedError on Linux
        socket.create_connection(("127.0.0.2", port), timeout=5).close()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_ready_line_and_clean_stop(tmp_path: Path, stop_signal: signal.Signals) -> None:
    write_count_layer(tmp_path / "a.geojson", 3)
    write_count_layer(tmp_path / "b.geojson", 2)
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "serve", str(tmp_path), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("ags-etl serve: listening on http://127.0.0.1:")
        assert line.rstrip().endswith("/arcgis/rest/services (2 layers)")
        base = line.split()[4].rsplit("/arcgis/", 1)[0]
        assert get_json(layer_url(base, "a") + "/query", returnCountOnly="true") == {"count": 3}
        proc.send_signal(stop_signal)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0
    assert "Traceback" not in err


def test_empty_directory_fails_with_a_clear_message(tmp_path: Path) -> None:
    with pytest.raises(ServerStartError, match="no .geojson, .json, .shp or .parquet files"):
        with run_server(tmp_path):
            pass


def test_mixed_geometry_families_are_refused(tmp_path: Path) -> None:
    (tmp_path / "mixed.geojson").write_text(
        '{"type":"FeatureCollection","features":['
        '{"type":"Feature","properties":{},"geometry":{"type":"Point","coordinates":[1,2]}},'
        '{"type":"Feature","properties":{},"geometry":{"type":"LineString","coordinates":[[1,2],[3,4]]}}]}'
    )
    with pytest.raises(ServerStartError, match="split the file by geometry type"):
        with run_server(tmp_path):
            pass
