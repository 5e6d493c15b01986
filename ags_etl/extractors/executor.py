"""Executors: what runs page tasks. Threads by default; replaceable.

The driver needs three things of an executor: ``submit(fn, task) -> Future``,
``shutdown(wait=…, cancel_futures=…)`` and ``concurrency`` (it keeps at most
``2 × concurrency`` tasks in flight, so memory stays bounded). ``shares_memory`` says
whether submitted callables run in this process: when it is False the driver submits
only picklable callables (:func:`ags_etl.extractors.tasks.fetch_page` with a
:class:`~ags_etl.extractors.tasks.QueryContext`, no live client). A Dask client fits
the same shape (``client.submit`` returns futures with ``.result()``).
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor as FuturesPool
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Executor(Protocol):
    """Runs callables on tasks; see the module docstring."""

    concurrency: int
    shares_memory: bool

    def submit(self, fn: Callable[[Any], Any], task: Any) -> Future[Any]: ...

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None: ...


class ThreadExecutor:
    """``concurrency`` threads of this process (the default); the pool is made on first use."""

    shares_memory = True

    def __init__(self, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self._pool: ThreadPoolExecutor | None = None

    def submit(self, fn: Callable[[Any], Any], task: Any) -> Future[Any]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                max_workers=self.concurrency, thread_name_prefix="ags-etl-page"
            )
        return self._pool.submit(fn, task)

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        """Stop the pool; with ``wait=False`` requests in flight are not waited for (Ctrl-C, SIGTERM)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=cancel_futures)


class SerialExecutor:
    """Runs each task at submit, in the calling thread: one request at a time, no threads."""

    shares_memory = True
    concurrency = 1

    def submit(self, fn: Callable[[Any], Any], task: Any) -> Future[Any]:
        future: Future[Any] = Future()
        try:
            future.set_result(fn(task))
        except (
            Exception
        ) as exc:  # handed to the driver through the future, as a pool would
            future.set_exception(exc)
        return future

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        return None


class PoolExecutor:
    """Any :class:`concurrent.futures.Executor` (e.g. a ProcessPoolExecutor), owned and shut down here.

    ``shares_memory`` is False unless said otherwise: tasks and results cross a process
    boundary and are pickled.
    """

    def __init__(
        self, pool: FuturesPool, concurrency: int, *, shares_memory: bool = False
    ) -> None:
        self.pool = pool
        self.concurrency = concurrency
        self.shares_memory = shares_memory

    def submit(self, fn: Callable[[Any], Any], task: Any) -> Future[Any]:
        return self.pool.submit(fn, task)

    def shutdown(self, *, wait: bool = True, cancel_futures: bool = False) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=cancel_futures)


def ordered_map(
    fn: Callable[[T], R], tasks: Iterable[T], executor: Executor | int
) -> Iterator[R]:
    """Run ``fn`` over ``tasks`` on ``executor`` (or that many threads), yielding results in task order.

    At most ``2 × concurrency`` tasks are in flight, so memory stays bounded. The first
    exception is raised in order; pending tasks are cancelled. On Ctrl-C, SIGTERM or an
    abandoned iteration (a BaseException that is not an Exception) requests in flight are
    not waited for, so the caller can clean up and leave at once.
    """
    runner: Executor = (
        ThreadExecutor(executor) if isinstance(executor, int) else executor
    )
    it = iter(tasks)
    window: deque[Future[R]] = deque()
    try:
        for task in itertools.islice(it, runner.concurrency * 2):
            window.append(runner.submit(fn, task))
        while window:
            result = window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(runner.submit(fn, nxt))
            yield result
    except BaseException as exc:
        runner.shutdown(wait=isinstance(exc, Exception), cancel_futures=True)
        raise
    runner.shutdown()
