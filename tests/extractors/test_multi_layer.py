"""Jobs over a service, a folder, a services root or a portal item, expanded per layer over HTTP.

The server is ``ags-etl serve`` on a folder laid out with ``NAME.FeatureServer/`` folders
(one service, several layers) and a sub-folder (an ArcGIS folder); names the server cannot
hold in a file name (``/``, NUL) come from a loopback stub.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pyogrio
import pytest

from ags_etl.arcgis.auth import NoAuth, TokenAuth, UserPasswordAuth
from ags_etl.arcgis.catalog import MAX_NAME_BYTES, expand_job
from ags_etl.arcgis.client import ArcGISClient
from ags_etl.config import parse_pipeline
from ags_etl.errors import ArcGISError, ConfigError, TokenError
from ags_etl.runner import run_pipeline
from ags_etl.server.portal import item_id
from ags_etl.server.testing import run_server
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec
from tests.layers import write_layer
from tests.loopback import JSONHandler, serving

LONG = "L" * 200
#: Layer file stems (= served layer names) that are hostile as file names, in file-name order.
HOSTILE = ["...", "..\\..\\evil", "CON", LONG, "a:b", "a?b", "東京 公园"]


def lay_out(d: Path) -> Path:
    write_layer(d / "roads.geojson", "points", 5)
    parcels = d / "Parcels.FeatureServer"
    parcels.mkdir()
    write_layer(parcels / "Parcels 2020.geojson", "polygons", 7)  # id 0
    write_layer(parcels / "Parcels_2021.geojson", "polygons", 4)  # id 1
    write_layer(parcels / "Roads.geojson", "points", 3)  # id 2
    write_layer(parcels / "owners.geojson", "table", 2)  # id 3, a table
    hydro = d / "Hydro"
    hydro.mkdir()
    write_layer(hydro / "rivers.geojson", "points", 6)
    lakes = hydro / "Lakes.FeatureServer"
    lakes.mkdir()
    write_layer(lakes / "big.geojson", "polygons", 3)
    write_layer(lakes / "parcels by the lake.geojson", "points", 2)
    hostile = d / "Hostile.FeatureServer"
    hostile.mkdir()
    for i, stem in enumerate(HOSTILE):
        write_layer(hostile / f"{stem}.geojson", "points", i + 1)
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with run_server(lay_out(tmp_path_factory.mktemp("multi"))) as url:
        yield url


@pytest.fixture
def client() -> Iterator[ArcGISClient]:
    with ArcGISClient(retries=0, timeout=30) as c:
        yield c


def job(path: str | None = "out/{service}/{layer}.geojson", **source: Any) -> JobSpec:
    return JobSpec(name="j", source=SourceSpec(**source), sink=SinkSpec(type="geojson", path=path))


def services(base: str) -> str:
    return f"{base}/arcgis/rest/services"


def summary(jobs: list[JobSpec]) -> list[tuple[str, str | None, str]]:
    """(layer URL without the host, sink path, job name) per job."""
    return [(j.source.url.split("/services/", 1)[1], j.sink.path, j.name) for j in jobs]  # type: ignore[union-attr]


def test_wildcards_and_ids_across_one_service(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(url=f"{services(base)}/Parcels/FeatureServer", layers=["PARCELS*", 2]), client)
    assert summary(jobs) == [
        ("Parcels/FeatureServer/0", "out/Parcels/Parcels_2020.geojson", "j/Parcels/Parcels_2020"),
        ("Parcels/FeatureServer/1", "out/Parcels/Parcels_2021.geojson", "j/Parcels/Parcels_2021"),
        ("Parcels/FeatureServer/2", "out/Parcels/Roads.geojson", "j/Parcels/Roads"),
    ]
    for j in jobs:
        assert (j.source.layers, j.source.item, j.source.portal) == (None, None, None)
        assert j.source.type == "arcgis" and j.sink.type == "geojson"


def test_a_service_without_selectors_gives_its_layers_and_tables_on_request(base: str, client: ArcGISClient) -> None:
    every = expand_job(job(url=f"{services(base)}/Parcels/FeatureServer/"), client)
    assert [j.source.url.rsplit("/", 1)[1] for j in every] == ["0", "1", "2"]  # type: ignore[union-attr]
    table = expand_job(job(url=f"{services(base)}/Parcels/FeatureServer", layers=["OWNERS"]), client)
    assert summary(table) == [("Parcels/FeatureServer/3", "out/Parcels/owners.geojson", "j/Parcels/owners")]


def test_wildcards_across_a_services_root_with_folders(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(url=services(base), layers=["*parcel*", "RIVERS"]), client)
    assert summary(jobs) == [
        ("Parcels/FeatureServer/0", "out/Parcels/Parcels_2020.geojson", "j/Parcels/Parcels_2020"),
        ("Parcels/FeatureServer/1", "out/Parcels/Parcels_2021.geojson", "j/Parcels/Parcels_2021"),
        ("Hydro/rivers/FeatureServer/0", "out/Hydro_rivers/rivers.geojson", "j/Hydro_rivers/rivers"),
        (
            "Hydro/Lakes/FeatureServer/1",
            "out/Hydro_Lakes/parcels_by_the_lake.geojson",
            "j/Hydro_Lakes/parcels_by_the_lake",
        ),
    ]


def test_ids_across_a_root_pick_that_id_in_every_service(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(url=services(base), layers=[1]), client)
    assert [u for u, _, _ in summary(jobs)] == [  # root services, then the folder's (server order)
        "Hostile/FeatureServer/1",
        "Parcels/FeatureServer/1",
        "Hydro/Lakes/FeatureServer/1",
    ]


def test_a_folder_gives_every_layer_of_its_services(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(url=f"{services(base)}/hydro"), client)
    assert [u for u, _, _ in summary(jobs)] == [
        "Hydro/rivers/FeatureServer/0",
        "Hydro/Lakes/FeatureServer/0",
        "Hydro/Lakes/FeatureServer/1",
    ]


def test_a_selector_matching_nothing_names_what_there_is(base: str, client: ArcGISClient) -> None:
    with pytest.raises(ConfigError) as info:
        expand_job(job(url=f"{services(base)}/Parcels/FeatureServer", layers=["Parcels*", "Hydrants*"]), client)
    message = str(info.value)
    assert message.startswith("job 'j': layers: name pattern 'Hydrants*' matches no layer")
    assert "0: 'Parcels 2020', 1: 'Parcels_2021', 2: 'Roads', 3: 'owners'" in message
    with pytest.raises(ConfigError, match="id 9 matches no layer"):
        expand_job(job(url=services(base), layers=[9]), client)


def test_several_layers_into_one_file_is_refused(base: str, client: ArcGISClient) -> None:
    with pytest.raises(ConfigError) as info:
        expand_job(job(path="out/all.geojson", url=f"{services(base)}/Parcels/FeatureServer"), client)
    assert str(info.value) == (
        "job 'j' reads 3 layers but its sink path 'out/all.geojson' has no {layer}, so every layer would go "
        "to the same file; put {layer} (and {service}) in sink.path, e.g. out/{service}/{layer}.parquet"
    )


def test_one_layer_url_comes_back_unchanged_without_a_request(client: ArcGISClient) -> None:
    one = job(path="out/x.geojson", url="http://127.0.0.1:9/arcgis/rest/services/P/FeatureServer/4")
    assert expand_job(one, client) == [one]
    assert client.requests_made == 0


def test_one_layer_url_with_placeholders_gets_its_names(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(url=f"{services(base)}/Hydro/Lakes/FeatureServer/1"), client)
    assert summary(jobs) == [("Hydro/Lakes/FeatureServer/1", "out/Hydro_Lakes/parcels_by_the_lake.geojson", "j")]


def test_layers_with_a_layer_url_is_refused(client: ArcGISClient) -> None:
    with pytest.raises(ConfigError, match="layers: \\[1\\] needs a service, folder or services root URL"):
        expand_job(job(url="http://127.0.0.1:9/arcgis/rest/services/P/FeatureServer/0", layers=[1]), client)


# --------------------------------------------------------------------------- hostile names


def test_hostile_layer_names_become_safe_distinct_file_names(base: str, client: ArcGISClient, tmp_path: Path) -> None:
    template = str(tmp_path / "out" / "{layer}.geojson")
    jobs = expand_job(job(path=template, url=f"{services(base)}/Hostile/FeatureServer"), client)
    names = [Path(j.sink.path).name for j in jobs]  # type: ignore[arg-type]
    long_name = names[3]
    assert names[:3] + names[4:] == [
        "unnamed.geojson",  # "..."
        "evil.geojson",  # "..\..\evil"
        "CON_.geojson",
        "a_b.geojson",
        "a_b_2.geojson",  # "a?b" sanitises like "a:b": suffixed in server order
        "東京_公园.geojson",
    ]
    assert long_name.startswith("L" * 100) and len(long_name.encode()) <= MAX_NAME_BYTES + len(".geojson")
    for j in jobs:
        assert Path(j.sink.path).parent == tmp_path / "out"  # type: ignore[arg-type]
    assert [j.name.split("/")[-1] for j in jobs] == [Path(n).stem for n in names]


class HostileService(JSONHandler):
    """A services root with one service whose layer names hold '/', NUL and the like."""

    names: ClassVar[list[str]] = ["../../etc/passwd", "/abs/path", "x\x00y", "a/b", "a\\b", "C:\\Windows\\x", "NUL"]

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        if path.endswith("/rest/services"):
            body: dict[str, Any] = {
                "folders": [],
                "services": [
                    {"name": "../up", "type": "FeatureServer"},
                    {"name": "../up", "type": "MapServer"},  # the same service: read once
                    {"name": "img", "type": "ImageServer"},  # not a feature service: skipped
                ],
            }
        elif path.endswith("/FeatureServer"):
            layers = [{"id": i, "name": n, "type": "Feature Layer"} for i, n in enumerate(self.names)]
            body = {"layers": [*layers, {"id": 99, "name": "group", "type": "Group Layer", "subLayerIds": [0]}]}
        else:
            body = {"error": {"code": 400, "message": "Invalid URL", "details": []}}
        return 200, "application/json", json.dumps(body).encode()


def test_names_with_slashes_and_nul_from_a_server(tmp_path: Path, client: ArcGISClient) -> None:
    with serving(HostileService) as stub:
        template = str(tmp_path / "{service}" / "{layer}.parquet")
        jobs = expand_job(job(path=template, url=f"{stub}/arcgis/rest/services"), client)
    paths = [Path(j.sink.path) for j in jobs]  # type: ignore[arg-type]
    assert [p.name for p in paths] == [
        "etc_passwd.parquet",
        "abs_path.parquet",
        "x_y.parquet",
        "a_b.parquet",
        "a_b_2.parquet",
        "C_Windows_x.parquet",
        "NUL_.parquet",
    ]
    assert {p.parent for p in paths} == {tmp_path / "up"}
    assert [j.source.url.rsplit("/", 2)[1:] for j in jobs] == [["FeatureServer", str(i)] for i in range(7)]  # type: ignore[union-attr]


# --------------------------------------------------------------------------- portal items


def test_item_of_a_service(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(item=item_id("service:Hydro/Lakes"), portal=base), client)
    assert summary(jobs) == [
        ("Hydro/Lakes/FeatureServer/0", "out/Hydro_Lakes/big.geojson", "j/Hydro_Lakes/big"),
        (
            "Hydro/Lakes/FeatureServer/1",
            "out/Hydro_Lakes/parcels_by_the_lake.geojson",
            "j/Hydro_Lakes/parcels_by_the_lake",
        ),
    ]
    picked = expand_job(job(item=item_id("service:Parcels"), portal=base + "/sharing/rest", layers=["roads"]), client)
    assert [u for u, _, _ in summary(picked)] == ["Parcels/FeatureServer/2"]


def test_item_of_a_layer(base: str, client: ArcGISClient) -> None:
    jobs = expand_job(job(path="out/{layer}.parquet", item=item_id("layer:Parcels/1"), portal=base), client)
    assert summary(jobs) == [("Parcels/FeatureServer/1", "out/Parcels_2021.parquet", "j/Parcels/Parcels_2021")]


def test_unknown_item(base: str, client: ArcGISClient) -> None:
    missing = "0123456789abcdef" * 2
    with pytest.raises(ArcGISError) as info:
        expand_job(job(item=missing, portal=base), client)
    message = str(info.value)
    assert f"portal item '{missing}'" in message and "does not exist or is not shared" in message
    assert "Item does not exist or is inaccessible." in message
    assert "check the id and portal:" in message


class Portal(JSONHandler):
    """A portal whose items are a web map and a service on another host."""

    elsewhere: ClassVar[str] = ""
    seen: ClassVar[list[str]] = []

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        Portal.seen.append(path)
        if path.endswith("/" + "a" * 32):
            body = {"id": "a" * 32, "title": "Town map", "type": "Web Map", "url": None}
        else:
            body = {"id": "b" * 32, "title": "Far", "type": "Feature Service", "url": self.elsewhere}
        return 200, "application/json", json.dumps(body).encode()


class Elsewhere(JSONHandler):
    seen: ClassVar[list[dict[str, str]]] = []

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        Elsewhere.seen.append(dict(params, path=path))
        body = {"layers": [{"id": 0, "name": "far", "type": "Feature Layer"}]}
        return 200, "application/json", json.dumps(body).encode()


def test_item_that_is_not_a_service(client: ArcGISClient) -> None:
    with serving(Portal) as portal, pytest.raises(ConfigError) as info:
        expand_job(job(item="a" * 32, portal=portal), client)
    assert str(info.value) == (
        f"portal item '{'a' * 32}' ('Town map') is a 'Web Map', not a feature layer source; items of type "
        "'Feature Service' or 'Map Service' can be read; use that item's id or its service URL"
    )


def test_credentials_stay_with_the_portal_host() -> None:
    Elsewhere.seen.clear()
    with serving(Elsewhere) as other, serving(Portal) as portal:
        # Same machine, another host name: the token must not follow the item's url there.
        Portal.elsewhere = other.replace("127.0.0.1", "localhost") + "/arcgis/rest/services/far/FeatureServer"
        with ArcGISClient(auth=TokenAuth("tok-SECRET"), retries=0) as secured, pytest.raises(ConfigError) as info:
            expand_job(job(item="b" * 32, portal=portal), secured)
        assert "on another host than the portal" in str(info.value) and "SECRET" not in str(info.value)
        assert Elsewhere.seen == []
        with ArcGISClient(auth=NoAuth(), retries=0) as anonymous:  # no credentials: nothing to leak
            assert len(expand_job(job(item="b" * 32, portal=portal), anonymous)) == 1
        assert Elsewhere.seen and "token" not in Elsewhere.seen[0]


# --------------------------------------------------------------------------- credentials and a whole run


def test_a_secured_site_walks_with_its_own_credentials(tmp_path: Path) -> None:
    write_layer(tmp_path / "open.geojson", "points", 2)
    svc = tmp_path / "Two.FeatureServer"
    svc.mkdir()
    write_layer(svc / "one.geojson", "points", 2)
    write_layer(svc / "two.geojson", "points", 2)
    with run_server(tmp_path, "--token-auth", "ann:pw-123456") as secured:
        with ArcGISClient(retries=0) as anonymous, pytest.raises(TokenError):
            expand_job(job(url=f"{services(secured)}"), anonymous)
        with ArcGISClient(auth=UserPasswordAuth("ann", "pw-123456"), retries=0) as signed_in:
            jobs = expand_job(job(url=f"{services(secured)}", layers=["*o*"]), signed_in)
    assert [u for u, _, _ in summary(jobs)] == ["open/FeatureServer/0", "Two/FeatureServer/0", "Two/FeatureServer/1"]


def test_run_pipeline_writes_one_file_per_layer(base: str, tmp_path: Path) -> None:
    spec = parse_pipeline(
        {
            "version": 1,
            "jobs": [
                {
                    "name": "hydro",
                    "source": {"url": f"{services(base)}/Hydro"},
                    "sink": {"type": "geojson", "path": str(tmp_path / "{service}" / "{layer}.geojson")},
                },
                {
                    "name": "parcels",
                    "source": {"item": item_id("service:Parcels"), "portal": base, "layers": ["parcels*"]},
                    "sink": {"type": "geojson", "path": str(tmp_path / "parcels" / "{layer}.geojson")},
                },
            ],
        }
    )
    (tmp_path / "Hydro_rivers").mkdir()
    (tmp_path / "Hydro_Lakes").mkdir()
    (tmp_path / "parcels").mkdir()
    report = run_pipeline(spec)
    assert report.exit_code == 0, [j.error for j in report.jobs]
    counts = {j.name: j.written for j in report.jobs}
    assert counts == {
        "hydro/Hydro_rivers/rivers": 6,
        "hydro/Hydro_Lakes/big": 3,
        "hydro/Hydro_Lakes/parcels_by_the_lake": 2,
        "parcels/Parcels/Parcels_2020": 7,
        "parcels/Parcels/Parcels_2021": 4,
    }
    assert len(pyogrio.read_dataframe(tmp_path / "Hydro_Lakes" / "parcels_by_the_lake.geojson")) == 2
    assert len(pyogrio.read_dataframe(tmp_path / "parcels" / "Parcels_2020.geojson")) == 7
