"""``ags-etl pull --resume`` and ``resume: true``: a stopped pull resumed gives the file a clean
pull gives, fetching only what is missing.

The server is the local FeatureServer with ``--latency-ms`` (a pull takes a moment), behind a
recording proxy that counts the feature pages it forwards and whose upstream can be switched
to a changed copy of the layer while its URL stays the same. Reference files come from the
same builder in this process; the pulls under test are real ``ags-etl`` processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ags_etl.build import build_pipeline
from ags_etl.config import parse_pipeline
from ags_etl.extractors.staging import staging_folder
from ags_etl.runner import run_pipeline
from ags_etl.server.testing import run_server
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, check_job
from tests.cli.helpers import ags
from tests.layers import write_layer
from tests.loopback import serving
from tests.misbehaving_proxy import Misbehaviour, _Handler

N = 400
CAP = 20  # 20 pages
PAGES = N // CAP


@pytest.fixture(scope="module")
def upstreams(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(the layer's server, a server of the same layer with one feature more)."""
    a, b = tmp_path_factory.mktemp("resume-a"), tmp_path_factory.mktemp("resume-b")
    write_layer(a / "pts.geojson", "points", N)
    write_layer(b / "pts.geojson", "points", N + 1)
    args = ("--max-record-count", str(CAP), "--latency-ms", "40")
    with run_server(a, *args) as base_a, run_server(b, *args) as base_b:
        yield base_a, base_b


@pytest.fixture
def proxy(upstreams: tuple[str, str]) -> Iterator[tuple[str, type[_Handler]]]:
    """(layer URL through the proxy, the proxy's handler: ``counter[0]`` feature pages, ``upstream``)."""
    handler = type(
        "Recorder", (_Handler,), {"upstream": upstreams[0], "rules": Misbehaviour(), "counter": [0],
                                  "lock": threading.Lock()}
    )
    with serving(handler) as base:
        yield f"{base}/arcgis/rest/services/pts/FeatureServer/0", handler


def settled(recorder: type[_Handler]) -> int:
    """The proxy's page count once requests a stopped run left in flight have arrived."""
    while True:
        before = recorder.counter[0]
        time.sleep(0.2)
        if recorder.counter[0] == before:
            return before


def job(url: str, out: Path, *, where: str | None = None, resume: bool = False) -> JobSpec:
    sink = "geoparquet" if out.suffix == ".parquet" else "geojson"
    return JobSpec(
        name="pull",
        source=SourceSpec(url=url, where=where, concurrency=2),
        sink=SinkSpec(type=sink, path=str(out)),
        resume=resume,
    )


class _Stop(Exception):
    """Raised from the progress callback to stop a run half-way."""


def stopped_half_way(url: str, out: Path, *, where: str | None = None) -> int:
    """Run a resumable pull in this process and stop it once half the features are through;
    returns the number of staged chunks."""
    def progress(done: int, total: int | None) -> None:
        if total is not None and done >= total // 2:
            raise _Stop

    with pytest.raises(_Stop):
        build_pipeline(job(url, out, where=where, resume=True), progress=progress).run()
    assert not out.exists()
    return len(list(staging_folder(out).glob("*.arrow")))


def clean(url: str, out: Path, *, where: str | None = None) -> bytes:
    build_pipeline(job(url, out, where=where)).run()
    return out.read_bytes()


@contextlib.contextmanager
def pulling(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", "from ags_etl.cli import main; main()", "pull", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_a_sigkilled_pull_resumed_gives_the_clean_file_and_fetches_only_what_is_missing(
    tmp_path: Path, proxy: tuple[str, type[_Handler]]
) -> None:
    suffix = ".geojson"
    url, recorder = proxy
    reference = clean(url, tmp_path / f"clean{suffix}")
    assert settled(recorder) == PAGES
    out = tmp_path / f"out{suffix}"
    folder = staging_folder(out)

    with pulling(url, "-o", str(out), "--resume", "--concurrency", "2") as proc:
        deadline = time.monotonic() + 60
        while len(list(folder.glob("*.arrow"))) < PAGES // 2:
            assert proc.poll() is None, "the pull ended before it could be killed half-way"
            assert time.monotonic() < deadline, "the pull staged nothing"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    staged = len(list(folder.glob("*.arrow")))
    assert PAGES // 2 <= staged < PAGES
    assert not out.exists()  # nothing at the target before completion

    settled(recorder)
    recorder.counter[0] = 0
    proc2 = ags("pull", url, "-o", str(out), "--resume", "--concurrency", "2")
    assert proc2.returncode == 0, proc2.stderr
    assert out.read_bytes() == reference
    fetched = settled(recorder)
    assert fetched <= 0.6 * PAGES
    assert fetched == PAGES - staged
    assert f"{staged} pages from the staging folder" in proc2.stderr
    assert not folder.exists()  # removed after success


def test_a_changed_layer_discards_the_staged_pages_with_a_message(
    tmp_path: Path, proxy: tuple[str, type[_Handler]], upstreams: tuple[str, str]
) -> None:
    url, recorder = proxy
    out = tmp_path / "out.parquet"
    assert stopped_half_way(url, out) >= PAGES // 2
    recorder.upstream = upstreams[1]  # the layer gained a feature in between
    settled(recorder)
    recorder.counter[0] = 0
    proc = ags("pull", url, "-o", str(out), "--resume", "--concurrency", "2")
    assert proc.returncode == 0, proc.stderr
    assert "the layer changed: its count went from 400 to 401" in proc.stderr
    assert "discarded" in proc.stderr and "pages from the staging folder" not in proc.stderr
    assert settled(recorder) == (N + 1 + CAP - 1) // CAP  # everything again
    assert out.read_bytes() == clean(url, tmp_path / "clean.parquet")
    assert not staging_folder(out).exists()


def test_without_resume_a_staging_folder_is_reported_and_left_alone(
    tmp_path: Path, proxy: tuple[str, type[_Handler]]
) -> None:
    url, _ = proxy
    out = tmp_path / "out.geojson"
    staged = stopped_half_way(url, out)
    proc = ags("pull", url, "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert staging_folder(out).name in proc.stderr and "--resume" in proc.stderr
    assert len(list(staging_folder(out).glob("*.arrow"))) == staged
    assert out.read_bytes() == clean(url, tmp_path / "clean.geojson")


def test_a_pipeline_job_with_resume_true_resumes(tmp_path: Path, proxy: tuple[str, type[_Handler]]) -> None:
    url, recorder = proxy
    out = tmp_path / "out.parquet"
    spec = parse_pipeline({
        "version": 1,
        "jobs": [{"name": "pts", "resume": True, "source": {"url": url, "concurrency": 2},
                  "sink": {"type": "geoparquet", "path": str(out)}}],
    })
    staged = stopped_half_way(url, out)
    settled(recorder)
    recorder.counter[0] = 0
    report = run_pipeline(spec)
    assert report.exit_code == 0, report.jobs
    assert settled(recorder) == PAGES - staged
    assert out.read_bytes() == clean(url, tmp_path / "clean.parquet")  # replayed pages: the same bytes
    assert not staging_folder(out).exists()


def test_resume_needs_a_local_file_sink() -> None:
    spec = JobSpec(
        name="j",
        source=SourceSpec(url="https://h/arcgis/rest/services/a/FeatureServer/0"),
        sink=SinkSpec(type="geoparquet", path="s3://bucket/a.parquet"),
        resume=True,
    )
    issues = [str(i) for i in check_job(spec)]
    assert any(i.startswith("resume:") and "local" in i for i in issues), issues
