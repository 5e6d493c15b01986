"""Faults of edit answers (``--drop-edit-answers``, ``--edit-answer-delay``) and concurrent edits, over HTTP."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from serve_helpers import layer_url, post_json, write_points

from ags_etl.server.testing import run_server


def _add(url: str, name: str, timeout: float = 30) -> requests.Response:
    data = {"f": "json", "features": json.dumps([{"attributes": {"name": name}, "geometry": {"x": 1, "y": 1}}])}
    return requests.post(f"{url}/addFeatures", data=data, timeout=timeout)


def _names(url: str, where: str) -> list[str]:
    body = post_json(f"{url}/query", where=where, outFields="name", orderByFields="OBJECTID")
    return [f["attributes"]["name"] for f in body["features"]]


def test_lost_answer_after_commit(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path, "--editable", "--drop-edit-answers", "2") as base:
        url = layer_url(base, "points")
        # a refused request is answered and does not count
        bad = json.dumps([{"attributes": {"pop": "x"}}])
        refused = requests.post(f"{url}/addFeatures", data={"f": "json", "features": bad}, timeout=30)
        assert refused.json()["error"]["details"][0] == "Operation rolled back."
        for name in ("lost-1", "lost-2"):
            with pytest.raises(requests.exceptions.ConnectionError):
                _add(url, name)
        # the edits were committed although their answers never came
        assert _names(url, "name LIKE 'lost-%'") == ["lost-1", "lost-2"]
        answered = _add(url, "lost-3").json()
        assert answered["addResults"][0]["success"] is True
        assert _names(url, "name LIKE 'lost-%'") == ["lost-1", "lost-2", "lost-3"]


def test_answer_delay_after_commit(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path, "--editable", "--edit-answer-delay", "1.5") as base:
        url = layer_url(base, "points")
        # the client gives up before the answer; the edit is committed all the same
        with pytest.raises(requests.exceptions.ReadTimeout):
            _add(url, "slow-1", timeout=0.5)
        assert _names(url, "name = 'slow-1'") == ["slow-1"]
        started = time.monotonic()
        assert _add(url, "slow-2").json()["addResults"][0]["success"] is True
        assert time.monotonic() - started >= 1.5
        assert _names(url, "name = 'slow-2'") == ["slow-2"]


def test_concurrent_writers_and_readers(tmp_path: Path) -> None:
    write_points(tmp_path / "points.geojson")
    with run_server(tmp_path, "--editable") as base:
        url = layer_url(base, "points")
        errors: list[Any] = []
        ids: list[int] = []
        lock = threading.Lock()

        def writer(k: int) -> None:
            for i in range(5):
                body = _add(url, f"cw-{k}-{i}").json()
                with lock:
                    if "addResults" not in body:
                        errors.append(body)
                    else:
                        ids.append(body["addResults"][0]["objectId"])

        def reader() -> None:
            for _ in range(10):
                body = post_json(f"{url}/query", where="1=1", returnCountOnly="true")
                with lock:
                    if "count" not in body:
                        errors.append(body)

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)] + [
            threading.Thread(target=reader) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert errors == []
        assert len(ids) == len(set(ids)) == 20
        assert len(_names(url, "name LIKE 'cw-%'")) == 20
