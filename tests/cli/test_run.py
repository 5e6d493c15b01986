"""`ags-etl run FILE` as a user runs it: a real process, real servers on 127.0.0.1, every exit code."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar
from urllib.parse import quote, quote_plus

import geopandas as gpd
import pandas as pd
import pyarrow.parquet as pq
import pyogrio
import pytest

from ags_etl.server.testing import run_server
from tests.cli.helpers import ags, url
from tests.layers import expected_rows, write_layer
from tests.loopback import JSONHandler, serving
from tests.test_progress import run_with_stderr_on_pty

N = 40


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("run-layers")
    write_layer(d / "points.geojson", "points", N)
    write_layer(d / "polygons.geojson", "polygons", N)
    return d


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[str]:
    with run_server(data_dir, "--max-record-count", "5") as base:
        yield base


def two_jobs(tmp_path: Path, first_where: str | None = None) -> Path:
    """A pipeline file: job "first" (points → GeoJSON), job "second" (polygons → GeoParquet);
    the server's URL comes from ${SERVER}, the output folder from ${OUT}."""
    where = "" if first_where is None else f"\n      where: \"{first_where}\""
    text = f"""\
version: 1
jobs:
  - name: first
    source:
      url: "${{SERVER}}/arcgis/rest/services/points/FeatureServer/0"{where}
    sink: {{type: geojson, path: "${{OUT}}/first.geojson"}}
  - name: second
    source:
      url: "${{SERVER}}/arcgis/rest/services/polygons/FeatureServer/0"
    sink: {{type: geoparquet, path: "${{OUT}}/second.parquet"}}
"""
    path = tmp_path / "pipeline.yaml"
    path.write_text(text)
    return path


def out_dir(tmp_path: Path) -> Path:
    out = tmp_path / "out"
    out.mkdir()
    return out


def oids(path: Path) -> list[int]:
    if path.suffix == ".parquet":  # GeoParquet read with pyarrow (GDAL's Parquet driver may lack libduckdb)
        return sorted(pq.read_table(path, columns=["OBJECTID"]).column("OBJECTID").to_pylist())
    return sorted(int(v) for v in pyogrio.read_dataframe(path)["OBJECTID"])


