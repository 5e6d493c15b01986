"""Property test: the layer metadata parser, fed any JSON (and real servers' metadata with
parts replaced by any JSON), either returns a LayerInfo or raises an AgsEtlError subclass."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ags_etl.arcgis.layer import LayerInfo, parse_layer
from ags_etl.errors import AgsEtlError

DATA = Path(__file__).parent.parent / "data" / "real-servers"
REAL = [json.loads(p.read_text()) for p in sorted(DATA.glob("*/*metadata.json"))]
URL = "http://x.test/arcgis/rest/services/s/FeatureServer/0"

scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=12)
keys = st.sampled_from(
    ["fields", "name", "type", "esriFieldTypeOID", "objectIdField", "maxRecordCount", "extent", "geometryType",
     "spatialReference", "wkid", "wkt", "length", "layers", "tables", "capabilities", "xmin", "ymax"]
) | st.text(max_size=8)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=5), max_leaves=20
)


def _parse(data: Any) -> None:
    try:
        info = parse_layer(URL, data)
    except AgsEtlError:
        return
    assert isinstance(info, LayerInfo)
    names = [f.name for f in info.schema.fields]
    assert len(names) == len(set(names))
    assert info.max_record_count is None or info.max_record_count > 0


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json(data: Any) -> None:
    _parse(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(REAL))), st.lists(st.tuples(keys | st.sampled_from(["fields"]), json_values), min_size=1, max_size=3))
def test_real_metadata_with_parts_replaced(which: int, changes: list[tuple[str, Any]]) -> None:
    data = json.loads(json.dumps(REAL[which]))
    for key, value in changes:
        data[key] = value
    _parse(data)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(range(len(REAL))), st.integers(min_value=0, max_value=40), json_values)
def test_real_fields_with_one_field_replaced(which: int, index: int, value: Any) -> None:
    data = json.loads(json.dumps(REAL[which]))
    fields = data.get("fields") or []
    if fields:
        i = index % len(fields)
        fields[i] = value if not isinstance(value, dict) else {**fields[i], **value}
    _parse(data)
