"""A scripted point layer on 127.0.0.1 for the planning tests: every answer can be made to lie.

:func:`scripted_layer` serves :class:`Script`: point features by OID (at (oid, oid)),
``maxRecordCount`` ``cap``, and per request kind either the honest answer, a refusal
(ArcGIS's 400 "Unable to complete operation." sent with HTTP 200), or a forged value:

* ``count`` — what ``returnCountOnly`` answers for the whole query (any JSON; None: honest);
* ``ids`` — the ``objectIds`` list ``returnIdsOnly`` answers (any JSON; None: honest);
* ``refuse`` — request kinds answered with the 400 error: ``"ids"`` (returnIdsOnly and
  objectIds), ``"statistics"``, ``"pagination"`` (resultOffset), ``"count"``;
* ``statistics`` — the attributes the min/max statistics answer (None: honest);
* ``metadata`` — keys merged into (or, with value ``DROP``, removed from) the layer JSON.

Where clauses understood: ``1=1`` and ``OBJECTID >= a AND OBJECTID <= b``; envelopes in
plain queries filter features, which lie at ``(oid % 100, oid % 100)``. ``Script.requests``
counts the query requests received.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.loopback import JSONHandler, serving

DROP = object()
_RANGE = re.compile(r"OBJECTID >= (\d+) AND OBJECTID <= (\d+)")
_REFUSED = {"error": {"code": 400, "message": "Unable to complete operation.", "details": []}}


@dataclass
class Script:
    oids: list[int]
    cap: int = 10
    count: Any = None
    ids: Any = None
    statistics: Any = None
    refuse: frozenset[str] = frozenset()
    metadata: dict[str, Any] = field(default_factory=dict)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def layer_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "currentVersion": 10.81,
            "name": "scripted",
            "type": "Feature Layer",
            "geometryType": "esriGeometryPoint",
            "objectIdField": "OBJECTID",
            "fields": [
                {"name": "OBJECTID", "type": "esriFieldTypeOID"},
                {"name": "NAME", "type": "esriFieldTypeString", "length": 20},
            ],
            "extent": {"xmin": 0, "ymin": 0, "xmax": 100, "ymax": 100, "spatialReference": {"wkid": 3857}},
            "maxRecordCount": self.cap,
            "capabilities": "Query",
            "supportsStatistics": "statistics" not in self.refuse,
            "advancedQueryCapabilities": {"supportsPagination": "pagination" not in self.refuse},
        }
        for key, value in self.metadata.items():
            if value is DROP:
                data.pop(key, None)
            else:
                data[key] = value
        return data

    def matching(self, where: str, geometry: str | None = None) -> list[int]:
        found = _RANGE.search(where)
        oids = sorted(self.oids)
        if found is not None:
            lo, hi = int(found.group(1)), int(found.group(2))
            oids = [o for o in oids if lo <= o <= hi]
        if geometry is not None:  # an envelope as Esri JSON; feature o lies at (o % 100, o % 100)
            box = json.loads(geometry)
            oids = [o for o in oids if box["xmin"] <= o % 100 <= box["xmax"] and box["ymin"] <= o % 100 <= box["ymax"]]
        return oids

    def page(self, oids: list[int]) -> dict[str, Any]:
        body: dict[str, Any] = {
            "objectIdFieldName": "OBJECTID",
            "geometryType": "esriGeometryPoint",
            "spatialReference": {"wkid": 3857},
            "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID"}, {"name": "NAME", "type": "esriFieldTypeString"}],
            "features": [
                {"attributes": {"OBJECTID": o, "NAME": f"n{o}"}, "geometry": {"x": float(o % 100), "y": float(o % 100)}}
                for o in oids[: self.cap]
            ],
        }
        if len(oids) > self.cap:
            body["exceededTransferLimit"] = True
        return body

    def answer(self, path: str, params: dict[str, str]) -> Any:
        if not path.endswith("/query"):
            return self.layer_json()
        with self.lock:
            self.requests += 1
        where = params.get("where", "1=1")
        if params.get("returnCountOnly") == "true":
            if "count" in self.refuse:
                return _REFUSED
            whole = _RANGE.search(where) is None
            return {"count": self.count if whole and self.count is not None else len(self.matching(where))}
        if params.get("returnIdsOnly") == "true" or "objectIds" in params:
            if "ids" in self.refuse:
                return _REFUSED
            if "objectIds" in params:
                wanted = {int(v) for v in params["objectIds"].split(",")}
                return self.page([o for o in sorted(self.oids) if o in wanted])
            return {"objectIdFieldName": "OBJECTID", "objectIds": self.ids if self.ids is not None else sorted(self.oids)}
        if "outStatistics" in params:
            if "statistics" in self.refuse:
                return _REFUSED
            attrs = self.statistics or {"AGS_ETL_MIN": min(self.oids), "AGS_ETL_MAX": max(self.oids)}
            return {"features": [{"attributes": attrs}]}
        if "resultOffset" in params:
            if "pagination" in self.refuse:
                return _REFUSED
            offset = int(params["resultOffset"])
            size = min(int(params.get("resultRecordCount") or self.cap), self.cap)
            rows = self.matching(where)[offset : offset + size]
            return self.page(rows)
        return self.page(self.matching(where, params.get("geometry")))


@contextlib.contextmanager
def scripted_layer(script: Script) -> Iterator[str]:
    """Serve ``script``; yield the layer URL."""

    class Handler(JSONHandler):
        def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
            return 200, "application/json", json.dumps(script.answer(path, params)).encode()  # big ints too

    with serving(Handler) as base:
        yield f"{base}/arcgis/rest/services/scripted/FeatureServer/0"
