"""Pipeline files: every mistake is reported with its file, line, job and key path, all at once,
and no request reaches the (loopback) server a source points at."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ags_etl.config import PipelineFileError, load_pipeline, parse_pipeline
from tests.loopback import JSONHandler, serving

REQUESTS: list[str] = []


class _Recorder(JSONHandler):
    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        REQUESTS.append(path)
        return 200, "application/json", b"{}"


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    """A layer URL on a loopback server that records every request it gets."""
    with serving(_Recorder) as base:
        yield f"{base}/arcgis/rest/services/Parcels/FeatureServer/0"


@pytest.fixture(autouse=True)
def no_requests() -> Iterator[None]:
    REQUESTS.clear()
    yield
    assert REQUESTS == [], "a pipeline file was checked with a network request"


def write(tmp_path: Path, text: str, url: str) -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(textwrap.dedent(text).replace("URL", url), encoding="utf-8")
    return path


def problems(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(path, env=env or {})
    assert str(info.value).splitlines()[0] == f"{path}: {len(info.value.problems)} problem" + (
        "s" if len(info.value.problems) != 1 else ""
    )
    return info.value.problems


GOOD_JOB = """\
  - name: parcels
    source: {url: URL}
    sink: {type: geoparquet, path: OUT/p.parquet}
