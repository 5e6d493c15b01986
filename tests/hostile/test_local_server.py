"""``ags-etl serve`` against hostile queries: expensive where clauses and malformed geometry filters.

* A where clause of nested ``replace()`` calls, minutes of CPU on a few thousand
  rows, is stopped at ``--query-timeout`` with ArcGIS's code-500 error naming
  the limit; the server's CPU is free again and the next query is answered.
* Degenerate geometry filters (bowtie, two-point ring, NaN, empty rings, min > max,
  coordinates no CRS has …) get a 400 "Invalid geometry" naming the problem,
  never HTTP 500 and never an error logged.
* Hypothesis sends arbitrary ``geometry``/``geometryType``/``inSR`` values: every
  answer is HTTP 200 with JSON, either features or a code-400 error.

The timeout test runs the server as a subprocess (its CPU time is read from
/proc); the others use the server in-process (``serve_in_thread``) so errors it
logs can be collected.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ags_etl.server.app import serve_in_thread
from ags_etl.server.options import ServerOptions
from ags_etl.server.spatial_filter import MAX_VERTICES
from ags_etl.server.testing import run_server

#: Rows of the layer the expensive where clause runs over.
ROWS = 3000
#: --query-timeout of the timeout test, and the margin allowed on top of it.
BUDGET_S = 2.0
MARGIN_S = 8.0


def _write_layer(path: Path, features: list[dict[str, Any]]) -> None:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}), "utf-8")


def _point(i: int, name: str) -> dict[str, Any]:
    return {
        "type": "Feature",
        "properties": {"OBJECTID": i + 1, "name": name},
        "geometry": {"type": "Point", "coordinates": [i % 100, i // 100]},
    }


def _square(i: int, x: float, y: float) -> dict[str, Any]:
    ring = [[x, y], [x + 1, y], [x + 1, y + 1], [x, y + 1], [x, y]]
    return {
        "type": "Feature",
        "properties": {"OBJECTID": i, "kind": f"sq{i}"},
        "geometry": {"type": "Polygon", "coordinates": [ring]},
    }


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("hostile-serve")
    _write_layer(d / "many.geojson", [_point(i, "a" * 8) for i in range(ROWS)])
    _write_layer(d / "squares.geojson", [_square(i, x, y) for i, (x, y) in enumerate([(0, 0), (5, 5), (-20, 40)], 1)])
    return d


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def served(data_dir: Path) -> Iterator[tuple[str, _Collect]]:
    """In-process server on the data; yields (base URL, the warnings and errors it logged)."""
    collect = _Collect()
    logger = logging.getLogger("ags_etl.server")
    logger.addHandler(collect)
    try:
        with serve_in_thread(data_dir, ServerOptions(port=0)) as base:
            yield base, collect
    finally:
        logger.removeHandler(collect)


def _query(base: str, layer: str, session: requests.Session | None = None, **params: str) -> dict[str, Any]:
    url = f"{base}/arcgis/rest/services/{layer}/FeatureServer/0/query"
    response = (session or requests).post(url, data={"f": "json", **params}, timeout=30)
    assert response.status_code == 200, (params, response.status_code, response.text[:300])
    assert response.headers["Content-Type"].startswith(("application/json", "application/geo+json")), response.headers
    body = response.json()
    assert isinstance(body, dict)
    return body


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _server_pid(data_dir: Path) -> int:
    """The ``ags-etl serve`` child of this process serving ``data_dir``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and str(data_dir).encode() in cmdline:
            return int(entry.name)
    raise AssertionError(f"no server process for {data_dir}")


# --------------------------------------------------------------------------- time budget


def nested_replace(depth: int) -> str:
    """Each level makes every 'a' eight: 8**(depth+1) characters per row, minutes of CPU at depth 7."""
    expr = "name"
    for _ in range(depth):
        expr = f"replace({expr}, 'a', 'aaaaaaaa')"
    return f"length({expr}) = 1"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the server's CPU time from /proc")
def test_expensive_where_clause_is_stopped_at_the_query_timeout(data_dir: Path) -> None:
    with run_server(data_dir, "--query-timeout", str(BUDGET_S)) as base:
        pid = _server_pid(data_dir)
        started = time.monotonic()
        body = _query(base, "many", where=nested_replace(7), returnCountOnly="true")
        elapsed = time.monotonic() - started
        assert set(body) == {"error"}, body
        assert body["error"]["code"] == 500
        assert "exceeded the server's time limit of 2 s" in body["error"]["message"]
        assert "--query-timeout" in body["error"]["details"][0]
        assert elapsed < BUDGET_S + MARGIN_S, elapsed

        # The statement was stopped, not abandoned: the server idles after answering.
        cpu_before = _cpu_seconds(pid)
        time.sleep(1.5)
        assert _cpu_seconds(pid) - cpu_before < 0.5

        started = time.monotonic()
        assert _query(base, "many", where="name = 'aaaaaaaa'", returnCountOnly="true") == {"count": ROWS}
        assert time.monotonic() - started < MARGIN_S


