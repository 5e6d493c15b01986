"""Edits on the local FeatureServer (``ags-etl serve --editable``), over HTTP.

One editable server per module serves a point layer and a two-layer service; each
test edits its own features (distinct names), so tests do not depend on each other.
Restart tests start their own servers on their own folders.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import shapely
from serve_helpers import feature, layer_url, post_json, write_geojson, write_points

from ags_etl.schema import Field
from ags_etl.server.edits import EditFailure, check_value
from ags_etl.server.testing import run_server

GUID_CHARS = set("0123456789ABCDEF-{}")


def _write_data(d: Path) -> Path:
    write_points(d / "points.geojson")
    svc = d / "Multi.FeatureServer"
    svc.mkdir()
    # string widths come from the longest value: 20 characters here
    write_geojson(svc / "a_sites.geojson", [feature({"label": "site one (20 chars).."}, shapely.Point(5, 5))])
    write_geojson(svc / "b_notes.geojson", [feature({"note": "note one (20 chars).."}, None)])
    return d


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = _write_data(tmp_path_factory.mktemp("edits"))
    with run_server(d, "--editable") as url:
        yield url


def _post(url: str, **params: Any) -> Any:
    for key, value in list(params.items()):
        if not isinstance(value, str):
            params[key] = json.dumps(value)
    return post_json(url, **params)


def _rows(url: str, where: str) -> list[dict[str, Any]]:
    body = post_json(f"{url}/query", where=where, outFields="*", returnGeometry="true")
    assert "error" not in body, body
    return body["features"]


def _point(x: float, y: float) -> dict[str, float]:
    return {"x": x, "y": y}


# --------------------------------------------------------------------------- metadata


def test_metadata_advertises_editing(base: str) -> None:
    layer = requests.get(layer_url(base, "points"), params={"f": "json"}, timeout=30).json()
    assert layer["capabilities"] == "Create,Delete,Query,Update,Editing"
    assert layer["editFieldsInfo"] == {
        "creationDateField": "CreationDate",
        "creatorField": "Creator",
        "editDateField": "EditDate",
        "editorField": "Editor",
    }
    assert layer["globalIdField"] == "GlobalID" and layer["hasGlobalIds"] is True
    assert layer["supportsApplyEditsWithGlobalIds"] is True
    assert layer["supportsRollbackOnFailureParameter"] is True
    assert layer["maxRecordCount"] == 1000
    fields = {f["name"]: f for f in layer["fields"]}
    assert fields["GlobalID"]["type"] == "esriFieldTypeGlobalID" and fields["GlobalID"]["nullable"] is False
    for name in ("OBJECTID", "GlobalID", "CreationDate", "Creator", "EditDate", "Editor"):
        assert fields[name]["editable"] is False, name
    assert fields["name"]["editable"] is True and fields["name"]["length"] == 16 and fields["name"]["nullable"] is True
    service = requests.get(base + "/arcgis/rest/services/points/FeatureServer", params={"f": "json"}, timeout=30).json()
    assert service["capabilities"] == "Create,Delete,Query,Update,Editing"


def test_existing_rows_get_global_ids_and_null_editor_fields(base: str) -> None:
    rows = _rows(layer_url(base, "points"), "OBJECTID <= 34")
    gids = [r["attributes"]["GlobalID"] for r in rows]
    assert len(set(gids)) == len(gids) == 8
    for gid in gids:
        assert gid.startswith("{") and gid.endswith("}") and len(gid) == 38 and set(gid) <= GUID_CHARS
    assert all(r["attributes"]["CreationDate"] is None and r["attributes"]["Editor"] is None for r in rows)


def test_read_only_server_refuses_edits(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path) as url:
        layer = requests.get(layer_url(url, "points"), params={"f": "json"}, timeout=30).json()
        assert layer["capabilities"] == "Query" and layer["editFieldsInfo"] is None
        body = _post(f"{layer_url(url, 'points')}/addFeatures", features=[{"attributes": {"name": "x"}}])
        assert body["error"]["code"] == 400
        assert "--editable" in body["error"]["details"][0]
        assert not (tmp_path / ".ags_etl_serve").exists()


# --------------------------------------------------------------------------- operations


def test_apply_edits_adds_updates_deletes(base: str) -> None:
    url = layer_url(base, "points")
    added = _post(
        f"{url}/addFeatures",
        features=[{"attributes": {"name": "ae-upd", "pop": 1}, "geometry": _point(1, 1)},
                  {"attributes": {"name": "ae-del"}, "geometry": _point(2, 2)}],
    )  # fmt: skip
    (upd, dele) = [r["objectId"] for r in added["addResults"]]
    body = _post(
        f"{url}/applyEdits",
        adds=[{"attributes": {"name": "ae-add", "ratio": 0.5}, "geometry": _point(3, 3)}],
        updates=[{"attributes": {"OBJECTID": upd, "pop": 99}, "geometry": _point(7, 8)}],
        deletes=str(dele),
    )
    assert set(body) == {"addResults", "updateResults", "deleteResults"}
    (add,) = body["addResults"]
    assert add["success"] is True and isinstance(add["objectId"], int) and add["globalId"].startswith("{")
    assert body["updateResults"][0]["objectId"] == upd and body["updateResults"][0]["success"] is True
    assert body["deleteResults"][0]["objectId"] == dele and body["deleteResults"][0]["success"] is True
    rows = {r["attributes"]["name"]: r for r in _rows(url, "name LIKE 'ae-%'")}
    assert set(rows) == {"ae-upd", "ae-add"}
    assert rows["ae-upd"]["attributes"]["pop"] == 99 and rows["ae-upd"]["geometry"] == {"x": 7, "y": 8}
    assert rows["ae-add"]["attributes"]["ratio"] == 0.5 and rows["ae-add"]["attributes"]["OBJECTID"] == add["objectId"]
    # a spatial query finds the moved feature where it is now
    hits = post_json(f"{url}/query", geometry="6.5,7.5,7.5,8.5", geometryType="esriGeometryEnvelope", outFields="name")
    assert [f["attributes"]["name"] for f in hits["features"]] == ["ae-upd"]


def test_single_operations_answer_only_their_list(base: str) -> None:
    url = layer_url(base, "points")
    added = _post(f"{url}/addFeatures", features=[{"attributes": {"name": "so-1"}, "geometry": _point(0, 1)}])
    assert set(added) == {"addResults"}
    oid = added["addResults"][0]["objectId"]
    updated = _post(f"{url}/updateFeatures", features=[{"attributes": {"OBJECTID": oid, "name": "so-2"}}])
    assert set(updated) == {"updateResults"} and updated["updateResults"][0]["success"] is True
    # an update without geometry keeps the geometry
    assert _rows(url, f"OBJECTID = {oid}")[0]["geometry"] == {"x": 0, "y": 1}
    deleted = post_json(f"{url}/deleteFeatures", objectIds=str(oid))
    assert deleted == {"deleteResults": [{"objectId": oid, "globalId": added["addResults"][0]["globalId"], "success": True}]}
    assert _rows(url, f"OBJECTID = {oid}") == []


def test_delete_by_where_goes_through_the_read_guard(base: str) -> None:
    url = layer_url(base, "points")
    _post(f"{url}/addFeatures", features=[{"attributes": {"name": f"dw-{i}", "pop": i}} for i in range(4)])
    body = post_json(f"{url}/deleteFeatures", where="name LIKE 'dw-%' AND pop >= 2")
    assert sorted(r["success"] for r in body["deleteResults"]) == [True, True]
    assert sorted(r["attributes"]["name"] for r in _rows(url, "name LIKE 'dw-%'")) == ["dw-0", "dw-1"]
    # the guard refuses what it refuses for queries, and nothing is deleted
    for where in ("1=1; DROP TABLE features", "OBJECTID IN (SELECT OBJECTID FROM features)", "name = 'x' --"):
        refused = post_json(f"{url}/deleteFeatures", where=where)
        assert refused["error"]["code"] == 400, where
    assert len(_rows(url, "name LIKE 'dw-%'")) == 2
    assert len(_rows(url, "OBJECTID <= 34")) >= 7


def test_service_apply_edits_across_layers(base: str) -> None:
    svc = f"{base}/arcgis/rest/services/Multi/FeatureServer"
    body = _post(
        f"{svc}/applyEdits",
        edits=[
            {"id": 0, "adds": [{"attributes": {"label": "svc-a"}, "geometry": _point(9, 9)}]},
            {"id": 1, "adds": [{"attributes": {"note": "svc-n"}}], "deletes": [1]},
        ],
    )
    assert [e["id"] for e in body] == [0, 1]
    assert body[0]["addResults"][0]["success"] is True and body[1]["deleteResults"][0]["objectId"] == 1
    assert [r["attributes"]["label"] for r in _rows(f"{svc}/0", "label = 'svc-a'")] == ["svc-a"]
    assert [r["attributes"]["note"] for r in _rows(f"{svc}/1", "1=1")] == ["svc-n"]


def test_service_apply_edits_rolls_back_every_layer(base: str) -> None:
    svc = f"{base}/arcgis/rest/services/Multi/FeatureServer"
    body = _post(
        f"{svc}/applyEdits",
        edits=[
            {"id": 0, "adds": [{"attributes": {"label": "rb-a"}, "geometry": _point(1, 1)}]},
            {"id": 1, "deletes": [424242]},
        ],
    )
    assert body["error"]["code"] == 400 and body["error"]["details"][0] == "Operation rolled back."
    assert "1019" in body["error"]["details"][1]
    assert _rows(f"{svc}/0", "label = 'rb-a'") == []


def test_layer_apply_edits_on_a_service_with_several_layers(base: str) -> None:
    url = f"{base}/arcgis/rest/services/Multi/FeatureServer/1"
    body = _post(f"{url}/addFeatures", features=[{"attributes": {"note": "ml-n"}}])
    assert body["addResults"][0]["success"] is True
    bad = _post(f"{url}/addFeatures", features=[{"attributes": {"note": "x"}, "geometry": _point(1, 1)}])
    assert "Invalid geometry" in bad["error"]["details"][1]


# --------------------------------------------------------------------------- validation and rollback


@pytest.mark.parametrize(
    ("attributes", "geometry", "expected"),
    [
        ({"name": "x" * 17}, _point(0, 0), "at most 16 characters"),
        ({"nosuchfield": 1}, _point(0, 0), "does not exist"),
        ({"pop": "many"}, _point(0, 0), "whole numbers"),
        ({"pop": 2**40}, _point(0, 0), "-2147483648..2147483647"),
        ({"ratio": True}, _point(0, 0), "numbers"),
        ({"born": "yesterday"}, _point(0, 0), "epoch milliseconds"),
        ({"name": "g"}, {"paths": [[[0, 0], [1, 1]]]}, "Invalid geometry"),
        ({"name": "g"}, {"x": "a", "y": 1}, "Invalid geometry"),
    ],
)
def test_bad_values_are_code_1000(base: str, attributes: dict[str, Any], geometry: Any, expected: str) -> None:
    url = layer_url(base, "points")
    body = _post(
        f"{url}/applyEdits", rollbackOnFailure="false", adds=[{"attributes": attributes, "geometry": geometry}]
    )
    (result,) = body["addResults"]
    assert result["success"] is False and result["objectId"] is None
    assert result["error"]["code"] == 1000 and expected in result["error"]["description"]


def test_update_and_delete_of_missing_objects_are_code_1019(base: str) -> None:
    url = layer_url(base, "points")
    body = _post(
        f"{url}/applyEdits",
        rollbackOnFailure="false",
        updates=[{"attributes": {"OBJECTID": 999999, "name": "m"}}],
        deletes="999998",
    )
    assert body["updateResults"][0]["error"]["code"] == 1019
    assert body["updateResults"][0]["objectId"] == 999999
    assert body["deleteResults"] == [
        {"objectId": 999998, "globalId": None, "success": False,
         "error": {"code": 1019, "description": body["deleteResults"][0]["error"]["description"]}},
    ]  # fmt: skip
    assert "Object is missing" in body["deleteResults"][0]["error"]["description"]


def test_rollback_on_failure_true_undoes_the_whole_request(base: str) -> None:
    url = layer_url(base, "points")
    body = _post(
        f"{url}/applyEdits",
        adds=[{"attributes": {"name": "rb-good"}, "geometry": _point(1, 2)},
              {"attributes": {"name": "rb-bad-and-too-long"}, "geometry": _point(1, 2)}],
    )  # fmt: skip
    assert body == {
        "error": {
            "code": 400,
            "message": "Unable to complete operation.",
            "details": ["Operation rolled back.", body["error"]["details"][1]],
        }
    }
    assert body["error"]["details"][1].startswith("adds[1] of layer 0:") and "(error code 1000)" in body["error"]["details"][1]
    assert _rows(url, "name LIKE 'rb-%'") == []


def test_rollback_on_failure_false_keeps_good_edits(base: str) -> None:
    url = layer_url(base, "points")
    body = _post(
        f"{url}/applyEdits",
        rollbackOnFailure="false",
        adds=[{"attributes": {"name": "kf-good"}, "geometry": _point(1, 2)},
              {"attributes": {"name": "kf-bad-and-too-long"}, "geometry": _point(1, 2)},
              {"attributes": {"name": "kf-good2"}}],
        deletes="777777",
    )  # fmt: skip
    assert [r["success"] for r in body["addResults"]] == [True, False, True]
    assert body["addResults"][1]["error"]["code"] == 1000
    assert body["deleteResults"][0]["error"]["code"] == 1019
    assert sorted(r["attributes"]["name"] for r in _rows(url, "name LIKE 'kf-%'")) == ["kf-good", "kf-good2"]


def test_non_nullable_fields_refuse_null() -> None:
    # Served source fields are all nullable; the rule is checked on the validator itself.
    required = Field("code", "esriFieldTypeString", length=4, nullable=False)
    with pytest.raises(EditFailure) as caught:
        check_value(required, None)
    assert caught.value.code == 1000 and "'code'" in caught.value.description
    assert check_value(required, "abcd") == "abcd"


# --------------------------------------------------------------------------- GlobalIDs and editor tracking


def test_use_global_ids_for_adds_updates_and_deletes(base: str) -> None:
    url = layer_url(base, "points")
    gid_a = "{5B1DB0F3-1A60-4C4B-9E34-0E2A6D6C1A01}"
    gid_b = "{5B1DB0F3-1A60-4C4B-9E34-0E2A6D6C1A02}"
    body = _post(
        f"{url}/applyEdits",
        useGlobalIds="true",
        adds=[{"attributes": {"name": "ug-a", "GlobalID": gid_a}, "geometry": _point(4, 4)},
              {"attributes": {"name": "ug-b", "GlobalID": gid_b.lower()}, "geometry": _point(4, 5)}],
    )  # fmt: skip
    assert [r["globalId"] for r in body["addResults"]] == [gid_a, gid_b]
    body = _post(
        f"{url}/applyEdits",
        useGlobalIds="true",
        updates=[{"attributes": {"GlobalID": gid_a, "pop": 41}}],
        deletes=[gid_b],
    )
    assert body["updateResults"][0]["globalId"] == gid_a and body["updateResults"][0]["success"] is True
    assert body["deleteResults"][0]["globalId"] == gid_b and body["deleteResults"][0]["success"] is True
    rows = _rows(url, "name LIKE 'ug-%'")
    assert [(r["attributes"]["name"], r["attributes"]["pop"]) for r in rows] == [("ug-a", 41)]
    missing = _post(f"{url}/applyEdits", useGlobalIds="true", rollbackOnFailure="false", deletes=[gid_b])
    assert missing["deleteResults"][0]["error"]["code"] == 1019
    taken = _post(
        f"{url}/applyEdits", useGlobalIds="true", rollbackOnFailure="false",
        adds=[{"attributes": {"name": "ug-dup", "GlobalID": gid_a}}],
    )  # fmt: skip
    assert taken["addResults"][0]["error"]["code"] == 1000


def test_global_ids_from_clients_are_ignored_without_use_global_ids(base: str) -> None:
    url = layer_url(base, "points")
    gid = "{0D3A0000-0000-4000-8000-000000000001}"
    body = _post(f"{url}/addFeatures", features=[{"attributes": {"name": "ng-a", "GlobalID": gid, "OBJECTID": 1}}])
    result = body["addResults"][0]
    assert result["globalId"] != gid and result["objectId"] != 1


def test_editor_fields_are_set_on_add_and_update(base: str) -> None:
    url = layer_url(base, "points")
    before = time.time() * 1000
    body = _post(
        f"{url}/addFeatures",
        features=[{"attributes": {"name": "et-1", "Creator": "mallory", "EditDate": 0}, "geometry": _point(1, 1)}],
    )
    oid = body["addResults"][0]["objectId"]
    (row,) = _rows(url, f"OBJECTID = {oid}")
    added = row["attributes"]
    assert added["Creator"] == added["Editor"] == "ags-etl"
    assert added["CreationDate"] == added["EditDate"] and added["CreationDate"] >= before - 1000
    time.sleep(0.01)  # so the next edit falls in a later millisecond
    _post(f"{url}/updateFeatures", features=[{"attributes": {"OBJECTID": oid, "pop": 5}}])
    (row,) = _rows(url, f"OBJECTID = {oid}")
    updated = row["attributes"]
    assert updated["CreationDate"] == added["CreationDate"] and updated["Creator"] == "ags-etl"
    assert updated["EditDate"] > added["EditDate"]
    # the EditDate cursor of sync jobs sees it
    newer = post_json(f"{url}/query", where=f"EditDate > {added['EditDate']}", returnIdsOnly="true")
    assert oid in newer["objectIds"]


def test_editor_is_the_token_user(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path, "--editable", "--token-auth", "alice:s3cret") as url:
        token = post_json(f"{url}/arcgis/tokens/generateToken", username="alice", password="s3cret")["token"]
        layer = layer_url(url, "points")
        body = _post(f"{layer}/addFeatures", token=token, features=[{"attributes": {"name": "tk"}}])
        oid = body["addResults"][0]["objectId"]
        row = post_json(f"{layer}/query", token=token, where=f"OBJECTID = {oid}", outFields="Creator,Editor")
        assert row["features"][0]["attributes"] == {"OBJECTID": oid, "Creator": "alice", "Editor": "alice"}
        assert _post(f"{layer}/addFeatures", features=[])["error"]["code"] == 499


# --------------------------------------------------------------------------- HTTP rules


def test_edits_are_post_only(base: str) -> None:
    for op in ("applyEdits", "addFeatures", "updateFeatures", "deleteFeatures"):
        body = requests.get(f"{layer_url(base, 'points')}/{op}", params={"f": "json", "objectIds": "1"}, timeout=30).json()
        assert body["error"]["code"] == 405 and op in body["error"]["details"][0], op
    body = requests.get(f"{base}/arcgis/rest/services/points/FeatureServer/applyEdits", params={"f": "json"}, timeout=30)
    assert body.json()["error"]["code"] == 405
    assert len(_rows(layer_url(base, "points"), "OBJECTID = 1")) == 1


def test_bad_parameters_name_the_parameter(base: str) -> None:
    url = layer_url(base, "points")
    assert "'adds'" in post_json(f"{url}/applyEdits", adds="{not json")["error"]["details"][0]
    assert "'deletes'" in post_json(f"{url}/applyEdits", deletes="1,two")["error"]["details"][0]
    assert "'where'" in post_json(f"{url}/deleteFeatures")["error"]["details"][0]
    svc = f"{base}/arcgis/rest/services/Multi/FeatureServer"
    assert "layer id 7" in _post(f"{svc}/applyEdits", edits=[{"id": 7, "adds": []}])["error"]["details"][0]


# --------------------------------------------------------------------------- persistence


def test_edits_survive_a_restart_and_ids_are_never_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    write_points(data / "points.geojson")
    store = tmp_path / "store"
    with run_server(data, "--editable", "--store", str(store)) as url:
        layer = layer_url(url, "points")
        body = _post(f"{layer}/addFeatures", features=[{"attributes": {"name": "keep"}, "geometry": _point(3, 3)},
                                                       {"attributes": {"name": "max"}}])  # fmt: skip
        keep, top = [r["objectId"] for r in body["addResults"]]
        assert top == keep + 1 == 36  # after the source's largest OID, 34
        _post(f"{layer}/updateFeatures", features=[{"attributes": {"OBJECTID": 1, "name": "renamed"}}])
        assert post_json(f"{layer}/deleteFeatures", objectIds=str(top))["deleteResults"][0]["success"] is True
    with run_server(data, "--editable", "--store", str(store)) as url:
        layer = layer_url(url, "points")
        assert _rows(layer, f"OBJECTID = {keep}")[0]["geometry"] == {"x": 3, "y": 3}
        assert _rows(layer, "OBJECTID = 1")[0]["attributes"]["name"] == "renamed"
        assert post_json(f"{layer}/query", where="1=1", returnCountOnly="true")["count"] == 9
        body = _post(f"{layer}/addFeatures", features=[{"attributes": {"name": "after restart"}}])
        assert body["addResults"][0]["objectId"] == top + 1


def test_default_store_folder_and_changed_source_rebuilds(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path, "--editable") as url:
        _post(f"{layer_url(url, 'points')}/addFeatures", features=[{"attributes": {"name": "gone"}}])
    assert (tmp_path / ".ags_etl_serve" / "points" / "points.sqlite").exists()
    write_geojson(tmp_path / "points.geojson", [feature({"name": "fresh"}, shapely.Point(1, 1))])
    with run_server(tmp_path, "--editable") as url:
        rows = _rows(layer_url(url, "points"), "1=1")
        assert [r["attributes"]["name"] for r in rows] == ["fresh"]


def test_store_options_need_editable(tmp_path: Path) -> None:
    import subprocess
    import sys

    write_points(tmp_path / "points.geojson")
    for extra in (["--store", str(tmp_path / "s")], ["--drop-edit-answers", "1"], ["--edit-answer-delay", "1"]):
        proc = subprocess.run(
            [sys.executable, "-m", "ags_etl.server", str(tmp_path), "--port", "0", *extra],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert proc.returncode == 2, proc
        assert f"{extra[0]} needs --editable" in proc.stderr
