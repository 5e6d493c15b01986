"""``run_server``: the local FeatureServer as a real subprocess, for tests and benchmarks.

    with run_server(tmp_path, "--max-record-count", "50") as base:
        layer = f"{base}/arcgis/rest/services/{name}/FeatureServer/0"

The subprocess is ``python -m ags_etl.server DIR --port 0 …``; the URL comes from
its ready line. On exit it gets SIGTERM (then SIGKILL after 10 s).
"""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

_READY = re.compile(r"listening on (http://\S+?)/arcgis/rest/services")


class ServerStartError(RuntimeError):
    """The server subprocess exited or stayed silent instead of printing its ready line."""


@contextlib.contextmanager
def run_server(
    data_dir: str | os.PathLike[str],
    *extra_args: str,
    timeout: float = 60.0,
    log_path: str | os.PathLike[str] | None = None,
) -> Iterator[str]:
    """Start ``ags-etl serve data_dir --port 0 *extra_args``; yield ``"http://127.0.0.1:PORT"``.

    ``extra_args`` are more serve options (a later ``--port`` overrides the 0).
    With ``log_path`` the server runs verbose (access log on) and its stderr goes
    to that file. Raises ServerStartError, with the server's stderr, when it does
    not become ready within ``timeout`` seconds.
    """
    verbose = ["-v"] if log_path is not None else []
    args = [sys.executable, "-m", "ags_etl.server", *verbose, str(Path(data_dir)), "--port", "0", *extra_args]
    opened = open(log_path, "w+b") if log_path is not None else tempfile.TemporaryFile(mode="w+b")
    with opened as stderr:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=stderr, stdin=subprocess.DEVNULL)
        try:
            base = _wait_ready(proc, stderr, timeout)
            yield base
        finally:
            _stop(proc)
            assert proc.stdout is not None
            proc.stdout.close()


def _stderr_text(stderr: IO[bytes]) -> str:
    stderr.flush()
    stderr.seek(0)
    return stderr.read().decode("utf-8", "replace")[-4000:]


def _wait_ready(proc: subprocess.Popen[bytes], stderr: IO[bytes], timeout: float) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    buffer = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not sel.select(timeout=0.2):
                if proc.poll() is not None:
                    break
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buffer += chunk
            match = _READY.search(buffer.decode("utf-8", "replace"))
            if match:
                return match.group(1)
    try:
        proc.wait(timeout=5)  # stdout closed: the process is on its way out
    except subprocess.TimeoutExpired:
        pass
    state = f"exited with code {proc.returncode}" if proc.returncode is not None else f"not ready after {timeout:.0f}s"
    raise ServerStartError(f"ags-etl serve {state}; stdout: {buffer.decode('utf-8', 'replace')!r}; stderr:\n{_stderr_text(stderr)}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
