"""PBF and JSON pulls agree feature by feature, on the local server and on Koop.

Each layer is pulled twice through FeatureLayerExtractor: ``response_format="json"`` and
``"pbf"`` (or ``"auto"``, which takes PBF when the layer lists it). Attributes must be
exactly equal; coordinates may differ by the quantisation tolerance the pull asked for
(``quantizationParameters.tolerance`` = 1e-9 of the layer extent's larger side, read back
from ``format_choice().tolerance``), and must not differ by more.

Koop 10.4 (featureserver 9.3) serves f=pbf (``supportedQueryFormats`` "JSON,geojson,PBF")
with quirks: fields and values sorted by name, points with ``lengths: [2]``, a translate
of (0, 0) unless the quantisation extent is sent (the pull sends it), Z unquantised, and
Integer values written as sint32 (values beyond 32 bits wrap; such values do not fit the
Integer field's int32 type in JSON either, so they cannot be pulled in any format). A server
whose PBF is coarser than asked is simulated by a proxy: ``auto`` falls back to JSON with a
note, a forced ``pbf`` fails.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import shapely

from ags_etl.errors import ArcGISError, ConfigError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from ags_etl.server.testing import run_server
from tests.arcgis.test_pbf import line_features
from tests.extractors.test_feature_layer import collect
from tests.layers import write_layer
from tests.loopback import JSONHandler, serving
from tests.servers_koop import koop_layer_url, koop_server, write_koop_geojson

N = 90
KINDS = ["points", "lines", "polygons"]


def _write_local(d: Path) -> None:
    write_layer(d / "points.geojson", "points", N)
    write_layer(d / "polygons.geojson", "polygons", N)
    (d / "lines.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": line_features(N)}), "utf-8")


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("pbf-pulls")
    _write_local(d)
    with run_server(d, "--max-record-count", "25") as base:
        yield base


@pytest.fixture(scope="module")
def koop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("pbf-koop")
    write_layer(d / "points.geojson", "points", N, koop_max_record_count=25)
    write_layer(d / "polygons.geojson", "polygons", N, koop_max_record_count=25)
    write_koop_geojson(line_features(N), d / "lines.geojson", max_record_count=25, field_types={"RANK": "Integer"})
    with koop_server(d) as base:
        yield base


def local_url(base: str, name: str) -> str:
    return f"{base}/arcgis/rest/services/{name}/FeatureServer/0"


def pull(url: str, fmt: str, **kw: Any) -> tuple[dict[int, dict[str, Any]], FeatureLayerExtractor]:
    ext = FeatureLayerExtractor(url, response_format=fmt, concurrency=2, **kw)
    rows, total = collect(ext)
    assert total == len(rows), "every feature exactly once"
    return rows, ext


def assert_agree(pbf_rows: dict[int, dict[str, Any]], json_rows: dict[int, dict[str, Any]], tolerance: float) -> None:
    """Feature by feature: the same OIDs, attributes exactly equal, geometries within ``tolerance``."""
    assert sorted(pbf_rows) == sorted(json_rows) and len(json_rows) > 0
    moved = 0.0
    for oid, want in json_rows.items():
        got = pbf_rows[oid]
        assert {k: v for k, v in got.items() if k != "geometry"} == {k: v for k, v in want.items() if k != "geometry"}
        g, w = got["geometry"], want["geometry"]
        assert (g is None) == (w is None), oid
        if w is None:
            continue
        assert g.geom_type == w.geom_type, oid
        assert shapely.equals_exact(shapely.normalize(g), shapely.normalize(w), tolerance), oid
        gc = shapely.get_coordinates(shapely.normalize(g))
        wc = shapely.get_coordinates(shapely.normalize(w))
        moved = max(moved, float(abs(gc - wc).max()))
    assert moved <= tolerance


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("fmt", ["pbf", "auto"])
def test_local_pbf_pull_equals_json_pull(local: str, kind: str, fmt: str) -> None:
    url = local_url(local, kind)
    json_rows, json_ext = pull(url, "json")
    pbf_rows, ext = pull(url, fmt)
    choice = ext.format_choice()
    assert choice.format == "pbf" and "first page agreed" in choice.reason
    assert ext.stats.response_format.startswith("pbf")
    assert json_ext.stats.response_format.startswith("json") and "also offers PBF" in json_ext.stats.response_format
    e = ext.info.extent if ext.info is not None else None
    assert e is not None and choice.tolerance is not None
    span = max(e["xmax"] - e["xmin"], e["ymax"] - e["ymin"])
    assert choice.tolerance == pytest.approx(span * 1e-9)  # 1e-9 of the extent's larger side
    assert ext.stats.pages >= N // 25
    assert_agree(pbf_rows, json_rows, choice.tolerance)
    if kind == "polygons":
        assert any(r["geometry"] is not None and r["geometry"].geom_type == "Polygon" and r["geometry"].interiors
                   for r in pbf_rows.values())


def test_local_pbf_pull_with_out_sr_and_where(local: str) -> None:
    url = local_url(local, "polygons")
    json_rows, _ = pull(url, "json", out_sr=3857, where="COUNT > 0")
    pbf_rows, ext = pull(url, "pbf", out_sr=3857, where="COUNT > 0")
    tol = ext.format_choice().tolerance
    assert tol is not None and ext.format_choice().format == "pbf"
    assert_agree(pbf_rows, json_rows, tol)


def test_auto_uses_json_where_pbf_is_not_listed(tmp_path: Path) -> None:
    write_layer(tmp_path / "points.geojson", "points", 30)
    with run_server(tmp_path, "--no-pagination") as base:
        url = local_url(base, "points")
        _, ext = pull(url, "auto")
        assert ext.format_choice().format == "json"
        assert "does not list PBF" in ext.stats.response_format
        # Forced, PBF is asked all the same (this server writes it) and checked.
        pbf_rows, forced = pull(url, "pbf")
        assert forced.format_choice().format == "pbf" and len(pbf_rows) == 30


def test_unknown_response_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="pbf"):
        FeatureLayerExtractor("http://127.0.0.1:9/arcgis/rest/services/x/FeatureServer/0", response_format="xml")


@pytest.mark.parametrize("kind", KINDS)
def test_koop_pbf_pull_equals_json_pull(koop: str, kind: str) -> None:
    url = koop_layer_url(koop, kind)
    json_rows, _ = pull(url, "json", page_size=25)
    pbf_rows, ext = pull(url, "auto", page_size=25)
    choice = ext.format_choice()
    assert choice.format == "pbf", choice.reason
    assert choice.tolerance is not None
    assert_agree(pbf_rows, json_rows, choice.tolerance)


class CoarseProxy(JSONHandler):
    """Forwards to the local server, but quantises f=pbf answers at 0.01 whatever was asked:
    a server whose PBF is coarser than its JSON."""

    target = ""

    def answer(self, path: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        if params.get("f") == "pbf" and "quantizationParameters" in params:
            q = json.loads(params["quantizationParameters"])
            params["quantizationParameters"] = json.dumps({**q, "tolerance": 0.01})
        r = requests.post(self.target + path, data=params, timeout=30)
        return r.status_code, r.headers["Content-Type"], r.content


def test_pbf_coarser_than_json_falls_back_to_json_or_fails_when_forced(local: str) -> None:
    CoarseProxy.target = local
    with serving(CoarseProxy) as base:
        url = local_url(base, "points")
        json_rows, _ = pull(url, "json")
        rows, ext = pull(url, "auto")
        assert ext.format_choice().format == "json"
        assert "geometries differ by more than" in ext.stats.response_format
        assert any("first PBF page differed" in n for n in ext.stats.notes)
        assert rows == json_rows
        with pytest.raises(ArcGISError, match="differs from f=json.*--response-format json"):
            pull(url, "pbf")
