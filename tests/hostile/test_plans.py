"""Plans against servers whose answers do not add up: implausible counts and ids end with a
message, never a traceback or an endless loop; sparse OID ranges are walked by adaptive windows.

Every test talks HTTP to a scripted layer on 127.0.0.1 (tests/hostile/plan_stubs.py).
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from ags_etl.errors import AgsEtlError, IncompleteExtractError, PagingError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from tests.hostile.plan_stubs import Script, scripted_layer

FIVE = [1, 2, 3, 4, 10**12]


def pull(url: str, **options: Any) -> tuple[list[int], FeatureLayerExtractor]:
    ext = FeatureLayerExtractor(url, retries=0, backoff=0.01, **options)
    oids: list[int] = []
    with ext:
        for batch in ext:
            oids += batch.column("OBJECTID").to_pylist()
    return oids, ext


def test_count_of_1e18_is_refused_at_once() -> None:
    script = Script(oids=FIVE[:4], count=10**18, refuse=frozenset({"ids", "statistics"}))
    with scripted_layer(script) as url:
        with pytest.raises(PagingError, match=r"returnCountOnly with 1000000000000000000, which is not a whole") as err:
            pull(url)
    assert url in str(err.value)
    assert script.requests <= 3


def test_offset_plan_with_a_count_far_above_the_rows_stops_on_empty_pages() -> None:
    # A plausible but false count: 10**12 rows claimed, 4 served. The offset plan would ask
    # for 10**11 pages; it stops after a few empty pages below the count instead.
    script = Script(oids=FIVE[:4], count=10**12, refuse=frozenset({"ids", "statistics"}))
    start = time.monotonic()
    with scripted_layer(script) as url:
        with pytest.raises(PagingError, match=r"pages came back empty .* counts 1000000000000 features"):
            pull(url, concurrency=2)
    assert time.monotonic() - start < 30, "generous bound: the run must end, not walk 10**11 pages"
    assert script.requests < 50


def test_sparse_oids_are_walked_by_adaptive_windows() -> None:
    # Ids 1-4 and 10**12, id lists and pagination refused, statistics working: fixed windows
    # of 10 ids would need 10**11 requests.
    script = Script(oids=FIVE, cap=2, refuse=frozenset({"ids", "pagination"}))
    with scripted_layer(script) as url:
        oids, ext = pull(url)
    assert ext.stats.strategy == "oid-range"
    assert sorted(oids) == FIVE and len(oids) == 5
    assert script.requests < 200, script.requests


@pytest.mark.parametrize(
    "script, message",
    [
        (Script(oids=[1, 2], count="abc"), r"returnCountOnly with 'abc'"),
        (Script(oids=[1, 2], count=-3), r"returnCountOnly with -3"),
        (Script(oids=[1, 2], count=2.5), r"returnCountOnly with 2.5"),
        (Script(oids=[1, 2], count=[2]), r"returnCountOnly with \[2\]"),
        (Script(oids=[1, 2], ids=["1", "2"]), r"object id '1'"),
        (Script(oids=[1, 2], ids=[[1], [2]]), r"object id \[1\]"),
        (Script(oids=[1, 2], ids=[1, [2, 3]]), r"object id \[2, 3\]"),
        (Script(oids=[1, 2], ids=[1, -2]), r"object id -2"),
        (Script(oids=[1, 2], ids=[1, 2.5]), r"object id 2.5"),
        (Script(oids=[1, 2], ids=[1, 2**70]), r"object id 1.18059162071741\d*e\+21"),
        (Script(oids=[1, 2], ids="1,2"), r"objectIds '1,2', which is not a list"),
        (
            Script(oids=[1, 2], refuse=frozenset({"ids", "pagination"}), statistics={"MIN_OID": "abc", "MAX_OID": 2}),
            r"minimum OID from outStatistics 'abc'",
        ),
        (
            Script(oids=[1, 2], refuse=frozenset({"ids", "pagination"}), statistics={"MIN_OID": 9, "MAX_OID": 2}),
            r"min OID 9 above max OID 2",
        ),
    ],
    ids=["count-text", "count-negative", "count-fraction", "count-list", "ids-strings", "ids-nested",
         "ids-ragged", "ids-negative", "ids-fraction", "ids-huge", "ids-not-list", "stat-text", "stat-inverted"],
)
def test_malformed_answers_are_messages(script: Script, message: str) -> None:
    with scripted_layer(script) as url:
        with pytest.raises(PagingError, match=message) as err:
            pull(url)
    assert url in str(err.value), "the message names the server"


def test_float_ids_are_taken() -> None:
    # Columbia MO 10.01 sends ids as floats.
    script = Script(oids=[3, 5, 8], ids=[8.0, 3.0, 5.0])
    with scripted_layer(script) as url:
        oids, ext = pull(url)
    assert sorted(oids) == [3, 5, 8] and ext.stats.strategy == "oid-list"


def test_range_count_above_the_count_is_refused() -> None:
    # Statistics say 1..3, the count inside that range says 3, the whole query says 2.
    script = Script(oids=[1, 2, 3], count=2, refuse=frozenset({"ids", "pagination"}))
    with scripted_layer(script) as url:
        with pytest.raises(PagingError, match=r"counts 3 features in an OID range but only 2"):
            pull(url)


def test_count_refused_but_ids_work_uses_the_ids_as_count() -> None:
    script = Script(oids=[1, 2, 3, 7, 9], cap=2, refuse=frozenset({"count"}))
    with scripted_layer(script) as url:
        oids, ext = pull(url)
    assert sorted(oids) == [1, 2, 3, 7, 9]
    assert ext.stats.strategy == "oid-list" and ext.stats.expected == 5 and ext.stats.unchecked is None


def test_a_lying_count_still_fails_the_completeness_check() -> None:
    # The bounds do not replace the count check: 6 claimed, 5 served.
    script = Script(oids=[1, 2, 3, 7, 9], count=6, refuse=frozenset({"ids", "statistics"}))
    with scripted_layer(script) as url:
        with pytest.raises(IncompleteExtractError, match="read 5 distinct features"):
            pull(url)


def test_every_failure_is_an_ags_etl_error() -> None:
    # A layer without an OID field and without geometry cannot be paged: one message.
    script = Script(
        oids=[1, 2],
        refuse=frozenset({"statistics", "pagination"}),
        metadata={"fields": [{"name": "NAME", "type": "esriFieldTypeString"}], "geometryType": None,
                  "objectIdField": None, "type": "Table"},
    )
    with scripted_layer(script) as url:
        with pytest.raises(AgsEtlError, match=r"no way to page .* no OID field"):
            pull(url)
