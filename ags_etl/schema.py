"""LayerSchema and Field: what a layer holds, known before the first feature is read.

Geometry types use the Esri names (``esriGeometryPoint``, ``esriGeometryMultipoint``,
``esriGeometryPolyline``, ``esriGeometryPolygon``); ``None`` means a table without
geometry. :meth:`LayerSchema.geojson_types` gives the GeoJSON/OGC names a loader
will see in the decoded shapely geometries.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from pyproj import CRS

from ags_etl.arcgis.fields import NON_ATTRIBUTE_TYPES, arrow_type

#: Esri geometry type → the shapely/GeoJSON types its features decode to.
GEOJSON_TYPES: dict[str, tuple[str, ...]] = {
    "esriGeometryPoint": ("Point",),
    "esriGeometryMultipoint": ("MultiPoint",),
    "esriGeometryPolyline": ("LineString", "MultiLineString"),
    "esriGeometryPolygon": ("Polygon", "MultiPolygon"),
    "esriGeometryEnvelope": ("Polygon",),
}


@dataclass(frozen=True)
class Field:
    """One attribute field.

    ``esri_type`` is the ``esriFieldType*`` name; ``length`` the declared string
    length (None when not declared); ``domain`` the raw Esri domain JSON, if any.
    """

    name: str
    esri_type: str
    alias: str | None = None
    length: int | None = None
    nullable: bool = True
    domain: dict[str, Any] | None = None

    @property
    def arrow_type(self) -> pa.DataType:
        return arrow_type(self.esri_type)

    def to_esri(self) -> dict[str, Any]:
        """The field as it appears in layer JSON."""
        out: dict[str, Any] = {"name": self.name, "type": self.esri_type, "alias": self.alias or self.name}
        if self.length is not None:
            out["length"] = self.length
        out["nullable"] = self.nullable
        out["domain"] = self.domain
        return out

    @classmethod
    def from_esri(cls, data: dict[str, Any]) -> "Field":
        length = data.get("length")
        return cls(
            name=str(data["name"]),
            esri_type=str(data.get("type") or "esriFieldTypeString"),
            alias=data.get("alias"),
            length=int(length) if length is not None else None,
            nullable=bool(data.get("nullable", True)),
            domain=data.get("domain"),
        )


@dataclass(frozen=True)
class LayerSchema:
    """Fields, OID field, geometry type and CRS of a layer (or of a transformed stream).

    Invariants: field names are unique; ``oid_field``, when set, names one of the fields.
    ``crs`` is None only for tables without geometry or layers whose CRS is unknown.
    """

    fields: tuple[Field, ...]
    oid_field: str | None = None
    geometry_type: str | None = None
    crs: CRS | None = None
    has_z: bool = False
    has_m: bool = False
    name: str = "layer"
    #: Optional hint from transformers: the geometry types that can actually occur.
    geometry_types_override: tuple[str, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate field names in schema: {dupes}")
        if self.oid_field is not None and self.oid_field not in names:
            raise ValueError(f"oid_field {self.oid_field!r} is not one of the fields {names}")

    @property
    def attribute_fields(self) -> tuple[Field, ...]:
        """Fields that carry attribute values (geometry/blob/raster fields left out)."""
        return tuple(f for f in self.fields if f.esri_type not in NON_ATTRIBUTE_TYPES)

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.attribute_fields]

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def arrow_schema(self) -> pa.Schema:
        """Arrow schema of the attribute table (no geometry column)."""
        return pa.schema([pa.field(f.name, f.arrow_type, nullable=True) for f in self.attribute_fields])

    def geojson_types(self) -> tuple[str, ...]:
        """Geometry type names that features of this schema can hold (empty for tables)."""
        if self.geometry_types_override is not None:
            return self.geometry_types_override
        if self.geometry_type is None:
            return ()
        return GEOJSON_TYPES.get(self.geometry_type, ())

    def replace(self, **changes: Any) -> "LayerSchema":
        return replace(self, **changes)
