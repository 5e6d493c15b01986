"""A layer that answers only "features in this box" (``ags-etl serve --box-only``): no count,
no id lists, no statistics, no pagination. The extractor splits the extent into boxes until
each comes back below the cap, and says that completeness rests on that alone."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from ags_etl.errors import PagingError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.server.testing import run_server
from tests.cli.helpers import ags, url

CAP = 10
STACK = (33.0, 66.0)  # 7 features at one spot: fewer than the cap, each must come once
#: Points on the lines the extent's halves, quarters and eighths are split along (extent 0..100).
ON_LINES = [(50.0, y) for y in (0.0, 12.5, 25.0, 50.0, 75.0, 100.0)] + [(x, 50.0) for x in (12.5, 25.0, 37.5, 62.5, 87.5)]
ON_LINES += [(25.0, 25.0), (75.0, 75.0), (12.5, 87.5), (0.0, 0.0), (100.0, 100.0), (0.0, 100.0), (100.0, 0.0)]


def _rows() -> list[dict[str, Any]]:
    rng = random.Random(11)
    points = ON_LINES + [STACK] * 7 + [(round(rng.uniform(0, 100), 4), round(rng.uniform(0, 100), 4)) for _ in range(280)]
    return [
        {"OBJECTID": i + 1, "NAME": f"feature {i + 1}", "VALUE": i * 1.5 if i % 9 else None, "xy": xy}
        for i, xy in enumerate(points)
    ]


ROWS = _rows()


def _write(path: Path, rows: list[dict[str, Any]]) -> None:
    features = [
        {
            "type": "Feature",
            "properties": {k: v for k, v in r.items() if k != "xy"},
            "geometry": {"type": "Point", "coordinates": list(r["xy"])},
        }
        for r in rows
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("box-only")
    _write(d / "boxes.geojson", ROWS)
    # 12 features at one spot, more than the cap of 10: no box can separate them.
    piled = [{"OBJECTID": i + 1, "NAME": "pile", "VALUE": 1.0, "xy": (5.0, 5.0)} for i in range(12)]
    _write(d / "piled.geojson", piled + [{"OBJECTID": 13, "NAME": "corner", "VALUE": 2.0, "xy": (90.0, 90.0)}])
    return d


@pytest.fixture(scope="module", params=["refuses-count", "count-answers-features"])
def server(request: pytest.FixtureRequest, data_dir: Path) -> Iterator[str]:
    extra = ["--count-answers-features"] if request.param == "count-answers-features" else []
    with run_server(data_dir, "--box-only", "--max-record-count", str(CAP), *extra) as base:
        yield base


def test_box_only_server_refuses_everything_but_boxes(server: str) -> None:
    layer = url(server, "boxes")
    for params in ({"returnIdsOnly": "true"}, {"resultOffset": "10"}, {"objectIds": "1,2"},
                   {"outStatistics": json.dumps([{"statisticType": "min", "onStatisticField": "OBJECTID",
                                                  "outStatisticFieldName": "M"}])}):
        body = requests.post(layer + "/query", data={"where": "1=1", "f": "json", **params}, timeout=30).json()
        assert body["error"]["code"] == 400, params
    count = requests.post(layer + "/query", data={"where": "1=1", "returnCountOnly": "true", "f": "json"}, timeout=30)
    assert "count" not in count.json()
    box = requests.post(layer + "/query", data={"where": "1=1", "f": "json", "geometry": "0,0,100,100",
                                                "geometryType": "esriGeometryEnvelope"}, timeout=30).json()
    assert len(box["features"]) == CAP and box["exceededTransferLimit"] is True


def test_box_only_layer_is_pulled_exactly(server: str) -> None:
    ext = FeatureLayerExtractor(url(server, "boxes"), concurrency=3)
    got: dict[int, dict[str, Any]] = {}
    total = 0
    with ext:
        for batch in ext:
            total += len(batch)
            cols = batch.attributes.to_pydict()
            assert batch.geometry is not None
            for i, oid in enumerate(cols["OBJECTID"]):
                got[oid] = {"NAME": cols["NAME"][i], "VALUE": cols["VALUE"][i],
                            "xy": (batch.geometry[i].x, batch.geometry[i].y)}
    assert total == len(got) == len(ROWS), "every feature exactly once"
    for row in ROWS:
        assert got[row["OBJECTID"]] == {"NAME": row["NAME"], "VALUE": row["VALUE"], "xy": row["xy"]}
    assert ext.stats.strategy == "box-split" and ext.stats.expected is None
    assert ext.stats.duplicates_dropped > 0, "features on split lines came in several boxes"
    assert ext.stats.unchecked is not None and "no server count" in ext.stats.unchecked
    assert any("no server count" in note for note in ext.stats.notes)


def test_inspect_shows_the_box_plan_and_why(server: str) -> None:
    proc = ags("inspect", url(server, "boxes"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["strategy"] == "box-split" and report["count"] is None
    assert "returnCountOnly was" in report["strategyReason"] and "returnIdsOnly failed" in report["strategyReason"]
    assert "below the page cap" in report["completeness"]
    text = ags("inspect", url(server, "boxes"))
    assert "strategy: box-split" in text.stdout and "completeness: no server count" in text.stdout


def test_pull_says_what_completeness_rests_on(server: str, tmp_path: Path) -> None:
    out = tmp_path / "boxes.geojsonl"
    proc = ags("pull", url(server, "boxes"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(out.read_text().splitlines()) == len(ROWS)
    assert "note: no server count was available" in proc.stderr


def test_more_features_at_one_spot_than_the_cap_fails_clearly(server: str) -> None:
    with pytest.raises(PagingError, match=r"more features at the single point \(5\.0, 5\.0\) than it returns per request"):
        with FeatureLayerExtractor(url(server, "piled")) as ext:
            for _ in ext:
                pass
