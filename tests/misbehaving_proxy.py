"""A reverse proxy on 127.0.0.1 that makes a well-behaved FeatureServer misbehave.

It forwards every request to an upstream server (our local server or Koop) over
real HTTP and rewrites answers the way broken servers in the wild do:

* ``advertise``: layer JSON claims a larger ``maxRecordCount`` than the upstream enforces
  (a server that caps pages below what it advertises);
* ``cap``: feature pages are cut to at most ``cap`` rows, with ``exceededTransferLimit``
  set when rows were cut (the real cap is lower than the advertised one);
* ``reverse``: features and ``objectIds`` come back in reverse order;
* ``short_every``: every Nth feature page loses its last half of rows, flag set
  (short pages mid-layer, as spatial-index filtering causes on 10.3+);
* ``drop_flag``: cut pages do NOT set ``exceededTransferLimit`` (a silent short page —
  only a completeness check catches it);
* ``ignore_offset``: ``resultOffset`` is removed before forwarding (10.0-era servers);
* ``fail_above``: a query asking for more than this many rows (``objectIds`` or
  ``resultRecordCount``) answers HTTP 200 + "Error performing query operation" (too much data);
* ``count_extra``: ``returnCountOnly`` answers this many more than the layer holds
  (a count that disagrees with the pages: the run must fail loudly).
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import orjson
import requests

from tests.loopback import JSONHandler, serving


@dataclass
class Misbehaviour:
    advertise: int | None = None
    cap: int | None = None
    reverse: bool = False
    short_every: int | None = None
    drop_flag: bool = False
    ignore_offset: bool = False
    count_extra: int = 0
    fail_above: int | None = None


class _Handler(JSONHandler):
    upstream: str
    rules: Misbehaviour
    counter: list[int]
    lock: threading.Lock

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        if self.rules.ignore_offset:
            params.pop("resultOffset", None)
        if self.rules.fail_above is not None and path.endswith("/query"):
            asked = len(params["objectIds"].split(",")) if params.get("objectIds") else int(
                params.get("resultRecordCount") or 0)
            if asked > self.rules.fail_above:
                error = {"error": {"code": 500, "message": "Error performing query operation", "details": []}}
                return 200, "application/json", orjson.dumps(error)
        headers = {k: v for k, v in self.headers.items() if k.lower() == "x-esri-authorization"}
        resp = requests.post(self.upstream + path, data=params, headers=headers, timeout=60)
        body = resp.content
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and "error" not in data:
            body = orjson.dumps(self._rewrite(path, params, data))
        return resp.status_code, resp.headers.get("Content-Type", "application/json"), body

    def _rewrite(self, path: str, params: dict[str, str], data: dict) -> dict:
        rules = self.rules
        if not path.endswith("/query"):
            if rules.advertise is not None and "maxRecordCount" in data:
                data["maxRecordCount"] = rules.advertise
            return data
        if "count" in data and rules.count_extra:
            data["count"] = int(data["count"]) + rules.count_extra
        if "objectIds" in data and rules.reverse and data["objectIds"]:
            data["objectIds"] = list(reversed(data["objectIds"]))
        feats = data.get("features")
        if feats is None or "outStatistics" in params:
            return data
        with self.lock:
            self.counter[0] += 1
            n = self.counter[0]
        cut = False
        if rules.cap is not None and len(feats) > rules.cap:
            feats = feats[: rules.cap]
            cut = True
        if rules.short_every is not None and n % rules.short_every == 0 and len(feats) > 1:
            feats = feats[: len(feats) // 2]
            cut = True
        if rules.reverse:
            feats = list(reversed(feats))
        data["features"] = feats
        if cut and not rules.drop_flag:
            data["exceededTransferLimit"] = True
        return data


def misbehaving_proxy(upstream: str, rules: Misbehaviour) -> contextlib.AbstractContextManager[str]:
    """A context manager running the proxy for ``upstream`` (``http://127.0.0.1:PORT``); it yields the proxy URL."""
    handler = type(
        "Handler", (_Handler,), {"upstream": upstream.rstrip("/"), "rules": rules, "counter": [0],
                                 "lock": threading.Lock()}
    )
    return serving(handler)
