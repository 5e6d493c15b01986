"""The spatial filter of a query: the ``geometry`` parameter checked, built and reprojected.

Accepted forms (``geometryType`` may name the type; the keys decide):

* ``xmin,ymin,xmax,ymax`` and ``{"xmin": …, "ymin": …, "xmax": …, "ymax": …}``;
* ``x,y`` and ``{"x": …, "y": …}``;
* Esri JSON ``{"points": …}``, ``{"paths": …}``, ``{"rings": …}``;

in ``inSR`` (or the geometry's own ``spatialReference``, or the layer's CRS).

The filter is checked before any geometry library sees it, so hostile input gets
ArcGIS's 400 answer naming the problem (``'geometry' parameter is invalid:
Invalid geometry: …``) and never an exception: every vertex must be a list of 2 to
4 numbers with finite x and y within ±1e15; a ring needs 3 distinct points
(4 once closed), a path 2; an envelope needs min <= max; a polygon must be
valid (no self-intersection: a bowtie is refused, as the exact test would be
wrong or fail on it). The work a filter causes is bounded by its size:
at most :data:`MAX_VERTICES` vertices and :data:`MAX_PARTS` rings/paths, and
the densification of a reprojected polygon adds at most :data:`MAX_VERTICES`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import shapely
from shapely.errors import ShapelyError

from ags_etl.arcgis.esrijson import decode_geometry
from ags_etl.errors import GeometryError
from ags_etl.server import spatialref
from ags_etl.server.protocol import Params, RestError, invalid_parameter
from ags_etl.server.spatialref import SpatialRef

#: Most vertices a filter geometry may have (a detailed county outline has a few thousand).
MAX_VERTICES = 100_000
#: Most rings or paths a filter geometry may have (ring nesting is worked out pairwise).
MAX_PARTS = 500
#: Largest coordinate magnitude accepted: no CRS has coordinates near it, and beyond
#: it areas and lengths overflow.
MAX_COORDINATE = 1e15
GEOMETRY_TYPES = frozenset(
    {
        "esriGeometryEnvelope",
        "esriGeometryPoint",
        "esriGeometryMultipoint",
        "esriGeometryPolyline",
        "esriGeometryPolygon",
    }
)
SPATIAL_RELATIONS = ("esriSpatialRelIntersects", "esriSpatialRelEnvelopeIntersects")
#: Pieces each side of a reprojected polygon's envelope is cut into, so edges can bend.
_DENSIFY_PIECES = 32


@dataclass
class SpatialFilter:
    """The query geometry in the layer CRS; ``rectangle`` when it equals its envelope."""

    bbox: tuple[float, float, float, float]
    geometry: shapely.Geometry
    rectangle: bool
    envelope_only: bool


def invalid_geometry(problem: str) -> RestError:
    """ArcGIS's 400 answer for a filter geometry that cannot be used, naming the problem."""
    return invalid_parameter("geometry", f"Invalid geometry: {problem}")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _coordinate(value: Any, name: str) -> float:
    """A finite x or y within ±MAX_COORDINATE; RestError naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise invalid_geometry(f"{name} is {_show(value)}, not a number")
    number = float(value)
    if not math.isfinite(number) or abs(number) > MAX_COORDINATE:
        raise invalid_geometry(f"{name} is {_show(value)}; coordinates must be finite and within ±{MAX_COORDINATE:g}")
    return number


def _text_number(text: str, name: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise invalid_geometry(f"{name} is {_show(text.strip())}, not a number") from None
    return _coordinate(number, name)


def _points(n: int) -> str:
    return "1 point" if n == 1 else f"{n} points"


def _check_vertex(value: Any, name: str) -> None:
    if not isinstance(value, list) or not 2 <= len(value) <= 4:
        raise invalid_geometry(f"{name} is {_show(value)}, not a vertex [x, y] (z and m optional)")
    _coordinate(value[0], f"{name}[0]")
    _coordinate(value[1], f"{name}[1]")
    for k, extra in enumerate(value[2:], start=2):
        if extra is not None and (isinstance(extra, bool) or not isinstance(extra, (int, float))):
            raise invalid_geometry(f"{name}[{k}] is {_show(extra)}, not a number (z or m)")


def _check_vertices(value: Any, name: str, minimum: int, what: str) -> int:
    """A vertex list of at least ``minimum`` vertices; returns how many."""
    if not isinstance(value, list):
        raise invalid_geometry(f"{name} is {_show(value)}, not a list of vertices")
    if len(value) > MAX_VERTICES:
        raise invalid_geometry(f"{name} has {len(value)} vertices; at most {MAX_VERTICES} are accepted, simplify it")
    for i, vertex in enumerate(value):
        _check_vertex(vertex, f"{name}[{i}]")
    count = len(value)
    if what == "ring" and count and value[0][:2] != value[-1][:2]:
        count += 1  # closed on decoding
    if count < minimum:
        need = "3 distinct points (4 with the closing one)" if what == "ring" else _points(minimum)
        raise invalid_geometry(f"{name} has {_points(len(value))}; a {what} needs at least {need}")
    return len(value)


def _check_parts(value: Any, key: str, minimum: int, what: str) -> None:
    if not isinstance(value, list) or not value:
        raise invalid_geometry(f"{key} is {_show(value)}; expected a non-empty list of {what}s")
    if len(value) > MAX_PARTS:
        raise invalid_geometry(f"{key} has {len(value)} {what}s; at most {MAX_PARTS} are accepted")
    total = 0
    for i, part in enumerate(value):
        total += _check_vertices(part, f"{key}[{i}]", minimum, what)
        if total > MAX_VERTICES:
            raise invalid_geometry(f"{key} has more than {MAX_VERTICES} vertices; simplify the geometry")


def _envelope(xmin: float, ymin: float, xmax: float, ymax: float) -> shapely.Geometry:
    """A box; a degenerate box becomes the point or segment it is."""
    if xmin > xmax or ymin > ymax:
        raise invalid_geometry(
            f"envelope ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has min > max; send xmin<=xmax and ymin<=ymax"
        )
    if xmin == xmax and ymin == ymax:
        return shapely.Point(xmin, ymin)
    if xmin == xmax or ymin == ymax:
        return shapely.LineString([(xmin, ymin), (xmax, ymax)])
    return shapely.box(xmin, ymin, xmax, ymax)


def _from_json(data: dict[str, Any]) -> shapely.Geometry:
    """Esri JSON → shapely, after checking its structure (so the decoder only sees sane input)."""
    if "xmin" in data:
        return _envelope(*(_coordinate(data.get(k), k) for k in ("xmin", "ymin", "xmax", "ymax")))
    if "x" in data:
        x, y = _coordinate(data.get("x"), "x"), _coordinate(data.get("y"), "y")
        return shapely.Point(x, y)
    if "rings" in data:
        _check_parts(data["rings"], "rings", 4, "ring")
    elif "paths" in data:
        _check_parts(data["paths"], "paths", 2, "path")
    elif "points" in data:
        _check_vertices(data["points"], "points", 1, "multipoint")
    elif "curveRings" in data or "curvePaths" in data:
        raise invalid_geometry("true curves (curveRings/curvePaths) are not supported; send densified rings or paths")
    else:
        raise invalid_geometry(f"no x/y, points, paths, rings or xmin/ymin/xmax/ymax in keys {_show(sorted(data))}")
    try:
        geom = decode_geometry({k: data[k] for k in ("rings", "paths", "points") if k in data})
    except (GeometryError, ShapelyError, ValueError, TypeError) as exc:
        raise invalid_geometry(f"cannot be built ({exc})") from exc
    if geom is None or geom.is_empty:
        raise invalid_geometry("it has no usable parts")
    return geom


def _from_text(text: str) -> shapely.Geometry:
    parts = text.split(",")
    if len(parts) == 4:
        return _envelope(*(_text_number(p, n) for p, n in zip(parts, ("xmin", "ymin", "xmax", "ymax"))))
    if len(parts) == 2:
        return shapely.Point(_text_number(parts[0], "x"), _text_number(parts[1], "y"))
    raise invalid_geometry(f"expected 'xmin,ymin,xmax,ymax', 'x,y' or Esri JSON geometry, got {_show(text)}")


def _check_valid(geom: shapely.Geometry) -> None:
    reason = shapely.is_valid_reason(geom)
    if reason != "Valid Geometry":
        if geom.geom_type in ("Polygon", "MultiPolygon"):
            fix = "send rings with an area that do not cross themselves or each other"
        else:
            fix = "send parts with distinct points"
        raise invalid_geometry(f"{reason}; {fix}")


def _reproject(geom: shapely.Geometry, in_sr: SpatialRef, layer_sr: SpatialRef) -> shapely.Geometry:
    """The filter in the layer CRS; polygon edges densified (within MAX_VERTICES) so they can bend."""
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        xmin, ymin, xmax, ymax = geom.bounds
        piece = max(xmax - xmin, ymax - ymin) / _DENSIFY_PIECES
        piece = max(piece, float(shapely.length(geom)) / MAX_VERTICES)
        geom = shapely.segmentize(geom, piece)
    projected = spatialref.transform_geometries(np.array([geom], dtype=object), in_sr, layer_sr, include_z=False)[0]
    if projected is None or projected.is_empty or not np.isfinite(shapely.get_coordinates(projected)).all():
        raise invalid_geometry(f"it cannot be projected from {in_sr.esri} to the layer's spatial reference")
    if not shapely.is_valid(projected):
        # A valid polygon can fold where the projection is extreme: keep its area.
        projected = shapely.make_valid(projected)
    return projected


def parse(params: Params, layer_geometry_type: str | None, layer_sr: SpatialRef | None) -> SpatialFilter | None:
    """The spatial filter of a query, in the layer's CRS, or None without ``geometry``.

    Raises RestError (HTTP 200, code 400) naming the problem for anything that
    cannot be used; never another exception for any parameter value.
    """
    raw = params.get("geometry")
    if raw is None:
        return None
    if layer_geometry_type is None:
        raise invalid_parameter("geometry", "this layer is a table and has no geometry to filter on")
    rel = params.text("spatialRel", SPATIAL_RELATIONS[0]).strip()
    if rel not in SPATIAL_RELATIONS:
        raise invalid_parameter("spatialRel", f"{rel[:60]} is not supported here; use {' or '.join(SPATIAL_RELATIONS)}")
    geometry_type = params.get("geometryType")
    if geometry_type is not None and geometry_type.strip() not in GEOMETRY_TYPES:
        raise invalid_parameter("geometryType", f"{_show(geometry_type)} is not one of {sorted(GEOMETRY_TYPES)}")
    sr_value: Any = params.get("inSR")
    text = raw.strip()
    if text.startswith("{"):
        try:
            data = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise invalid_geometry(f"not valid JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise invalid_geometry(f"expected a JSON object, got {_show(data)}")
        if data.get("spatialReference"):
            sr_value = data["spatialReference"]
        geom = _from_json(data)
    elif text.startswith("["):
        raise invalid_geometry(f"expected 'xmin,ymin,xmax,ymax', 'x,y' or an Esri JSON object, got {_show(text)}")
    else:
        geom = _from_text(text)
    try:
        _check_valid(geom)
        in_sr = spatialref.parse(sr_value, "inSR") if sr_value is not None else layer_sr
        rectangle = True
        if in_sr is not None and layer_sr is not None and in_sr.key != layer_sr.key:
            geom = _reproject(geom, in_sr, layer_sr)
            rectangle = False
        elif in_sr is not None and layer_sr is None:
            raise invalid_parameter(
                "inSR", "this layer's spatial reference is unknown; send the geometry in its own CRS"
            )
        if geom.geom_type != "Polygon" or not shapely.equals(geom, shapely.envelope(geom)):
            rectangle = False
        shapely.prepare(geom)
    except ShapelyError as exc:
        # GEOS refusing an operation on a geometry that passed the checks above.
        raise invalid_geometry(f"it cannot be used as a filter ({exc})") from exc
    xmin, ymin, xmax, ymax = (float(v) for v in geom.bounds)
    return SpatialFilter((xmin, ymin, xmax, ymax), geom, rectangle, rel == "esriSpatialRelEnvelopeIntersects")
