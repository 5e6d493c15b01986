"""A portal-shaped endpoint of ``ags-etl serve``: items pointing at the served services.

URLs (``f=json``)::

    /sharing/rest/content/items/<id>     one item (ArcGIS portal item JSON, the fields clients use)
    /sharing/rest/search?q=TEXT          items whose title holds TEXT (case-insensitive; "" or "*": all)

Every service is an item of type "Feature Service" whose ``url`` is the service URL, and
every layer of it an item whose ``url`` is the layer URL (as hosted feature layer views
are). Ids are deterministic, 32 hex digits like a portal's: :func:`item_id` of
``"service:<Folder/Name>"`` or ``"layer:<Folder/Name>/<id>"``. An unknown id gets the
portal's own error body (HTTP 200, code 400, ``CONT_0001``).
"""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

from ags_etl.server.catalog import Catalog
from ags_etl.server.protocol import Params, invalid_url

#: What a portal answers for an id it does not know (or that the caller may not see).
ITEM_NOT_FOUND = {
    "error": {
        "code": 400,
        "messageCode": "CONT_0001",
        "message": "Item does not exist or is inaccessible.",
        "details": [],
    }
}
_TYPE_KEYWORDS = ["ArcGIS Server", "Data", "Feature Access", "Service"]


def item_id(key: str) -> str:
    """The item id of ``key`` (``service:<name>`` or ``layer:<name>/<id>``): its MD5, hex."""
    return hashlib.md5(key.encode("utf-8")).hexdigest()


def items(catalog: Catalog, base_url: str) -> list[dict[str, Any]]:
    """One item per service, then one per layer of it, in catalog order."""
    out: list[dict[str, Any]] = []
    for svc in catalog.services:
        service_url = f"{base_url}/arcgis/rest/services/{'/'.join(quote(p) for p in svc.name.split('/'))}/FeatureServer"
        out.append(_item(item_id(f"service:{svc.name}"), svc.name, svc.name.split("/")[-1], service_url))
        for lyr in svc.layers:
            title = f"{svc.name} - {lyr.name}"
            out.append(_item(item_id(f"layer:{svc.name}/{lyr.id}"), title, lyr.name, f"{service_url}/{lyr.id}"))
    return out


def _item(iid: str, title: str, name: str, url: str) -> dict[str, Any]:
    return {
        "id": iid,
        "owner": "ags-etl",
        "created": 0,
        "modified": 0,
        "name": name,
        "title": title,
        "type": "Feature Service",
        "typeKeywords": _TYPE_KEYWORDS,
        "description": "Served by ags-etl",
        "snippet": None,
        "tags": [],
        "access": "public",
        "url": url,
    }


def route(catalog: Catalog, low: list[str], parts: list[str], params: Params, base_url: str) -> dict[str, Any]:
    """Answer a path starting ``/sharing``; ``low`` is its segments lower-cased, ``parts`` as sent.

    Raises RestError "Invalid URL" for a path the portal does not have.
    """
    if low[:4] == ["sharing", "rest", "content", "items"] and len(low) == 5:
        wanted = low[4]
        return next((it for it in items(catalog, base_url) if it["id"] == wanted), ITEM_NOT_FOUND)
    if low[:3] == ["sharing", "rest", "search"] and len(low) == 3:
        return search(catalog, params, base_url)
    raise invalid_url()


def search(catalog: Catalog, params: Params, base_url: str) -> dict[str, Any]:
    """``/sharing/rest/search``: ``q`` matched in titles, ``start`` (1-based) and ``num`` (≤ 100) page it."""
    text = params.text("q", "").strip()
    if text.lower().startswith("title:"):
        text = text[len("title:") :].strip().strip('"')
    found = [it for it in items(catalog, base_url) if text in ("", "*") or text.lower() in it["title"].lower()]
    start = max(params.integer("start", minimum=1) or 1, 1)
    num = min(params.integer("num", minimum=0) or 10, 100)
    page = found[start - 1 : start - 1 + num]
    following = start + len(page)
    return {
        "query": text,
        "total": len(found),
        "start": start,
        "num": num,
        "nextStart": following if following <= len(found) else -1,
        "results": page,
    }
