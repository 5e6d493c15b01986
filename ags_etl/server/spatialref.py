"""Spatial references of the local server: request values (``inSR``/``outSR``) → SpatialRef.

The codec of Esri ``spatialReference`` JSON and the transformer cache are
:mod:`ags_etl.crs`'s, shared with the client and the extractor; this module adds the
server's view (a cache key per reference, errors as REST 400 answers).

Esri JSON names a CRS by ``wkid``/``latestWkid`` or by ``wkt``. Web Mercator is
``{"wkid": 102100, "latestWkid": 3857}`` on every ArcGIS release since 10.1; a
CRS without an EPSG code is sent as ESRI-flavoured WKT1. GeoJSON's OGC:CRS84
(lon/lat) is served as wkid 4326: Esri's 4326 is x=lon, y=lat as well, and all
transforms here use ``always_xy``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely
from pyproj import CRS, Transformer
from pyproj.enums import WktVersion
from pyproj.exceptions import CRSError, ProjError

from ags_etl.crs import WEB_MERCATOR_CODES, epsg_of, esri_code_json
from ags_etl.crs import transformer as crs_transformer
from ags_etl.server.protocol import RestError, invalid_parameter


@dataclass(frozen=True)
class SpatialRef:
    """A CRS with a stable cache ``key`` and its Esri JSON form."""

    key: str
    crs: CRS
    esri: dict[str, Any]

    @property
    def is_geographic(self) -> bool:
        return bool(self.crs.is_geographic)

    @property
    def esri_units(self) -> str:
        """The ``units`` value of service JSON (esriDecimalDegrees, esriMeters, esriFeet …)."""
        if self.crs.is_geographic:
            return "esriDecimalDegrees"
        unit = (self.crs.axis_info[0].unit_name if self.crs.axis_info else "metre").lower()
        if "foot" in unit or "feet" in unit:
            return "esriFeet"
        return "esriMeters"


def from_crs(crs: CRS) -> SpatialRef:
    """The SpatialRef of a layer's CRS (EPSG code when one matches, else WKT)."""
    epsg = epsg_of(crs)
    if epsg is None:
        wkt = crs.to_wkt(WktVersion.WKT1_ESRI) or crs.to_wkt()
        return SpatialRef(key=f"WKT:{crs.to_wkt()}", crs=crs, esri={"wkt": wkt})
    return _from_code(epsg)


@functools.lru_cache(maxsize=256)
def _from_code(code: int) -> SpatialRef:
    """wkid → SpatialRef; EPSG first, then the ESRI authority (102xxx codes)."""
    if code in WEB_MERCATOR_CODES:
        return SpatialRef(key="EPSG:3857", crs=CRS.from_epsg(3857), esri=esri_code_json(code))
    try:
        crs = CRS.from_epsg(code)
    except CRSError:
        crs = CRS.from_authority("ESRI", code)  # raises CRSError when unknown: caller maps it
        return SpatialRef(key=f"ESRI:{code}", crs=crs, esri={"wkid": code})
    return SpatialRef(key=f"EPSG:{code}", crs=crs, esri=esri_code_json(code))


@functools.lru_cache(maxsize=64)
def _from_wkt(wkt: str) -> SpatialRef:
    crs = CRS.from_wkt(wkt)
    epsg = epsg_of(crs)
    if epsg is not None:
        return _from_code(epsg)
    return SpatialRef(key=f"WKT:{crs.to_wkt()}", crs=crs, esri={"wkt": wkt})


def parse(value: Any, param: str) -> SpatialRef:
    """An ``inSR``/``outSR`` value or a geometry's ``spatialReference`` → SpatialRef.

    Accepts a wkid (int or digit string), JSON ``{"wkid"|"latestWkid"|"wkt": …}``
    (as a dict or a string). ``latestWkid`` wins over ``wkid``, as ArcGIS clients do.
    Raises RestError (400) naming ``param`` for anything else.
    """
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            value = int(text)
        elif text.startswith("{"):
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError as exc:
                raise invalid_parameter(param, f"not valid JSON ({exc})") from exc
        else:
            raise invalid_parameter(param, f"expected a wkid or spatial reference JSON, got {value!r}")
    try:
        if isinstance(value, bool):
            raise invalid_parameter(param, f"expected a wkid, got {value!r}")
        if isinstance(value, int):
            return _from_code(value)
        if isinstance(value, dict):
            for key in ("latestWkid", "wkid"):
                code = value.get(key)
                if code is not None:
                    return _from_code(int(code))
            wkt = value.get("wkt")
            if isinstance(wkt, str) and wkt.strip():
                return _from_wkt(wkt)
    except CRSError as exc:
        raise invalid_parameter(param, f"unknown spatial reference {value!r}") from exc
    except (TypeError, ValueError) as exc:
        raise invalid_parameter(param, f"unknown spatial reference {value!r}") from exc
    raise invalid_parameter(param, f"expected a wkid or spatial reference JSON, got {value!r}")


def transformer(src: SpatialRef, dst: SpatialRef) -> Transformer:
    """The cached ``always_xy`` transformer (the package's one cache, :func:`ags_etl.crs.transformer`)."""
    return crs_transformer(src.crs, dst.crs, src_key=src.key, dst_key=dst.key)


def transform_geometries(geoms: np.ndarray, src: SpatialRef, dst: SpatialRef, *, include_z: bool) -> np.ndarray:
    """Reproject an object array of shapely geometries (None kept) from ``src`` to ``dst``.

    ``include_z`` keeps (and transforms) Z; otherwise the result is 2D.
    Raises RestError (400) when a coordinate cannot be transformed.
    """
    if src.key == dst.key:
        return geoms if include_z else shapely.force_2d(geoms)
    tr = transformer(src, dst)

    def project(coords: np.ndarray) -> np.ndarray:
        if coords.shape[1] == 3:
            x, y, z = tr.transform(coords[:, 0], coords[:, 1], coords[:, 2])
            return np.column_stack([x, y, z])
        x, y = tr.transform(coords[:, 0], coords[:, 1])
        return np.column_stack([x, y])

    try:
        return shapely.transform(geoms, project, include_z=include_z)
    except (ProjError, ValueError) as exc:
        raise RestError(400, "Unable to complete operation.", [f"cannot project to {dst.esri}: {exc}"]) from exc


def transform_bounds(bounds: tuple[float, ...], src: SpatialRef, dst: SpatialRef) -> tuple[float, ...]:
    """An envelope in ``src`` → the envelope (densified edges) that holds it in ``dst``."""
    if src.key == dst.key:
        return bounds
    try:
        xmin, ymin, xmax, ymax = bounds
        result = transformer(src, dst).transform_bounds(xmin, ymin, xmax, ymax, densify_pts=21)
    except (ProjError, ValueError) as exc:
        raise RestError(400, "Unable to complete operation.", [f"cannot project extent to {dst.esri}: {exc}"]) from exc
    return tuple(float(v) for v in result)
