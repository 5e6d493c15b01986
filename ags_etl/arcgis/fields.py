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

INTEGER_TYPES = frozenset(
    {"esriFieldTypeOID", "esriFieldTypeSmallInteger", "esriFieldTypeInteger", "esriFieldTypeBigInteger"}
)


def arrow_type(esri_type: str) -> pa.DataType:
    """Return the Arrow type for an Esri field type; unknown types map to string."""
    return ESRI_TO_ARROW.get(esri_type, pa.string())


def esri_type_for_arrow(dtype: pa.DataType) -> str:
    """Return the Esri field type that best holds values of an Arrow type (for the local server)."""
    if pa.types.is_boolean(dtype) or pa.types.is_int8(dtype) or pa.types.is_int16(dtype):
        return "esriFieldTypeSmallInteger"
    if pa.types.is_int32(dtype) or pa.types.is_uint8(dtype) or pa.types.is_uint16(dtype):
        return "esriFieldTypeInteger"
    if pa.types.is_integer(dtype):
        return "esriFieldTypeBigInteger"
    if pa.types.is_float32(dtype) or pa.types.is_float16(dtype):
        return "esriFieldTypeSingle"
    if pa.types.is_floating(dtype) or pa.types.is_decimal(dtype):
        return "esriFieldTypeDouble"
    if pa.types.is_timestamp(dtype):
        return "esriFieldTypeDate"
    if pa.types.is_date(dtype):
        return "esriFieldTypeDateOnly"
    if pa.types.is_time(dtype):
        return "esriFieldTypeTimeOnly"
    return "esriFieldTypeString"
