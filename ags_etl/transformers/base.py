"""The transformer contract.

A transformer is configured once, told the schema of its input (:meth:`bind`, which
returns the output schema, raising :class:`~ags_etl.errors.ConfigError` on bad
settings *before any network call*), then called on each batch. Batches are never
modified in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.schema import LayerSchema

#: (xmin, ymin, xmax, ymax)
BBox = tuple[float, float, float, float]

V = TypeVar("V")


def check_option(parse: Callable[[Any], Any], value: V) -> V:
    """``value`` unchanged when ``parse`` accepts it (None always passes); for pydantic
    validators of transformer ``Options``: a ConfigError from ``parse`` becomes the ValueError
    pydantic reports with the key's path."""
    from ags_etl.errors import ConfigError

    if value is not None:
        try:
            parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
    return value


class Transformer(ABC):
    name: ClassVar[str]
    #: True when the transformer never moves a feature nor drops one by its position
    #: (field selection, reprojection). A clip's bbox after such transformers can still be
    #: sent to the server as an envelope filter; after any other it cannot.
    keeps_geometry_position: ClassVar[bool] = False

    @abstractmethod
    def bind(self, schema: LayerSchema) -> LayerSchema:
        """Remember the input schema; return the output schema. Raises ConfigError."""

    @abstractmethod
    def __call__(self, batch: FeatureBatch) -> FeatureBatch:
        """Transform one batch (which follows the bound input schema)."""

    def spatial_filter(self) -> tuple[BBox, CRS] | None:
        """A bbox (and its CRS) outside which this transformer drops every feature.

        The extractor pushes it to the server as an envelope filter so those features
        are never downloaded. Only valid after :meth:`bind`. Default: no filter.
        """
        return None

    def requested_crs(self) -> CRS | None:
        """The CRS the user asked this transformer to produce (a reprojection's target), or None.

        The pipeline refuses a sink that cannot hold it rather than reprojecting on silently.
        """
        return None

    def server_side_crs(self) -> CRS | None:
        """A CRS the server should deliver (``outSR``) instead of this transformer working.

        Only honoured for the first transformer of a pipeline. Default: None (work locally).
        """
        return None

    def close(self) -> dict[str, int]:
        """Counters for the run report (e.g. ``{"clipped_empty": 3}``)."""
        return {}
