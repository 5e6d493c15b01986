"""The Dask cluster a run uses: which scheduler, its lifecycle, and politeness per server host.

Dask is an optional extra (``pip install 'ags_etl[dask]'``); nothing here imports it until a
job asks for ``executor: dask``, and asking without the extra raises one ConfigError naming
that command.

* :func:`resolve_settings` — the executor, scheduler address and per-host request limit of one
  job: a command-line option wins over the job's key, which wins over the pipeline's top-level
  key; the default executor is ``threads``.
* :func:`scheduler_address` — ``--scheduler``/``scheduler:``, else Dask's own configuration
  (``DASK_SCHEDULER_ADDRESS``, ``scheduler-address`` in a Dask config file), else None: the run
  starts a :class:`distributed.LocalCluster` and closes it when it ends.
* :class:`Clusters` — one connection per scheduler address for a whole run (a context
  manager): the first job that needs a cluster connects (or starts the local one), the end of
  the run disconnects (and stops the local one).
* :class:`HostLimit` — at most N requests in flight to one server host across every worker
  of the cluster: a named :class:`distributed.Semaphore` held around each HTTP request. The
  scheduler keeps the leases; a worker that dies holding one gives it back after Dask's lease
  timeout (``distributed.scheduler.locks.lease-timeout``, 30 s by default).
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self
from urllib.parse import urlsplit

from ags_etl.errors import ConfigError

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

    from ags_etl.arcgis.client import ArcGISClient

__all__ = [
    "DASK_EXTRA",
    "Clusters",
    "ExecutorSettings",
    "HostLimit",
    "LimitedClient",
    "require_distributed",
    "resolve_settings",
    "scheduler_address",
]

log = logging.getLogger(__name__)

ExecutorName = Literal["threads", "dask"]

#: What to install for ``executor: dask``.
DASK_EXTRA = "pip install 'ags_etl[dask]'"


def require_distributed() -> Any:
    """The ``distributed`` module; ConfigError naming the extra when it is not installed."""
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            f"executor dask needs Dask's distributed scheduler, which is not installed ({exc}); "
            f"install the extra with {DASK_EXTRA}, or use executor threads"
        ) from exc
    return distributed


@dataclass(frozen=True)
class ExecutorSettings:
    """How one job runs: ``threads`` (in this process) or ``dask`` (on a cluster at
    ``scheduler``, None: Dask's configuration or a local cluster), and ``max_requests_per_host``
    (None: no limit besides each job's ``concurrency``)."""

    executor: ExecutorName = "threads"
    scheduler: str | None = None
    max_requests_per_host: int | None = None


def resolve_settings(
    *layers: tuple[str | None, str | None, int | None],
) -> ExecutorSettings:
    """Settings from ``(executor, scheduler, max_requests_per_host)`` triples, strongest first
    (command line, job, pipeline top level); a None means "not given here"."""
    executor: str = "threads"
    scheduler: str | None = None
    limit: int | None = None
    for ex, sch, lim in reversed(layers):
        executor = ex if ex is not None else executor
        scheduler = sch if sch is not None else scheduler
        limit = lim if lim is not None else limit
    if executor not in ("threads", "dask"):
        raise ConfigError(f"executor {executor!r} is not one of threads, dask")
    if limit is not None and limit < 1:
        raise ConfigError(f"max_requests_per_host must be at least 1, got {limit}")
    return ExecutorSettings("dask" if executor == "dask" else "threads", scheduler, limit)


def scheduler_address(given: str | None) -> str | None:
    """The scheduler to connect to: ``given``, else Dask's ``scheduler-address`` configuration
    (the ``DASK_SCHEDULER_ADDRESS`` variable or a Dask config file), else None (start a local
    cluster)."""
    if given is not None and given.strip():
        return given.strip()
    env = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if env is not None and env.strip():
        return env.strip()
    import dask.config

    configured = dask.config.get("scheduler-address", default=None)
    return str(configured) if configured else None


class Clusters:
    """The clusters of one run, by scheduler address; use as a context manager.

    :meth:`client` connects on first use — to the address :func:`scheduler_address` gives, or
    to a :class:`distributed.LocalCluster` of worker *processes* on 127.0.0.1 started for this
    run — and :meth:`close` disconnects and stops what this run started. ``local_workers`` and
    ``local_threads`` size the local cluster (default: Dask's, one worker per core).
    """

    def __init__(self, *, local_workers: int | None = None, local_threads: int | None = None) -> None:
        self.local_workers = local_workers
        self.local_threads = local_threads
        self._clients: dict[str, Client] = {}
        self._local: LocalCluster | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def client(self, given: str | None) -> Client:
        """The connected client for the scheduler ``given`` (see :func:`scheduler_address`)."""
        distributed = require_distributed()
        address = scheduler_address(given)
        key = address if address is not None else "local"
        with self._lock:
            found = self._clients.get(key)
            if found is not None:
                return found
            if address is None:
                log.info("no scheduler address given: starting a local Dask cluster for this run")
                kwargs: dict[str, Any] = {"processes": True, "host": "127.0.0.1", "dashboard_address": ":0"}
                if self.local_workers is not None:
                    kwargs["n_workers"] = self.local_workers
                if self.local_threads is not None:
                    kwargs["threads_per_worker"] = self.local_threads
                self._local = distributed.LocalCluster(**kwargs)
                client = distributed.Client(self._local)
            else:
                try:
                    client = distributed.Client(address, timeout="20s")
                except (OSError, TimeoutError) as exc:
                    raise ConfigError(
                        f"cannot reach the Dask scheduler at {address!r} ({type(exc).__name__}: {exc}); start it "
                        "(dask scheduler), check --scheduler/scheduler:/DASK_SCHEDULER_ADDRESS, or leave them "
                        "unset to run on a local cluster"
                    ) from exc
            self._clients[key] = client
            return client

    def close(self) -> None:
        """Disconnect every client; stop the local cluster if this run started one."""
        with self._lock:
            clients, self._clients = list(self._clients.values()), {}
            local, self._local = self._local, None
        for client in clients:
            client.close()
        if local is not None:
            local.close()


def host_of(url: str) -> str:
    """``host[:port]`` of a URL, lower-cased: the unit the per-host limit counts."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return f"{host}:{parts.port}" if parts.port is not None else host


@dataclass(frozen=True)
class HostLimit:
    """At most ``max_leases`` requests in flight to ``host`` across the cluster. Picklable: a
    worker makes (once per process) the :class:`distributed.Semaphore` of that name, which the
    scheduler shares between every worker."""

    host: str
    max_leases: int

    @property
    def name(self) -> str:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", self.host)
        return f"ags-etl-host-{safe}-{self.max_leases}"

    def semaphore(self) -> Any:
        """This process's :class:`distributed.Semaphore` for the host (made once per process,
        first from a task's thread)."""
        with _semaphores_lock:
            found = _semaphores.get(self.name)
            if found is None:
                distributed = require_distributed()
                found = _semaphores[self.name] = distributed.Semaphore(max_leases=self.max_leases, name=self.name)
                # Bind to this worker now: a task's thread finds its worker, the threads a
                # whole-job task starts for its pages would not.
                found.loop  # noqa: B018
            return found


_semaphores: dict[str, Any] = {}
_semaphores_lock = threading.Lock()


class LimitedClient:
    """An :class:`~ags_etl.arcgis.client.ArcGISClient` whose requests (``get``, ``post``,
    ``post_binary``, ``post_raw``) each hold a lease of ``limit`` for the whole request (its
    retries and their back-off included), so the cluster never has more than
    ``limit.max_leases`` requests in flight to the host. Every other attribute is the
    client's own (counters, ``close``)."""

    #: The client's methods that send a request.
    REQUESTS = frozenset({"get", "post", "post_binary", "post_raw"})

    def __init__(self, client: ArcGISClient, limit: HostLimit) -> None:
        self.client = client
        self.limit = limit

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.client, name)
        if name not in self.REQUESTS:
            return found

        def limited(*args: Any, **kwargs: Any) -> Any:
            with self.limit.semaphore():
                return found(*args, **kwargs)

        return limited
