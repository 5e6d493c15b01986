"""Folders, services with several layers and the portal endpoint of ``ags-etl serve``, over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from serve_helpers import get_json, post_json

from ags_etl.server.portal import item_id
from ags_etl.server.testing import run_server
from tests.layers import write_layer

USER, PASSWORD = "alice", "s3cret-Pass"


def lay_out(d: Path) -> Path:
    """roads (top-level file), Parcels (3 layers + 1 table), folder Hydro (a file and a 2-layer service)."""
    write_layer(d / "roads.geojson", "points", 5)
    svc = d / "Parcels.FeatureServer"
    svc.mkdir()
    write_layer(svc / "a Parcels 2020.geojson", "polygons", 7)
    write_layer(svc / "b parcels_2021.geojson", "polygons", 4)
    write_layer(svc / "c Roads.geojson", "points", 3)
    write_layer(svc / "d owners.geojson", "table", 2)
    hydro = d / "Hydro"
    hydro.mkdir()
    write_layer(hydro / "rivers.geojson", "points", 6)
    lakes = hydro / "Lakes.featureserver"
    lakes.mkdir()
    write_layer(lakes / "big.geojson", "polygons", 3)
    write_layer(lakes / "small.geojson", "polygons", 2)
    (hydro / "deeper").mkdir()
    write_layer(hydro / "deeper" / "ignored.geojson", "points", 1)
    (d / "empty").mkdir()
    return d


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return lay_out(tmp_path_factory.mktemp("catalog"))


@pytest.fixture(scope="module")
def base(catalog_dir: Path) -> Iterator[str]:
    with run_server(catalog_dir) as url:
        yield url


def test_root_lists_folders_and_services(base: str) -> None:
    body = get_json(f"{base}/arcgis/rest/services")
    assert body["folders"] == ["Hydro"]  # "empty" holds no data; "deeper" is two levels down
    assert body["services"] == [{"name": "roads", "type": "FeatureServer"}, {"name": "Parcels", "type": "FeatureServer"}]


def test_folder_lists_its_services_with_the_folder_in_the_name(base: str) -> None:
    body = get_json(f"{base}/arcgis/rest/services/hydro")
    assert body["folders"] == []
    assert body["services"] == [
        {"name": "Hydro/rivers", "type": "FeatureServer"},
        {"name": "Hydro/Lakes", "type": "FeatureServer"},
    ]


def test_service_lists_layers_and_tables_in_file_order(base: str) -> None:
    body = get_json(f"{base}/arcgis/rest/services/Parcels/FeatureServer")
    assert [(e["id"], e["name"], e["geometryType"]) for e in body["layers"]] == [
        (0, "a Parcels 2020", "esriGeometryPolygon"),
        (1, "b parcels_2021", "esriGeometryPolygon"),
        (2, "c Roads", "esriGeometryPoint"),
    ]
    assert [(e["id"], e["name"], e["type"]) for e in body["tables"]] == [(3, "d owners", "Table")]
    assert body["spatialReference"]["wkid"] == 4326


def test_each_layer_answers_with_its_own_id_name_and_data(base: str) -> None:
    svc = f"{base}/arcgis/rest/services/Parcels/FeatureServer"
    for lid, name, count in [(0, "a Parcels 2020", 7), (1, "b parcels_2021", 4), (2, "c Roads", 3), (3, "d owners", 2)]:
        layer = get_json(f"{svc}/{lid}")
        assert (layer["id"], layer["name"]) == (lid, name)
        assert post_json(f"{svc}/{lid}/query", where="1=1", returnCountOnly="true") == {"count": count}
    everything = get_json(f"{svc}/layers")
    assert [b["id"] for b in everything["layers"]] == [0, 1, 2]
    assert [b["id"] for b in everything["tables"]] == [3]


def test_services_in_folders_answer_queries(base: str) -> None:
    rivers = f"{base}/arcgis/rest/services/Hydro/rivers/FeatureServer/0"
    assert get_json(rivers)["name"] == "rivers"
    assert post_json(f"{rivers}/query", where="1=1", returnCountOnly="true") == {"count": 6}
    lakes = f"{base}/ARCGIS/rest/services/HYDRO/lakes/featureserver/1/query"
    assert post_json(lakes, where="1=1", returnCountOnly="true") == {"count": 2}
    geojson = requests.get(lakes, params={"where": "1=1", "f": "geojson"}, timeout=30)
    assert geojson.headers["Content-Type"].startswith("application/geo+json")
    assert len(geojson.json()["features"]) == 2


@pytest.mark.parametrize(
    "path",
    [
        "/arcgis/rest/services/Nope",
        "/arcgis/rest/services/Hydro/nope/FeatureServer",
        "/arcgis/rest/services/Hydro/rivers/FeatureServer/1",
        "/arcgis/rest/services/Parcels/FeatureServer/4",
        "/arcgis/rest/services/Parcels/FeatureServer/0/queryx",
        "/arcgis/rest/services/Parcels/FeatureServer/x",
        "/arcgis/rest/services/Hydro/deeper/ignored/FeatureServer",
        "/arcgis/rest/services/empty",
        "/sharing/rest/nothing",
    ],
)
def test_unknown_paths_answer_invalid_url(base: str, path: str) -> None:
    response = requests.get(base + path, params={"f": "json"}, timeout=30)
    assert response.status_code == 200
    assert response.json() == {"error": {"code": 400, "message": "Invalid URL", "details": []}}


# --------------------------------------------------------------------------- portal


def test_portal_item_of_a_service_points_at_it(base: str) -> None:
    iid = item_id("service:Hydro/Lakes")
    assert len(iid) == 32 and int(iid, 16) >= 0
    body = get_json(f"{base}/sharing/rest/content/items/{iid}")
    assert body["id"] == iid
    assert body["type"] == "Feature Service"
    assert body["title"] == "Hydro/Lakes"
    assert body["url"] == f"{base}/arcgis/rest/services/Hydro/Lakes/FeatureServer"
    assert get_json(body["url"])["layers"][1]["name"] == "small"


def test_portal_item_of_a_layer_points_at_the_layer(base: str) -> None:
    body = get_json(f"{base}/sharing/rest/content/items/{item_id('layer:Parcels/2')}")
    assert body["url"] == f"{base}/arcgis/rest/services/Parcels/FeatureServer/2"
    assert get_json(body["url"])["name"] == "c Roads"


def test_unknown_item_gets_the_portal_error(base: str) -> None:
    body = get_json(f"{base}/sharing/rest/content/items/{'0' * 32}")
    assert body == {
        "error": {"code": 400, "messageCode": "CONT_0001", "message": "Item does not exist or is inaccessible.", "details": []}
    }


def test_search_pages_through_matching_titles(base: str) -> None:
    first = get_json(f"{base}/sharing/rest/search", q="parcels", num="3")
    assert first["total"] == 5  # the service and its four layers
    assert [r["title"] for r in first["results"]] == ["Parcels", "Parcels - a Parcels 2020", "Parcels - b parcels_2021"]
    rest = get_json(f"{base}/sharing/rest/search", q="title:parcels", num="3", start=str(first["nextStart"]))
    assert [r["title"] for r in rest["results"]] == ["Parcels - c Roads", "Parcels - d owners"]
    assert rest["nextStart"] == -1
    every = get_json(f"{base}/sharing/rest/search", q="*", num="100")
    assert every["total"] == len(every["results"]) == 2 + 5 + 2 + 3  # roads, Parcels, Hydro/rivers, Hydro/Lakes: service + layers each
    assert len({r["id"] for r in every["results"]}) == every["total"]


def test_ids_are_the_same_on_every_start(catalog_dir: Path, base: str) -> None:
    with run_server(catalog_dir) as other:
        ids = [r["id"] for r in get_json(f"{other}/sharing/rest/search", q="*", num="100")["results"]]
    assert ids == [r["id"] for r in get_json(f"{base}/sharing/rest/search", q="*", num="100")["results"]]


def test_token_auth_covers_folders_services_and_portal(tmp_path: Path) -> None:
    lay_out(tmp_path)
    with run_server(tmp_path, "--token-auth", f"{USER}:{PASSWORD}") as secured:
        paths = [
            "/arcgis/rest/services",
            "/arcgis/rest/services/Hydro",
            "/arcgis/rest/services/Parcels/FeatureServer/1",
            f"/sharing/rest/content/items/{item_id('service:Parcels')}",
            "/sharing/rest/search",
        ]
        for path in paths:
            assert get_json(secured + path)["error"]["code"] == 499, path
        token = post_json(f"{secured}/arcgis/tokens/generateToken", username=USER, password=PASSWORD)["token"]
        for path in paths:
            assert "error" not in get_json(secured + path, token=token), path
