"""Fields: select, drop, rename, cast and domain-decode attribute columns.

Pipeline form::

    {type: fields, select: [PARCEL_ID, OWNER, USE_CODE, EditDate],
     rename: {PARCEL_ID: parcel_id}, cast: {PARCEL_ID: string}, decode_domains: [USE_CODE]}

Every key refers to the *input* field names; renaming happens last. Steps, in order:
``select`` (keep these, in this order), ``drop`` (remove these), ``cast`` (to an Esri
field type or a simple name, see :data:`CAST_TYPES`), ``decode_domains`` (coded-value
domain codes → their names, as strings), ``rename``.

All names are checked in :meth:`Fields.bind` against the layer's fields, so a typo is a
ConfigError listing the fields that exist — before any network call. The work on each
batch is Arrow compute: no Python loop over rows.

Dates stay ``timestamp[ms, tz=UTC]``. Casting text to a date reads ISO 8601; text
without a zone offset is taken as UTC. Casting a number to a date reads it as epoch
milliseconds (as ArcGIS sends dates).
"""

from __future__ import annotations

import difflib
import threading
from dataclasses import replace
from typing import ClassVar

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

from ags_etl.arcgis.fields import ESRI_TO_ARROW, arrow_type
from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError, TransformError
from ags_etl.schema import Field, LayerSchema
from ags_etl.transformers.base import Transformer as BaseTransformer

__all__ = ["CAST_TYPES", "Fields", "esri_type_for_name"]

#: Simple type names accepted by ``cast`` (case-insensitive) → Esri field type.
CAST_TYPES: dict[str, str] = {
    "smallint": "esriFieldTypeSmallInteger",
    "short": "esriFieldTypeSmallInteger",
    "int16": "esriFieldTypeSmallInteger",
    "int": "esriFieldTypeInteger",
    "integer": "esriFieldTypeInteger",
    "int32": "esriFieldTypeInteger",
    "bigint": "esriFieldTypeBigInteger",
    "long": "esriFieldTypeBigInteger",
    "int64": "esriFieldTypeBigInteger",
    "single": "esriFieldTypeSingle",
    "float32": "esriFieldTypeSingle",
    "double": "esriFieldTypeDouble",
    "float": "esriFieldTypeDouble",
    "float64": "esriFieldTypeDouble",
    "string": "esriFieldTypeString",
    "str": "esriFieldTypeString",
    "text": "esriFieldTypeString",
    "date": "esriFieldTypeDate",
    "datetime": "esriFieldTypeDate",
    "timestamp": "esriFieldTypeDate",
    "dateonly": "esriFieldTypeDateOnly",
    "timeonly": "esriFieldTypeTimeOnly",
    "guid": "esriFieldTypeGUID",
}

#: Esri types a cast may target (OID and GlobalID are assigned by the server).
_CASTABLE = frozenset(ESRI_TO_ARROW) - {"esriFieldTypeOID", "esriFieldTypeGlobalID"}


def esri_type_for_name(name: str) -> str:
    """The Esri field type for a cast target: a simple name (``"int"``), a full Esri name
    (``"esriFieldTypeInteger"``) or an Esri name without its prefix (``"Integer"``).

    Raises ConfigError listing the accepted names.
    """
    if not isinstance(name, str):
        raise ConfigError(f"fields: cast type {name!r} is not a type name; use one of {sorted(CAST_TYPES)}")
    key = name.strip().lower()
    if key in CAST_TYPES:
        return CAST_TYPES[key]
    key = key.removeprefix("esrifieldtype")
    for esri in _CASTABLE:
        if esri[len("esriFieldType") :].lower() == key:
            return esri
    raise ConfigError(
        f"fields: cast type {name!r} is unknown; use one of {sorted(CAST_TYPES)} or an Esri field type "
        f"such as 'esriFieldTypeInteger'"
    )


def _as_name_list(value: object, option: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ConfigError(f"fields: {option} must be a list of field names, got {value!r}")
    names = [v for v in value]
    bad = [v for v in names if not isinstance(v, str) or not v]
    if bad:
        raise ConfigError(f"fields: {option} holds {bad!r}, which are not field names")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"fields: {option} names {dupes} more than once; list each field once")
    return names


