"""FeatureBatch: one page of features in columnar form.

A batch is immutable. Attributes are a :class:`pyarrow.Table` whose columns and
types follow the :class:`~ags_etl.schema.LayerSchema` (never guessed from values);
geometries are a 1-D numpy object array of shapely 2 geometries, ``None`` where a
feature has no geometry, aligned row for row with the table. A table without
geometry has ``geometry is None``. Transformers return new batches.
"""

from __future__ import annotations

import os
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


def use_malloc_for_arrow() -> None:
    """Make malloc the default Arrow memory pool, unless ``ARROW_DEFAULT_MEMORY_POOL`` names another.

    pyarrow's default pool (mimalloc) keeps freed pages in a heap per thread; a pull
    decodes a page on each of ``concurrency`` threads, and those heaps held about 75 MB
    more at peak than malloc for a 100,000-point pull, with no measurable gain in speed.
    Called when this module is imported, before any Arrow data of ags_etl is made. Arrow's
    C++ default (what Parquet's writer allocates from) is set by ``ags_etl/__init__.py``
    through the environment; this covers pyarrow imported before ags_etl.
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL", "system") == "system":
        pa.set_memory_pool(pa.system_memory_pool())


use_malloc_for_arrow()


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
        return self.attributes.append_column(geometry_column, wkb_array(self.geometry))

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


_POINT_XY = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8")])
_POINT_XYZ = np.dtype([("order", "u1"), ("type", "<u4"), ("x", "<f8"), ("y", "<f8"), ("z", "<f8")])


def wkb_array(geoms: np.ndarray) -> pa.Array:
    """Geometries (None → null) → an Arrow binary array of ISO WKB, as ``shapely.to_wkb(flavor="iso")``.

    A page of points (all 2D or all 3D, none empty) is laid out by numpy straight into
    the Arrow buffers — no Python bytes object per row, and no GIL held per row; anything
    else goes through shapely.
    """
    ids = shapely.get_type_id(geoms)  # -1 for None
    present = ids >= 0
    n = len(geoms)
    if n and (ids[present] == 0).all() and present.any():
        points = geoms[present]
        z = shapely.has_z(points)
        if (shapely.get_num_coordinates(points) == 1).all() and (z.all() or not z.any()):
            has_z = bool(z[0])
            coords = shapely.get_coordinates(points, include_z=has_z)
            rec = np.empty(len(points), dtype=_POINT_XYZ if has_z else _POINT_XY)
            rec["order"] = 1  # little-endian
            rec["type"] = 1001 if has_z else 1  # ISO: Point Z is 1001
            rec["x"], rec["y"] = coords[:, 0], coords[:, 1]
            if has_z:
                rec["z"] = coords[:, 2]
            sizes = np.where(present, rec.dtype.itemsize, 0)
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(sizes, out=offsets[1:])
            validity = None if present.all() else pa.array(present).buffers()[1]
            return pa.Array.from_buffers(
                pa.binary(), n, [validity, pa.py_buffer(offsets), pa.py_buffer(rec)], null_count=int(n - present.sum())
            )
    return pa.array(shapely.to_wkb(geoms, flavor="iso"), type=pa.binary())
