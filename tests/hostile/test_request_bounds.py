"""Every request is bounded, as the user sees it: `ags-etl pull` against a server that trickles
its answer and one that sends a decompression bomb, and nonsense bounds refused."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.cli.helpers import ags, one_error_line
from tests.hostile.stubs import LAYER_PATH, gzip_bomb_stub, layer_stub, slow_drip_stub


def test_slow_drip_ends_at_the_timeout(tmp_path: Path) -> None:
    with slow_drip_stub() as (base, log):
        started = time.monotonic()
        proc = ags("pull", base + LAYER_PATH, "-o", str(tmp_path / "x.geojson"), "--timeout", "3", "--retries", "0",
                   timeout=60)
        elapsed = time.monotonic() - started
    assert proc.returncode == 1, proc.stderr
    line = one_error_line(proc)
    assert "no complete answer within 3 s" in line and "1 attempt" in line
    assert len(log.requests) == 1
    assert elapsed < 10, f"a 3 s timeout took {elapsed:.1f} s"


def _max_rss_mb(*args: str) -> tuple[int, str, float]:
    """Run ``ags-etl *args``; (exit code, stderr, the process's peak RSS in MB) via wait4."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", "from ags_etl.cli import main; main()", *args],
                                stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        return proc.returncode, err.read(), usage.ru_maxrss / 1024  # Linux: KiB


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss is in KiB on Linux only")
def test_decompression_bomb_fails_with_bounded_memory(tmp_path: Path) -> None:
    out = f"{tmp_path}/x.geojson"
    with layer_stub() as (base, _):
        code, err, baseline = _max_rss_mb("pull", base + LAYER_PATH, "-o", out, "--retries", "0")
    assert code == 0, err
    with gzip_bomb_stub() as (base, log):
        code, err, bombed = _max_rss_mb("pull", base + LAYER_PATH, "-o", out, "--overwrite", "--retries", "3")
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == [
        "ags-etl: error: answer from 127.0.0.1 exceeded 256 MB after decompression; lower --page-size, "
        "or raise --max-response-mb if the layer really has pages this large"
    ]
    assert len(log.requests) == 1, "a bomb is not retried"
    print(f"peak RSS: normal pull {baseline:.0f} MB, bombed pull {bombed:.0f} MB")
    assert bombed - baseline < 600, f"peak RSS {bombed:.0f} MB against {baseline:.0f} MB for a normal pull"


@pytest.mark.parametrize(("option", "value"), [("--timeout", "0"), ("--retries", "-3")])
def test_nonsense_bounds_are_usage_errors(option: str, value: str, tmp_path: Path) -> None:
    proc = ags("pull", "http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0", "-o", f"{tmp_path}/x.geojson",
               option, value)
    assert proc.returncode == 2, proc.stderr
    assert option in proc.stderr and "Traceback" not in proc.stderr
