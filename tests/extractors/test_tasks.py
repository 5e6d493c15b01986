"""Page tasks and worker results pickle; another executor (serial, a process pool) gives the same features.

Against our local FeatureServer on 127.0.0.1 with a cap of 7 rows per page.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pytest
import shapely

from ags_etl.arcgis.auth import UserPasswordAuth
from ags_etl.extractors.executor import Executor, PoolExecutor, SerialExecutor
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.extractors.tasks import Box, IdChunk, OffsetPage, OidWindow, SpotCheck, fetch_page
from ags_etl.server.testing import run_server
from tests.layers import write_layer

N = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("layers")
    write_layer(d / "points.geojson", "points", N)
    write_layer(d / "polygons.geojson", "polygons", 12)  # the first 12 have geometries: boxes see all
    with run_server(d, "--max-record-count", "7") as base:
        yield base


def url_of(base: str, name: str = "points") -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


def read(url: str, strategy: str | None = None, executor: Executor | None = None) -> dict[int, tuple]:
    """OID → (attributes, WKB) of every feature; fails on a duplicate."""
    out: dict[int, tuple] = {}
    with FeatureLayerExtractor(url, strategy=strategy, executor=executor, retries=0) as ext:
        for batch in ext:
            wkb = shapely.to_wkb(batch.geometry).tolist()
            for row, g in zip(batch.attributes.to_pylist(), wkb):
                assert row["OBJECTID"] not in out, "a feature came twice"
                out[row["OBJECTID"]] = (tuple(sorted(row.items())), g)
    return out


def test_tasks_and_worker_results_pickle_round_trip(server: str) -> None:
    tasks = [
        IdChunk((1, 2, 3)),
        OffsetPage(0, 7),
        OidWindow(4, 9),
        Box((-180.0, -90.0, 180.0, 90.0), 1),
        SpotCheck((0.0, 0.0, 1e-9, 1e-9), (0.0, 0.0), Box((-1.0, -1.0, 1.0, 1.0), 3)),
    ]
    for task in tasks:
        assert pickle.loads(pickle.dumps(task)) == task
    with FeatureLayerExtractor(url_of(server), retries=0) as ext:
        ctx = ext.context()
        assert pickle.loads(pickle.dumps(ctx)) == ctx
        result = fetch_page(IdChunk((1, 2, 3, 99_999)), ctx, ext.client)
    assert result.rows == 3 and not result.exceeded and result.failure is None
    back = pickle.loads(pickle.dumps(result))
    assert back.task == result.task
    assert np.array_equal(back.oids, [1, 2, 3])
    assert back.batch.attributes.equals(result.batch.attributes)
    assert shapely.equals(back.batch.geometry, result.batch.geometry).all()
    assert back.batch.crs == result.batch.crs


def test_auth_spec_pickles_without_its_token_or_lock() -> None:
    auth = UserPasswordAuth("ann", "pw-secret", token_url="http://127.0.0.1:1/arcgis/tokens/generateToken")
    back = pickle.loads(pickle.dumps(auth))
    assert back.username == "ann" and back.token_url == auth.token_url
    assert "pw-secret" not in repr(back)


@pytest.mark.parametrize(
    ("layer", "strategy"), [("points", None), ("points", "offset"), ("points", "oid-range"), ("polygons", "spatial")]
)
def test_serial_executor_gives_the_same_features_as_threads(server: str, layer: str, strategy: str | None) -> None:
    threaded = read(url_of(server, layer), strategy)
    assert len(threaded) == (N if layer == "points" else 12)
    assert read(url_of(server, layer), strategy, SerialExecutor()) == threaded


def test_process_pool_gives_the_same_features_as_threads(server: str) -> None:
    threaded = read(url_of(server))
    pool = ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn"))
    assert read(url_of(server), None, PoolExecutor(pool, 2)) == threaded
