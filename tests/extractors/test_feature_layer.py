"""The layer extractor against real servers on 127.0.0.1: our local FeatureServer in every
mode, and a proxy that makes it misbehave like servers in the wild."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import shapely

from ags_etl.arcgis.auth import UserPasswordAuth
from ags_etl.batch import FeatureBatch
from ags_etl.errors import (
    ConfigError,
    IncompleteExtractError,
    NotALayerError,
    QueryError,
    TokenError,
    TransientError,
)
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.server.testing import run_server
from tests.layers import expected_rows, write_layer
from tests.misbehaving_proxy import Misbehaviour, misbehaving_proxy

N_POINTS = 120
N_POLYGONS = 45


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("layers")
    write_layer(d / "points.geojson", "points", N_POINTS)
    write_layer(d / "polygons.geojson", "polygons", N_POLYGONS)
    write_layer(d / "table.geojson", "table", 30)
    return d


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    with run_server(data_dir, "--max-record-count", "7") as base:
        yield base


def layer_url(base: str, name: str) -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


def collect(ext: FeatureLayerExtractor) -> tuple[dict[int, dict[str, Any]], int]:
    """Rows by OID, and the number of rows yielded (to catch duplicates)."""
    rows: dict[int, dict[str, Any]] = {}
    total = 0
    with ext:
        for batch in ext:
            assert isinstance(batch, FeatureBatch)
            total += len(batch)
            cols = batch.attributes.to_pydict()
            for i, oid in enumerate(cols["OBJECTID"]):
                row = {k: v[i] for k, v in cols.items()}
                row["geometry"] = None if batch.geometry is None else batch.geometry[i]
                rows[oid] = row
    return rows, total


def assert_same_as_source(rows: dict[int, dict[str, Any]], total: int, kind: str, n: int) -> None:
    expected = expected_rows(kind, n)
    assert total == len(rows) == len(expected), "every feature exactly once"
    assert sorted(rows) == sorted(expected)
    for oid, exp in expected.items():
        got = rows[oid]
        assert got["NAME"] == exp["NAME"], oid
        assert got["COUNT"] == exp["COUNT"], oid
        assert (got["VALUE"] is None) == (exp["VALUE"] is None)
        if exp["VALUE"] is not None:
            assert got["VALUE"] == pytest.approx(exp["VALUE"], abs=1e-9)
        when = got["WHEN"]
        assert (None if when is None else when.strftime("%Y-%m-%dT%H:%M:%SZ")) == exp["WHEN"], oid
        if kind == "table":
            continue
        g, e = got["geometry"], exp["geometry"]
        if e is None:
            assert g is None, oid
        else:
            assert g is not None, oid
            assert shapely.normalize(g).equals_exact(shapely.normalize(e), 1e-9), oid


@pytest.mark.parametrize("kind, n", [("points", N_POINTS), ("polygons", N_POLYGONS), ("table", 30)])
def test_every_feature_exactly_once(server: str, kind: str, n: int) -> None:
    ext = FeatureLayerExtractor(layer_url(server, kind), concurrency=3)
    rows, total = collect(ext)
    assert ext.stats.strategy == "oid-list"
    assert ext.stats.pages >= n // 7
    assert_same_as_source(rows, total, kind, n)


def test_point_at_origin_survives(server: str) -> None:
    rows, _ = collect(FeatureLayerExtractor(layer_url(server, "points")))
    origin = rows[1]["geometry"]
    assert origin is not None and origin.x == 0 and origin.y == 0


@pytest.mark.parametrize("strategy", ["offset", "oid-range", "oid-list"])
def test_each_strategy_gets_everything(server: str, strategy: str) -> None:
    ext = FeatureLayerExtractor(layer_url(server, "polygons"), strategy=strategy, concurrency=2)
    rows, total = collect(ext)
    assert ext.stats.strategy == strategy
    assert_same_as_source(rows, total, "polygons", N_POLYGONS)


def test_spatial_strategy(server: str) -> None:
    expected = expected_rows("polygons", N_POLYGONS)
    no_geometry = sorted(oid for oid, row in expected.items() if row["geometry"] is None)
    assert no_geometry, "the layer must hold features without geometry"
    # The quadtree finds every feature that has a geometry, each once (boxes share edges) …
    where = f"OBJECTID NOT IN ({', '.join(map(str, no_geometry))})"
    ext = FeatureLayerExtractor(layer_url(server, "polygons"), strategy="spatial", where=where)
    rows, total = collect(ext)
    assert total == len(rows) == len(expected) - len(no_geometry)
    assert ext.stats.duplicates_dropped > 0, "features on box edges came twice and were dropped once"
    # … and fails loudly when features without geometry exist, since no box can hold them.
    with pytest.raises(IncompleteExtractError, match="without geometry"):
        collect(FeatureLayerExtractor(layer_url(server, "polygons"), strategy="spatial"))


def test_geojson_responses(server: str) -> None:
    ext = FeatureLayerExtractor(layer_url(server, "polygons"), response_format="geojson")
    rows, total = collect(ext)
    assert_same_as_source(rows, total, "polygons", N_POLYGONS)


def test_where_and_fields(server: str) -> None:
    ext = FeatureLayerExtractor(layer_url(server, "points"), where="COUNT > 0", fields=["NAME"])
    rows, total = collect(ext)
    expected = {k for k, v in expected_rows("points", N_POINTS).items() if v["COUNT"] is not None and v["COUNT"] > 0}
    assert set(rows) == expected and total == len(expected)
    assert set(next(iter(rows.values()))) == {"OBJECTID", "NAME", "geometry"}


MODES = {
    "default": [],
    "no-pagination": ["--no-pagination"],
    "fail-rate": ["--fail-rate", "0.2", "--seed", "3"],
    # TTL 1 s; 18 pages one at a time at 80 ms each take longer, so the token expires mid-run.
    "token": ["--token-auth", "ags:s3cret-pw", "--token-ttl", "1", "--latency-ms", "80"],
    "all": ["--no-pagination", "--fail-rate", "0.2", "--seed", "5", "--token-auth", "ags:s3cret-pw",
            "--token-ttl", "1", "--latency-ms", "80"],
}


@pytest.mark.parametrize("mode", list(MODES))
def test_server_modes(data_dir: Path, mode: str) -> None:
    args = ["--max-record-count", "7", *MODES[mode]]
    token = "--token-auth" in args
    with run_server(data_dir, *args) as base:
        auth = UserPasswordAuth("ags", "s3cret-pw") if token else None
        ext = FeatureLayerExtractor(layer_url(base, "points"), auth=auth, concurrency=1 if token else 2,
                                    backoff=0.01)
        rows, total = collect(ext)
        assert_same_as_source(rows, total, "points", N_POINTS)
        if mode in ("fail-rate", "all"):
            assert ext.stats.retries > 0
        if token:
            assert auth is not None and auth.tokens_fetched >= 2, "the token expired mid-run and was renewed"


@pytest.mark.parametrize(
    "rules",
    [
        Misbehaviour(advertise=1000, cap=5),  # caps below what it advertises
        Misbehaviour(reverse=True),  # reorders ids and features
        Misbehaviour(short_every=3),  # short pages mid-layer, flag set
        Misbehaviour(advertise=1000, cap=4, drop_flag=True, reverse=True),  # silent short pages
    ],
    ids=["cap-below-advertised", "reversed", "short-pages", "silent-short-pages"],
)
@pytest.mark.parametrize("strategy", [None, "offset"])
def test_misbehaving_server_still_exactly_once(server: str, rules: Misbehaviour, strategy: str | None) -> None:
    with misbehaving_proxy(server, rules) as proxy:
        ext = FeatureLayerExtractor(layer_url(proxy, "polygons"), strategy=strategy, concurrency=3)
        rows, total = collect(ext)
    assert_same_as_source(rows, total, "polygons", N_POLYGONS)


@pytest.mark.parametrize("strategy", [None, "offset"])
def test_page_size_halved_on_error_performing_query(server: str, strategy: str | None) -> None:
    with misbehaving_proxy(server, Misbehaviour(advertise=100, fail_above=2)) as proxy:
        ext = FeatureLayerExtractor(layer_url(proxy, "polygons"), strategy=strategy, retries=1, backoff=0.01)
        rows, total = collect(ext)
    assert ext.stats.page_size <= 2
    assert any("halved" in note for note in ext.stats.notes)
    assert_same_as_source(rows, total, "polygons", N_POLYGONS)


def test_server_ignoring_offset_is_detected(server: str) -> None:
    with misbehaving_proxy(server, Misbehaviour(ignore_offset=True)) as proxy:
        with pytest.raises(ConfigError, match="ignores resultOffset"):
            with FeatureLayerExtractor(layer_url(proxy, "points"), strategy="offset") as ext:
                ext.plan()
        rows, total = collect(FeatureLayerExtractor(layer_url(proxy, "points")))
    assert_same_as_source(rows, total, "points", N_POINTS)


def test_count_mismatch_fails_loudly(server: str) -> None:
    with misbehaving_proxy(server, Misbehaviour(count_extra=1)) as proxy:
        ext = FeatureLayerExtractor(layer_url(proxy, "points"))
        with pytest.raises(IncompleteExtractError, match=rf"read {N_POINTS} distinct features .* counts {N_POINTS + 1}"):
            collect(ext)


def test_bad_inputs(server: str) -> None:
    with pytest.raises(QueryError, match="Unable to complete operation"):
        with FeatureLayerExtractor(layer_url(server, "points"), where="NO_SUCH_FIELD = 1") as ext:
            ext.plan()
    with pytest.raises(NotALayerError):
        with FeatureLayerExtractor(f"{server}/arcgis/rest/services/points/FeatureServer") as ext:
            pass
    with pytest.raises(ConfigError, match="not an http"):
        FeatureLayerExtractor("ftp://example.com/layer")
    with pytest.raises(ConfigError, match="not in layer"):
        with FeatureLayerExtractor(layer_url(server, "points"), fields=["NOPE"]):
            pass


def test_unreachable_host_is_transient_error() -> None:
    with pytest.raises(TransientError, match="could not reach http://127.0.0.1:9/"):
        with FeatureLayerExtractor("http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0", retries=1,
                                   backoff=0.01):
            pass


def test_wrong_password_and_missing_token(data_dir: Path) -> None:
    with run_server(data_dir, "--token-auth", "ags:s3cret-pw") as base:
        with pytest.raises(TokenError) as info:
            with FeatureLayerExtractor(layer_url(base, "points"), auth=UserPasswordAuth("ags", "wrong-pw")):
                pass
        assert "wrong-pw" not in str(info.value)
        with pytest.raises(TokenError, match="needs a token"):
            with FeatureLayerExtractor(layer_url(base, "points")):
                pass


def test_batches_are_pages_never_above_the_cap(server: str) -> None:
    ext = FeatureLayerExtractor(layer_url(server, "points"), concurrency=2)
    sizes = []
    with ext:
        for batch in ext:
            sizes.append(len(batch))
    assert max(sizes) <= 7 and sum(sizes) == N_POINTS
