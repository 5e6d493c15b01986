"""Every request is bounded: a deadline for the whole answer, a cap on its decompressed size,
and constructor arguments that cannot be nonsense (ags_etl.arcgis.client)."""

from __future__ import annotations

import gzip
import math
import time

import orjson
import pytest

from ags_etl.arcgis.client import ArcGISClient
from ags_etl.errors import ArcGISError, ConfigError, TransientError
from tests.hostile.stubs import LAYER_JSON, LAYER_PATH, Log, Recording, gzip_bomb_stub, serving, slow_drip_stub


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"timeout": 0}, "--timeout"),
        ({"timeout": -1.5}, "--timeout"),
        ({"timeout": math.nan}, "--timeout"),
        ({"timeout": math.inf}, "--timeout"),
        ({"retries": -3}, "--retries"),
        ({"max_response_bytes": 0}, "--max-response-mb"),
    ],
)
def test_nonsense_arguments_are_refused(kwargs: dict[str, float], option: str) -> None:
    with pytest.raises(ConfigError, match=f"^{option} must be"):
        ArcGISClient(**kwargs)  # type: ignore[arg-type]


def test_slow_drip_is_abandoned_at_the_deadline_and_retried_like_a_timeout() -> None:
    with slow_drip_stub() as (base, log):
        with ArcGISClient(timeout=1.5, retries=1, backoff=0.01) as client:
            started = time.monotonic()
            with pytest.raises(TransientError, match=r"\(no complete answer within 1\.5 s\)") as caught:
                client.get(base + LAYER_PATH)
            elapsed = time.monotonic() - started
    assert "after 2 attempts" in str(caught.value) and "raise --timeout" in str(caught.value)
    assert len(log.requests) == 2 and client.retries_made == 1
    assert elapsed < 2 * 1.5 + 2.5, f"two attempts of 1.5 s took {elapsed:.1f} s"


def test_decompression_bomb_stops_at_the_cap_and_is_not_retried() -> None:
    with gzip_bomb_stub() as (base, log):
        with ArcGISClient(retries=3, max_response_bytes=4 * 2**20) as client:
            with pytest.raises(ArcGISError) as caught:
                client.get(base + LAYER_PATH)
    assert not isinstance(caught.value, TransientError)
    assert str(caught.value) == (
        "answer from 127.0.0.1 exceeded 4 MB after decompression; lower --page-size, "
        "or raise --max-response-mb if the layer really has pages this large"
    )
    assert len(log.requests) == 1


class _Gzipped(Recording):
    """The layer JSON, gzip-compressed, sent in small pieces (as a real server streams)."""

    log = Log()

    def respond(self, path: str, params: dict[str, str]) -> None:
        body = gzip.compress(orjson.dumps(LAYER_JSON))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        for i in range(0, len(body), 50):
            self.wfile.write(body[i : i + 50])
            self.wfile.flush()


def test_gzip_answer_below_the_cap_is_decoded() -> None:
    with serving(_Gzipped) as base:
        size = len(orjson.dumps(LAYER_JSON))
        with ArcGISClient(retries=0, max_response_bytes=size) as client:
            assert client.get(base + LAYER_PATH) == LAYER_JSON  # exactly at the cap is fine
        with ArcGISClient(retries=0, max_response_bytes=size - 1) as client:
            with pytest.raises(ArcGISError, match="after decompression"):
                client.get(base + LAYER_PATH)
