"""Edits of many features in one request (``ags-etl serve --editable``), over HTTP.

The server validates a request's features together, decodes plain points in bulk and
writes each kind of edit with one statement; these tests check that every answer is
still the one a feature-by-feature server gives: results in order, consecutive new
ids, a taken GlobalID failing only its own add, reprojection, and the odd point
(an empty one, an infinite one) next to plain ones.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import layer_url, post_json, write_points

from ags_etl.server.testing import run_server


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("bulk")
    write_points(d / "points.geojson")
    with run_server(d, "--editable") as base:
        yield layer_url(base, "points")


def _post(url: str, **params: Any) -> Any:
    return post_json(url, **{k: v if isinstance(v, str) else json.dumps(v) for k, v in params.items()})


def _by_name(url: str, prefix: str) -> dict[str, dict[str, Any]]:
    body = post_json(f"{url}/query", where=f"name LIKE '{prefix}%'", outFields="*", returnGeometry="true")
    assert "error" not in body, body
    return {f["attributes"]["name"]: f for f in body["features"]}


def _adds(prefix: str, n: int) -> list[dict[str, Any]]:
    return [{"attributes": {"name": f"{prefix}{i}"}, "geometry": {"x": i, "y": -i}} for i in range(n)]


def test_many_adds_get_consecutive_ids_in_order_and_read_back(url: str) -> None:
    body = _post(f"{url}/applyEdits", adds=_adds("seq-", 300))
    results = body["addResults"]
    assert [r["success"] for r in results] == [True] * 300
    oids = [r["objectId"] for r in results]
    assert oids == list(range(oids[0], oids[0] + 300))
    assert len({r["globalId"] for r in results}) == 300
    held = _by_name(url, "seq-")
    for i, r in enumerate(results):
        feat = held[f"seq-{i}"]
        assert feat["attributes"]["OBJECTID"] == r["objectId"] and feat["attributes"]["GlobalID"] == r["globalId"]
        assert feat["geometry"]["x"] == i and feat["geometry"]["y"] == -i
    # the layer's extent grew with the bulk-written points
    extent = post_json(f"{url}/query", where="1=1", returnExtentOnly="true")["extent"]
    assert extent["xmax"] >= 299 and extent["ymin"] <= -299


def test_a_taken_global_id_fails_only_its_add_and_ids_stay_unique(url: str) -> None:
    first = _post(f"{url}/applyEdits", adds=_adds("gid-", 1))["addResults"][0]
    taken = first["globalId"]
    adds = _adds("gidb-", 5)
    adds[2]["attributes"]["GlobalID"] = taken
    body = _post(f"{url}/applyEdits", adds=adds, useGlobalIds="true", rollbackOnFailure="false")
    results = body["addResults"]
    assert [r["success"] for r in results] == [True, True, False, True, True]
    assert results[2]["error"]["code"] == 1000 and results[2]["globalId"] == taken
    assert results[2]["objectId"] is None
    assert set(_by_name(url, "gidb-")) == {"gidb-0", "gidb-1", "gidb-3", "gidb-4"}
    ids = [r["objectId"] for r in results if r["success"]]
    assert len(set(ids)) == 4 and min(ids) > first["objectId"]
    # rollbackOnFailure=true: nothing of the request stays, and the answer names the add
    again = [{"attributes": {"name": "gidc-0"}}, {"attributes": {"name": "gidc-1", "GlobalID": taken}}]
    body = _post(f"{url}/applyEdits", adds=again, useGlobalIds="true")
    assert body["error"]["details"][0] == "Operation rolled back."
    assert "adds[1]" in body["error"]["details"][1] and "taken" in body["error"]["details"][1]
    assert _by_name(url, "gidc-") == {}


def test_odd_points_among_plain_ones_answer_as_alone(url: str) -> None:
    adds = _adds("odd-", 4)
    adds[1]["geometry"] = {"x": "NaN", "y": "NaN"}  # empty point: stored without geometry
    adds[2]["geometry"] = {"x": "Infinity", "y": 0}  # not a finite number
    adds[3]["geometry"] = {"x": 111319.49079327357, "y": 0.0, "spatialReference": {"wkid": 3857}}
    body = _post(f"{url}/applyEdits", adds=adds, rollbackOnFailure="false")
    results = body["addResults"]
    assert [r["success"] for r in results] == [True, True, False, True]
    assert results[2]["error"]["code"] == 1000 and "Invalid geometry" in results[2]["error"]["description"]
    held = _by_name(url, "odd-")
    assert held["odd-1"].get("geometry") is None
    assert held["odd-3"]["geometry"]["x"] == pytest.approx(1.0) and held["odd-3"]["geometry"]["y"] == pytest.approx(0.0)


def test_updates_and_deletes_in_bulk_keep_their_order(url: str) -> None:
    oids = [r["objectId"] for r in _post(f"{url}/applyEdits", adds=_adds("upd-", 3))["addResults"]]
    updates = [
        {"attributes": {"OBJECTID": oids[0], "name": "upd-0", "pop": 1}},
        {"attributes": {"OBJECTID": oids[0], "pop": 2}, "geometry": {"x": 50, "y": 50}},  # last one wins
        {"attributes": {"OBJECTID": 10**12, "pop": 3}},  # missing
        {"attributes": {"OBJECTID": oids[1], "pop": 4}},
    ]
    body = _post(f"{url}/applyEdits", updates=updates, deletes=[oids[2], oids[2], oids[1]], rollbackOnFailure="false")
    assert [r["success"] for r in body["updateResults"]] == [True, True, False, True]
    assert body["updateResults"][2]["error"]["code"] == 1019 and body["updateResults"][2]["objectId"] == 10**12
    deletes = body["deleteResults"]
    assert [r["success"] for r in deletes] == [True, False, True]
    assert deletes[1]["error"]["code"] == 1019 and deletes[1]["objectId"] == oids[2]
    held = _by_name(url, "upd-")
    assert set(held) == {"upd-0"}
    assert held["upd-0"]["attributes"]["pop"] == 2 and held["upd-0"]["geometry"]["x"] == 50


def test_ids_above_every_deleted_one_after_a_restart(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path, "--editable") as base:
        url = layer_url(base, "points")
        oids = [r["objectId"] for r in _post(f"{url}/applyEdits", adds=_adds("rs-", 20))["addResults"]]
        assert _post(f"{url}/applyEdits", deletes=oids[10:])["deleteResults"][-1]["success"] is True
    with run_server(tmp_path, "--editable") as base:
        url = layer_url(base, "points")
        again = [r["objectId"] for r in _post(f"{url}/applyEdits", adds=_adds("rs2-", 5))["addResults"]]
    assert again == list(range(oids[-1] + 1, oids[-1] + 6))
