"""Coordinate reference systems from whatever users and servers hand us.

:func:`parse_crs` takes user input (CLI options, pipeline files, transformer arguments);
:func:`crs_from_spatial_reference` takes an Esri JSON ``spatialReference`` object as a
layer, a query answer or an inline geometry carries it.

Accepted forms of :func:`parse_crs`:

* a :class:`pyproj.CRS` (returned as is);
* an int or a string of digits (``4326``, ``"4326"``): an EPSG code, or an ESRI code when
  EPSG has no such code (``102100`` → ``ESRI:102100``);
* ``"AUTHORITY:CODE"`` (``"EPSG:2227"``, ``"ESRI:102100"``, ``"OGC:CRS84"``), OGC URNs;
* WKT1 (OGC or Esri flavour, as in a shapefile ``.prj``), WKT2, PROJJSON (string or dict);
* PROJ strings (``"+proj=utm +zone=10 +datum=WGS84"``);
* an Esri ``spatialReference`` dict (``{"wkid": 102100, "latestWkid": 3857}``,
  ``{"wkt": "PROJCS[...]"}``) or the same as a JSON string.

Every failure is a :class:`~ags_etl.errors.ConfigError` that names the value and the fix.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from pyproj import CRS, Transformer
from pyproj.enums import WktVersion
from pyproj.exceptions import CRSError

from ags_etl.errors import ConfigError

__all__ = [
    "CRSLike",
    "crs_from_spatial_reference",
    "crs_key",
    "describe_crs",
    "esri_code_json",
    "parse_crs",
    "sr_json",
    "transform_bounds",
    "transformer",
]

#: What :func:`parse_crs` accepts.
CRSLike = str | int | dict[str, Any] | CRS

_FIX = (
    "give an EPSG code ('EPSG:4326' or 4326), an ESRI code ('ESRI:102100'), WKT (OGC or Esri), "
    "a PROJ string ('+proj=utm +zone=10 +datum=WGS84') or an Esri spatialReference "
    "({'wkid': 3857})"
)

#: Keys that make a dict an Esri spatialReference rather than PROJJSON.
_SR_KEYS = ("latestWkid", "wkid", "wkt", "latestWkt")


def _shorten(value: object, limit: int = 160) -> str:
    """repr() of a value cut to ``limit`` characters (WKT can be kilobytes long)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def _reason(exc: Exception, limit: int = 200) -> str:
    """An exception's text cut to ``limit`` characters (PROJ repeats the whole input)."""
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 5] + "…" + text[-4:]


def describe_crs(crs: CRS | None) -> str:
    """A short human name for a CRS in messages: ``"EPSG:3857 (WGS 84 / Pseudo-Mercator)"``."""
    if crs is None:
        return "unknown CRS"
    auth = crs.to_authority(min_confidence=100)
    if auth is not None:
        return f"{auth[0]}:{auth[1]} ({crs.name})"
    return crs.name


def _from_code(code: int) -> CRS:
    """EPSG code, else ESRI code (Esri's 1xxxxx codes such as 102100 are not in EPSG)."""
    try:
        return CRS.from_epsg(code)
    except CRSError:
        pass
    # pyproj raises CRSError for codes neither authority knows; the caller maps it.
    return CRS.from_authority("ESRI", code)