def test_a_page_of_an_expensive_clause_is_stopped_too(data_dir: Path) -> None:
    with run_server(data_dir, "--query-timeout", "1") as base:
        started = time.monotonic()
        body = _query(base, "many", where=nested_replace(7), outFields="*")
        assert body["error"]["code"] == 500 and "time limit of 1 s" in body["error"]["message"], body
        assert time.monotonic() - started < 1 + MARGIN_S
        assert len(_query(base, "many", where="OBJECTID <= 3")["features"]) == 3


# --------------------------------------------------------------------------- invalid geometry filters

BOWTIE = {"rings": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}


@pytest.mark.parametrize(
    ("params", "problem"),
    [
        ({"geometry": json.dumps(BOWTIE)}, "Self-intersection"),
        ({"geometry": json.dumps(BOWTIE), "inSR": "3857"}, "Self-intersection"),
        ({"geometry": json.dumps(BOWTIE), "geometryType": "esriGeometryPolygon"}, "Self-intersection"),
        ({"geometry": '{"rings": [[[0, 0], [1, 1]]]}'}, "rings[0] has 2 points"),
        ({"geometry": '{"rings": [[[0, 0], [1, 1], [0, 0]]]}'}, "rings[0] has 3 points"),
        ({"geometry": '{"rings": [[[0, 0], [1, 1], [2, 2], [0, 0]]]}'}, "Self-intersection"),  # no area
        ({"geometry": '{"rings": [[[0, 0], ["NaN", 1], [1, 1], [0, 0]]]}'}, "rings[0][1][0] is 'NaN'"),
        ({"geometry": '{"rings": [[[0, 0], [NaN, 1], [1, 1], [0, 0]]]}'}, "not valid JSON"),
        ({"geometry": '{"rings": []}'}, "rings is []"),
        ({"geometry": '{"rings": [[]]}'}, "rings[0] has 0 points"),
        ({"geometry": '{"rings": "x"}'}, "rings is 'x'"),
        ({"geometry": '{"paths": [[[0, 0]]]}'}, "paths[0] has 1 point;"),
        ({"geometry": '{"paths": [[[0, 0], [0, 0]]]}'}, "Too few points"),
        ({"geometry": '{"points": []}'}, "points has 0 points"),
        ({"geometry": '{"points": [[0, 0], [true, 1]]}'}, "points[1][0] is True"),
        ({"geometry": '{"x": "NaN", "y": 1}'}, "x is 'NaN'"),
        ({"geometry": '{"x": 1}'}, "y is None"),
        ({"geometry": '{"xmin": 5, "ymin": 0, "xmax": 1, "ymax": 1}'}, "min > max"),
        ({"geometry": "5,0,1,1"}, "min > max"),
        ({"geometry": "nan,0,1,1"}, "xmin is nan"),
        ({"geometry": "0,0,1e308,1e308", "inSR": "3857"}, "within ±1e+15"),
        ({"geometry": '{"xmin": 0, "ymin": 0, "xmax": 1e308, "ymax": 1e308}', "inSR": "3857"}, "within ±1e+15"),
        ({"geometry": '{"curveRings": [[[0, 0], {"c": [[1, 1], [0, 1]]}]]}'}, "true curves"),
        ({"geometry": '{"spatialReference": {"wkid": 4326}}'}, "no x/y, points, paths, rings"),
        ({"geometry": "[1, 2]"}, "an Esri JSON object"),
        (
            {
                "geometry": '{"rings": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}' + " " * 10,
                "geometryType": "esriGeometryBlob",
            },
            "geometryType",
        ),
        ({"geometry": json.dumps({"points": [[i, i] for i in range(MAX_VERTICES + 1)]})}, f"at most {MAX_VERTICES}"),
    ],
)
def test_degenerate_geometry_filter_is_a_400_naming_the_problem(
    served: tuple[str, _Collect], params: dict[str, str], problem: str
) -> None:
    base, logged = served
    before = len(logged.records)
    body = _query(base, "squares", **params)
    assert set(body) == {"error"}, body
    assert body["error"]["code"] == 400
    (detail,) = body["error"]["details"]
    if "geometryType" not in problem:
        assert "Invalid geometry" in detail, detail
    assert problem in detail, detail
    assert logged.records[before:] == []


