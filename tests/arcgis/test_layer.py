"""Layer metadata parsing against metadata recorded from real servers (tests/data/real-servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pyproj import CRS

from ags_etl.arcgis.layer import find_oid_field, parse_layer
from ags_etl.errors import NotALayerError

DATA = Path(__file__).parent.parent / "data" / "real-servers"


def meta(name: str) -> dict:
    folder = DATA / name
    files = [p for p in folder.iterdir() if p.name.endswith("metadata.json")]
    return json.loads(files[0].read_text())


@pytest.mark.parametrize(
    "server, oid, mrc, epsg",
    [
        ("us-ca-carson", "OBJECTID", None, None),  # 10.0: no maxRecordCount, no objectIdField
        ("us-ca-tuolumne", "SHAPE.fid", 1000, None),  # qualified OID at index 27
        ("us-esri-test", "objectid", 1000, 4326),
        ("us-mi-kent", "OBJECTID", 1000, None),  # OID at index 11; SR only as WKT
        ("us-mo-columbia", None, None, None),
        ("us-ms-madison", None, 1000, None),
        ("us-il-cook", "OBJECTID", None, 3435),
    ],
)
def test_real_metadata(server: str, oid: str | None, mrc: int | None, epsg: int | None) -> None:
    data = meta(server)
    info = parse_layer(f"http://example.test/{server}/MapServer/0", data)
    fields = data["fields"]
    expected_oid = oid if oid is not None else next(f["name"] for f in fields if f["type"] == "esriFieldTypeOID")
    assert info.oid_field == expected_oid
    assert info.schema.field(expected_oid).esri_type == "esriFieldTypeOID"
    assert info.max_record_count == mrc
    assert info.can_query
    if epsg is not None:
        assert info.schema.crs is not None and info.schema.crs.to_epsg() == epsg


def test_kent_wkt_only_spatial_reference() -> None:
    info = parse_layer("http://x.test/a/MapServer/0", meta("us-mi-kent"))
    assert info.schema.crs is not None
    # Michigan South in international feet, given only as Esri WKT.
    assert "Michigan" in info.schema.crs.name
    assert info.schema.crs.axis_info[0].unit_name in ("foot", "US survey foot", "International foot")


def test_102100_is_web_mercator() -> None:
    info = parse_layer("http://x.test/a/MapServer/0", meta("us-il-chicago"))
    assert info.schema.crs is not None and info.schema.crs.equals(CRS.from_epsg(3857))
    assert info.supports_pagination
    assert info.max_record_count == 100000


def test_oid_found_by_unqualified_name() -> None:
    fields = [{"name": "PIN", "type": "esriFieldTypeString"}, {"name": "SHAPE.fid", "type": "esriFieldTypeInteger"}]
    assert find_oid_field(fields, "fid") == "SHAPE.fid"
    assert find_oid_field(fields, None) is None


def test_service_url_is_not_a_layer() -> None:
    with pytest.raises(NotALayerError, match=r"layers 0 \(Parks\), 1 \(Roads\).*FeatureServer/0"):
        parse_layer(
            "http://x.test/arcgis/rest/services/City/FeatureServer",
            {"layers": [{"id": 0, "name": "Parks"}, {"id": 1, "name": "Roads"}], "tables": []},
        )


def test_table_without_geometry() -> None:
    info = parse_layer(
        "http://x.test/s/FeatureServer/3",
        {"type": "Table", "fields": [{"name": "OBJECTID", "type": "esriFieldTypeOID"}], "capabilities": "Query"},
    )
    assert not info.has_geometry and info.oid_field == "OBJECTID"