def _code(value: object) -> int | None:
    """An int code from an int, a float with no fraction or a string of digits; else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def crs_from_spatial_reference(sr: dict[str, Any] | None, *, strict: bool = False) -> CRS | None:
    """The CRS of an Esri JSON ``spatialReference`` object.

    Tries ``latestWkid`` first, then ``wkid`` (EPSG, else the ESRI authority for codes
    such as 102100 that EPSG lacks), then ``wkt`` (some servers send only Esri WKT1),
    then ``latestWkt``. Returns None when ``sr`` is None or empty or holds none of
    those keys. When keys are present but none resolves, returns None — the layer's CRS
    is then unknown — or, with ``strict=True``, raises :class:`ConfigError` naming them.
    Vertical CRS keys (``vcsWkid``) are ignored.
    """
    if sr is None:
        return None
    if not isinstance(sr, dict):
        if strict:
            raise ConfigError(f"spatialReference {_shorten(sr)} is not a JSON object; {_FIX}")
        return None
    failures: list[str] = []
    for key in ("latestWkid", "wkid"):
        raw = sr.get(key)
        if raw is None:
            continue
        code = _code(raw)
        if code is None:
            failures.append(f"{key}={raw!r} is not an integer code")
            continue
        try:
            return _from_code(code)
        except CRSError as exc:
            failures.append(f"{key}={code} is neither an EPSG nor an ESRI code ({_reason(exc)})")
    for key in ("wkt", "latestWkt"):
        raw = sr.get(key)
        if raw is None:
            continue
        if not isinstance(raw, str) or not raw.strip():
            failures.append(f"{key}={_shorten(raw)} is not WKT text")
            continue
        try:
            return CRS.from_wkt(raw)
        except CRSError as exc:
            failures.append(f"{key}={_shorten(raw)} is not valid WKT ({_reason(exc)})")
    if failures and strict:
        raise ConfigError(f"spatialReference {_shorten(sr)} names no known CRS: {'; '.join(failures)}; {_FIX}")
    return None


def parse_crs(value: CRSLike) -> CRS:
    """A :class:`pyproj.CRS` from user input; see the module docstring for the accepted forms.

    Raises :class:`ConfigError` naming the value and the forms accepted when the value
    is empty, of the wrong type, or names no CRS PROJ knows.
    """
    if isinstance(value, CRS):
        return value
    if value is None or isinstance(value, bool):
        raise ConfigError(f"CRS {value!r} is not a CRS; {_FIX}")
    code = _code(value)
    if code is not None:
        try:
            return _from_code(code)
        except CRSError as exc:
            raise ConfigError(f"CRS code {value!r} is neither an EPSG nor an ESRI code; {_FIX}") from exc
    if isinstance(value, dict):
        return _parse_dict(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise ConfigError(f"CRS {value!r} is empty; {_FIX}")
        if text.startswith("{"):
            try:
                data = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"CRS {_shorten(value)} looks like JSON but does not parse ({_reason(exc)}); {_FIX}") from exc
            if not isinstance(data, dict):
                raise ConfigError(f"CRS {_shorten(value)} is JSON but not an object; {_FIX}")
            return _parse_dict(data)
        try:
            return CRS.from_user_input(text)
        except CRSError as exc:
            raise ConfigError(f"CRS {_shorten(value)} is not recognised ({_reason(exc)}); {_FIX}") from exc
    raise ConfigError(f"CRS {_shorten(value)} has type {type(value).__name__}, which names no CRS; {_FIX}")


def _parse_dict(value: dict[str, Any]) -> CRS:
    """An Esri spatialReference dict (strictly) or a PROJJSON dict."""
    if any(key in value for key in _SR_KEYS):
        crs = crs_from_spatial_reference(value, strict=True)
        if crs is None:  # every SR key was present but None
            raise ConfigError(f"spatialReference {_shorten(value)} has no wkid or wkt; {_FIX}")
        return crs
    try:
        return CRS.from_json_dict(value)
    except CRSError as exc:
        raise ConfigError(
            f"CRS {_shorten(value)} is neither an Esri spatialReference nor PROJJSON ({_reason(exc)}); {_FIX}"
        ) from exc


# --------------------------------------------------------------------------- CRS → Esri JSON, transforms


def sr_json(crs: CRS) -> dict[str, Any]:
    """The Esri ``spatialReference`` JSON of a CRS: its EPSG code, else its ESRI code, else Esri WKT1.

    Web Mercator (and ArcGIS's historic codes for it) is ``{"wkid": 102100, "latestWkid": 3857}``,
    as every ArcGIS release since 10.1 writes it; other EPSG codes are ``{"wkid": N, "latestWkid": N}``;
    OGC:CRS84 (lon/lat) is 4326, whose x is longitude in Esri JSON too.
    """
    epsg = epsg_of(crs)
    if epsg is not None:
        return esri_code_json(epsg)
    auth = crs.to_authority()
    if auth is not None and auth[0] == "ESRI":
        code = int(auth[1])
        return esri_code_json(code) if code in WEB_MERCATOR_CODES else {"wkid": code}
    return {"wkt": crs.to_wkt(WktVersion.WKT1_ESRI) or crs.to_wkt()}


#: Esri's codes for Web Mercator (102100 current, 102113 and 900913 historic).
WEB_MERCATOR_CODES = frozenset({3857, 102100, 102113, 900913})


def epsg_of(crs: CRS) -> int | None:
    """The EPSG code of a CRS (OGC:CRS84 counts as 4326), or None."""
    authority = crs.to_authority()
    if authority is not None and authority == ("OGC", "CRS84"):
        return 4326
    return crs.to_epsg()


def esri_code_json(code: int) -> dict[str, Any]:
    """``spatialReference`` JSON for a wkid (Web Mercator's codes all become 102100/3857)."""
    if code in WEB_MERCATOR_CODES:
        return {"wkid": 102100, "latestWkid": 3857}
    return {"wkid": code, "latestWkid": code}


def crs_key(crs: CRS) -> str:
    """A cache key for a CRS: the definition it was made from (``EPSG:4326``, WKT, PROJ …).

    Exact, never a best match: two CRSs with one key are the same CRS (the same CRS made
    from two spellings merely gets two cache entries).
    """
    return crs.srs


_transformers: dict[tuple[str, str], Transformer] = {}
_transformers_lock = threading.Lock()


def transformer(src: CRS, dst: CRS, *, src_key: str | None = None, dst_key: str | None = None) -> Transformer:
    """A cached ``always_xy`` transformer from ``src`` to ``dst`` (the one cache of the package).

    pyproj ≥ 3.1 transformers are safe to share between threads. ``src_key``/``dst_key``
    skip computing :func:`crs_key` when the caller already has one.
    """
    key = (src_key or crs_key(src), dst_key or crs_key(dst))
    found = _transformers.get(key)
    if found is not None:
        return found
    made = Transformer.from_crs(src, dst, always_xy=True)
    with _transformers_lock:
        return _transformers.setdefault(key, made)


def transform_bounds(bounds: tuple[float, float, float, float], src: CRS, dst: CRS) -> tuple[float, float, float, float]:
    """An envelope in ``src`` → the envelope (edges densified, 21 points) that holds it in ``dst``."""
    xmin, ymin, xmax, ymax = bounds
    out = transformer(src, dst).transform_bounds(xmin, ymin, xmax, ymax, densify_pts=21)
    return float(out[0]), float(out[1]), float(out[2]), float(out[3])
