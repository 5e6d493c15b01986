"""`ags-etl serve` gzips answers for clients that accept it, and only for them."""

from __future__ import annotations

import gzip
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from ags_etl.arcgis.client import ArcGISClient
from ags_etl.server.testing import run_server
from tests.layers import write_layer

QUERY = "/arcgis/rest/services/points/FeatureServer/0/query?where=1%3D1&outFields=*&f=json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d: Path = tmp_path_factory.mktemp("gzip")
    write_layer(d / "points.geojson", "points", 40)
    with run_server(d) as base:
        yield base


def fetch(base: str, path: str, accept: str | None) -> tuple[dict[str, str], bytes]:
    parts = urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {} if accept is None else {"Accept-Encoding": accept}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return {k.lower(): v for k, v in resp.getheaders()}, body


@pytest.mark.parametrize("accept", ["gzip", "gzip, deflate", "br;q=1.0, gzip;q=0.5", "*"])
def test_answers_are_gzipped_when_accepted(server: str, accept: str) -> None:
    plain_headers, plain = fetch(server, QUERY, None)
    headers, body = fetch(server, QUERY, accept)
    assert "content-encoding" not in plain_headers
    assert headers["content-encoding"] == "gzip"
    assert int(headers["content-length"]) == len(body) < len(plain)
    assert gzip.decompress(body) == plain
    assert len(json.loads(plain)["features"]) == 40


@pytest.mark.parametrize("accept", ["identity", "gzip;q=0", "deflate"])
def test_not_gzipped_when_not_accepted(server: str, accept: str) -> None:
    headers, body = fetch(server, QUERY, accept)
    assert "content-encoding" not in headers
    assert len(json.loads(body)["features"]) == 40


def test_client_reads_gzipped_pages(server: str) -> None:
    with ArcGISClient() as client:
        data = client.post(server + "/arcgis/rest/services/points/FeatureServer/0/query",
                           {"where": "1=1", "outFields": "*"})
    assert len(data["features"]) == 40
