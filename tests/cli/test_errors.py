"""No traceback reaches a user: bad numbers are usage errors, a bug is one line (traceback
with -vv), click's own usage errors keep exit 2. Real `ags-etl` processes throughout."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import ClassVar

import pytest

from tests.cli.helpers import ags, one_error_line
from tests.loopback import JSONHandler, serving


class Recorder(JSONHandler):
    """Answers 500 to everything and records what was asked: a usage error must ask nothing."""

    seen: ClassVar[list[str]] = []
    lock = threading.Lock()

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        with self.lock:
            self.seen.append(path)
        return 500, "application/json", b"{}"


@pytest.mark.parametrize(
    ("command", "option", "value", "fix"),
    [
        ("pull", "--timeout", "0", "--timeout 60"),
        ("pull", "--timeout", "-1", "--timeout 60"),
        ("pull", "--retries", "-3", "--retries 5"),
        ("pull", "--concurrency", "0", "--concurrency 4"),
        ("pull", "--page-size", "0", "--page-size 1000"),
        ("pull", "--max-response-mb", "0", "--max-response-mb 256"),
        ("inspect", "--timeout", "0", "--timeout 60"),
        ("inspect", "--max-response-mb", "-5", "--max-response-mb 256"),
    ],
)
def test_bad_number_is_a_usage_error_before_any_request(
    tmp_path: Path, command: str, option: str, value: str, fix: str
) -> None:
    Recorder.seen = []
    with serving(Recorder) as base:
        layer = f"{base}/arcgis/rest/services/x/FeatureServer/0"
        output = ["-o", str(tmp_path / "x.geojson")] if command == "pull" else []
        proc = ags(command, layer, *output, option, value)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1, proc.stderr
    assert f"'{option}'" in error[0] and value in error[0] and fix in error[0]
    assert Recorder.seen == []
    assert list(tmp_path.iterdir()) == []


def test_click_usage_errors_keep_exit_2(tmp_path: Path) -> None:
    proc = ags("pull", "http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0")  # no -o
    assert proc.returncode == 2
    assert "Missing option '-o'" in proc.stderr and "Traceback" not in proc.stderr
    proc = ags("pull", "--no-such-option")
    assert proc.returncode == 2 and "No such option" in proc.stderr


#: A third-party loader plugin with a bug, installed the way pip would (a dist-info with an
#: entry point on the path): the CLI must still answer with one line.
PLUGIN = '''
from ags_etl.loaders.geojson import GeoJSONLoader


class BuggyLoader(GeoJSONLoader):
    name = "buggy"

    def check(self, schema):
        raise TypeError("plugin bug near https://example.com/x?token=SECRET-TOKEN-42")
'''


@pytest.fixture
def buggy_plugin(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    (site / "buggy_loader-1.0.dist-info").mkdir(parents=True)
    (site / "buggy_loader.py").write_text(PLUGIN)
    (site / "buggy_loader-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: buggy-loader\nVersion: 1.0\n")
    (site / "buggy_loader-1.0.dist-info" / "entry_points.txt").write_text(
        "[ags_etl.loaders]\nbuggy = buggy_loader:BuggyLoader\n"
    )
    return {"PYTHONPATH": str(site)}


class Layer(JSONHandler):
    """Just enough of a layer for a pull to reach the loader's check."""

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        import json

        if params.get("returnCountOnly") == "true":
            return 200, "application/json", b'{"count": 0}'
        if params.get("returnIdsOnly") == "true":
            return 200, "application/json", b'{"objectIdFieldName": "OBJECTID", "objectIds": []}'
        if path.endswith("/query"):
            return 200, "application/json", b'{"features": []}'
        info = {
            "currentVersion": 11.1, "id": 0, "name": "x", "type": "Feature Layer", "geometryType": "esriGeometryPoint",
            "objectIdField": "OBJECTID", "maxRecordCount": 1000, "capabilities": "Query",
            "extent": {"spatialReference": {"wkid": 4326}},
            "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID", "alias": "OBJECTID"}],
            "advancedQueryCapabilities": {"supportsPagination": True, "supportsOrderBy": True},
        }
        return 200, "application/json", json.dumps(info).encode()


def test_unexpected_exception_is_one_line_and_traceback_only_with_vv(
    tmp_path: Path, buggy_plugin: dict[str, str]
) -> None:
    with serving(Layer) as base:
        layer = f"{base}/arcgis/rest/services/x/FeatureServer/0"
        out = tmp_path / "x.geojson"
        proc = ags("pull", layer, "-o", str(out), "--format", "buggy", env=buggy_plugin)
        verbose = ags("-vv", "pull", layer, "-o", str(out), "--format", "buggy", env=buggy_plugin)
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert line.startswith("ags-etl: error: unexpected TypeError: plugin bug near")
    assert line.endswith("; rerun with -vv to see the traceback and report it")
    assert "SECRET-TOKEN-42" not in proc.stderr + verbose.stderr
    assert verbose.returncode == 1
    assert "Traceback (most recent call last)" in verbose.stderr and "buggy_loader.py" in verbose.stderr
    assert verbose.stderr.rstrip().splitlines()[-1] == line
    assert not out.exists()


class BigLayer(Layer):
    """Layer metadata padded past 1 MB (a description field grown out of hand)."""

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        status, ctype, body = super().answer(path, params)
        if path.endswith("/0"):
            body = body[:-1] + b', "description": "' + b"x" * (3 * 2**20 // 2) + b'"}'
        return status, ctype, body

    def _handle(self) -> None:
        try:
            super()._handle()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped reading at its cap, as it should


@pytest.mark.parametrize("command", ["pull", "inspect"])
def test_max_response_mb_reaches_the_client(tmp_path: Path, command: str) -> None:
    with serving(BigLayer) as base:
        layer = f"{base}/arcgis/rest/services/x/FeatureServer/0"
        output = ["-o", str(tmp_path / "x.geojson")] if command == "pull" else []
        small = ags(command, layer, *output, "--max-response-mb", "1")
        large = ags(command, layer, *output, "--max-response-mb", "2")
    assert small.returncode == 1, small.stderr
    assert "exceeded 1 MB" in one_error_line(small)
    assert large.returncode == 0, large.stderr
