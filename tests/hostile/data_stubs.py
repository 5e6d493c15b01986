"""A one-page FeatureServer layer on 127.0.0.1 that answers exactly the features a test crafts.

:func:`stub_layer` serves layer metadata (``geometryType``, ``spatialReference`` and the
fields chosen by the test), ``returnCountOnly`` (the number of ids), ``returnIdsOnly`` (the
ids) and, for a query by ``objectIds``, a page whose ``features`` member is the crafted
value *as given* — a list of hostile features, or not a list at all. The ids are told
apart from the page on purpose: a malformed page may have no readable OIDs. Page queries
are counted (:attr:`StubLayer.pages`) so tests can show a run failed before the first one.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from tests.loopback import JSONHandler, serving

#: The fields of every stub layer: the OID and one string.
FIELDS: list[dict[str, Any]] = [
    {"name": "OBJECTID", "type": "esriFieldTypeOID", "alias": "OBJECTID"},
    {"name": "NAME", "type": "esriFieldTypeString", "alias": "NAME", "length": 50},
]


def point(oid: int, x: Any, y: Any, name: str = "p") -> dict[str, Any]:
    """One Esri JSON point feature (``x``/``y`` as given, hostile values included)."""
    return {"attributes": {"OBJECTID": oid, "NAME": name}, "geometry": {"x": x, "y": y}}


def feature(oid: int, geometry: Any, name: str = "f") -> dict[str, Any]:
    """One Esri JSON feature with ``geometry`` as given."""
    return {"attributes": {"OBJECTID": oid, "NAME": name}, "geometry": geometry}


@dataclass
class StubLayer:
    """What a running stub serves; ``url`` is the layer URL, ``pages`` the page queries seen."""

    url: str
    pages: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def metadata(geometry_type: str, wkid: int) -> dict[str, Any]:
    return {
        "currentVersion": 10.91,
        "id": 0,
        "name": "hostile",
        "type": "Feature Layer",
        "geometryType": geometry_type,
        "objectIdField": "OBJECTID",
        "fields": FIELDS,
        "maxRecordCount": 1000,
        "extent": {"xmin": -10, "ymin": -10, "xmax": 10, "ymax": 10, "spatialReference": {"wkid": wkid}},
        "spatialReference": {"wkid": wkid},
        "advancedQueryCapabilities": {"supportsPagination": True, "supportsOrderBy": True},
        "supportsAdvancedQueries": True,
        "capabilities": "Query",
        "hasZ": False,
        "hasM": False,
    }


@contextlib.contextmanager
def stub_layer(
    features: Any, ids: list[int], *, geometry_type: str = "esriGeometryPoint", wkid: int = 4326
) -> Iterator[StubLayer]:
    """Serve one layer whose every page query answers ``{"features": features}``."""
    meta = metadata(geometry_type, wkid)
    state = StubLayer(url="")

    class Handler(JSONHandler):
        def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
            body: dict[str, Any]
            if not path.endswith("/query"):
                body = meta
            elif params.get("returnCountOnly") == "true":
                body = {"count": len(ids)}
            elif params.get("returnIdsOnly") == "true":
                body = {"objectIdFieldName": "OBJECTID", "objectIds": ids}
            elif "objectIds" in params:
                with state.lock:
                    state.pages += 1
                body = {
                    "objectIdFieldName": "OBJECTID",
                    "geometryType": geometry_type,
                    "spatialReference": {"wkid": wkid},
                    "fields": FIELDS,
                    "features": features,
                }
            else:
                body = {"error": {"code": 400, "message": "Unable to complete operation.", "details": []}}
            return 200, "application/json", json.dumps(body).encode()

    with serving(Handler) as base:
        state.url = f"{base}/arcgis/rest/services/hostile/FeatureServer/0"
        yield state
