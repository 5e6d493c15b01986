"""Extraction against responses recorded from real ArcGIS servers (tests/data/real-servers),
replayed over HTTP on 127.0.0.1.

The recordings are truncated (a page of features, not the whole layer), so the replay
serves the recorded page as the whole layer: ``returnCountOnly`` answers the number of
recorded features, and a query by ``objectIds`` answers the recorded features with those
ids. Metadata, id lists (floats included) and features are the servers' own answers, with
their quirks: no ``objectIdField`` and the OID at field index 11 with a WKT-only spatial
reference (Kent MI 10.22), ids sent as floats (Columbia MO 10.01), 162 of 1000 features
without geometry (Esri sampleserver6 10.3), an empty layer (Chicago 10.81).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import shapely

from ags_etl.arcgis.esrijson import decode_geometry
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from tests.loopback import JSONHandler, serving

DATA = Path(__file__).parent.parent / "data" / "real-servers"


def _load(folder: Path, part: str) -> dict | None:
    files = [p for p in folder.iterdir() if part in p.name]
    return json.loads(files[0].read_text()) if files else None


@contextlib.contextmanager
def replay(server: str) -> Iterator[str]:
    folder = DATA / server
    metadata = _load(folder, "metadata")
    ids = _load(folder, "ids")
    page = _load(folder, "-0.json") or {"features": []}
    count = _load(folder, "count") if not page["features"] else {"count": len(page["features"])}

    class Handler(JSONHandler):
        def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
            if not path.endswith("/query"):
                body = metadata
            elif params.get("returnCountOnly") == "true":
                body = count
            elif params.get("returnIdsOnly") == "true":
                body = ids
            elif "objectIds" in params:
                wanted = {int(v) for v in params["objectIds"].split(",")}
                oid = next(f["name"] for f in metadata["fields"] if f["type"] == "esriFieldTypeOID")
                body = dict(page, features=[f for f in page["features"] if int(f["attributes"][oid]) in wanted])
            else:
                body = {"error": {"code": 400, "message": "Unable to complete operation.", "details": []}}
            return 200, "application/json", json.dumps(body).encode()

    with serving(Handler) as base:
        yield f"{base}/arcgis/rest/services/{server}/MapServer/0"


@pytest.mark.parametrize(
    "server, features, without_geometry",
    [("us-mi-kent", 15, 0), ("us-mo-columbia", 43, 0), ("us-fl-polk", 10, 0), ("us-esri-test", 1000, 162)],
)
def test_recorded_layers_exactly_once(server: str, features: int, without_geometry: int) -> None:
    page = _load(DATA / server, "-0.json")
    assert page is not None
    with replay(server) as url:
        ext = FeatureLayerExtractor(url, concurrency=3, page_size=7)
        got: dict[int, shapely.Geometry | None] = {}
        total = 0
        with ext:
            oid = ext.schema.oid_field
            for batch in ext:
                total += len(batch)
                for o, g in zip(batch.column(oid).to_pylist(), batch.geometry, strict=True):
                    got[o] = g
    assert ext.stats.strategy == "oid-list"
    assert total == len(got) == features
    assert sum(1 for g in got.values() if g is None) == without_geometry
    for f in page["features"]:
        o = int(f["attributes"][oid])
        expected = decode_geometry(f.get("geometry"))
        assert (got[o] is None) == (expected is None)
        if expected is not None:
            assert got[o].equals_exact(expected, 0)


def test_recorded_empty_layer() -> None:
    with replay("us-il-chicago") as url:
        ext = FeatureLayerExtractor(url)
        with ext:
            batches = list(ext)
    assert batches == [] and ext.stats.expected == 0 and ext.stats.pages == 0


def test_recorded_empty_layer_gives_an_empty_but_valid_file(tmp_path: Path) -> None:
    from ags_etl.loaders.geojson import GeoJSONLoader
    from ags_etl.pipeline import Pipeline

    out = tmp_path / "empty.geojson"
    with replay("us-il-chicago") as url:
        result = Pipeline(FeatureLayerExtractor(url), [], GeoJSONLoader(out)).run()
    assert result.features == 0
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["features"] == []
