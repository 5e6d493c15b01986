"""Sync planning (pure): lag, initial values, the incremental where clause, the largest cursor
read, full-or-incremental decisions, and the sync block's offline validation. One test sends
the where clause to the local server to show it is accepted and selects what it says."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from ags_etl.batch import FeatureBatch
from ags_etl.config import parse_pipeline
from ags_etl.errors import ConfigError, PipelineFileError
from ags_etl.server.testing import run_server
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, SyncSpec, check_job
from ags_etl.sync import (
    Cursor,
    batch_cursor,
    cursor_where,
    parse_initial_value,
    parse_lag,
    plan_sync,
    source_identity,
)
from tests.server.serve_helpers import get_json

URL = "https://host/arcgis/rest/services/S/FeatureServer/0"


@pytest.mark.parametrize(("text", "seconds"), [
    (None, 0.0), (0, 0.0), (90, 90.0), (2.5, 2.5), ("30s", 30.0), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
    ("1.5h", 5400.0), ("45", 45.0), (" 5M ", 300.0),
])
def test_lag_forms(text: Any, seconds: float) -> None:
    assert parse_lag(text) == seconds


@pytest.mark.parametrize("bad", ["5 minutes", "-5m", "m", "", -1, float("nan"), True, "5w"])
def test_bad_lags_are_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="lag"):
        parse_lag(bad)


def test_initial_values() -> None:
    assert parse_initial_value(None) is None
    assert parse_initial_value(7) == Cursor("number", 7)
    assert parse_initial_value("1970-01-02") == Cursor("date", 86_400_000)
    assert parse_initial_value("2024-06-11T08:55:01Z") == Cursor("date", 1_718_096_101_000)
    with pytest.raises(ValueError, match="not a date"):
        parse_initial_value("yesterday")


def test_where_clauses() -> None:
    june = Cursor("date", 1_718_096_101_999)  # 2024-06-11 08:55:01.999
    assert cursor_where(None, "EditDate", june, 300) == "EditDate >= timestamp '2024-06-11 08:50:01'"
    assert cursor_where("1=1", "EditDate", june, 0) == "EditDate >= timestamp '2024-06-11 08:55:01'"
    assert cursor_where("ST = 'A'", "EditDate", june, 0) == "(ST = 'A') AND EditDate >= timestamp '2024-06-11 08:55:01'"
    assert cursor_where(None, "SEQ", Cursor("number", 120), 5) == "SEQ >= 115"
    assert cursor_where(None, "SEQ", Cursor("number", 1.5), 0) == "SEQ >= 1.5"
    assert cursor_where(None, "SEQ", Cursor("number", 10), 0.5) == "SEQ >= 9.5"


def _batch(column: pa.Array) -> FeatureBatch:
    return FeatureBatch(pa.table({"C": column}), np.array([None] * len(column), dtype=object), None)


def test_largest_cursor_of_a_batch() -> None:
    stamps = pa.array([0, None, 86_400_000], type=pa.timestamp("ms", tz="UTC"))
    assert batch_cursor(_batch(stamps), "C") == Cursor("date", 86_400_000)
    assert batch_cursor(_batch(pa.array([3, None, 11])), "C") == Cursor("number", 11)
    assert batch_cursor(_batch(pa.array([None, None], type=pa.int64())), "C") is None
    with pytest.raises(ConfigError, match="date or a number"):
        batch_cursor(_batch(pa.array(["a"])), "C")
    with pytest.raises(ConfigError, match="not a field"):
        batch_cursor(_batch(pa.array([1])), "EditDate")


def _job(**sync: Any) -> JobSpec:
    return JobSpec(name="j", source=SourceSpec(url=URL, where="ST = 'A'"),
                   sink=SinkSpec(type="geoparquet", path="out/j.parquet"), sync=SyncSpec(cursor_field="EditDate", **sync))


def test_plans() -> None:
    job = _job(lag="1m")
    ident = source_identity(job)
    cursor = Cursor("date", 60_000 * 10)
    kwargs: dict[str, Any] = {"stored_cursor": cursor, "stored_identity": ident, "previous_output": True}
    plan = plan_sync(job, **kwargs, full_refresh=False)
    assert (plan.mode, plan.where, plan.cursor) == ("incremental", "(ST = 'A') AND EditDate >= timestamp '1970-01-01 00:09:00'", cursor)
    assert plan_sync(job, **kwargs, full_refresh=True).mode == "full"
    assert plan_sync(job, **{**kwargs, "previous_output": False}, full_refresh=False).reason == "no previous output"
    other = _job(lag="1m", key="GID")
    changed = plan_sync(other, **kwargs, full_refresh=False)
    assert changed.mode == "full" and "key" in changed.reason
    first = plan_sync(job, stored_cursor=None, stored_identity=None, previous_output=True, full_refresh=False)
    assert (first.mode, first.where) == ("full", "ST = 'A'")
    seeded = plan_sync(_job(initial_value="2024-01-01"), stored_cursor=None, stored_identity=None,
                       previous_output=True, full_refresh=False)
    assert seeded.mode == "incremental" and seeded.where.endswith("EditDate >= timestamp '2024-01-01 00:00:00'")


def test_identity_holds_no_secret() -> None:
    job = JobSpec(name="j", source=SourceSpec(url="https://u:pw-S3cret@host/arcgis/rest/services/S/FeatureServer/0?token=tok-S3cret"),
                  sink=SinkSpec(type="geoparquet", path="o.parquet"), sync=SyncSpec(cursor_field="EditDate"))
    text = json.dumps(source_identity(job))
    assert "S3cret" not in text and source_identity(job)["url"] == "https://host/arcgis/rest/services/S/FeatureServer/0"


def test_sync_block_validated_offline_with_key_paths() -> None:
    data = {"version": 1, "jobs": [
        {"name": "a", "source": {"url": URL}, "sink": {"type": "geoparquet", "path": "a.parquet"},
         "sync": {"cursor_field": "EditDate", "lag": "5 minutes", "initial_value": "soon"}},
        {"name": "b", "source": {"url": URL}, "sink": {"type": "geojson", "path": "s3://bucket/b.geojson"},
         "sync": {"cursor_field": "EditDate"}},
        {"name": "c", "source": {"url": URL, "fields": ["NAME"]}, "sink": {"type": "geoparquet", "path": "c.parquet"},
         "sync": {"cursor_field": "EditDate", "key": "GID"}},
        {"name": "d", "source": {"url": URL}, "sink": {"type": "geoparquet", "path": "d.parquet"}, "sync": {"lag": "5m"}},
    ]}
    with pytest.raises(PipelineFileError) as err:
        parse_pipeline(data)
    text = str(err.value)
    assert "job 'a': sync: lag '5 minutes' is not a duration" in text
    assert "job 'b': sync: a sync job merges into a single local file; a URL or partitioned dataset sink" in text
    assert "job 'c': sync.cursor_field: 'EditDate' is not in source.fields" in text
    assert "job 'c': sync.key: 'GID' is not in source.fields" in text
    assert "job 'd': sync.cursor_field: required" in text


def test_a_good_sync_block_has_no_issues() -> None:
    assert check_job(_job(lag="5m", initial_value="2024-01-01", detect_deletes=True)) == []
    with pytest.raises(ValidationError):
        SyncSpec(cursor_field="EditDate", detect_deletes="sometimes")  # type: ignore[arg-type]


def test_local_server_accepts_the_where_clause(tmp_path: Path) -> None:
    stamps = ["2024-06-11T08:49:59Z", "2024-06-11T08:50:01Z", "2024-06-11T09:00:00Z", None]
    feats = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [i, i]},
              "properties": {"OBJECTID": i + 1, "EditDate": s, "SEQ": 10 * i}} for i, s in enumerate(stamps)]
    (tmp_path / "t.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    moment = dt.datetime(2024, 6, 11, 8, 55, 1, tzinfo=dt.UTC)
    cursor = Cursor("date", int(moment.timestamp() * 1000))
    with run_server(tmp_path) as base:
        layer = f"{base}/arcgis/rest/services/t/FeatureServer/0/query"
        for where, oids in ((cursor_where(None, "EditDate", cursor, 300), [2, 3]),
                            (cursor_where("SEQ < 15", "EditDate", cursor, 300), [2]),
                            (cursor_where(None, "SEQ", Cursor("number", 20), 10), [2, 3, 4])):
            answer = get_json(layer, where=where, returnIdsOnly="true", f="json")
            assert sorted(answer["objectIds"]) == oids, where