def test_all_jobs_succeed_with_summary_and_report(server: str, tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    report = tmp_path / "report.json"
    proc = ags("run", str(two_jobs(tmp_path)), "--report", str(report), env={"SERVER": server, "OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    assert oids(out / "first.geojson") == sorted(expected_rows("points", N))
    assert oids(out / "second.parquet") == sorted(expected_rows("polygons", N))
    table = proc.stdout.splitlines()
    assert table[0].split() == ["job", "status", "read", "clipped", "written", "pages", "retries", "seconds", "output"]
    assert table[1].split()[:5] == ["first", "ok", str(N), "0", str(N)]
    assert table[2].split()[:5] == ["second", "ok", str(N), "0", str(N)]
    assert table[-1].startswith("2 jobs: 2 ok, 0 failed, 0 skipped")
    # stderr is a pipe here: plain progress lines, no terminal control codes
    assert "first: started" in proc.stderr and f"first: {N} of {N} features (100%)" in proc.stderr
    assert "\x1b[" not in proc.stderr
    data = json.loads(report.read_text())
    assert (data["exit_code"], data["status"], data["counts"]) == (0, "ok", {"ok": 2, "failed": 0, "skipped": 0})
    assert data["pipeline"] == str(tmp_path / "pipeline.yaml")
    first = data["jobs"][0]
    assert {k: first[k] for k in ("name", "job", "status", "features_read", "written", "expected", "output", "error")} \
        == {"name": "first", "job": "first", "status": "ok", "features_read": N, "written": N, "expected": N,
            "output": str(out / "first.geojson"), "error": None}
    assert first["pages"] >= N // 5, "pages of at most 5 features"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [], "the report was renamed into place"


def test_first_job_fails_second_written_exactly(server: str, tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    report = tmp_path / "report.json"
    proc = ags("run", str(two_jobs(tmp_path, first_where="NO_SUCH_FIELD = 1")), "--report", str(report),
               env={"SERVER": server, "OUT": str(out)})
    assert proc.returncode == 1, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["second.parquet"], "no file (nor temp file) for the failed job"
    df = gpd.read_parquet(out / "second.parquet")
    expected = expected_rows("polygons", N)
    assert sorted(int(v) for v in df["OBJECTID"]) == sorted(expected)
    for oid, name, count in zip(df["OBJECTID"], df["NAME"], df["COUNT"], strict=True):
        exp = expected[int(oid)]
        assert (None if pd.isna(name) else name) == exp["NAME"]
        assert (None if pd.isna(count) else int(count)) == exp["COUNT"]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ags-etl: error: ")]
    assert len(errors) == 1 and errors[0].startswith("ags-etl: error: job first: ") and "NO_SUCH_FIELD" in errors[0]
    assert proc.stdout.splitlines()[1].split()[:2] == ["first", "failed"]
    data = json.loads(report.read_text())
    assert [(j["name"], j["status"]) for j in data["jobs"]] == [("first", "failed"), ("second", "ok")]
    assert "NO_SUCH_FIELD" in data["jobs"][0]["error"] and data["jobs"][0]["output"] is None
    assert data["exit_code"] == 1

    # --fail-fast: the second job is skipped and never started
    out2 = tmp_path / "out2"
    out2.mkdir()
    fast = ags("run", str(two_jobs(tmp_path, first_where="NO_SUCH_FIELD = 1")), "--fail-fast", "--report",
               str(report), env={"SERVER": server, "OUT": str(out2)})
    assert fast.returncode == 1
    assert list(out2.iterdir()) == []
    data = json.loads(report.read_text())
    assert [(j["name"], j["status"]) for j in data["jobs"]] == [("first", "failed"), ("second", "skipped")]
    assert data["counts"] == {"ok": 0, "failed": 1, "skipped": 1}


class Recorder(JSONHandler):
    seen: ClassVar[list[str]] = []

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        self.seen.append(path)
        return 200, "application/json", b'{"error": {"code": 400, "message": "recording stub", "details": []}}'


def test_job_option_runs_one_job_and_contacts_no_other_server(server: str, tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    pipeline = tmp_path / "pipeline.yaml"
    Recorder.seen = []
    with serving(Recorder) as stub:
        pipeline.write_text(f"""\
version: 1
jobs:
  - name: elsewhere
    source: {{url: "{url(stub, 'points')}"}}
    sink: {{type: geojson, path: "{out}/elsewhere.geojson"}}
  - name: here
    source: {{url: "{url(server, 'points')}"}}
    sink: {{type: geojson, path: "{out}/here.geojson"}}
""")
        proc = ags("run", str(pipeline), "--job", "here", "--quiet")
        assert proc.returncode == 0, proc.stderr
        assert (proc.stdout, proc.stderr) == ("", ""), "--quiet prints nothing on success"
        assert Recorder.seen == [], "the other job's server got no request"
        assert [p.name for p in out.iterdir()] == ["here.geojson"]

        unknown = ags("run", str(pipeline), "--job", "nope")
        assert unknown.returncode == 2
        assert "no job named 'nope'" in unknown.stderr and "elsewhere, here" in unknown.stderr
        assert Recorder.seen == []

        # every job: the stub is asked (so the checks above can fail); --quiet still prints errors
        (out / "here.geojson").unlink()
        both = ags("run", str(pipeline), "--quiet")
        assert both.returncode == 1
        assert both.stdout == ""
        assert [line for line in both.stderr.splitlines() if line.strip()] == [
            line for line in both.stderr.splitlines() if line.startswith("ags-etl: error: job elsewhere: ")]
        assert "recording stub" in both.stderr
        assert Recorder.seen


def test_invalid_file_and_usage_errors(server: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\njobs:\n  - name: x\n    source: {url: 'http://127.0.0.1:9/x/FeatureServer/0'}\n"
                   "    sink: {type: geojson, path: out.geojson, colour: blue}\n")
    invalid = ags("run", str(bad))
    assert invalid.returncode == 78, invalid.stderr
    assert "colour" in invalid.stderr and "bad.yaml:5" in invalid.stderr and invalid.stdout == ""

    report_in_missing_folder = ags("run", str(two_jobs(tmp_path)), "--report", str(tmp_path / "no" / "r.json"),
                                   env={"SERVER": server, "OUT": str(tmp_path)})
    assert report_in_missing_folder.returncode == 2
    assert "--report folder" in report_in_missing_folder.stderr
    assert not (tmp_path / "first.geojson").exists(), "nothing ran"


def test_progress_bars_on_a_terminal(server: str, tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    args = [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(two_jobs(tmp_path))]
    code, terminal, stdout = run_with_stderr_on_pty(args, env={"SERVER": server, "OUT": str(out)})
    assert code == 0, terminal
    assert "━" in terminal, "rich's bar characters"
    assert "100%" in terminal and f"{N}/{N}" in terminal
    assert "features/s" in terminal
    assert "first: started" not in terminal, "no plain lines on a terminal"
    assert "2 jobs: 2 ok" in stdout


def test_interrupted_run_still_writes_its_report(data_dir: Path, tmp_path: Path) -> None:
    out = out_dir(tmp_path)
    report = tmp_path / "report.json"
    with run_server(data_dir, "--max-record-count", "3", "--latency-ms", "100") as slow:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(two_jobs(tmp_path)),
             "--report", str(report)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "SERVER": slow, "OUT": str(out)},
        )
        deadline = time.monotonic() + 30
        while not any(p.name.startswith(".") for p in out.iterdir()):  # the first job is writing
            assert proc.poll() is None, f"the run ended before writing: {proc.communicate()}"
            assert time.monotonic() < deadline, "the run never started writing"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert list(out.iterdir()) == [], "no output and no temp file"
    data = json.loads(report.read_text())
    assert [(j["name"], j["status"]) for j in data["jobs"]] == [("first", "failed"), ("second", "skipped")]
    assert "interrupted" in data["jobs"][0]["error"]
    assert (data["exit_code"], data["status"]) == (130, "interrupted")


class TokenRecorder(JSONHandler):
    """Forwards generateToken to the real server and keeps every token it hands out."""

    upstream = ""
    issued: ClassVar[list[str]] = []

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        import requests

        resp = requests.post(self.upstream + path, data=params, timeout=30)
        token = resp.json().get("token")
        if token:
            self.issued.append(token)
        return resp.status_code, "application/json", resp.content


def test_token_secured_layer_with_credentials_from_variables(data_dir: Path, tmp_path: Path) -> None:
    password = "Pa ss&w=rd+%/ü:1"
    out = out_dir(tmp_path)
    report = tmp_path / "report.json"
    pipeline = tmp_path / "secure.yaml"
    pipeline.write_text("""\
version: 1
jobs:
  - name: secure
    source:
      url: "${SERVER}/arcgis/rest/services/points/FeatureServer/0"
      auth:
        username: "${SECURE_USER}"
        password: "${SECURE_PASSWORD}"
        token_url: "${TOKENS}/arcgis/tokens/generateToken"
    sink: {type: geoparquet, path: "${OUT}/secure.parquet"}
  - name: wrong
    source:
      url: "${SERVER}/arcgis/rest/services/polygons/FeatureServer/0"
      auth: {username: "${SECURE_USER}", password: "${WRONG_PASSWORD}"}
    sink: {type: kmz, path: "${OUT}/wrong.kmz"}
""")
    TokenRecorder.issued = []
    with run_server(data_dir, "--token-auth", f"ags:{password}", "--max-record-count", "5") as base:
        TokenRecorder.upstream = base
        with serving(TokenRecorder) as tokens:
            env = {"SERVER": base, "TOKENS": tokens, "OUT": str(out), "SECURE_USER": "ags",
                   "SECURE_PASSWORD": password, "WRONG_PASSWORD": password + "-not"}
            proc = ags("-vv", "run", str(pipeline), "--report", str(report), env=env)
            pty_code, terminal, pty_out = run_with_stderr_on_pty(
                [sys.executable, "-c", "from ags_etl.cli import main; main()", "run", str(pipeline), "--job",
                 "secure"],
                env={**env, "OUT": str(tmp_path)})
    assert proc.returncode == 1, proc.stderr
    assert pty_code == 0, terminal
    assert TokenRecorder.issued, "tokens were issued"
    assert oids(out / "secure.parquet") == sorted(expected_rows("points", N))
    data = json.loads(report.read_text())
    assert [(j["name"], j["status"]) for j in data["jobs"]] == [("secure", "ok"), ("wrong", "failed")]
    assert "password" in data["jobs"][1]["error"]
    secrets = {password, password + "-not", quote(password), quote_plus(password), quote(password + "-not"),
               quote_plus(password + "-not"), *TokenRecorder.issued}
    texts = {"stdout": proc.stdout, "stderr": proc.stderr, "pty": terminal + pty_out}
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"report.json", "secure.parquet", "secure.yaml"}
    for p in written:
        if p.name != "secure.yaml":  # the pipeline file holds ${VARS}, not secrets
            texts[str(p)] = p.read_bytes().decode("utf-8", "replace")
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"a secret reached {where}"
