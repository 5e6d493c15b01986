"""`ags-etl pull` and `ags-etl inspect` as a user runs them: a real process, real servers on
127.0.0.1, outputs read back with GDAL (pyogrio)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyogrio
import pytest
import shapely

from ags_etl.server.testing import run_server
from tests.cli.helpers import N, ags, one_error_line, url
from tests.layers import expected_rows, write_layer
from tests.misbehaving_proxy import Misbehaviour, misbehaving_proxy



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cli-layers")
    write_layer(d / "polygons.geojson", "polygons", N)
    write_layer(d / "points.geojson", "points", N)
    return d


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    with run_server(data_dir, "--max-record-count", "7") as base:
        yield base


def test_pull_geojson_matches_source(server: str, tmp_path: Path) -> None:
    out = tmp_path / "polygons.geojson"
    proc = ags("pull", url(server, "polygons"), "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {N} features" in proc.stderr
    doc = json.loads(out.read_text())
    assert "crs" not in doc
    df = pyogrio.read_dataframe(out)
    expected = expected_rows("polygons", N)
    assert sorted(df["OBJECTID"]) == sorted(expected)
    for oid, name, geom in zip(df["OBJECTID"], df["NAME"], df.geometry.values, strict=True):
        exp = expected[int(oid)]
        assert (None if name is None or name != name else name) == exp["NAME"]
        if exp["geometry"] is None:
            assert geom is None
        else:
            assert shapely.normalize(geom).equals_exact(shapely.normalize(exp["geometry"]), 1e-7)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp leftovers"


def test_bad_where_clause(server: str, tmp_path: Path) -> None:
    out = tmp_path / "x.geojson"
    proc = ags("pull", url(server, "points"), "-o", str(out), "--where", "NOPE = 'x'")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "NOPE = 'x'" in line and "check field names" in line
    assert not out.exists()


def test_unreachable_host(tmp_path: Path) -> None:
    out = tmp_path / "x.geojson"
    proc = ags("pull", "http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0", "-o", str(out),
               "--retries", "0")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert "could not reach http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0 after 1 attempt" in line
    assert "(connection refused)" in line
    assert not out.exists()


def test_not_a_layer(server: str, tmp_path: Path) -> None:
    proc = ags("pull", f"{server}/arcgis/rest/services/points/FeatureServer", "-o", str(tmp_path / "x.geojson"))
    assert proc.returncode == 1
    assert "not a layer" in one_error_line(proc)


def test_wrong_password_is_not_echoed(data_dir: Path, tmp_path: Path) -> None:
    with run_server(data_dir, "--token-auth", "ags:s3cret-pw") as base:
        proc = ags("pull", url(base, "points"), "-o", str(tmp_path / "x.geojson"),
                   env={"AGS_ETL_USERNAME": "ags", "AGS_ETL_PASSWORD": "WrongPassw0rd"})
        assert proc.returncode == 1
        line = one_error_line(proc)
        assert "WrongPassw0rd" not in proc.stderr + proc.stdout
        assert "password" in line
        ok = ags("-vv", "pull", url(base, "points"), "-o", str(tmp_path / "ok.geojson"),
                 env={"AGS_ETL_USERNAME": "ags", "AGS_ETL_PASSWORD": "s3cret-pw"})
        assert ok.returncode == 0, ok.stderr
        assert "s3cret-pw" not in ok.stderr + ok.stdout


def test_missing_folder_and_existing_output(server: str, tmp_path: Path) -> None:
    proc = ags("pull", url(server, "points"), "-o", str(tmp_path / "nope" / "x.geojson"))
    assert proc.returncode == 2
    assert "does not exist" in one_error_line(proc)
    existing = tmp_path / "x.geojson"
    existing.write_text("earlier output")
    proc = ags("pull", url(server, "points"), "-o", str(existing))
    assert proc.returncode == 2
    assert "--overwrite" in one_error_line(proc)
    assert existing.read_text() == "earlier output"


def test_failed_run_keeps_earlier_output(server: str, tmp_path: Path) -> None:
    existing = tmp_path / "x.geojson"
    existing.write_text("earlier output")
    with misbehaving_proxy(server, Misbehaviour(count_extra=2)) as proxy:
        proc = ags("pull", url(proxy, "points"), "-o", str(existing), "--overwrite")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"read {N} distinct features" in line and f"counts {N + 2}" in line
    assert existing.read_text() == "earlier output"
    assert [p.name for p in tmp_path.iterdir()] == ["x.geojson"]


@pytest.fixture(scope="module")
def slow_server(data_dir: Path) -> Iterator[str]:
    """Small pages and 100 ms per request: a pull of the points layer takes seconds."""
    with run_server(data_dir, "--max-record-count", "3", "--latency-ms", "100") as base:
        yield base


def start_pull(base: str, out: Path, *extra: str) -> subprocess.Popen[str]:
    """Start a pull and return once it is writing (its hidden temp output exists)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", url(base, "points"),
         "-o", str(out), "--concurrency", "1", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 30
    while not any(p.name.startswith(".") for p in out.parent.iterdir()):
        assert proc.poll() is None, f"the pull ended before writing: {proc.communicate()}"
        assert time.monotonic() < deadline, "the pull never started writing"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("name", ["x.geojson", "x.shp", "x.kmz", "x.parquet"])
