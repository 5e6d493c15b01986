"""Reproject: move every geometry of a stream into another CRS.

Pipeline form: ``{type: reproject, to: "EPSG:4326"}`` (optionally ``from_crs`` to override
or supply the layer's CRS, ``server_side: true`` to let the server do it).

Coordinates go through one cached :class:`pyproj.Transformer` (``always_xy=True``: x is
easting/longitude whatever the CRS's axis order) on whole batches at once. Z is
transformed along with X/Y when present, M values are carried over, None geometries
stay None and the point at (0, 0) is an ordinary point.

With ``server_side=True`` the extractor asks the server for ``outSR`` (see
:attr:`Reproject.server_side` and :attr:`Reproject.target_crs`); this transformer then
only relabels batches with the target CRS.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator
from pyproj import CRS, Transformer
from pyproj.exceptions import ProjError

from ags_etl.batch import FeatureBatch
from ags_etl.crs import CRSLike, describe_crs, parse_crs
from ags_etl.crs import transformer as crs_transformer
from ags_etl.errors import ConfigError, TransformError
from ags_etl.geometry import transform_geometries
from ags_etl.schema import LayerSchema
from ags_etl.transformers.base import Transformer as BaseTransformer
from ags_etl.transformers.base import check_option

__all__ = ["Reproject", "get_transformer", "same_crs"]


def get_transformer(src: CRS, dst: CRS) -> Transformer:
    """The cached ``always_xy`` transformer from ``src`` to ``dst``.

    pyproj Transformers are safe to share between threads since pyproj 3.1 (each thread
    gets its own PROJ object), so one cache serves all worker threads. Raises
    ConfigError when PROJ knows no operation between the two.
    """
    try:
        return crs_transformer(src, dst)  # the package's one transformer cache
    except ProjError as exc:
        raise ConfigError(
            f"no coordinate operation from {describe_crs(src)} to {describe_crs(dst)} ({exc}); "
            "check both CRSs, or install the PROJ grids the operation needs"
        ) from exc


def same_crs(a: CRS, b: CRS) -> bool:
    """True when coordinates need no change between ``a`` and ``b`` (axis order ignored:
    we always work x/y)."""
    return a == b or a.equals(b, ignore_axis_order=True)


class Reproject(BaseTransformer):
    """Reproject geometries to ``to``.

    ``to`` and ``from_crs`` take anything :func:`ags_etl.crs.parse_crs` accepts and are
    parsed here, so a bad value fails at construction with a ConfigError — before any
    network call. ``from_crs`` overrides the layer's CRS (needed when the layer's is
    unknown). With ``server_side=True`` the extractor requests ``outSR`` from the server
    and this transformer only relabels batches.
    """

    name: ClassVar[str] = "reproject"
    keeps_geometry_position: ClassVar[bool] = True

    class Options(BaseModel):
        """Pipeline-file keys: ``to`` (required), ``from_crs``, ``server_side``; CRSs parsed offline."""

        model_config = ConfigDict(extra="forbid")
        to: str | int | dict[str, Any]
        from_crs: str | int | dict[str, Any] | None = None
        server_side: bool = False

        @field_validator("to", "from_crs")
        @classmethod
        def _known_crs(cls, value: CRSLike | None) -> CRSLike | None:
            return check_option(parse_crs, value)

    def __init__(self, to: CRSLike, *, from_crs: CRSLike | None = None, server_side: bool = False) -> None:
        self._target = parse_crs(to)
        self._from = None if from_crs is None else parse_crs(from_crs)
        self.server_side = bool(server_side)
        self._source: CRS | None = None
        self._transformer: Transformer | None = None
        self._oid_field: str | None = None
        self._bound = False

    @property
    def target_crs(self) -> CRS:
        """The CRS batches come out in."""
        return self._target

    def requested_crs(self) -> CRS | None:
        """The target CRS (the user asked for it)."""
        return self._target

    def server_side_crs(self) -> CRS | None:
        """The target CRS when ``server_side`` asks the server for ``outSR``, else None."""
        return self._target if self.server_side else None

    @property
    def source_crs(self) -> CRS | None:
        """The CRS batches are expected in (known after :meth:`bind`; None for tables)."""
        return self._source

    def bind(self, schema: LayerSchema) -> LayerSchema:
        """Output schema: the input's with ``crs`` set to the target.

        Tables (no geometry type) pass through unchanged. Raises ConfigError when the
        layer's CRS is unknown and no ``from_crs`` was given, or when PROJ has no
        operation between the two CRSs.
        """
        self._oid_field = schema.oid_field
        self._bound = True
        if schema.geometry_type is None:
            self._source = None
            self._transformer = None
            return schema
        if self.server_side:
            self._source = self._target
            self._transformer = None
            return schema.replace(crs=self._target)
        source = self._from if self._from is not None else schema.crs
        if source is None:
            raise ConfigError(
                f"reproject: the CRS of layer {schema.name!r} is unknown; set from_crs "
                "(e.g. {type: reproject, to: 'EPSG:4326', from_crs: 'EPSG:2227'})"
            )
        self._source = source
        self._transformer = None if same_crs(source, self._target) else get_transformer(source, self._target)
        return schema.replace(crs=self._target)

    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        """The batch with its geometries in the target CRS.

        Raises TransformError naming how many features (and which OIDs) have coordinates
        that come out non-finite, e.g. outside the projection's domain.
        """
        if not self._bound:
            raise RuntimeError("Reproject.bind(schema) must be called before the first batch")
        if batch.geometry is None:
            return batch
        if self._transformer is None:  # server-side, or same CRS: relabel only
            return batch.replace(crs=self._target)
        geoms, bad = transform_geometries(batch.geometry, self._transformer)
        if bad.any():
            raise TransformError(self._domain_message(batch, bad))
        return FeatureBatch(batch.attributes, geoms, self._target)

    def _domain_message(self, batch: FeatureBatch, bad: np.ndarray) -> str:
        n = int(bad.sum())
        where = ""
        if self._oid_field is not None and self._oid_field in batch.column_names:
            oids = batch.column(self._oid_field).take(np.flatnonzero(bad)[:5]).to_pylist()
            where = f" (OIDs {oids}{' …' if n > 5 else ''})"
        return (
            f"reproject: {n} of {len(batch)} features{where} have coordinates that cannot be "
            f"transformed from {describe_crs(self._source)} to {describe_crs(self._target)} "
            "(outside the target projection's domain); put a clip before the reproject to "
            "keep them inside it, or choose a target CRS that covers the data"
        )
