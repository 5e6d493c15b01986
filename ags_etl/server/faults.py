"""Injected latency and failures (``--latency-ms``, ``--fail-rate`` with ``--seed``).

Every request sleeps ``latency_ms`` first. Each *query* request then fails with
probability ``fail_rate``; the draws come from one ``random.Random(seed)`` under
a lock, so the n-th query request of a run gets the same fate for the same seed
(with concurrent clients the order of arrival decides which request is n-th).
A failure is one of, chosen by the same generator:

* HTTP 500 with an HTML page (an IIS/Tomcat error page in front of ArcGIS);
* HTTP 502 "Bad Gateway" (a proxy whose ArcGIS node went away);
* HTTP 200 with ``{"error": {"code": 500, "message": "Error performing query operation"}}``,
  ArcGIS's own answer when a query runs out of time or memory.

Metadata, ``/rest/info`` and token requests never fail.
"""

from __future__ import annotations

import random
import threading
import time

from ags_etl.server.protocol import RestError

FAILURE_KINDS = ("http500", "http502", "error500")


class FaultInjector:
    """Decides, request by request, whether to delay and whether to fail."""

    def __init__(self, latency_ms: int = 0, fail_rate: float = 0.0, seed: int | None = None) -> None:
        self._latency = latency_ms / 1000.0
        self._fail_rate = fail_rate
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def delay(self) -> None:
        if self._latency > 0:
            time.sleep(self._latency)

    def draw(self) -> str | None:
        """The failure kind for the next query request, or None to serve it."""
        if self._fail_rate <= 0:
            return None
        with self._lock:
            if self._random.random() >= self._fail_rate:
                return None
            return self._random.choice(FAILURE_KINDS)

    def check_query(self) -> None:
        """Raise the RestError of an injected failure, or return to serve the query."""
        kind = self.draw()
        if kind is None:
            return
        if kind == "http500":
            raise RestError(500, "Internal Server Error", [], http_status=500)
        if kind == "http502":
            raise RestError(502, "Bad Gateway", [], http_status=502)
        raise RestError(500, "Error performing query operation", [])
