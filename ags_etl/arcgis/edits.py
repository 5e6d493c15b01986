"""Planning feature-service edits (pure functions, no I/O).

What the ``feature_service`` loader decides before and after each ``applyEdits`` call:

* :func:`plan_field_map` — which source field goes to which target field, checked against
  the target's field list before any edit: a source field the target lacks, a type that
  cannot fit, a field the server maintains itself (OID, GlobalID, editor tracking, not
  editable), a missing key field on either side and a required target field no source field
  fills are all reported at once, in one :class:`~ags_etl.errors.CapabilityError`;
* :func:`target_values` and :func:`value_problems` — source columns as the JSON values the
  target field takes, and the values it cannot hold (text longer than the field, a null in
  a non-nullable field, an integer beyond the field's range), named per row;
* :func:`canonical_geometries` and :func:`row_digests` — one digest per feature over its
  mapped attributes and geometry, computed the same way from the source (after
  reprojection) and from what the target holds, so that unchanged features send no edit;
* :func:`classify` — adds, updates (with the target's OBJECTID) and unchanged rows of a batch;
* :class:`BatchSizer` and :func:`chunk_bounds` — how many edits go in one request (sized to
  the geometry: points many, polygons few, and by bytes), halved on failure or timeout and
  grown back on success;
* :func:`parse_results` — ``addResults``/``updateResults``/``deleteResults`` → the failures,
  each with the feature's key, the server's code and its description;
* :func:`key_where` — a where clause selecting features by key values (re-reading the
  keys of a batch whose answer was lost).

Comparison rules (so that an immediate second upsert sends no edit at all): values are
compared as the target field holds them — dates as epoch milliseconds, Double values to 12
significant digits, Single values to 6; geometries after dropping Z unless the target has Z,
snapping every coordinate to a grid (1e-9 for geographic CRSs, 1e-4 of the unit otherwise:
ArcGIS's default xy resolutions, so a server that snaps to its resolution still compares
equal), normalising ring order and orientation (:func:`shapely.normalize`) and comparing ISO WKB.
Empty geometries count as null (Esri JSON has no empty geometry).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import shapely
from pyproj import CRS

from ags_etl.errors import ArcGISError, CapabilityError
from ags_etl.geometry import family_of
from ags_etl.schema import Field, LayerSchema

__all__ = [
    "INITIAL_BATCH",
    "MAX_REQUEST_BYTES",
    "BatchSizer",
    "EditFailure",
    "FieldMap",
    "canonical_geometries",
    "chunk_bounds",
    "classify",
    "duplicates",
    "geometry_grid",
    "initial_batch_size",
    "key_where",
    "parse_results",
    "plan_field_map",
    "row_digests",
    "target_values",
    "value_problems",
]

#: Edits per request to start with, by the target's geometry family: no official limit
#: exists; ~1000 points but ~100 polygons go through real servers (docs/reference/arcgis-rest.md §11).
INITIAL_BATCH: dict[str | None, int] = {
    "point": 1000,
    "multipoint": 250,
    "line": 250,
    "polygon": 100,
    None: 1000,  # tables
}
#: Largest request body (the edits' JSON) sent in one applyEdits call.
MAX_REQUEST_BYTES = 4 * 2**20

#: Field type → the kind of value it holds.
_KIND = {
    "esriFieldTypeOID": "int",
    "esriFieldTypeSmallInteger": "int",
    "esriFieldTypeInteger": "int",
    "esriFieldTypeBigInteger": "int",
    "esriFieldTypeSingle": "float",
    "esriFieldTypeDouble": "float",
    "esriFieldTypeString": "text",
    "esriFieldTypeXML": "text",
    "esriFieldTypeGUID": "guid",
    "esriFieldTypeGlobalID": "guid",
    "esriFieldTypeDate": "date",
    "esriFieldTypeTimestampOffset": "date",
    "esriFieldTypeDateOnly": "dateonly",
    "esriFieldTypeTimeOnly": "timeonly",
}
#: Source kind → target kinds that hold every value of it (ranges and lengths are checked per value).
_FITS = {
    "int": {"int", "float"},
    "float": {"float"},
    "text": {"text"},
    "guid": {"guid", "text"},
    "date": {"date"},
    "dateonly": {"dateonly", "date"},
    "timeonly": {"timeonly"},
}
_INT_RANGE = {
    "esriFieldTypeSmallInteger": (-(2**15), 2**15 - 1),
    "esriFieldTypeInteger": (-(2**31), 2**31 - 1),
    "esriFieldTypeBigInteger": (-(2**63), 2**63 - 1),
}
_DAY_MS = 86_400_000


def _kind(f: Field) -> str:
    return _KIND.get(f.esri_type, "text")


# ---------------------------------------------------------------------------- field mapping


@dataclass(frozen=True)
class FieldMap:
    """Source field → target field, in source order, and the key on both sides.

    ``pairs`` holds ``(source name, target Field)``; ``key_source``/``key_target`` are None
    for modes without a key (append, replace).
    """

    pairs: tuple[tuple[str, Field], ...]
    key_source: str | None
    key_target: str | None
    #: Source fields left out because their namesake in the target is filled by the server.
    skipped: tuple[str, ...] = ()

    @property
    def target_names(self) -> list[str]:
        return [t.name for _, t in self.pairs]


def _find(name: str, fields: Mapping[str, Field]) -> Field | None:
    """The field called ``name``: exact spelling first, else the one case-insensitive match
    (ArcGIS field names are case-insensitive)."""
    if name in fields:
        return fields[name]
    hits = [f for n, f in fields.items() if n.lower() == name.lower()]
    return hits[0] if len(hits) == 1 else None


def plan_field_map(
    source: LayerSchema,
    target: LayerSchema,
    *,
    overrides: Mapping[str, str | None],
    key: str | None,
    maintained: Mapping[str, str],
    target_label: str,
    defaults: frozenset[str] = frozenset(),
) -> FieldMap:
    """Map every source attribute field to a target field, or raise one CapabilityError listing
    every problem.

    ``overrides`` maps a source name to a target name, or to None to leave that source field out.
    Without an override a field goes to the target field of the same name (case-insensitively).
    The source's OID field is left out (the target numbers its own features), as is a source
    GlobalID field unless an override maps it. ``maintained`` names target fields the server
    fills itself (lower-case name → why: "object id", "global id", "editor tracking", "not
    editable"); a source field that only matches one by name is left out (listed in
    ``skipped``: a source's own editor-tracking fields, say), an override onto one is an error. ``defaults`` names (lower-case) the target
    fields with a default value, which need no source field even when not nullable. ``key`` is a source field name; its target is its
    mapped field. ``target_label`` names the target layer in messages.
    """
    problems: list[str] = []
    src_fields = {f.name: f for f in source.attribute_fields}
    tgt_fields = {f.name: f for f in target.attribute_fields}
    for name in overrides:
        if _find(name, src_fields) is None:
            problems.append(f"fields: {name!r} is not a source field (source fields: {', '.join(src_fields)})")
    pairs: list[tuple[str, Field]] = []
    skipped: list[str] = []
    used: dict[str, str] = {}
    for name, sf in src_fields.items():
        override = next((v for k, v in overrides.items() if k.lower() == name.lower()), ...)
        if override is None:
            continue
        if override is ... and (name == source.oid_field or sf.esri_type == "esriFieldTypeGlobalID"):
            continue
        wanted = name if override is ... else override
        tf = _find(wanted, tgt_fields)
        if tf is None:
            hint = "" if override is not ... else f", or leave it out with fields: {{{name}: null}}"
            problems.append(
                f"source field {name!r} has no field {wanted!r} in {target_label}; map it to one of "
                f"{', '.join(tgt_fields)} with fields: {{{name}: TARGET_NAME}}{hint}"
            )
            continue
        why = maintained.get(tf.name.lower())
        if why is not None and override is ...:
            skipped.append(name)  # e.g. a source's own editor-tracking fields: the target sets its own
            continue
        if why is not None:
            problems.append(
                f"source field {name!r} would be written to {tf.name!r}, which {target_label} fills itself "
                f"({why}); leave it out with fields: {{{name}: null}} or map it elsewhere"
            )
            continue
        if tf.name in used:
            problems.append(f"source fields {used[tf.name]!r} and {name!r} both map to target field {tf.name!r}")
            continue
        if _kind(tf) not in _FITS[_kind(sf)]:
            problems.append(
                f"source field {name!r} ({sf.esri_type}) cannot be written to {tf.name!r} ({tf.esri_type}) of "
                f"{target_label}; map it to a field of a fitting type or convert it with a fields transform"
            )
            continue
        used[tf.name] = name
        pairs.append((name, tf))
    key_target: str | None = None
    key_source: str | None = None
    if key is not None:
        ks = _find(key, src_fields)
        if ks is None:
            problems.append(f"key {key!r} is not a source field (source fields: {', '.join(src_fields)})")
        else:
            key_source = ks.name
            match = [t for s, t in pairs if s == ks.name]
            if match:
                key_target = match[0].name
            elif not any(p.startswith(f"source field {ks.name!r}") for p in problems):
                problems.append(
                    f"key {key!r} maps to no field of {target_label}; add the key field to the target or map it "
                    f"with fields: {{{ks.name}: TARGET_NAME}}"
                )
    mapped = {t.name for _, t in pairs}
    for tf in target.attribute_fields:
        server_filled = tf.name.lower() in maintained or tf.esri_type in ("esriFieldTypeOID", "esriFieldTypeGlobalID")
        required = not tf.nullable and not server_filled and tf.name not in mapped
        if required and tf.name.lower() not in defaults:
            problems.append(
                f"target field {tf.name!r} of {target_label} may not be null and no source field fills it; "
                f"map a source field to it with fields: {{SOURCE_NAME: {tf.name}}}"
            )
    src_family = family_of(source.geometry_type, source.geojson_types())
    tgt_family = family_of(target.geometry_type, target.geojson_types())
    if target.geometry_type is None and source.geometry_type is not None:
        problems.append(
            f"{target_label} is a table, the source has geometries; drop them first or write to a layer with geometry"
        )
    elif target.geometry_type is not None and source.geometry_type is None:
        problems.append(f"{target_label} holds {target.geometry_type} geometries, the source is a table without any")
    elif src_family is not None and tgt_family is not None and src_family != tgt_family:
        problems.append(
            f"{target_label} holds {target.geometry_type} geometries, the source has {source.geometry_type}; "
            "write to a layer of the same geometry type"
        )
    if problems:
        raise CapabilityError(f"feature_service: cannot write to {target_label}: " + "; ".join(problems))
    return FieldMap(tuple(pairs), key_source, key_target, tuple(skipped))


# ---------------------------------------------------------------------------- values


def target_values(column: pa.ChunkedArray | pa.Array, target: Field) -> list[Any]:
    """One source column as the JSON values ``target`` takes: dates as epoch ms (DateOnly as
    ``YYYY-MM-DD``), NaN as null, integers as floats for float fields; None for nulls."""
    kind = _kind(target)
    col = column
    typ = col.type
    if pa.types.is_timestamp(typ):
        ms = pc.cast(pc.cast(col, pa.timestamp("ms", tz=typ.tz), safe=False), pa.int64())
        values = ms.to_pylist()
        if kind == "dateonly":
            return [None if v is None else (dt.date(1970, 1, 1) + dt.timedelta(milliseconds=v)).isoformat() for v in values]
        return values
    if pa.types.is_date(typ):
        days = pc.cast(pc.cast(col, pa.date32()), pa.int32()).to_pylist()
        if kind == "date":
            return [None if d is None else d * _DAY_MS for d in days]
        return [None if d is None else (dt.date(1970, 1, 1) + dt.timedelta(days=d)).isoformat() for d in days]
    if pa.types.is_time(typ):
        return [None if v is None else v.isoformat() for v in col.to_pylist()]
    values = col.to_pylist()
    if pa.types.is_floating(typ):
        values = [None if v is None or math.isnan(v) else v for v in values]
    if kind == "float" and pa.types.is_integer(typ):
        values = [None if v is None else float(v) for v in values]
    return values


def value_problems(values: Sequence[Any], target: Field) -> dict[int, str]:
    """Rows whose value ``target`` cannot hold → why (text too long, null where not nullable,
    integer out of range)."""
    out: dict[int, str] = {}
    if not target.nullable:
        for i, v in enumerate(values):
            if v is None:
                out[i] = f"{target.name!r} may not be null"
    if target.length is not None and target.length > 0 and _kind(target) == "text":
        limit = target.length
        for i, v in enumerate(values):
            if isinstance(v, str) and len(v) > limit:
                out.setdefault(i, f"{target.name!r} holds at most {limit} characters, the value has {len(v)}")
    bounds = _INT_RANGE.get(target.esri_type)
    if bounds is not None:
        lo, hi = bounds
        for i, v in enumerate(values):
            if isinstance(v, int) and not lo <= v <= hi:
                out.setdefault(i, f"{target.name!r} ({target.esri_type}) cannot hold {v}")
    return out


def _canonical(value: Any, kind: str, esri_type: str) -> Any:
    if value is None:
        return None
    if kind == "float":
        v = float(value)
        if math.isnan(v):
            return None
        digits = 6 if esri_type == "esriFieldTypeSingle" else 12
        return float(f"{v:.{digits}g}") + 0.0
    if kind == "int":
        return int(value)
    if kind == "guid":
        return str(value).upper().strip("{}")
    return value


def geometry_grid(crs: CRS | None) -> float:
    """Coordinate grid for comparing geometries: 1e-9 for geographic CRSs, 1e-4 otherwise."""
    return 1e-9 if crs is not None and crs.is_geographic else 1e-4


def canonical_geometries(geoms: np.ndarray, *, grid: float, has_z: bool) -> list[bytes | None]:
    """ISO WKB of each geometry snapped to ``grid`` and normalised (see the module docstring);
    None for missing or empty geometries."""
    arr = np.asarray(geoms, dtype=object)
    missing = shapely.is_missing(arr) | shapely.is_empty(arr)
    out: list[bytes | None] = [None] * len(arr)
    idx = np.flatnonzero(~missing)
    if len(idx) == 0:
        return out
    sub = arr[idx]
    if not has_z:
        sub = shapely.force_2d(sub)
    snapped = shapely.transform(sub, lambda c: np.round(c / grid) * grid + 0.0, include_z=has_z)
    wkb = shapely.to_wkb(shapely.normalize(snapped), flavor="iso")
    for i, w in zip(idx.tolist(), wkb.tolist(), strict=True):
        out[i] = w
    return out


def row_digests(
    columns: Sequence[Sequence[Any]], fields: Sequence[Field], geometries: Sequence[bytes | None] | None, rows: int
) -> list[bytes]:
    """A 16-byte digest per row over its values (one column per field, as :func:`target_values`
    gives them or as the target answered them) and its canonical geometry."""
    kinds = [(_kind(f), f.esri_type) for f in fields]
    out = []
    for i in range(rows):
        values = [_canonical(col[i], k, t) for col, (k, t) in zip(columns, kinds, strict=True)]
        h = hashlib.blake2b(orjson.dumps(values), digest_size=16)
        if geometries is not None:
            g = geometries[i]
            h.update(b"\x01" + g if g is not None else b"\x00")
        out.append(h.digest())
    return out


# ---------------------------------------------------------------------------- changes


def duplicates(keys: Sequence[Hashable]) -> list[Hashable]:
    """Key values that occur more than once in ``keys`` (each once, in first-seen order; None ignored)."""
    seen: set[Hashable] = set()
    dupes: dict[Hashable, None] = {}
    for k in keys:
        if k is None:
            continue
        if k in seen:
            dupes[k] = None
        seen.add(k)
    return list(dupes)


def classify(
    keys: Sequence[Hashable], digests: Sequence[bytes], target: Mapping[Hashable, tuple[int, bytes]]
) -> tuple[list[int], list[tuple[int, int]], int]:
    """(rows to add, (row, target OBJECTID) to update, number unchanged) for one batch.

    A row whose key the target lacks is an add; one whose digest differs from the target's an
    update; the rest are unchanged.
    """
    adds: list[int] = []
    updates: list[tuple[int, int]] = []
    same = 0
    for i, (k, d) in enumerate(zip(keys, digests, strict=True)):
        held = target.get(k)
        if held is None:
            adds.append(i)
        elif held[1] != d:
            updates.append((i, held[0]))
        else:
            same += 1
    return adds, updates, same


# ---------------------------------------------------------------------------- batches


def initial_batch_size(geometry_type: str | None, asked: int | None) -> int:
    """Edits per request to start with: ``asked``, else by the target's geometry family."""
    if asked is not None:
        return asked
    return INITIAL_BATCH.get(family_of(geometry_type), INITIAL_BATCH[None])


@dataclass
class BatchSizer:
    """Edits per request: halved on a failed or lost request (down to 1), doubled back on a
    good one (up to ``ceiling``, the size it started at)."""

    size: int
    ceiling: int

    @classmethod
    def start(cls, size: int) -> BatchSizer:
        return cls(size, size)

    def failed(self) -> None:
        self.size = max(1, self.size // 2)

    def succeeded(self) -> None:
        self.size = min(self.ceiling, self.size * 2)


def chunk_bounds(sizes: Sequence[int], count: int, max_bytes: int = MAX_REQUEST_BYTES) -> list[tuple[int, int]]:
    """Cut edits of the given encoded ``sizes`` into ``(start, stop)`` runs of at most ``count``
    edits and ``max_bytes`` (an edit larger than ``max_bytes`` goes alone)."""
    bounds = []
    start = 0
    total = 0
    for i, s in enumerate(sizes):
        if i > start and (i - start >= count or total + s > max_bytes):
            bounds.append((start, i))
            start, total = i, 0
        total += s + 1
    if start < len(sizes):
        bounds.append((start, len(sizes)))
    return bounds


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class EditFailure:
    """One feature the server refused (or that was not sent because the target cannot hold it)."""

    kind: str  # "add", "update", "delete"
    key: Any
    code: int | None
    description: str

    def __str__(self) -> str:
        code = "" if self.code is None else f"error {self.code}: "
        return f"{self.kind} of key {self.key!r} failed: {code}{self.description}"


def parse_results(answer: Mapping[str, Any], kind: str, keys: Sequence[Any], where: str) -> tuple[int, list[EditFailure]]:
    """(successes, failures) of one applyEdits answer for the ``keys`` sent as ``kind``.

    ``kind`` is "add", "update" or "delete" (reads ``addResults`` …). A result list of
    another length than what was sent raises ArcGISError naming ``where`` (the layer URL).
    """
    name = f"{kind}Results"
    results = answer.get(name)
    if not isinstance(results, list) or len(results) != len(keys):
        got = "none" if not isinstance(results, list) else str(len(results))
        raise ArcGISError(
            f"{where}/applyEdits answered {got} {name} for {len(keys)} {kind}s; the server's answer cannot be "
            "matched to the edits sent. Re-run to repair (upsert and mirror are idempotent)"
        )
    ok = 0
    failures = []
    for key, item in zip(keys, results, strict=True):
        if isinstance(item, Mapping) and item.get("success") is True:
            ok += 1
            continue
        error = item.get("error") if isinstance(item, Mapping) else None
        code: int | None = None
        text = "the server gave no reason"
        if isinstance(error, Mapping):
            raw = error.get("code")
            code = int(raw) if isinstance(raw, (int, float)) or (isinstance(raw, str) and raw.isdigit()) else None
            text = str(error.get("description") or error.get("message") or text)
        failures.append(EditFailure(kind, key, code, text))
    return ok, failures


def key_where(field: str, values: Sequence[Any]) -> str:
    """``FIELD IN (…)`` for key values: strings quoted with ``'`` doubled, numbers as they are."""
    parts = []
    for v in values:
        if isinstance(v, str):
            parts.append("'" + v.replace("'", "''") + "'")
        elif isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"key value {v!r} is neither text nor a number")
        else:
            parts.append(repr(v))
    return f"{field} IN ({', '.join(parts)})"
