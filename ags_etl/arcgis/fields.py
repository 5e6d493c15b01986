"""Esri field types ⇄ Arrow types (pure).

| Esri type                     | Arrow type                 |
|-------------------------------|----------------------------|
| esriFieldTypeOID              | int64                      |
| esriFieldTypeSmallInteger     | int16                      |
| esriFieldTypeInteger          | int32                      |
| esriFieldTypeBigInteger       | int64                      |
| esriFieldTypeSingle           | float32                    |
| esriFieldTypeDouble           | float64                    |
| esriFieldTypeString           | string                     |
| esriFieldTypeDate             | timestamp[ms, tz=UTC]      |
| esriFieldTypeTimestampOffset  | timestamp[ms, tz=UTC]      |
| esriFieldTypeDateOnly         | date32                     |
| esriFieldTypeTimeOnly         | time32[ms]                 |
| esriFieldTypeGUID / GlobalID  | string ("{XXXXXXXX-…}")    |
| esriFieldTypeXML              | string                     |

``esriFieldTypeGeometry``, ``Blob`` and ``Raster`` carry no attribute value
and are left out of the attribute table.
"""

from __future__ import annotations

import pyarrow as pa

ESRI_TO_ARROW: dict[str, pa.DataType] = {
    "esriFieldTypeOID": pa.int64(),
    "esriFieldTypeSmallInteger": pa.int16(),
    "esriFieldTypeInteger": pa.int32(),
    "esriFieldTypeBigInteger": pa.int64(),
    "esriFieldTypeSingle": pa.float32(),
    "esriFieldTypeDouble": pa.float64(),
    "esriFieldTypeString": pa.string(),
    "esriFieldTypeDate": pa.timestamp("ms", tz="UTC"),
    "esriFieldTypeTimestampOffset": pa.timestamp("ms", tz="UTC"),
    "esriFieldTypeDateOnly": pa.date32(),
    "esriFieldTypeTimeOnly": pa.time32("ms"),
    "esriFieldTypeGUID": pa.string(),
    "esriFieldTypeGlobalID": pa.string(),
    "esriFieldTypeXML": pa.string(),
}

#: Types that hold no attribute value in a query answer.
NON_ATTRIBUTE_TYPES = frozenset({"esriFieldTypeGeometry", "esriFieldTypeBlob", "esriFieldTypeRaster"})

def arrow_type(esri_type: str) -> pa.DataType:
    """Return the Arrow type for an Esri field type; unknown types map to string."""
    return ESRI_TO_ARROW.get(esri_type, pa.string())

