"""The transformer contract.

A transformer is configured once, told the schema of its input (:meth:`bind`, which
returns the output schema, raising :class:`~ags_etl.errors.ConfigError` on bad
settings *before any network call*), then called on each batch. Batches are never
modified in place.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.schema import LayerSchema

#: (xmin, ymin, xmax, ymax)
BBox = tuple[float, float, float, float]


class Transformer(ABC):
    name: ClassVar[str]

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

    def close(self) -> dict[str, int]:
        """Counters for the run report (e.g. ``{"clipped_empty": 3}``)."""
        return {}
