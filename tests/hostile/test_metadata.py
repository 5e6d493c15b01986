"""Layer metadata that cannot be a layer's, served over HTTP: one message naming the key, the
value and the fix — never a traceback. Also a layer without an OID field, which only the box
plan can page."""

from __future__ import annotations

from typing import Any

import pytest

from ags_etl.errors import ArcGISError, ConfigError
from ags_etl.extractors.feature_layer import FeatureLayerExtractor
from tests.hostile.plan_stubs import DROP, Script, scripted_layer

OID = {"name": "OBJECTID", "type": "esriFieldTypeOID"}


@pytest.mark.parametrize(
    "metadata, message",
    [
        ({"maxRecordCount": "abc"}, r"maxRecordCount 'abc', which is not a whole number"),
        ({"maxRecordCount": 2.5}, r"maxRecordCount 2.5"),
        ({"maxRecordCount": [1000]}, r"maxRecordCount \[1000\]"),
        ({"fields": {"OBJECTID": "esriFieldTypeOID"}}, r"fields \{'OBJECTID': 'esriFieldTypeOID'\}, which is not a list"),
        ({"fields": "OBJECTID"}, r"fields 'OBJECTID', which is not a list"),
        ({"fields": [OID, OID]}, r"lists the field 'OBJECTID' twice"),
        ({"fields": [OID, "NAME"]}, r"field #1 'NAME', which has no name"),
        ({"fields": [OID, {"type": "esriFieldTypeString"}]}, r"field #1 .* which has no name"),
        ({"fields": [OID, {"name": "N", "type": 7}]}, r"gives field 'N' the type 7"),
        ({"fields": [OID, {"name": "N", "type": "esriFieldTypeString", "length": "long"}]}, r"the length 'long'"),
        ({"geometryType": {"type": "point"}}, r"geometryType \{'type': 'point'\}"),
    ],
    ids=["mrc-text", "mrc-fraction", "mrc-list", "fields-dict", "fields-text", "fields-duplicate", "field-text",
         "field-nameless", "field-type", "field-length", "geometry-type"],
)
def test_broken_metadata_is_one_message(metadata: dict[str, Any], message: str) -> None:
    with scripted_layer(Script(oids=[1, 2], metadata=metadata)) as url:
        with pytest.raises(ArcGISError, match=message) as err:
            with FeatureLayerExtractor(url, retries=0):
                pass
    assert url in str(err.value) and "report it to the server's administrator" in str(err.value)


@pytest.mark.parametrize("body", [[1, 2], "layer", 7, None])
def test_metadata_that_is_not_an_object(body: Any) -> None:
    script = Script(oids=[1])
    script.layer_json = lambda: body  # type: ignore[method-assign]
    with scripted_layer(script) as url:
        with pytest.raises(ArcGISError, match="JSON that is not an object|instead of layer JSON"):
            with FeatureLayerExtractor(url, retries=0):
                pass


def test_odd_but_harmless_metadata_is_tolerated() -> None:
    # NaN extent (empty layers), a garbage edit-info block, a non-string OID declaration,
    # maxRecordCount as text of digits: none of them stops a pull.
    metadata = {"extent": {"xmin": "NaN", "ymin": 0, "xmax": 1, "ymax": 1}, "editFieldsInfo": [1],
                "objectIdField": 5, "maxRecordCount": "2", "advancedQueryCapabilities": "yes"}
    with scripted_layer(Script(oids=[1, 2, 3], metadata=metadata)) as url:
        with FeatureLayerExtractor(url, retries=0) as ext:
            assert ext.info is not None and ext.info.extent is None and ext.info.max_record_count == 2
            assert ext.info.oid_field == "OBJECTID"
            oids = [o for batch in ext for o in batch.column("OBJECTID").to_pylist()]
    assert sorted(oids) == [1, 2, 3]


def test_layer_without_oid_field_needs_the_box_plan() -> None:
    fields = [{"name": "NAME", "type": "esriFieldTypeString"}]
    # With geometry and an extent, the spatial plan dedupes by attributes + geometry.
    script = Script(oids=[1, 2, 3, 4, 5], cap=2, metadata={"fields": fields, "objectIdField": DROP},
                    refuse=frozenset({"ids", "statistics", "pagination"}))
    with scripted_layer(script) as url:
        with FeatureLayerExtractor(url, retries=0) as ext:
            names = [n for batch in ext for n in batch.column("NAME").to_pylist()]
    assert sorted(names) == ["n1", "n2", "n3", "n4", "n5"] and ext.stats.strategy == "spatial"
    # Forcing an OID plan on it is refused with the reason.
    with scripted_layer(Script(oids=[1, 2], metadata={"fields": fields, "objectIdField": DROP})) as url:
        with pytest.raises(ConfigError, match=r"--strategy offset cannot be used .* no OID field"):
            with FeatureLayerExtractor(url, retries=0, strategy="offset") as ext:
                ext.plan()