"""

# (case id, the file's text, the fragment the one problem must hold: "FILE:LINE: job: key path: …")
MISTAKES = [
    ("unknown-top-key", "version: 1\njobs:\n" + GOOD_JOB + "stat: x\n",
     ":6: stat: unknown key 'stat' (did you mean 'state'?); accepted keys: defaults, executor, jobs, max_requests_per_host, scheduler, state, version"),
    ("unknown-source-key", "version: 1\njobs:\n  - name: a\n    source:\n      url: URL\n      pagesize: 5\n"
     "    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': source.pagesize: unknown key 'pagesize' (did you mean 'page_size'?)"),
    ("unknown-auth-key", "version: 1\njobs:\n  - name: a\n    source:\n      url: URL\n      auth: {token: t0k3n, scope: x}\n"
     "    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': source.auth.scope: unknown key 'scope'; accepted keys: api_key, password, token, token_url, username"),
    ("unknown-transform-key", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    transforms:\n"
     "      - {type: reproject, to: 'EPSG:4326', server-side: true}\n    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': transforms[0].server-side: unknown key 'server-side' (did you mean 'server_side'?); accepted keys: from_crs, server_side, to, type"),
    ("unknown-sink-option", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n"
     "    sink: {type: kmz, path: OUT/a.kmz, namefield: NAME}\n",
     ":5: job 'a': sink.namefield: unknown key 'namefield' (did you mean 'name_field'?)"),
    ("wrong-type", "version: 1\njobs:\n  - name: a\n    source:\n      url: URL\n      page_size: lots\n"
     "    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': source.page_size: Input should be a valid integer, unable to parse string as an integer (got 'lots')"),
    ("wrong-choice", "version: 1\njobs:\n  - name: a\n    source: {url: URL, strategy: fastest}\n"
     "    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":4: job 'a': source.strategy: Input should be 'oid-list', 'offset', 'oid-range', 'spatial' or 'box-split' (got 'fastest')"),
    ("unknown-transformer", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    transforms:\n"
     "      - {type: buffer, distance: 5}\n    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': transforms[0].type: unknown transformer 'buffer'; installed: clip, fields, reproject"),
    ("unknown-loader", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    sink: {type: gpkg, path: OUT/a.gpkg}\n",
     ":5: job 'a': sink.type: unknown loader 'gpkg'; installed: feature_service, geojson, geojsonl, geoparquet, kmz, shapefile"),
    ("unknown-extractor", "version: 1\njobs:\n  - name: a\n    source: {type: wfs, url: URL}\n"
     "    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":4: job 'a': source.type: unknown extractor 'wfs'; installed: arcgis"),
    ("duplicate-job-names", "version: 1\njobs:\n" + GOOD_JOB + GOOD_JOB.replace("p.parquet", "q.parquet"),
     ":6: job 'parcels' (#2): name: job name 'parcels' is also used by job #1; give each job its own name"),
    ("version-2", "version: 2\njobs:\n" + GOOD_JOB, ":1: version: Input should be 1 (got 2)"),
    ("version-missing", "jobs:\n" + GOOD_JOB, ":1: version: required, but missing"),
    ("clip-bbox-and-mask", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    transforms:\n"
     "      - type: clip\n        bbox: [0, 0, 1, 1]\n        mask: county.shp\n    sink: {type: geoparquet, path: OUT/a.parquet}\n",
     ":6: job 'a': transforms[0]: give exactly one of bbox ([xmin, ymin, xmax, ymax]) and mask"),
    ("job-without-sink", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n",
     ":3: job 'a': sink: required, but missing"),
    ("geojson-after-reproject", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    transforms:\n"
     "      - {type: reproject, to: 'EPSG:3857'}\n    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': transforms[0].to: the geojson sink holds EPSG:4326 (WGS 84) only, but this reproject goes to EPSG:3857"),
    ("kmz-after-reproject", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    transforms:\n"
     "      - {type: reproject, to: 2227}\n      - {type: fields, drop: [X]}\n    sink: {type: kmz, path: OUT/a.kmz}\n",
     ":6: job 'a': transforms[0].to: the kmz sink holds EPSG:4326 (WGS 84) only"),
    ("shapefile-multi-layer-no-placeholder", "version: 1\njobs:\n  - name: a\n    source:\n"
     "      url: URL\n      layers: ['Parcel*']\n    sink: {type: shapefile, path: OUT/parcels.shp}\n",
     ":7: job 'a': sink.path: the source may give several layers (layers), which would all be written to"),
    ("bad-crs", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    transforms:\n"
     "      - {type: reproject, to: 'EPSG:999999'}\n    sink: {type: geoparquet, path: OUT/a.parquet}\n",
     ":6: job 'a': transforms[0].to: CRS 'EPSG:999999' is not recognised"),
    ("auth-two-forms", "version: 1\njobs:\n  - name: a\n    source:\n      url: URL\n      auth: {token: t0k3n, api_key: k3y}\n"
     "    sink: {type: geojson, path: OUT/a.geojson}\n",
     ":6: job 'a': source.auth: give exactly one of {username, password}, {token} or {api_key} (got token and api_key)"),
    ("url-and-item", "version: 1\njobs:\n  - name: a\n    source: {url: URL, item: abc123}\n"
     "    sink: {type: geojson, path: 'OUT/{layer}.geojson'}\n",
     ":4: job 'a': source: give exactly one of url (a layer or service URL) and item (a portal item id)"),
    ("shapefile-wrong-extension", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n"
     "    sink: {type: shapefile, path: OUT/a.gpkg}\n",
     ":5: job 'a': sink: shapefile: output"),
    ("defaults-unknown-key", "version: 1\ndefaults:\n  name: x\njobs:\n" + GOOD_JOB,
     ":3: defaults.name: unknown key 'name'; defaults may set: source, transforms, sink, sync"),
    ("defaults-bad-value", "version: 1\ndefaults:\n  source: {timeout: 0}\njobs:\n" + GOOD_JOB,
     ":3: defaults: source.timeout: Input should be greater than 0 (got 0)"),
    ("sync-wrong-type", "version: 1\njobs:\n  - name: a\n    source: {url: URL}\n    sink: {type: geoparquet, path: OUT/a.parquet}\n"
     "    sync: {cursor_field: EditDate, detect_deletes: sometimes}\n",
     ":6: job 'a': sync.detect_deletes: Input should be a valid boolean"),
    ("duplicate-yaml-key", "version: 1\njobs:\n  - name: a\n    name: b\n    source: {url: URL}\n"
     "    sink: {type: geoparquet, path: OUT/a.parquet}\n",
     ":4: key 'name' appears twice in the same mapping; keep one"),
    ("no-jobs", "version: 1\njobs: []\n", ":2: jobs: List should have at least 1 item after validation"),
    ("not-a-mapping", "- just\n- a list\n", "the file holds list, not a mapping"),
]


@pytest.mark.parametrize("text, fragment", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_each_mistake_is_reported_with_line_and_key_path(stub: str, tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path, text.replace("OUT", str(tmp_path)), stub)
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].startswith(str(path)), found
    assert fragment.replace("OUT", str(tmp_path)) in found[0], found


def test_all_problems_of_a_file_come_together(stub: str, tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        jobs:
          - name: a
            source: {url: URL, page_size: 0, colour: red}
            transforms:
              - {type: clip, bbox: [0, 0, 1, 1], mask: m.shp}
              - {type: nope}
            sink: {type: geojson, path: out.geojson, precision: 99}
          - name: a
            source: {url: URL}
        """, stub)
    found = problems(path)
    assert [f.split(": ", 1)[0].rsplit(":", 1)[1] for f in found] == ["4", "4", "6", "7", "8", "9", "9"], found
    assert any("source.page_size" in f for f in found) and any("source.colour" in f for f in found)
    assert any("sink.precision: Input should be less than or equal to 15 (got 99)" in f for f in found)
    assert any("job 'a' (#2): sink: required" in f for f in found)


