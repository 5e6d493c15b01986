"""Progress of running jobs: a bar per job on a terminal, plain periodic lines elsewhere, silence when quiet.

A :class:`ProgressFactory` hands out one :class:`JobProgress` per job. The job's pipeline
calls it after every page with ``(done, total)`` — features done so far and the server's
count (None when unknown) — and the runner calls :meth:`JobProgress.finish` once::

    with make_progress(quiet=False) as factory:       # bars when stderr is a terminal
        bar = factory.job("parks")                    # start hook
        Pipeline(extractor, transformers, loader, progress=bar).run()
        bar.finish(ok=True)                           # finish hook

Bars are drawn by rich: well maintained, thread-safe, keeps several live bars at once,
shows a pulsing bar while the total is unknown and fits columns to the terminal's width
(tqdm needs position bookkeeping for several bars and prints its own line per bar). Without a terminal (cron, CI) a
line is written every ``every_seconds`` (5 s) or each time another 10 % is done, whichever
comes first, so logs stay short and still show a stalled job.
"""

from __future__ import annotations

import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Protocol, Self

if TYPE_CHECKING:
    from rich.progress import Progress, ProgressColumn, TaskID

# rich is imported only when bars are drawn (stderr is a terminal): a piped or quiet run
# never loads it.


class JobProgress(Protocol):
    """The per-job callable: ``progress(done, total)`` after each page; ``finish(ok)`` once at the end."""

    def __call__(self, done: int, total: int | None) -> None: ...

    def finish(self, ok: bool) -> None: ...


class ProgressFactory(ABC):
    """Gives one :class:`JobProgress` per job. A context manager: leaving it stops any live display."""

    @abstractmethod
    def job(self, name: str) -> JobProgress:
        """Start showing the job ``name`` (the start hook) and return its callable."""

    def close(self) -> None:
        """Stop any live display. Safe to call more than once."""

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_progress(quiet: bool, stream: IO[str] | None = None, *, brief: bool = False) -> ProgressFactory:
    """The progress display for a command: nothing with ``quiet``, rich bars when ``stream``
    (default: ``sys.stderr``) is a terminal, plain periodic lines otherwise.

    ``brief`` (``pull``, which prints its own closing line): plain mode writes only a line
    every 30 s, no start, end or per-10 % lines, so a short piped run prints nothing extra.
    """
    out = sys.stderr if stream is None else stream
    if quiet:
        return NullProgress()
    if _is_terminal(out):
        return BarProgress(out)
    if brief:
        return LineProgress(out, every_seconds=30.0, announce=False)
    return LineProgress(out)


def _is_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


# --- nothing ---------------------------------------------------------------------------


class _NullJob:
    def __call__(self, done: int, total: int | None) -> None:
        return None

    def finish(self, ok: bool) -> None:
        return None


class NullProgress(ProgressFactory):
    """Shows nothing (``--quiet``, and the Python API's default)."""

    def job(self, name: str) -> JobProgress:
        return _NullJob()


# --- rich bars -------------------------------------------------------------------------


def _rate_column() -> ProgressColumn:
    """A column of features per second, from rich's moving estimate (a class built here, so
    that rich is imported only when a bar is drawn)."""
    from rich.progress import ProgressColumn, Task
    from rich.text import Text

    class _RateColumn(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            if speed is None:
                return Text("- features/s", style="progress.data.speed")
            return Text(f"{speed:,.0f} features/s", style="progress.data.speed")

    return _RateColumn()


class _BarJob:
    def __init__(self, progress: Progress, task: TaskID, name: str) -> None:
        self._progress = progress
        self._task = task
        self._name = name

    def __call__(self, done: int, total: int | None) -> None:
        self._progress.update(self._task, completed=done, total=total)

    def finish(self, ok: bool) -> None:
        if ok:
            task = self._progress.tasks[self._task]
            self._progress.update(self._task, total=task.completed, description=f"[green]{self._name}")
        else:
            self._progress.update(self._task, description=f"[red]{self._name} (failed)")
        self._progress.stop_task(self._task)


class BarProgress(ProgressFactory):
    """One rich bar per job on ``stream``: name, bar, percentage, done/total, rate, ETA."""

    def __init__(self, stream: IO[str]) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TaskProgressColumn,
            TextColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            MofNCompleteColumn(),
            _rate_column(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._started = False

    def job(self, name: str) -> JobProgress:
        if not self._started:
            self._progress.start()
            self._started = True
        task = self._progress.add_task(name, total=None)
        return _BarJob(self._progress, task, name)

    def close(self) -> None:
        if self._started:
            self._progress.stop()
            self._started = False


# --- plain lines -----------------------------------------------------------------------


def _duration(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class _LineJob:
    def __init__(self, owner: LineProgress, name: str) -> None:
        self._owner = owner
        self._name = name
        self._start = owner.clock()
        self._last_line = self._start
        self._last_tenth = 0
        self._done = 0
        self._total: int | None = None
        if owner.announce:
            owner.write(f"{name}: started")

    def __call__(self, done: int, total: int | None) -> None:
        self._done, self._total = done, total
        now = self._owner.clock()
        tenth = 0 if total is None or total <= 0 or not self._owner.announce else min(10, done * 10 // total)
        if tenth > self._last_tenth or now - self._last_line >= self._owner.every_seconds:
            self._last_tenth = max(tenth, self._last_tenth)
            self._last_line = now
            self._owner.write(self._line(now))

    def _line(self, now: float) -> str:
        elapsed = now - self._start
        rate = self._done / elapsed if elapsed > 0 else None
        if self._total is None:
            text = f"{self._name}: {self._done:,} features"
        else:
            pct = 100 if self._total <= 0 else self._done * 100 // self._total
            text = f"{self._name}: {self._done:,} of {self._total:,} features ({pct}%)"
        if rate is not None:
            text += f", {rate:,.1f} features/s" if rate < 10 else f", {rate:,.0f} features/s"
            if self._total is not None and rate > 0 and self._done < self._total:
                text += f", ETA {_duration((self._total - self._done) / rate)}"
        return text

    def finish(self, ok: bool) -> None:
        if not self._owner.announce:
            return
        elapsed = self._owner.clock() - self._start
        state = "done" if ok else "failed"
        self._owner.write(f"{self._name}: {state}, {self._done:,} features in {elapsed:.1f} s")


class LineProgress(ProgressFactory):
    """Plain lines for logs: a start line, then a line every ``every_seconds`` or each further
    10 % of the server's count, then an end line. With ``announce=False`` only the timed
    lines. ``clock`` is injectable for tests."""

    def __init__(
        self,
        stream: IO[str],
        *,
        every_seconds: float = 5.0,
        announce: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self.every_seconds = every_seconds
        self.announce = announce
        self.clock = clock

    def write(self, line: str) -> None:
        self.stream.write(f"{time.strftime('%H:%M:%S')} {line}\n")
        self.stream.flush()

    def job(self, name: str) -> JobProgress:
        return _LineJob(self, name)
