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

Box-only layers (``--box-only``): :func:`box_only_check` refuses every query
parameter but the where clause, the field list and the spatial filter, the way
some county servers (Cook County IL) behave: ``returnCountOnly``,
``returnIdsOnly``, ``outStatistics``, ``objectIds``, ``returnExtentOnly`` and the
pagination parameters get ArcGIS's 400 "Unable to complete operation." With
``--count-answers-features`` a count request is answered with a page of features
instead, as Cook County does. What is left are plain and envelope queries, cut
at maxRecordCount with ``exceededTransferLimit``.

Edit answers (``--drop-edit-answers N``, ``--edit-answer-delay SECONDS``, with
``--editable``): :class:`EditAnswerFaults` acts after an edit request has
committed — it sleeps the delay, then tells the HTTP layer to close the
connection without answering for the *first N* committed edit requests of the
run (counted in commit order; requests that changed nothing, being refused or
rolled back, are answered normally and not counted). That is the lost-answer
case a sync job must survive: the edit is in the layer, the client never
learnt its result. "First N" rather than "every Nth" keeps tests deterministic.
"""

from __future__ import annotations

import random
import threading
import time

from ags_etl.server.options import ServerOptions
from ags_etl.server.protocol import Params, RestError

FAILURE_KINDS = ("http500", "http502", "error500")
#: Query parameters a box-only layer refuses (returnCountOnly is handled on its own).
BOX_ONLY_REFUSED = (
    "returnIdsOnly",
    "outStatistics",
    "objectIds",
    "returnExtentOnly",
    "resultOffset",
    "resultRecordCount",
    "orderByFields",
)


def _asks_for(params: Params, name: str) -> bool:
    value = params.get(name)
    return value is not None and value.strip().lower() not in ("false", "0", "no")


def box_only_check(params: Params, options: ServerOptions) -> bool:
    """For a box-only layer: raise the refusal of a query it does not answer.

    Returns True when a ``returnCountOnly`` request is to be answered with features
    (``count_answers_features``), False otherwise (and always for other layers).
    """
    if not options.box_only:
        return False
    for name in BOX_ONLY_REFUSED:
        if _asks_for(params, name):
            raise RestError(400, "Unable to complete operation.", [f"'{name}' is not supported by this layer"])
    if _asks_for(params, "returnCountOnly"):
        if options.count_answers_features:
            return True
        raise RestError(400, "Unable to complete operation.", ["'returnCountOnly' is not supported by this layer"])
    return False


class EditAnswerFaults:
    """What happens between the commit of an edit request and its answer (thread-safe)."""

    def __init__(self, drop_first: int = 0, delay: float = 0.0) -> None:
        self._left = drop_first
        self._delay = delay
        self._lock = threading.Lock()

    def after_commit(self) -> bool:
        """Sleep the delay; True when this answer is to be dropped (connection closed unanswered)."""
        if self._delay > 0:
            time.sleep(self._delay)
        with self._lock:
            if self._left > 0:
                self._left -= 1
                return True
        return False


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
