"""Running `ags-etl` as a user does: a real process, its exit code and its stderr."""

from __future__ import annotations

import os
import subprocess
import sys

#: Features in each generated test layer.
N = 90


def ags(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def url(base: str, name: str) -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("ags-etl: error: ")
    return lines[0]
