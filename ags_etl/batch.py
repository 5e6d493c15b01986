"""FeatureBatch: one page of features in columnar form.

A batch is immutable. Attributes are a :class:`pyarrow.Table` whose columns and
types follow the :class:`~ags_etl.schema.LayerSchema` (never guessed from values);
geometries are a 1-D numpy object array of shapely 2 geometries, ``None`` where a
feature has no geometry, aligned row for row with the table. A table without
geometry has ``geometry is None``. Transformers return new batches.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyproj import CRS


def skip_pandas_probe() -> None:
    """Settle pyarrow's "is this a pandas object?" probe without importing pandas.

    The first ``pa.array`` of a Python list asks pyarrow's pandas shim whether the list is
    a pandas object, and that question imports pandas (about 0.15 s and 40 MB; nothing in
    ags_etl uses pandas). When pandas is not imported yet, the probe runs once here with
    pandas hidden, so pyarrow records that it has no pandas; an explicit pandas conversion
    later (``to_pandas``, ``from_pandas``) still imports pandas as usual. If pandas is
    already imported (a caller that uses it), nothing changes. Called when this module is
    imported, before any thread starts.
    """
    if "pandas" in sys.modules:
        return
    hide = _HidePandas()
    sys.meta_path.insert(0, hide)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(hide)


class _HidePandas:
    """An import finder that makes ``import pandas`` fail (for :func:`skip_pandas_probe`)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ImportError("pandas is hidden while pyarrow probes for it")
        return None


skip_pandas_probe()


@dataclass(frozen=True)
class FeatureBatch:
    attributes: pa.Table
    geometry: np.ndarray | None
    crs: CRS | None

    def __post_init__(self) -> None:
        if self.geometry is not None:
            if self.geometry.ndim != 1 or len(self.geometry) != self.attributes.num_rows:
                raise ValueError(
                    f"geometry array has shape {self.geometry.shape}, attributes have "
                    f"{self.attributes.num_rows} rows; they must align one to one"
                )

    def __len__(self) -> int:
        return self.attributes.num_rows

    @property
    def column_names(self) -> list[str]:
        return list(self.attributes.column_names)

    def column(self, name: str) -> pa.ChunkedArray:
        return self.attributes.column(name)

    def replace(self, **changes: Any) -> "FeatureBatch":
        return replace(self, **changes)

    def take(self, indices: np.ndarray | list[int]) -> "FeatureBatch":
        """Rows at ``indices`` (in that order)."""
        idx = np.asarray(indices, dtype=np.int64)
        geometry = None if self.geometry is None else self.geometry[idx]
        return FeatureBatch(self.attributes.take(pa.array(idx)), geometry, self.crs)

    def filter(self, mask: np.ndarray) -> "FeatureBatch":
        """Rows where the boolean ``mask`` is true."""
        mask = np.asarray(mask, dtype=bool)
        geometry = None if self.geometry is None else self.geometry[mask]
        return FeatureBatch(self.attributes.filter(pa.array(mask)), geometry, self.crs)

    def to_arrow(self, geometry_column: str = "geometry") -> pa.Table:
        """Attributes plus a WKB geometry column (null for missing geometries)."""
        if self.geometry is None:
            return self.attributes
        wkb = shapely.to_wkb(self.geometry, flavor="iso")
        return self.attributes.append_column(geometry_column, pa.array(wkb, type=pa.binary()))

    @classmethod
    def empty(cls, arrow_schema: pa.Schema, crs: CRS | None, has_geometry: bool = True) -> "FeatureBatch":
        geometry = np.empty(0, dtype=object) if has_geometry else None
        return cls(arrow_schema.empty_table(), geometry, crs)

    @staticmethod
    def concat(batches: list["FeatureBatch"]) -> "FeatureBatch":
        """One batch from several with the same schema and CRS."""
        if not batches:
            raise ValueError("concat needs at least one batch")
        table = pa.concat_tables([b.attributes for b in batches])
        if batches[0].geometry is None:
            geometry = None
        else:
            geometry = np.concatenate([b.geometry for b in batches])  # type: ignore[misc]
        return FeatureBatch(table, geometry, batches[0].crs)