def test_valid_filters_of_every_form_still_select(served: tuple[str, _Collect]) -> None:
    base, logged = served

    def ids(**params: str) -> list[int]:
        body = _query(base, "squares", returnIdsOnly="true", **params)
        assert "error" not in body, body
        return sorted(body["objectIds"])

    assert ids(geometry="0.5,0.5,5.5,5.5") == [1, 2]
    assert ids(geometry='{"xmin": 0.5, "ymin": 0.5, "xmax": 5.5, "ymax": 5.5}') == [1, 2]
    assert ids(geometry="5.5,5.5") == [2]
    assert ids(geometry='{"x": 0.5, "y": 0.5, "spatialReference": {"wkid": 4326}}') == [1]
    assert ids(geometry='{"points": [[0.5, 0.5], [-19.5, 40.5]]}') == [1, 3]
    assert ids(geometry='{"paths": [[[-1, -1], [5.5, 5.5]]]}', geometryType="esriGeometryPolyline") == [1, 2]
    assert ids(geometry='{"rings": [[[0.2, 0.2], [0.8, 0.2], [0.8, 0.8], [0.2, 0.2]]]}') == [1]
    # A square around (0.5, 0.5) in Web Mercator metres.
    assert ids(geometry="-10000,-10000,111000,111000", inSR="3857") == [1]
    assert logged.records == []


# --------------------------------------------------------------------------- fuzz

_NUMBERS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 1e15, 1e16, -1e308, 1e308, 5e-324, "NaN", "1", None, True, [], {}]),
)
_VERTEX = st.lists(_NUMBERS, min_size=0, max_size=5)
_VERTICES = st.lists(_VERTEX, max_size=8)
_JSON = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.integers() | st.text(max_size=4),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                ["x", "y", "rings", "paths", "points", "xmin", "ymin", "xmax", "ymax", "z", "spatialReference", "wkid"]
            )
            | st.text(max_size=3),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)
_SR = st.one_of(
    st.none(),
    st.sampled_from(
        [
            {"wkid": 4326},
            {"wkid": 3857},
            {"wkid": 102100},
            {"wkid": -1},
            {"wkid": 1e300},
            {"wkid": "x"},
            {"wkt": 5},
            {"wkt": "GEOGCS"},
            {"latestWkid": None},
            [1],
        ]
    ),
)
_ESRI = st.one_of(
    st.fixed_dictionaries({"rings": st.lists(_VERTICES, max_size=3)}, optional={"spatialReference": _SR}),
    st.fixed_dictionaries({"paths": st.lists(_VERTICES, max_size=3)}, optional={"spatialReference": _SR}),
    st.fixed_dictionaries({"points": _VERTICES}, optional={"spatialReference": _SR}),
    st.fixed_dictionaries({"x": _NUMBERS, "y": _NUMBERS}, optional={"spatialReference": _SR}),
    st.fixed_dictionaries({k: _NUMBERS for k in ("xmin", "ymin", "xmax", "ymax")}, optional={"spatialReference": _SR}),
)
_GEOMETRY = st.one_of(
    st.text(max_size=60),
    _JSON.map(json.dumps),
    _ESRI.map(json.dumps),
    st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=3)), min_size=1, max_size=5).map(
        lambda v: ",".join(map(str, v))
    ),
)
_GEOMETRY_TYPE = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "esriGeometryEnvelope",
            "esriGeometryPoint",
            "esriGeometryMultipoint",
            "esriGeometryPolyline",
            "esriGeometryPolygon",
        ]
    ),
    st.text(max_size=20),
)
_IN_SR = st.one_of(
    st.none(),
    st.sampled_from(["4326", "3857", "102100", "-1", "0", "99999999", '{"wkid": 1e300}', "{bad", "[]"]),
    st.text(max_size=10),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(
    geometry=_GEOMETRY,
    geometry_type=_GEOMETRY_TYPE,
    in_sr=_IN_SR,
    layer=st.sampled_from(["squares", "many"]),
    fmt=st.sampled_from(["json", "geojson"]),
)
def test_any_geometry_parameter_is_answered_with_features_or_a_400(
    served: tuple[str, _Collect], geometry: str, geometry_type: str | None, in_sr: str | None, layer: str, fmt: str
) -> None:
    base, logged = served
    before = len(logged.records)
    params = {"geometry": geometry, "f": fmt, "returnGeometry": "false"}
    if geometry_type is not None:
        params["geometryType"] = geometry_type
    if in_sr is not None:
        params["inSR"] = in_sr
    body = _query(base, layer, **params)
    if "error" in body:
        assert body["error"]["code"] == 400, body
    else:
        assert "features" in body, body
    assert logged.records[before:] == [], [r.getMessage()[:300] for r in logged.records[before:]]