def test_killed_run_leaves_earlier_output_and_nothing_else(slow_server: str, tmp_path: Path, name: str) -> None:
    existing = tmp_path / name
    existing.write_text("earlier output")
    proc = start_pull(slow_server, existing, "--overwrite")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert existing.read_text() == "earlier output"
    visible = [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")]
    assert visible == [name], "no output (or sidecar) appears at the target"


def test_killed_run_leaves_no_output(slow_server: str, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.geojson"
    proc = start_pull(slow_server, fresh)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    assert not fresh.exists()


def test_interrupted_run_cleans_up(slow_server: str, tmp_path: Path) -> None:
    fresh = tmp_path / "fresh.geojson"
    proc = start_pull(slow_server, fresh)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert not fresh.exists()
    assert list(tmp_path.iterdir()) == [], "the temp file is removed on Ctrl-C"


def test_given_token_never_printed_even_in_debug_logs(data_dir: Path, tmp_path: Path) -> None:
    with run_server(data_dir, "--token-auth", "ags:s3cret-pw") as base:
        proc = ags("-vv", "pull", url(base, "points"), "-o", str(tmp_path / "x.geojson"),
                   "--token", "TOKEN-VALUE-123")
    assert proc.returncode == 1
    assert "TOKEN-VALUE-123" not in proc.stderr + proc.stdout
    assert "error 498" in proc.stderr


def test_token_and_api_key_from_options_and_environment(data_dir: Path, tmp_path: Path) -> None:
    import requests

    with run_server(data_dir, "--token-auth", "ags:s3cret-pw", "--token-ttl", "600") as base:
        answer = requests.post(f"{base}/arcgis/tokens/generateToken",
                               data={"username": "ags", "password": "s3cret-pw", "f": "json"}, timeout=10).json()
        token = answer["token"]
        runs = [
            (["--token", token], {}),
            (["--api-key", token], {}),
            ([], {"AGS_ETL_TOKEN": token}),
        ]
        for i, (args, env) in enumerate(runs):
            out = tmp_path / f"x{i}.parquet"
            proc = ags("pull", url(base, "points"), "-o", str(out), *args, env=env)
            assert proc.returncode == 0, proc.stderr
            assert token not in proc.stderr + proc.stdout
            assert f"wrote {N} features" in proc.stderr


def test_kmz_placemark_names_from_a_chosen_field(server: str, tmp_path: Path) -> None:
    import zipfile

    from lxml import etree

    out = tmp_path / "points.kmz"
    proc = ags("pull", url(server, "points"), "-o", str(out), "--name-field", "COUNT")
    assert proc.returncode == 0, proc.stderr
    with zipfile.ZipFile(out) as z:
        assert z.namelist()[0] == "doc.kml"
        doc = etree.fromstring(z.read("doc.kml"))
    ns = {"k": "http://www.opengis.net/kml/2.2"}
    names = {pm.get("id"): pm.findtext("k:name", namespaces=ns) for pm in doc.iterfind(".//k:Placemark", ns)}
    expected = expected_rows("points", N)
    assert len(names) == N
    for oid, row in expected.items():
        assert (names[f"f{oid}"] or None) == (None if row["COUNT"] is None else str(row["COUNT"]))
    bad = ags("pull", url(server, "points"), "-o", str(tmp_path / "p.geojson"), "--name-field", "COUNT")
    assert bad.returncode == 2 and "KMZ output only" in one_error_line(bad)
