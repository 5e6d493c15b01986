"""Resumable extraction: the staging folder (ags_etl.extractors.staging) and the driver's resume hooks.

The store is checked on its own (chunk round trip, manifests, discards); then the extractor
against the local FeatureServer behind a recording proxy: a run abandoned half-way and a
second run with the same staging folder give the same batches as a clean run, and the
proxy sees only the pages that were not staged.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import shapely

from ags_etl.batch import FeatureBatch
from ags_etl.errors import LoadError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.extractors.staging import (
    MANIFEST,
    StagingStore,
    manifest_change,
    staging_folder,
    task_id,
)
from ags_etl.extractors.tasks import Box, IdChunk, OffsetPage, OidWindow, PageResult
from ags_etl.schema import Field, LayerSchema
from ags_etl.server.testing import run_server
from tests.layers import write_layer
from tests.loopback import serving
from tests.misbehaving_proxy import Misbehaviour, _Handler

N = 300
CAP = 20  # 15 pages


# --------------------------------------------------------------------------- a recording proxy


@contextlib.contextmanager
def recording_proxy(upstream: str) -> Iterator[tuple[str, type[_Handler]]]:
    """A proxy to ``upstream`` that counts feature pages (``handler.counter[0]``); ``handler.upstream``
    may be switched to another server while the proxy's URL stays the same."""
    handler = type(
        "Recorder", (_Handler,), {"upstream": upstream, "rules": Misbehaviour(), "counter": [0], "lock": threading.Lock()}
    )
    with serving(handler) as base:
        yield base, handler


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("resume-layers")
    write_layer(d / "points.geojson", "points", N)
    write_layer(d / "polygons.geojson", "polygons", N)
    # every feature with a geometry, as a spatial plan needs
    grid = [{"type": "Feature", "properties": {"seq": i, "label": f"g{i}" if i % 5 else None},
             "geometry": {"type": "Polygon", "coordinates": [[[i % 17, i // 17], [i % 17 + 0.5, i // 17],
                                                              [i % 17, i // 17 + 0.5], [i % 17, i // 17]]]}}
            for i in range(N)]
    (d / "grid.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": grid}))
    with run_server(d, "--max-record-count", str(CAP)) as base:
        yield base


@pytest.fixture
def proxy(server: str) -> Iterator[tuple[str, type[_Handler]]]:
    with recording_proxy(server) as found:
        yield found


def settled(recorder: type[_Handler]) -> int:
    """The proxy's page count once requests a stopped run left in flight have arrived."""
    while True:
        before = recorder.counter[0]
        time.sleep(0.3)
        if recorder.counter[0] == before:
            return before


def layer(base: str, name: str) -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


# --------------------------------------------------------------------------- the store on its own


def _schema() -> LayerSchema:
    return LayerSchema(
        fields=(
            Field("OBJECTID", "esriFieldTypeOID"),
            Field("NAME", "esriFieldTypeString"),
            Field("VALUE", "esriFieldTypeDouble"),
        ),
        oid_field="OBJECTID",
        geometry_type="esriGeometryPoint",
        crs=None,
        has_z=True,
    )


def _batch(schema: LayerSchema) -> FeatureBatch:
    table = pa.table(
        {"OBJECTID": pa.array([3, 1, 7], pa.int64()), "NAME": ["é 公园", None, ""], "VALUE": [1.5, None, -0.0]},
        schema=schema.arrow_schema(),
    )
    geometry = np.array([shapely.Point(1.25, -3.5, 9.0), None, shapely.Point(0.1 + 0.2, 1e-300)], dtype=object)
    return FeatureBatch(table, geometry, None)


def _manifest(**changes: Any) -> dict[str, Any]:
    base = {"version": 1, "layer": "http://h/arcgis/rest/services/a/FeatureServer/0", "query": "q", "count": 10,
            "max_oid": 12, "last_edit_date": 1700000000000, "strategy": "oid-list", "tasks": "t"}
    return {**base, **changes}


def test_staging_folder_is_hidden_beside_the_target_and_sanitised(tmp_path: Path) -> None:
    assert staging_folder(tmp_path / "roads.parquet") == tmp_path / ".roads.parquet.resume"
    assert staging_folder(tmp_path / "a b:c.geojson") == tmp_path / ".a_b_c.geojson.resume"


def test_task_ids_are_deterministic_and_tell_tasks_apart() -> None:
    assert task_id(IdChunk((1, 2, 3))) == task_id(IdChunk(tuple(np.array([1, 2, 3]).tolist())))
    ids = {task_id(t) for t in (IdChunk((1, 2, 3)), IdChunk((1, 2, 4)), IdChunk((1, 2, 3), 1), OffsetPage(0, 3),
                                OidWindow(0, 3), Box((0.0, 0.0, 1.0, 1.0), 1), Box((0.0, 0.0, 1.0, 1.0), 2))}
    assert len(ids) == 7


def test_a_staged_page_comes_back_exactly(tmp_path: Path) -> None:
    schema = _schema()
    store = StagingStore(tmp_path / ".x.resume")
    assert store.begin(_manifest(), schema) is None
    batch = _batch(schema)
    task = IdChunk((1, 3, 7, 9))
    store.save(PageResult(task, batch, exceeded=True, oids=np.array([3, 1, 7]), strays=2))
    # whole files only: no temp name is left behind
    assert sorted(p.name for p in store.folder.iterdir()) == sorted([MANIFEST, task_id(task) + ".arrow"])

    again = StagingStore(tmp_path / ".x.resume")
    assert again.begin(_manifest(), schema) is None  # same manifest: kept
    got = again.load(task)
    assert got is not None
    assert got.task == task and got.exceeded and got.strays == 2
    assert got.batch.attributes.equals(batch.attributes)
    assert got.batch.attributes.schema.metadata is None
    assert got.oids is not None and got.oids.tolist() == [3, 1, 7]
    assert got.batch.geometry is not None and batch.geometry is not None
    assert got.batch.geometry[1] is None
    for a, b in zip(got.batch.geometry[[0, 2]], batch.geometry[[0, 2]]):
        assert shapely.to_wkb(a) == shapely.to_wkb(b)  # bit for bit, Z included
    assert again.load(IdChunk((1, 3, 7))) is None  # never staged


def test_a_table_page_without_geometry_round_trips(tmp_path: Path) -> None:
    schema = _schema().replace(geometry_type=None, has_z=False)
    store = StagingStore(tmp_path / ".t.resume")
    store.begin(_manifest(), schema)
    table = _batch(_schema()).attributes
    store.save(PageResult(OffsetPage(0, 3), FeatureBatch(table, None, None), oids=np.array([3, 1, 7])))
    got = store.load(OffsetPage(0, 3))
    assert got is not None and got.batch.geometry is None and got.batch.attributes.equals(table)
    assert not got.exceeded and got.strays == 0


def test_an_unreadable_chunk_is_fetched_again(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    schema = _schema()
    store = StagingStore(tmp_path / ".x.resume")
    store.begin(_manifest(), schema)
    task = OffsetPage(0, 3)
    store.save(PageResult(task, _batch(schema), oids=np.array([3, 1, 7])))
    path = store.folder / (task_id(task) + ".arrow")
    path.write_bytes(path.read_bytes()[:40])  # what a torn write would leave (ours never do: temp + rename)
    again = StagingStore(store.folder)
    again.begin(_manifest(), schema)
    assert again.load(task) is None
    assert "unreadable" in caplog.text


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("query", "q2", "the query differs"),
        ("count", 11, "the layer changed: its count went from 10 to 11"),
        ("max_oid", 13, "the layer changed: its highest OID went from 12 to 13"),
        ("last_edit_date", 1700000000001, "the layer changed: its last edit date went from 1700000000000 to 1700000000001"),
        ("layer", "http://h/other/0", "the layer URL differs"),
        ("strategy", "offset", "the paging strategy went from oid-list to offset"),
        ("tasks", "t2", "the paging plan differs"),
    ],
)
def test_a_different_manifest_discards_the_chunks_naming_what_changed(
    tmp_path: Path, key: str, value: Any, words: str
) -> None:
    schema = _schema()
    store = StagingStore(tmp_path / ".x.resume")
    store.begin(_manifest(), schema)
    store.save(PageResult(OffsetPage(0, 3), _batch(schema), oids=np.array([3, 1, 7])))
    assert (manifest_change(_manifest(), _manifest(**{key: value})) or "").startswith(words)
    again = StagingStore(store.folder)
    message = again.begin(_manifest(**{key: value}), schema)
    assert message is not None and words in message and "discarded 1 staged chunk" in message
    assert again.chunks() == [] and again.load(OffsetPage(0, 3)) is None
    assert json.loads((store.folder / MANIFEST).read_text())[key] == value  # the new run's manifest


def test_chunks_without_a_manifest_are_discarded(tmp_path: Path) -> None:
    schema = _schema()
    store = StagingStore(tmp_path / ".x.resume")
    store.begin(_manifest(), schema)
    store.save(PageResult(OffsetPage(0, 3), _batch(schema), oids=np.array([3, 1, 7])))
    (store.folder / MANIFEST).unlink()
    message = StagingStore(store.folder).begin(_manifest(), schema)
    assert message is not None and "no manifest" in message


def test_an_unwritable_staging_folder_is_one_load_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(LoadError, match=r"staging folder .*--resume"):
        StagingStore(tmp_path / "file" / ".x.resume").begin(_manifest(), _schema())


# --------------------------------------------------------------------------- the extractor, resumed


def _run(url: str, folder: Path | None, strategy: str | None, stop_after: int | None = None
         ) -> tuple[list[FeatureBatch], FeatureLayerExtractor]:
    """Batches of one run; ``stop_after`` abandons the iteration after that many batches."""
    staging = StagingStore(folder) if folder is not None else None
    batches: list[FeatureBatch] = []
    ext = FeatureLayerExtractor(url, strategy=strategy, concurrency=2, staging=staging)
    with ext:
        for batch in ext:
            batches.append(batch)
            if stop_after is not None and len(batches) >= stop_after:
                break
    return batches, ext


def _same(a: list[FeatureBatch], b: list[FeatureBatch]) -> bool:
    ta, tb = FeatureBatch.concat(a), FeatureBatch.concat(b)
    if not ta.attributes.equals(tb.attributes):
        return False
    if ta.geometry is None or tb.geometry is None:
        return ta.geometry is None and tb.geometry is None
    return shapely.to_wkb(ta.geometry).tolist() == shapely.to_wkb(tb.geometry).tolist()


@pytest.mark.parametrize(
    ("name", "strategy"),
    [("points", None), ("polygons", "offset"), ("points", "oid-range"), ("grid", "spatial")],
)
def test_an_abandoned_run_resumes_with_only_the_missing_pages(
    tmp_path: Path, proxy: tuple[str, type[_Handler]], name: str, strategy: str | None
) -> None:
    base, recorder = proxy
    url = layer(base, name)
    clean, ext = _run(url, None, strategy)
    pages = recorder.counter[0]
    assert sum(map(len, clean)) == N and ext.stats.resumed == 0

    folder = tmp_path / ".out.resume"
    _, first = _run(url, folder, strategy, stop_after=len(clean) // 2)
    assert folder.is_dir() and len(list(folder.glob("*.arrow"))) >= len(clean) // 2
    assert not first._complete

    settled(recorder)
    recorder.counter[0] = 0
    resumed, second = _run(url, folder, strategy)
    assert _same(clean, resumed)
    assert second.stats.resumed >= len(clean) // 2
    assert second.stats.features == N and second.stats.pages == ext.stats.pages
    # staged pages were not fetched (one statistics request may fingerprint an offset plan)
    assert second.stats.requests <= ext.stats.requests - second.stats.resumed + 1
    assert recorder.counter[0] == pages - second.stats.resumed
    assert recorder.counter[0] <= 0.6 * pages
    assert not folder.exists()  # removed after success


def test_a_resumed_run_after_the_where_clause_changed_pulls_everything(
    tmp_path: Path, proxy: tuple[str, type[_Handler]]
) -> None:
    base, recorder = proxy
    url = layer(base, "points")
    folder = tmp_path / ".out.resume"
    _run(url, folder, None, stop_after=5)
    staging = StagingStore(folder)
    settled(recorder)
    recorder.counter[0] = 0
    with FeatureLayerExtractor(url, where="OBJECTID > 10", concurrency=2, staging=staging) as ext:
        rows = sum(len(b) for b in ext)
    assert ext.stats.resumed == 0 and rows == ext.stats.expected
    assert any("the query differs" in note for note in ext.stats.notes)
    assert recorder.counter[0] == ext.stats.pages
    assert not folder.exists()


def test_a_failed_run_keeps_its_staging_folder(tmp_path: Path, proxy: tuple[str, type[_Handler]]) -> None:
    base, _ = proxy
    folder = tmp_path / ".out.resume"
    ext = FeatureLayerExtractor(layer(base, "points"), concurrency=2, staging=StagingStore(folder))
    with pytest.raises(RuntimeError, match="loader broke"), ext:
        for _ in ext:
            pass
        raise RuntimeError("loader broke")  # the output was not committed: keep the pages
    assert ext._complete and len(list(folder.glob("*.arrow"))) == N // CAP