def _as_name_map(value: object, option: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ConfigError(f"fields: {option} must be a mapping of field name to value, got {value!r}")
    bad = {k: v for k, v in value.items() if not isinstance(k, str) or not isinstance(v, str) or not v}
    if bad:
        raise ConfigError(f"fields: {option} holds {bad!r}; keys and values must be non-empty strings")
    return dict(value)


class _Plan:
    """One output column: where it comes from and what happens to it."""

    __slots__ = ("cast_to", "codes", "labels", "out", "source")

    def __init__(self, source: Field, out: Field) -> None:
        self.source = source
        self.out = out
        self.cast_to: pa.DataType | None = None
        self.codes: pa.Array | None = None
        self.labels: pa.Array | None = None


class Fields(BaseTransformer):
    """Select, drop, cast, decode and rename attribute fields (see the module docstring).

    ``decode_domains``: True decodes every field with a coded-value domain, a list
    decodes the named ones (each must have one). Codes not in the domain are kept as
    their text and counted (``fields_undecoded`` in :meth:`close`).
    """

    name: ClassVar[str] = "fields"
    keeps_geometry_position: ClassVar[bool] = True

    class Options(BaseModel):
        """Pipeline-file keys: ``select``, ``rename``, ``drop``, ``cast``, ``decode_domains``."""

        model_config = ConfigDict(extra="forbid")
        select: list[str] | None = None
        rename: dict[str, str] | None = None
        drop: list[str] | None = None
        cast: dict[str, str] | None = None
        decode_domains: bool | list[str] = False

    def __init__(
        self,
        select: list[str] | None = None,
        rename: dict[str, str] | None = None,
        drop: list[str] | None = None,
        cast: dict[str, str] | None = None,
        decode_domains: bool | list[str] = False,
    ) -> None:
        self._select = None if select is None else _as_name_list(select, "select")
        self._drop = [] if drop is None else _as_name_list(drop, "drop")
        self._rename = {} if rename is None else _as_name_map(rename, "rename")
        raw_cast = {} if cast is None else _as_name_map(cast, "cast")
        self._cast = {name: esri_type_for_name(t) for name, t in raw_cast.items()}
        if isinstance(decode_domains, bool):
            self._decode_all, self._decode = decode_domains, []
        else:
            self._decode_all, self._decode = False, _as_name_list(decode_domains, "decode_domains")
        both = sorted(set(self._cast) & set(self._decode))
        if both:
            raise ConfigError(f"fields: {both} are both cast and domain-decoded; do one or the other")
        self._plans: list[_Plan] | None = None
        self._out_schema: pa.Schema | None = None
        self._lock = threading.Lock()
        self._undecoded = 0

    # --- bind ------------------------------------------------------------------

    def bind(self, schema: LayerSchema) -> LayerSchema:
        """Check every name against ``schema`` and build the output schema.

        Raises ConfigError naming an unknown field (with the available ones), a rename
        that collides with another output field, a cast of the OID field, or a
        decode of a field without a coded-value domain.
        """
        attrs = {f.name: f for f in schema.attribute_fields}
        available = list(attrs)

        def check(names: list[str] | dict[str, str], option: str) -> None:
            for n in names:
                if n not in attrs:
                    raise ConfigError(self._unknown(n, option, available, schema))

        if self._select is not None:
            check(self._select, "select")
        check(self._drop, "drop")
        check(self._cast, "cast")
        check(self._decode, "decode_domains")
        check(self._rename, "rename")

        kept = list(self._select) if self._select is not None else list(available)
        dropped = set(self._drop)
        kept = [n for n in kept if n not in dropped]
        for option, names in (("cast", list(self._cast)), ("decode_domains", self._decode), ("rename", list(self._rename))):
            gone = [n for n in names if n not in kept]
            if gone:
                raise ConfigError(
                    f"fields: {option} names {gone}, which select/drop remove; keep them or remove them from {option}"
                )

        decode = list(self._decode)
        if self._decode_all:
            decode = [n for n in kept if _coded_values(attrs[n]) is not None and n not in self._cast]
        plans: list[_Plan] = []
        for n in kept:
            src = attrs[n]
            out = src
            plan = _Plan(src, out)
            if n in self._cast:
                if n == schema.oid_field:
                    raise ConfigError(
                        f"fields: {n!r} is the OID field and cannot be cast; cast a copy in the target, "
                        "or select it away"
                    )
                esri = self._cast[n]
                out = replace(
                    src,
                    esri_type=esri,
                    length=src.length if esri == "esriFieldTypeString" and src.arrow_type == pa.string() else None,
                    domain=None,  # the domain's codes are of the old type
                )
                plan.cast_to = arrow_type(esri)
            elif n in decode:
                pairs = _coded_values(src)
                if pairs is None:
                    raise ConfigError(
                        f"fields: decode_domains names {n!r}, which has no coded-value domain "
                        f"(domain: {src.domain!r}); remove it from decode_domains"
                    )
                plan.codes, plan.labels = self._domain_arrays(src, pairs)
                longest = max((len(label) for _, label in pairs), default=0)
                out = replace(
                    src, esri_type="esriFieldTypeString", length=max(longest, src.length or 0) or None, domain=None
                )
            new_name = self._rename.get(n, n)
            if new_name != n:
                out = replace(out, name=new_name)
            plan.out = out
            plans.append(plan)

        out_names = [p.out.name for p in plans]
        clashes = sorted({x for x in out_names if out_names.count(x) > 1})
        if clashes:
            raise ConfigError(
                f"fields: after renaming, {clashes} name more than one field; choose distinct new names"
            )
        # Non-attribute fields (geometry, blob, raster) carry no column; keep them in the
        # field list unless a select says exactly which fields to keep.
        extra = tuple(f for f in schema.fields if f.name not in attrs) if self._select is None else ()
        extra_clash = sorted({f.name for f in extra} & set(out_names))
        if extra_clash:
            raise ConfigError(f"fields: rename targets {extra_clash} are names of the layer's geometry/blob fields")
        oid = schema.oid_field
        out_oid = None
        if oid is not None and oid in kept:
            out_oid = self._rename.get(oid, oid)
        out_schema = schema.replace(fields=tuple(p.out for p in plans) + extra, oid_field=out_oid)
        self._plans = plans
        self._out_schema = out_schema.arrow_schema()
        return out_schema

    @staticmethod
    def _unknown(name: str, option: str, available: list[str], schema: LayerSchema) -> str:
        hint = ""
        if name in {f.name for f in schema.fields}:
            hint = " (it is the geometry/blob field, which carries no attribute value)"
        else:
            folded = [a for a in available if a.lower() == name.lower()]
            close = folded or difflib.get_close_matches(name, available, n=3)
            if close:
                hint = f" (did you mean {', '.join(repr(c) for c in close)}? names are case-sensitive)"
        return (
            f"fields: {option} names {name!r}, which is not a field of layer {schema.name!r}{hint}; "
            f"available fields: {available}"
        )

    @staticmethod
    def _domain_arrays(field: Field, pairs: list[tuple[object, str]]) -> tuple[pa.Array, pa.Array]:
        codes = [c for c, _ in pairs]
        try:
            code_arr = pc.cast(pa.array(codes), field.arrow_type)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConfigError(
                f"fields: the coded-value domain of {field.name!r} has codes {codes[:5]!r} that are not "
                f"{field.arrow_type} values like the field ({exc}); do not decode this field"
            ) from exc
        return code_arr, pa.array([label for _, label in pairs], type=pa.string())

    # --- call ------------------------------------------------------------------

    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        """The batch with its attribute table rebuilt per the plan; geometry untouched."""
        if self._plans is None or self._out_schema is None:
            raise RuntimeError("Fields.bind(schema) must be called before the first batch")
        table = batch.attributes
        columns: list[pa.ChunkedArray] = []
        undecoded = 0
        for plan in self._plans:
            col = table.column(plan.source.name)
            if plan.cast_to is not None:
                col = _cast(col, plan.cast_to, plan.source.name)
            elif plan.codes is not None and plan.labels is not None:
                col, missed = _decode(col, plan.codes, plan.labels)
                undecoded += missed
            target = self._out_schema.field(len(columns)).type
            if col.type != target:  # a batch off its schema (e.g. another timestamp unit)
                col = _cast(col, target, plan.source.name)
            columns.append(col)
        if undecoded:
            with self._lock:
                self._undecoded += undecoded
        out = pa.Table.from_arrays(columns, schema=self._out_schema)
        return FeatureBatch(out, batch.geometry, batch.crs)

    def close(self) -> dict[str, int]:
        """``fields_undecoded``: values whose code was not in their coded-value domain
        (kept as text); present only when domains are decoded."""
        if not (self._decode_all or self._decode):
            return {}
        with self._lock:
            return {"fields_undecoded": self._undecoded}


def _coded_values(field: Field) -> list[tuple[object, str]] | None:
    """``[(code, name), …]`` of a coded-value domain, or None when the field has none."""
    domain = field.domain
    if not isinstance(domain, dict) or domain.get("type") != "codedValue":
        return None
    pairs = []
    for item in domain.get("codedValues") or []:
        if isinstance(item, dict) and "code" in item and item.get("name") is not None:
            pairs.append((item["code"], str(item["name"])))
    return pairs


def _plain_cast(col: pa.ChunkedArray | pa.Array, target: pa.DataType) -> pa.ChunkedArray | pa.Array:
    """Safe Arrow cast, except that text without a zone offset cast to a zoned timestamp
    is read in that zone (UTC for us) instead of being refused."""
    try:
        return pc.cast(col, target)
    except pa.ArrowInvalid:
        if pa.types.is_string(col.type) and pa.types.is_timestamp(target) and target.tz is not None:
            return _cast_text_to_utc(col, target)
        raise


def _cast(col: pa.ChunkedArray, target: pa.DataType, name: str) -> pa.ChunkedArray:
    """:func:`_plain_cast`, raising TransformError naming the field, the first value that
    does not convert and the fix."""
    try:
        return _plain_cast(col, target)
    except pa.ArrowInvalid as exc:
        value = _first_bad(col.combine_chunks() if col.num_chunks != 1 else col.chunk(0), target)
        raise TransformError(
            f"fields: cannot cast field {name!r} from {col.type} to {target}: value {value!r} does not "
            f"convert ({exc}); cast to 'string' instead, fix the value at the source, or leave such "
            "rows out with a where clause"
        ) from exc
    except (pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        raise TransformError(
            f"fields: Arrow cannot cast field {name!r} from {col.type} to {target} ({exc}); "
            "choose another target type (any type casts to 'string')"
        ) from exc


#: A time of day followed by a zone: "…T12:00:00Z", "… 12:00+02:00", "…12:00:00.5-0700".
_ZONED = r"\d{2}:\d{2}(:\d{2}(\.\d*)?)?\s?([Zz]|[+-]\d{2}(:?\d{2})?)$"


def _cast_text_to_utc(col: pa.ChunkedArray, target: pa.TimestampType) -> pa.ChunkedArray:
    """ISO 8601 text to a UTC timestamp: values with a zone offset keep it, values
    without one are read as UTC (Arrow alone refuses naive text for a zoned type)."""
    zoned = pc.match_substring_regex(col, _ZONED)
    null = pa.scalar(None, type=col.type)
    with_zone = pc.cast(pc.if_else(zoned, col, null), target)
    naive = pc.cast(pc.cast(pc.if_else(zoned, null, col), pa.timestamp(target.unit)), target)
    return pc.if_else(zoned, with_zone, naive)


def _first_bad(arr: pa.Array, target: pa.DataType) -> object:
    """The first value of ``arr`` that fails to cast (binary search over slices)."""
    lo, hi = 0, len(arr)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        try:
            _plain_cast(arr.slice(lo, mid - lo), target)
            lo = mid
        except pa.ArrowInvalid:
            hi = mid
    return arr[lo].as_py() if len(arr) else None


def _decode(col: pa.ChunkedArray, codes: pa.Array, labels: pa.Array) -> tuple[pa.ChunkedArray, int]:
    """Codes → labels; codes outside the domain become their own text. Returns (column, misses)."""
    if col.type != codes.type:
        col = pc.cast(col, codes.type)
    idx = pc.index_in(col, value_set=codes)
    decoded = pc.take(labels, idx)
    missed_mask = pc.and_(pc.is_null(idx), pc.is_valid(col))
    missed = pc.sum(missed_mask).as_py() or 0
    if missed:
        decoded = pc.if_else(missed_mask, pc.cast(col, pa.string()), decoded)
    if isinstance(decoded, pa.Array):
        decoded = pa.chunked_array([decoded], type=pa.string())
    return decoded, int(missed)
