"""Progress displays: rich bars on a real pseudo-terminal, plain lines on a pipe, nothing when quiet."""

from __future__ import annotations

import fcntl
import io
import os
import struct
import subprocess
import sys
import termios

from ags_etl.progress import BarProgress, LineProgress, NullProgress, make_progress


def run_with_stderr_on_pty(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 120
) -> tuple[int, str, str]:
    """Run ``args`` with stderr on a new pseudo-terminal (120 columns) and stdout on a pipe;
    return (exit code, everything written to the terminal, stdout)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    child_env = {**os.environ, "TERM": "xterm-256color", **(env or {})}
    for noise in ("NO_COLOR", "CI", "GITHUB_ACTIONS", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        child_env.pop(noise, None)
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, env=child_env)
    os.close(slave)
    chunks: list[bytes] = []
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal's last writer
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert proc.stdout is not None
        out = proc.stdout.read().decode("utf-8", "replace")
        code = proc.wait(timeout=timeout)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return code, b"".join(chunks).decode("utf-8", "replace"), out


BAR_SCRIPT = """
from ags_etl.progress import make_progress
with make_progress(quiet=False) as factory:
    print(type(factory).__name__, flush=True)
    bar = factory.job("parks")
    for done in range(0, 41, 8):
        bar(done, 40)
    bar.finish(ok=True)
    other = factory.job("unknown total")
    other(7, None)
    other.finish(ok=False)
"""


def test_bars_on_a_terminal() -> None:
    code, terminal, out = run_with_stderr_on_pty([sys.executable, "-c", BAR_SCRIPT])
    assert code == 0, terminal
    assert out.strip() == "BarProgress"
    assert "parks" in terminal
    assert "100%" in terminal
    assert "40/40" in terminal
    assert "━" in terminal, "rich's bar characters are drawn"
    assert "unknown total (failed)" in terminal
    assert "\x1b[" in terminal, "a live display moves the cursor / colours"


def test_plain_lines_on_a_pipe() -> None:
    proc = subprocess.run([sys.executable, "-c", BAR_SCRIPT], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "LineProgress"
    assert "\x1b[" not in proc.stderr
    assert "━" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert any(line.endswith("parks: started") for line in lines)
    assert any("parks: 40 of 40 features (100%)" in line for line in lines)
    assert any("parks: done, 40 features" in line for line in lines)
    assert any("unknown total: failed, 7 features" in line for line in lines)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_lines_every_tenth_or_every_five_seconds() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    factory = LineProgress(stream, clock=clock)
    bar = factory.job("big")
    # 1000 features in pages of 10 at 0.1 s each: one line per 10 % (the 5 s rule never fires).
    for done in range(10, 1001, 10):
        clock.now += 0.1
        bar(done, 1000)
    bar.finish(ok=True)
    lines = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines[0] == "big: started"
    progress = lines[1:-1]
    assert [p.split("(")[1].split(")")[0] for p in progress] == [f"{p}%" for p in range(10, 101, 10)]
    assert progress[0] == "big: 100 of 1,000 features (10%), 100 features/s, ETA 0:00:09"
    assert lines[-1] == "big: done, 1,000 features in 10.0 s"

    # a slow job: 1 % per 2 s → a line every 5 s even without a new tenth
    stream.seek(0)
    stream.truncate()
    slow = factory.job("slow")
    for done in range(1, 10):
        clock.now += 2.0
        slow(done, 100)
    lines = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [
        "slow: started",
        "slow: 3 of 100 features (3%), 0.5 features/s, ETA 0:03:14",
        "slow: 6 of 100 features (6%), 0.5 features/s, ETA 0:03:08",
        "slow: 9 of 100 features (9%), 0.5 features/s, ETA 0:03:02",
    ]


def test_unknown_total_and_empty_layer() -> None:
    stream = io.StringIO()
    clock = FakeClock()
    factory = LineProgress(stream, clock=clock)
    bar = factory.job("nototal")
    clock.now += 6
    bar(60, None)
    empty = factory.job("empty")
    empty(0, 0)
    empty.finish(ok=True)
    lines = [line.split(" ", 1)[1] for line in stream.getvalue().splitlines()]
    assert lines == [
        "nototal: started",
        "nototal: 60 features, 10 features/s",
        "empty: started",
        "empty: done, 0 features in 0.0 s",
    ]


def test_quiet_and_choice_of_display() -> None:
    stream = io.StringIO()
    quiet = make_progress(quiet=True, stream=stream)
    assert isinstance(quiet, NullProgress)
    with quiet as factory:
        bar = factory.job("x")
        bar(1, 2)
        bar.finish(ok=False)
    assert stream.getvalue() == ""
    assert isinstance(make_progress(quiet=False, stream=stream), LineProgress)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert isinstance(make_progress(quiet=False, stream=Terminal()), BarProgress)
