"""Clip: cut a stream's geometries to a bbox or a polygon mask.

Pipeline forms::

    {type: clip, bbox: [-122.6, 37.6, -122.3, 37.9]}                 # in the stream's CRS
    {type: clip, bbox: [-122.6, 37.6, -122.3, 37.9], crs: "EPSG:4326"}
    {type: clip, mask: county.shp}                                    # the file's own CRS
    {type: clip, mask: {"rings": [...], "spatialReference": {"wkid": 2227}}}

Semantics are those of ``shapely.intersection(feature, area)``, restricted to the
layer's geometry family: polygon layers keep Polygon/MultiPolygon results only
(polygonal parts are taken out of GeometryCollections, lower-dimension slivers where a
feature only touches the area are dropped), line layers LineString/MultiLineString,
point layers Point, multipoint layers MultiPoint. A feature left with nothing — or
without geometry to begin with — is dropped and counted (:meth:`Clip.close`).

Where it matters for speed: features whose bounds lie inside the bbox, or which the
prepared mask ``contains_properly``, are kept untouched; features whose bounds miss
the area are dropped untouched; only border features are cut.

A bbox or inline mask is read in ``crs`` (default: the stream's CRS at this point of
the pipeline); a mask file or an Esri JSON mask with a ``spatialReference`` keeps its
own CRS. When that CRS differs from the stream's, the area is densified and transformed
into the stream's CRS at :meth:`Clip.bind`. A clip before a reproject therefore cuts in
the source CRS (ogr2ogr ``-clipsrc``), one after it in the target CRS (``-clipdst``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import shapely
from pydantic import BaseModel, ConfigDict, field_validator, model_validator
from pyproj import CRS
from shapely.errors import GEOSException

from ags_etl.arcgis.esrijson import decode_geometry
from ags_etl.batch import FeatureBatch
from ags_etl.crs import CRSLike, crs_from_spatial_reference, describe_crs, parse_crs
from ags_etl.errors import ConfigError, GeometryError, TransformError
from ags_etl.geometry import (
    FAMILY_TYPES,
    as_geometry_array,
    coerce_to_family,
    densified_box,
    drop_m,
    family_of,
    transform_geometries,
)
from ags_etl.schema import LayerSchema
from ags_etl.transformers.base import BBox, check_option
from ags_etl.transformers.base import Transformer as BaseTransformer
from ags_etl.transformers.reproject import get_transformer, same_crs

__all__ = ["Clip", "parse_bbox", "read_mask"]

log = logging.getLogger(__name__)

_BBOX_FIX = "give it as xmin,ymin,xmax,ymax with xmin < xmax and ymin < ymax, e.g. -122.6,37.6,-122.3,37.9"
_GEOJSON_GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
#: Vertices added along each bbox edge before it is transformed into another CRS.
_BOX_SEGMENTS = 64
#: A mask is densified to segments no longer than its extent / this before transforming.
_MASK_SEGMENTS = 256


def parse_bbox(value: object) -> BBox:
    """``(xmin, ymin, xmax, ymax)`` from a 4-sequence of numbers or a "xmin,ymin,xmax,ymax" string.

    Raises ConfigError for anything else, for non-finite numbers and for boxes with no
    area (a box crossing the antimeridian, xmin > xmax, is not supported).
    """
    items: Sequence[object]
    if isinstance(value, str):
        items = [p.strip() for p in value.split(",")]
    elif isinstance(value, (Sequence, np.ndarray)):
        items = list(value)
    else:
        raise ConfigError(f"clip bbox {value!r} is not a list of 4 numbers; {_BBOX_FIX}")
    if len(items) != 4:
        raise ConfigError(f"clip bbox {value!r} has {len(items)} values, not 4; {_BBOX_FIX}")
    try:
        nums = tuple(float(v) for v in items)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"clip bbox {value!r} holds a value that is not a number; {_BBOX_FIX}") from exc
    if not all(math.isfinite(v) for v in nums):
        raise ConfigError(f"clip bbox {value!r} holds a non-finite number; {_BBOX_FIX}")
    xmin, ymin, xmax, ymax = nums
    if not (xmin < xmax and ymin < ymax):
        raise ConfigError(
            f"clip bbox {value!r} encloses no area (xmin < xmax and ymin < ymax must hold; a box "
            f"across the antimeridian is not supported: use a mask polygon in a projected CRS); {_BBOX_FIX}"
        )
    return (xmin, ymin, xmax, ymax)


def _polygonal(geom: shapely.Geometry | None, what: str) -> shapely.Geometry:
    """The geometry made valid and reduced to its polygons; ConfigError if it has none."""
    if geom is None or not isinstance(geom, shapely.Geometry):
        raise ConfigError(f"clip mask {what} holds no geometry; give a polygon or multipolygon")
    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    poly = coerce_to_family(as_geometry_array(geom), "polygon")[0]
    if poly is None:
        raise ConfigError(
            f"clip mask {what} holds no polygon with area (it is a {geom.geom_type}); "
            "give a polygon or multipolygon, or use bbox for a rectangle"
        )
    return poly


def _union(geoms: list[shapely.Geometry], what: str) -> shapely.Geometry:
    if not geoms:
        raise ConfigError(f"clip mask {what} holds no features; give a file with at least one polygon")
    polys = [_polygonal(g, what) for g in geoms]
    return polys[0] if len(polys) == 1 else shapely.union_all(polys)


def _geojson_crs(obj: dict[str, Any], what: str) -> CRS | None:
    """The legacy GeoJSON (2008) ``crs`` member, if any: ``{"type": "name", "properties": {"name": ...}}``."""
    member = obj.get("crs")
    if member is None:
        return None
    try:
        name = member["properties"]["name"]
    except (KeyError, TypeError) as exc:
        raise ConfigError(
            f"clip mask {what} has a 'crs' member {member!r} that is not of the form "
            "{'type': 'name', 'properties': {'name': 'EPSG:…'}}; fix it or remove it and pass crs"
        ) from exc
    return parse_crs(str(name))


def _mask_from_dict(obj: dict[str, Any]) -> tuple[shapely.Geometry, CRS | None]:
    """Inline GeoJSON geometry/Feature/FeatureCollection or Esri JSON polygon/envelope."""
    what = "(inline)"
    if "rings" in obj or "curveRings" in obj or all(k in obj for k in ("xmin", "ymin", "xmax", "ymax")):
        crs = crs_from_spatial_reference(obj.get("spatialReference"), strict=True)
        try:
            geom = decode_geometry(obj, "esriGeometryPolygon")
        except (GeometryError, ValueError, TypeError) as exc:
            raise ConfigError(
                f"clip mask (inline Esri JSON) cannot be decoded ({exc}); give a polygon "
                "{'rings': [[[x, y], ...]], 'spatialReference': {'wkid': ...}} or an envelope"
            ) from exc
        return _polygonal(geom, "(inline Esri JSON)"), crs
    kind = obj.get("type")
    crs = _geojson_crs(obj, what)
    try:
        if kind == "FeatureCollection":
            features = obj.get("features") or []
            geoms = [shapely.geometry.shape(f["geometry"]) for f in features if f.get("geometry") is not None]
            return _union(geoms, what), crs
        if kind == "Feature":
            if obj.get("geometry") is None:
                raise ConfigError("clip mask (inline GeoJSON Feature) has a null geometry; give a polygon")
            return _polygonal(shapely.geometry.shape(obj["geometry"]), what), crs
        if kind in _GEOJSON_GEOMETRY_TYPES:
            return _polygonal(shapely.geometry.shape(obj), what), crs
    except (KeyError, TypeError, ValueError, AttributeError, GEOSException) as exc:
        raise ConfigError(f"clip mask (inline GeoJSON {kind}) cannot be read ({exc}); give valid GeoJSON") from exc
    raise ConfigError(
        f"clip mask {json.dumps(obj)[:120]!s} is neither GeoJSON (a geometry, Feature or FeatureCollection) "
        "nor an Esri JSON polygon ({'rings': [...], 'spatialReference': {...}}) or envelope"
    )


def _read_geoparquet(path: Path) -> tuple[shapely.Geometry, CRS | None]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise ConfigError(f"clip mask file {str(path)!r} is not a readable Parquet file ({exc})") from exc
    raw = (pf.metadata.metadata or {}).get(b"geo")
    if raw is None and pf.schema_arrow.metadata:
        raw = pf.schema_arrow.metadata.get(b"geo")
    if raw is None:
        raise ConfigError(
            f"clip mask file {str(path)!r} has no GeoParquet 'geo' metadata; write it as GeoParquet "
            "(or GeoJSON/shapefile)"
        )
    geo = json.loads(raw)
    column = geo.get("primary_column")
    meta = (geo.get("columns") or {}).get(column)
    if meta is None:
        raise ConfigError(f"clip mask file {str(path)!r}: 'geo' metadata names no primary column; rewrite the file")
    encoding = str(meta.get("encoding", "WKB"))
    if encoding.upper() != "WKB":
        raise ConfigError(
            f"clip mask file {str(path)!r} stores geometry as {encoding!r}; only WKB GeoParquet is read, "
            "rewrite it with WKB encoding"
        )
    if "crs" not in meta:
        crs: CRS | None = CRS.from_user_input("OGC:CRS84")  # GeoParquet: omitted means OGC:CRS84
    elif meta["crs"] is None:
        crs = None  # explicitly unknown
    else:
        crs = parse_crs(meta["crs"])
    table = pf.read(columns=[column])
    wkb = table.column(column).to_numpy(zero_copy_only=False)
    geoms = shapely.from_wkb(wkb)
    return _union([g for g in geoms if g is not None], repr(str(path))), crs


def _read_with_fiona(path: Path) -> tuple[shapely.Geometry, CRS | None]:
    import fiona
    from fiona.errors import FionaError

    try:
        with fiona.open(path) as src:
            wkt = src.crs.to_wkt() if src.crs else ""
            geoms = [shapely.geometry.shape(f.geometry) for f in src if f.geometry is not None]
    except FionaError as exc:
        raise ConfigError(
            f"clip mask file {str(path)!r} cannot be read ({exc}); give a GeoJSON, shapefile, "
            "GeoPackage or GeoParquet file"
        ) from exc
    crs = parse_crs(wkt) if wkt else None
    return _union(geoms, repr(str(path))), crs


def read_mask(path: str | os.PathLike[str]) -> tuple[shapely.Geometry, CRS | None]:
    """The union of the polygons in a mask file and the file's CRS (None if it has none).

    GeoParquet (``.parquet``/``.geoparquet``) is read with pyarrow, everything else with
    fiona (GeoJSON, shapefile, GeoPackage …). Raises ConfigError for a missing file, an
    unreadable one, or one without polygons.
    """
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"clip mask file {str(p)!r} does not exist; check the path")
    if p.suffix.lower() in (".parquet", ".geoparquet"):
        return _read_geoparquet(p)
    return _read_with_fiona(p)


class Clip(BaseTransformer):
    """Clip to ``bbox`` or to ``mask`` (exactly one).

    ``bbox``: ``(xmin, ymin, xmax, ymax)`` in ``crs`` (default: the stream's CRS).
    ``mask``: a file path, an inline GeoJSON/Esri JSON dict, or a shapely geometry; a
    file's or an Esri JSON ``spatialReference``'s own CRS wins over ``crs``. All input
    is read and checked here, so mistakes raise ConfigError at construction — before
    any network call.
    """

    name: ClassVar[str] = "clip"

    class Options(BaseModel):
        """Pipeline-file keys: exactly one of ``bbox`` and ``mask``, and ``crs``; checked offline
        (the mask file itself is read when the Clip is built)."""

        model_config = ConfigDict(extra="forbid")
        bbox: list[float] | str | None = None
        mask: str | dict[str, Any] | None = None
        crs: str | int | dict[str, Any] | None = None

        @field_validator("bbox")
        @classmethod
        def _bbox(cls, value: list[float] | str | None) -> list[float] | str | None:
            return check_option(parse_bbox, value)

        @field_validator("crs")
        @classmethod
        def _crs(cls, value: CRSLike | None) -> CRSLike | None:
            return check_option(parse_crs, value)

        @model_validator(mode="after")
        def _one_area(self) -> "Clip.Options":
            if (self.bbox is None) == (self.mask is None):
                raise ValueError(
                    "give exactly one of bbox ([xmin, ymin, xmax, ymax]) and mask (a file path or an inline polygon)"
                )
            return self

    def __init__(
        self,
        bbox: Sequence[float] | str | None = None,
        mask: str | os.PathLike[str] | dict[str, Any] | shapely.Geometry | None = None,
        crs: CRSLike | None = None,
    ) -> None:
        if (bbox is None) == (mask is None):
            raise ConfigError("clip needs exactly one of bbox and mask; give bbox: [xmin, ymin, xmax, ymax] or mask: PATH")
        self._option_crs = None if crs is None else parse_crs(crs)
        self._bbox: BBox | None = None
        self._mask_input: shapely.Geometry | None = None
        own_crs: CRS | None = None
        if bbox is not None:
            self._bbox = parse_bbox(bbox)
            self._given_bounds: BBox = self._bbox
        else:
            if isinstance(mask, shapely.Geometry):
                self._mask_input = _polygonal(mask, "(shapely geometry)")
            elif isinstance(mask, dict):
                self._mask_input, own_crs = _mask_from_dict(mask)
            elif isinstance(mask, (str, os.PathLike)):
                self._mask_input, own_crs = read_mask(mask)
            else:
                raise ConfigError(
                    f"clip mask {mask!r} has type {type(mask).__name__}; give a file path, "
                    "a GeoJSON/Esri JSON polygon, or a shapely polygon"
                )
            bounds = shapely.bounds(self._mask_input)
            self._given_bounds = (float(bounds[0]), float(bounds[1]), float(bounds[2]), float(bounds[3]))
        if own_crs is not None and self._option_crs is not None and not same_crs(own_crs, self._option_crs):
            log.warning(
                "clip: the mask carries its own CRS %s; crs=%s is ignored for it",
                describe_crs(own_crs),
                describe_crs(self._option_crs),
            )
        #: The CRS the bbox/mask was given in; None = the stream's (known at bind).
        self._given_crs: CRS | None = own_crs if own_crs is not None else self._option_crs
        self._family: str | None = None
        self._rect: BBox | None = None
        self._mask: shapely.Geometry | None = None
        self._area_crs: CRS | None = None
        self._strip_m = False
        self._oid_field: str | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._dropped = 0
        self._dropped_null = 0

    # --- construction helpers ------------------------------------------------

    @classmethod
    def from_cli(cls, clip: str | None, clip_file: str | None, clip_crs: str | None) -> Clip | None:
        """The Clip for ``pull --clip xmin,ymin,xmax,ymax | --clip-file PATH [--clip-crs CRS]``.

        Returns None when neither option is given. Raises ConfigError when both are, or
        when ``--clip-crs`` comes alone.
        """
        if clip is not None and clip_file is not None:
            raise ConfigError("--clip and --clip-file exclude each other; give one")
        if clip is None and clip_file is None:
            if clip_crs is not None:
                raise ConfigError(f"--clip-crs {clip_crs!r} needs --clip or --clip-file; add one or drop --clip-crs")
            return None
        if clip is not None:
            return cls(bbox=clip, crs=clip_crs)
        return cls(mask=clip_file, crs=clip_crs)

    # --- Transformer contract ------------------------------------------------

    def bind(self, schema: LayerSchema) -> LayerSchema:
        """Bring the area into the stream's CRS; output schema with the family's geometry types.

        Raises ConfigError for tables, for layers of unknown geometry family, when the
        area has its own CRS but the stream's is unknown, and when the area cannot be
        transformed into the stream's CRS.
        """
        if schema.geometry_type is None and not schema.geojson_types():
            raise ConfigError(
                f"clip: layer {schema.name!r} is a table without geometry; remove the clip transform for it"
            )
        family = family_of(schema.geometry_type, schema.geojson_types())
        if family is None:
            raise ConfigError(
                f"clip: layer {schema.name!r} has geometry type {schema.geometry_type!r} "
                f"({schema.geojson_types()}), which is no single family of points, lines or polygons"
            )
        self._family = family
        self._oid_field = schema.oid_field
        stream_crs = schema.crs
        given = self._given_crs
        if given is not None and stream_crs is None:
            raise ConfigError(
                f"clip: the area is in {describe_crs(given)} but the CRS of layer {schema.name!r} is unknown; "
                "reproject first with from_crs set, or give the area in the layer's coordinates without a crs"
            )
        needs_transform = given is not None and stream_crs is not None and not same_crs(given, stream_crs)
        if self._bbox is not None and not needs_transform:
            self._rect, self._mask = self._bbox, None
        else:
            area = shapely.box(*self._bbox) if self._bbox is not None else self._mask_input
            if needs_transform:
                assert given is not None and stream_crs is not None
                area = self._transform_area(area, given, stream_crs)
            self._rect, self._mask = None, area
        self._local = threading.local()  # per-thread prepared copies of the mask
        self._area_crs = stream_crs
        self._strip_m = schema.has_m
        return schema.replace(geometry_types_override=FAMILY_TYPES[family], has_m=False)

    @property
    def area(self) -> shapely.Geometry:
        """The area features are clipped to, in the stream's CRS (after :meth:`bind`):
        a box, or the mask (transformed and densified when it came in another CRS)."""
        if self._rect is not None:
            return shapely.box(*self._rect)
        if self._mask is None:
            raise RuntimeError("Clip.area is known only after bind(schema)")
        return self._mask

    def spatial_filter(self) -> tuple[BBox, CRS] | None:
        """A bbox outside which every feature is dropped, and its CRS.

        After :meth:`bind`: the bounds of :attr:`area` in the stream's CRS. When the
        area came in another CRS these are the bounds of the densified, transformed
        area, so they cover it entirely — the plain bbox of the mask in its own CRS would
        not, once a server moved only its corners into the layer's CRS. Before
        :meth:`bind`: the bbox of the area in the CRS it was given in, if that is known.
        None when no CRS is known (a layer of unknown CRS, before bind, no crs given).

        Whoever pushes the filter to a server in a CRS other than this one should
        transform it densified (``pyproj.Transformer.transform_bounds``), not by corners.
        """
        if self._family is None:  # not bound
            if self._given_crs is None:
                return None
            return self._given_bounds, self._given_crs
        if self._area_crs is None:
            return None
        if self._rect is not None:
            return self._rect, self._area_crs
        assert self._mask is not None
        b = shapely.bounds(self._mask)
        return (float(b[0]), float(b[1]), float(b[2]), float(b[3])), self._area_crs

    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        """The batch with border features cut and features left empty dropped."""
        if self._family is None:
            raise RuntimeError("Clip.bind(schema) must be called before the first batch")
        geoms = batch.geometry
        if geoms is None:
            return batch
        present = ~shapely.is_missing(geoms)
        null_count = int((~present).sum())
        present &= ~shapely.is_empty(geoms)
        if self._rect is not None:
            out = self._clip_rect(geoms, present, batch)
        else:
            out = self._clip_mask(geoms, present, batch)
        if self._strip_m:
            out = drop_m(out)
        keep = ~shapely.is_missing(out)
        dropped = len(geoms) - int(keep.sum())
        with self._lock:
            self._dropped += dropped
            self._dropped_null += null_count
        if dropped == 0:
            return FeatureBatch(batch.attributes, out, batch.crs)
        return FeatureBatch(batch.attributes.filter(keep), out[keep], batch.crs)

    def close(self) -> dict[str, int]:
        """``clip_dropped``: features dropped (left empty, or without geometry); of them
        ``clip_dropped_null``: features that had no geometry."""
        with self._lock:
            return {"clip_dropped": self._dropped, "clip_dropped_null": self._dropped_null}

    # --- work ------------------------------------------------------------------

    def _transform_area(self, area: shapely.Geometry, src: CRS, dst: CRS) -> shapely.Geometry:
        xmin, ymin, xmax, ymax = shapely.bounds(area)
        if self._bbox is not None:
            area = densified_box(self._bbox, _BOX_SEGMENTS)
        else:
            step = max(xmax - xmin, ymax - ymin) / _MASK_SEGMENTS
            if step > 0:
                area = shapely.segmentize(area, step)
        moved, bad = transform_geometries(as_geometry_array(area), get_transformer(src, dst))
        what = f"bbox {self._bbox}" if self._bbox is not None else "mask"
        if bad.any():
            raise ConfigError(
                f"clip: the {what} in {describe_crs(src)} cannot be transformed into the stream's CRS "
                f"{describe_crs(dst)} (it leaves that projection's domain); give an area inside the "
                "projection's domain, or put the clip before the reproject"
            )
        return _polygonal(moved[0], f"{what} (transformed to {describe_crs(dst)})")

    def _clip_rect(self, geoms: np.ndarray, present: np.ndarray, batch: FeatureBatch) -> np.ndarray:
        assert self._rect is not None
        xmin, ymin, xmax, ymax = self._rect
        out = np.full(len(geoms), None, dtype=object)
        b = shapely.bounds(geoms)  # NaN rows for None/empty: every comparison is False
        with np.errstate(invalid="ignore"):
            inside = present & (b[:, 0] >= xmin) & (b[:, 2] <= xmax) & (b[:, 1] >= ymin) & (b[:, 3] <= ymax)
            outside = (b[:, 0] > xmax) | (b[:, 2] < xmin) | (b[:, 1] > ymax) | (b[:, 3] < ymin)
        out[inside] = geoms[inside]
        border = np.flatnonzero(present & ~inside & ~outside)
        if len(border) == 0:
            return out
        sub = geoms[border]
        if self._family == "polygon":
            # clip_by_rect is ~9x faster than intersection for polygons but may return
            # invalid polygons (GEOS RectangleIntersection); repair just those.
            cut = shapely.clip_by_rect(sub, xmin, ymin, xmax, ymax)
            invalid = ~shapely.is_valid(cut)
            if invalid.any():
                cut[invalid] = shapely.make_valid(cut[invalid])
        else:
            # Lines and multipoints: clip_by_rect drops parts lying on the rectangle's
            # edge (seen with GEOS 3.14.1 / shapely 2.2), intersection keeps them; border
            # features are few.
            cut = self._intersection(sub, shapely.box(xmin, ymin, xmax, ymax), batch, border)
        out[border] = coerce_to_family(cut, self._family)  # type: ignore[arg-type]
        return out

    def _prepared_mask(self) -> shapely.Geometry:
        """This thread's prepared copy of the mask.

        GEOS prepared geometries build their indexes lazily and are not thread-safe
        (libgeos/geos#825), and shapely releases the GIL in
        predicates; so each worker thread prepares its own copy.
        """
        mask = getattr(self._local, "mask", None)
        if mask is None:
            assert self._mask is not None
            mask = shapely.from_wkb(shapely.to_wkb(self._mask))
            shapely.prepare(mask)
            self._local.mask = mask
        return mask

    def _clip_mask(self, geoms: np.ndarray, present: np.ndarray, batch: FeatureBatch) -> np.ndarray:
        mask = self._prepared_mask()
        out = np.full(len(geoms), None, dtype=object)
        mxmin, mymin, mxmax, mymax = shapely.bounds(mask)
        b = shapely.bounds(geoms)
        with np.errstate(invalid="ignore"):
            near = present & ~((b[:, 0] > mxmax) | (b[:, 2] < mxmin) | (b[:, 1] > mymax) | (b[:, 3] < mymin))
        cand = np.flatnonzero(near)
        if len(cand) == 0:
            return out
        sub = geoms[cand]
        if self._family == "point" and (shapely.get_type_id(sub) == 0).all():
            xy = shapely.get_coordinates(sub)  # one coordinate per (non-empty) Point
            hit = shapely.intersects_xy(mask, xy[:, 0], xy[:, 1])
            out[cand[hit]] = sub[hit]
            return out
        inside = shapely.contains_properly(mask, sub)
        out[cand[inside]] = sub[inside]
        touching = ~inside & shapely.intersects(mask, sub)
        border = cand[touching]
        if len(border):
            cut = self._intersection(geoms[border], mask, batch, border)
            out[border] = coerce_to_family(cut, self._family)  # type: ignore[arg-type]
        return out

    def _intersection(
        self, geoms: np.ndarray, area: shapely.Geometry, batch: FeatureBatch, rows: np.ndarray
    ) -> np.ndarray:
        """intersection(geoms, area); on a GEOS topology error (invalid input), retry the
        failing features one by one after make_valid; TransformError naming them if that fails."""
        try:
            return shapely.intersection(geoms, area)
        except GEOSException:
            pass
        out = np.empty(len(geoms), dtype=object)
        failed: list[int] = []
        for i, geom in enumerate(geoms):
            try:
                out[i] = shapely.intersection(geom, area)
            except GEOSException:
                try:
                    out[i] = shapely.intersection(shapely.make_valid(geom), area)
                except GEOSException:
                    failed.append(int(rows[i]))
        if failed:
            ident = f"rows {failed[:5]}"
            if self._oid_field is not None and self._oid_field in batch.column_names:
                ident = f"OIDs {batch.column(self._oid_field).take(failed[:5]).to_pylist()}"
            raise TransformError(
                f"clip: {len(failed)} features ({ident}{' …' if len(failed) > 5 else ''}) have geometries "
                "GEOS cannot intersect even after make_valid; repair them at the source or drop them with a where clause"
            )
        return out
