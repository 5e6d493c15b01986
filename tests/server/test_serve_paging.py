"""exceededTransferLimit at its boundaries, and the pagination-less (10.0-era) server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import get_json, layer_url, write_count_layer

from ags_etl.server.testing import run_server

CAP = 5


@pytest.fixture(scope="module")
def paging_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("paging")
    write_count_layer(d / "five.geojson", CAP)  # exactly one page
    write_count_layer(d / "six.geojson", CAP + 1)  # one row more than a page
    write_count_layer(d / "twelve.geojson", 12)
    return d


@pytest.fixture(scope="module")
def capped(paging_dir: Path) -> Iterator[str]:
    with run_server(paging_dir, "--max-record-count", str(CAP)) as base:
        yield base


@pytest.fixture(scope="module")
def legacy(paging_dir: Path) -> Iterator[str]:
    with run_server(paging_dir, "--max-record-count", str(CAP), "--no-pagination") as base:
        yield base


def page(base: str, name: str, **params: Any) -> tuple[list[int], bool]:
    params.setdefault("where", "1=1")
    body = get_json(layer_url(base, name) + "/query", **params)
    assert "error" not in body, body
    flag = body.get("exceededTransferLimit", False)
    assert flag in (True, False)
    return [f["attributes"]["OBJECTID"] for f in body["features"]], flag


@pytest.mark.parametrize(
    ("name", "params", "expected_ids", "expected_flag"),
    [
        ("five", {}, [1, 2, 3, 4, 5], False),  # count == page size: nothing more
        ("six", {}, [1, 2, 3, 4, 5], True),  # count == page size + 1
        ("six", {"resultOffset": "5"}, [6], False),
        ("six", {"resultOffset": "6"}, [], False),
        ("six", {"resultRecordCount": "100"}, [1, 2, 3, 4, 5], True),  # never above maxRecordCount
        ("six", {"resultRecordCount": "6"}, [1, 2, 3, 4, 5], True),
        ("five", {"resultRecordCount": "2", "resultOffset": "2"}, [3, 4], True),
        ("five", {"resultRecordCount": "2", "resultOffset": "3"}, [4, 5], False),
        ("five", {"resultRecordCount": "2", "resultOffset": "4"}, [5], False),
        ("six", {"where": "seq >= 1"}, [2, 3, 4, 5, 6], False),  # filters count, not the table
        ("six", {"orderByFields": "seq DESC"}, [6, 5, 4, 3, 2], True),
    ],
)
def test_exceeded_transfer_limit(
    capped: str, name: str, params: dict[str, str], expected_ids: list[int], expected_flag: bool
) -> None:
    assert page(capped, name, **params) == (expected_ids, expected_flag)


def test_geojson_flag_at_the_boundary(capped: str) -> None:
    five = get_json(layer_url(capped, "five") + "/query", where="1=1", f="geojson")
    six = get_json(layer_url(capped, "six") + "/query", where="1=1", f="geojson")
    assert "properties" not in five
    assert six["properties"] == {"exceededTransferLimit": True}
    assert len(six["features"]) == CAP


def test_ids_and_count_are_not_capped(capped: str) -> None:
    url = layer_url(capped, "twelve") + "/query"
    assert get_json(url, where="1=1", returnIdsOnly="true")["objectIds"] == list(range(1, 13))
    assert get_json(url, where="1=1", returnCountOnly="true") == {"count": 12}


def test_offset_paging_reads_every_row_once(capped: str) -> None:
    seen: list[int] = []
    offset = 0
    while True:
        got, more = page(capped, "twelve", resultOffset=str(offset), orderByFields="OBJECTID")
        seen += got
        offset += len(got)
        if not more:
            break
    assert seen == list(range(1, 13))


def test_legacy_layer_json(legacy: str) -> None:
    layer = get_json(layer_url(legacy, "six"))
    assert layer["currentVersion"] == 10.0
    assert layer["supportsPagination"] is False
    assert layer["supportsAdvancedQueries"] is False
    assert "advancedQueryCapabilities" not in layer
    assert layer["maxRecordCount"] == CAP
    assert get_json(f"{legacy}/arcgis/rest/info")["currentVersion"] == 10.0


def test_legacy_ignores_offset_count_and_order(legacy: str) -> None:
    first = page(legacy, "six")
    assert first == ([1, 2, 3, 4, 5], True)
    assert page(legacy, "six", resultOffset="5") == first
    assert page(legacy, "six", resultOffset="3", resultRecordCount="2") == first
    assert page(legacy, "six", orderByFields="seq DESC") == first
    assert page(legacy, "five") == ([1, 2, 3, 4, 5], False)


def test_legacy_still_filters_and_counts(legacy: str) -> None:
    url = layer_url(legacy, "twelve") + "/query"
    assert page(legacy, "twelve", where="seq >= 9") == ([10, 11, 12], False)
    assert page(legacy, "twelve", objectIds="2,11") == ([2, 11], False)
    assert page(legacy, "twelve", where="OBJECTID > 6 AND OBJECTID <= 12") == ([7, 8, 9, 10, 11], True)
    assert get_json(url, where="1=1", returnIdsOnly="true")["objectIds"] == list(range(1, 13))
    assert get_json(url, where="1=1", returnCountOnly="true") == {"count": 12}
    stats = [
        {"statisticType": "min", "onStatisticField": "OBJECTID", "outStatisticFieldName": "lo"},
        {"statisticType": "max", "onStatisticField": "OBJECTID", "outStatisticFieldName": "hi"},
    ]
    body = get_json(url, where="1=1", outStatistics=json.dumps(stats))
    assert body["features"][0]["attributes"] == {"lo": 1, "hi": 12}