def test_variables_defaults_and_escapes(stub: str, tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        jobs:
          - name: a
            source:
              url: ${BASE}
              where: "NAME = '$${literal}' AND ${FILTER:-1=1}"
              page_size: ${PAGE}
            sink: {type: geoparquet, path: "${OUT:-out}/a.parquet"}
        """, stub)
    spec = load_pipeline(path, env={"BASE": stub, "PAGE": "250"})
    source = spec.jobs[0].source
    assert source.url == stub and source.page_size == 250
    assert source.where == "NAME = '${literal}' AND 1=1"
    assert spec.jobs[0].sink.path == "out/a.parquet" and spec.path == path


def test_missing_variables_are_all_reported(stub: str, tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        jobs:
          - name: a
            source: {url: "${HOST}/0", auth: {token: "${TOKEN}"}}
            sink: {type: geoparquet, path: "${DIR}/${NAME}.parquet"}
        """, stub)
    found = problems(path)
    assert sorted(found) == [
        f"{path}:4: job 'a': source.auth.token: environment variable TOKEN not set; set it or give a default as in ${{TOKEN:-default}}",
        f"{path}:4: job 'a': source.url: environment variable HOST not set; set it or give a default as in ${{HOST:-default}}",
        f"{path}:5: job 'a': sink.path: environment variables DIR, NAME not set; set them or give a default as in ${{DIR:-default}}",
    ]


def test_secrets_are_never_echoed(stub: str, tmp_path: Path) -> None:
    secret = "s3cr3t-token-value"
    path = write(tmp_path, """\
        version: 1
        jobs:
          - name: a
            source:
              url: URL?probe=${TOKEN}
              page_size: ${TOKEN}
              auth: {token: "${TOKEN}", api_key: 12345678}
            sink: {type: geojson, path: out.geojson, precision: "${TOKEN}"}
          - name: b
            source: {url: URL, auth: {username: admin-user, password: [hunter2-pass]}}
            sink: {type: geojson, path: out.geojson}
        """, stub)
    with pytest.raises(PipelineFileError) as info:
        load_pipeline(path, env={"TOKEN": secret})
    text = str(info.value)
    assert "source.page_size" in text and "sink.precision" in text and "source.auth" in text
    for value in (secret, "12345678", "hunter2-pass", "admin-user"):
        assert value not in text, text


def test_defaults_merge_into_every_job(stub: str, tmp_path: Path) -> None:
    path = write(tmp_path, """\
        version: 1
        defaults:
          source: {page_size: 500, auth: {token: abcd1234}}
          sink: {overwrite: true}
        jobs:
          - name: a
            source: {url: URL, auth: {api_key: k3y-value}}
            sink: {type: geoparquet, path: a.parquet}
          - name: b
            source: {url: URL, page_size: 10}
            sink: {type: geojson, path: b.geojson, overwrite: false}
        state: .ags_etl/state.db
        """, stub)
    spec = load_pipeline(path)
    a, b = spec.jobs
    assert a.source.page_size == 500 and b.source.page_size == 10
    assert a.source.auth is not None and a.source.auth.token is None  # auth is replaced whole
    assert a.source.auth.api_key is not None and a.source.auth.api_key.get_secret_value() == "k3y-value"
    assert b.source.auth is not None and b.source.auth.token is not None
    assert a.sink.overwrite is True and b.sink.overwrite is False
    assert spec.state == ".ags_etl/state.db" and spec.defaults is not None


def test_yaml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: 1\njobs:\n  - name: a\n    source: {url: x\n  sink: y\n", encoding="utf-8")
    found = problems(path)
    assert len(found) == 1 and found[0].startswith(f"{path}:5: YAML syntax error"), found
    missing = tmp_path / "nope.yaml"
    assert problems(missing) == [f"{missing}: no such file; check the path"]


def test_parse_pipeline_from_python(stub: str) -> None:
    spec = parse_pipeline({"version": 1, "jobs": [{"name": "a", "source": {"url": stub}, "sink": {"type": "kmz", "path": "a.kmz"}}]})
    assert spec.jobs[0].sink.type == "kmz" and spec.path is None
    with pytest.raises(PipelineFileError, match=r"<dict>: job 'a': sink.path: the kmz sink needs path"):
        parse_pipeline({"version": 1, "jobs": [{"name": "a", "source": {"url": stub}, "sink": {"type": "kmz"}}]})
