"""`ags-etl validate FILE` as a user runs it: exit 0 and a summary, or 78 and every problem,
without a request to the server the file points at; the example pipelines validate."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.helpers import ags
from tests.loopback import JSONHandler, serving

ROOT = Path(__file__).resolve().parents[2]
REQUESTS: list[str] = []


class _Recorder(JSONHandler):
    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        REQUESTS.append(path)
        return 200, "application/json", b"{}"


@pytest.fixture(scope="module")
def stub() -> Iterator[str]:
    with serving(_Recorder) as base:
        yield f"{base}/arcgis/rest/services/Parcels/FeatureServer"


@pytest.fixture(autouse=True)
def no_requests() -> Iterator[None]:
    REQUESTS.clear()
    yield
    assert REQUESTS == [], "validate made a network request"


def test_valid_file(stub: str, tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(
        f"version: 1\njobs:\n  - name: a\n    source: {{url: {stub}/0}}\n    sink: {{type: geojson, path: a.geojson}}\n"
        f"  - name: b\n    source: {{url: {stub}, layers: ['Parcel*']}}\n    sink: {{type: shapefile, path: 'out/{{layer}}.shp'}}\n",
        encoding="utf-8",
    )
    proc = ags("validate", str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"{path}: valid (2 jobs: a, b)\n"


def test_invalid_file_lists_every_problem_and_exits_78(stub: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(
        f"version: 1\njobs:\n  - name: a\n    source:\n      url: {stub}\n      layers: [0, 'Parcel*']\n"
        "      auth: {token: '${SECRET_TOKEN}', username: me}\n"
        "    sink: {type: kmz, path: 'out/{layer}.kmz'}\n"
        f"  - name: b\n    source: {{url: {stub}/0}}\n"
        "    transforms:\n      - {type: reproject, to: 'EPSG:3857'}\n"
        "    sink: {type: kmz, path: out.kmz}\n",
        encoding="utf-8",
    )
    proc = ags("validate", str(path), env={"SECRET_TOKEN": "tok-abcdef-123456"})
    assert proc.returncode == 78, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[0] == f"ags-etl: error: {path}: 2 problems"
    assert lines[1].startswith(f"{path}:7: job 'a': source.auth: give exactly one of")
    assert lines[2].startswith(f"{path}:12: job 'b': transforms[0].to: the kmz sink holds EPSG:4326")
    assert "tok-abcdef-123456" not in proc.stderr and proc.stdout == ""


def test_fit_problems_once_keys_are_right(stub: str, tmp_path: Path) -> None:
    path = tmp_path / "fit.yaml"
    path.write_text(
        f"version: 1\njobs:\n  - name: a\n    source: {{url: {stub}, layers: [0, 'Parcel*']}}\n"
        "    sink: {type: shapefile, path: out/parcels.shp}\n",
        encoding="utf-8",
    )
    proc = ags("validate", str(path))
    assert proc.returncode == 78
    assert f"{path}:5: job 'a': sink.path: the source may give several layers (layers)" in proc.stderr
    assert "e.g. 'out/{layer}.shp'" in proc.stderr


def test_yaml_syntax_error_and_missing_file_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "syntax.yaml"
    path.write_text("version: 1\njobs:\n  - name: [a\n", encoding="utf-8")
    proc = ags("validate", str(path))
    assert proc.returncode == 78
    assert f"{path}:4: YAML syntax error" in proc.stderr
    missing = tmp_path / "missing.yaml"
    proc = ags("validate", str(missing))
    assert proc.returncode == 78
    assert f"{missing}: no such file; check the path" in proc.stderr


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "pipelines" / "examples").glob("*.yaml")))
def test_examples_validate(name: str) -> None:
    env = {"GIS_USER": "editor", "GIS_PASSWORD": "pw", "PORTAL_TOKEN": "token", "AGOL_API_KEY": "key"}
    proc = ags("validate", str(ROOT / "pipelines" / "examples" / name), env=env)
    assert proc.returncode == 0, proc.stderr
    assert ": valid (1 job: " in proc.stdout


def test_example_without_its_variables_names_them() -> None:
    path = ROOT / "pipelines" / "examples" / "arcgis_server_token_to_shapefiles.yaml"
    proc = ags("validate", str(path), env={"GIS_USER": "", "GIS_PASSWORD": ""})
    assert proc.returncode == 0  # set, even if empty: that is the user's choice
    env = {k: v for k, v in os.environ.items() if k not in ("GIS_USER", "GIS_PASSWORD")}
    proc = subprocess.run([sys.executable, "-c", "from ags_etl.cli import main; main()", "validate", str(path)],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 78
    assert "source.auth.username: environment variable GIS_USER not set" in proc.stderr
    assert "source.auth.password: environment variable GIS_PASSWORD not set" in proc.stderr
