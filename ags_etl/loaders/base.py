"""The loader contract and the atomic-output helpers every file loader uses.

A loader is built with its target and options, checked against the stream's
:class:`~ags_etl.schema.LayerSchema` *before any network call* (:meth:`Loader.check`),
then opened as a context manager that takes batches::

    loader = GeoJSONLoader("out/roads.geojson", overwrite=False)
    loader.check(schema)                 # CapabilityError / OutputExistsError / ConfigError
    with loader.open(schema) as writer:  # temp file next to the target
        for batch in batches:
            writer.write(batch)
    # leaving the block normally renames the temp output onto the target;
    # an exception removes the temp output and leaves any earlier target untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, OutputExistsError
from ags_etl.schema import LayerSchema

WGS84 = CRS.from_epsg(4326)


@dataclass(frozen=True)
class LoaderCapabilities:
    """What a loader can take; the pipeline checks these before the first request.

    ``required_crs``: input must already be in this CRS (GeoJSON/KMZ: EPSG:4326);
    the pipeline inserts a reprojection when the stream is elsewhere.
    ``max_field_name_length``: longer names are shortened by the loader (reported).
    ``single_geometry_type``: a file holds one geometry family only.
    ``supports_tables``: may take a stream without geometry.
    """

    extensions: tuple[str, ...]
    required_crs: CRS | None = None
    max_field_name_length: int | None = None
    single_geometry_type: bool = False
    supports_tables: bool = True


@dataclass
class LoadStats:
    """What a writer did: rows written, warnings worth showing the user, output path(s)."""

    features: int = 0
    warnings: list[str] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    #: original field name → written field name, when a loader renamed fields.
    renamed_fields: dict[str, str] = field(default_factory=dict)


class Writer(Protocol):
    stats: LoadStats

    def write(self, batch: FeatureBatch) -> None: ...


class Loader(ABC):
    """Base of all loaders. Subclasses set ``name`` and ``capabilities``."""

    name: ClassVar[str]
    capabilities: ClassVar[LoaderCapabilities]

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False, **options: Any) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        self.options = options

    def check(self, schema: LayerSchema) -> None:
        """Raise if this loader cannot write ``schema`` to its target. No I/O besides stat()."""
        check_target(self.path, self.overwrite)
        caps = self.capabilities
        if not caps.supports_tables and schema.geometry_type is None:
            raise CapabilityError(
                f"{self.name}: layer {schema.name!r} has no geometry; write it as GeoParquet "
                f"(.parquet) or GeoJSON instead"
            )
        if caps.required_crs is not None and schema.geometry_type is not None:
            if schema.crs is None or not schema.crs.equals(caps.required_crs, ignore_axis_order=True):
                raise CapabilityError(
                    f"{self.name}: needs features in {caps.required_crs.to_string()}, the stream is in "
                    f"{schema.crs.to_string() if schema.crs is not None else 'an unknown CRS'}; add a "
                    f"reproject transform to EPSG:4326 before this loader"
                )

    @abstractmethod
    def open(self, schema: LayerSchema) -> contextlib.AbstractContextManager[Writer]:
        """Open a writer for ``schema``; see the module docstring for the atomic contract."""


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse a target in a missing folder, a folder as target, or an existing one without overwrite."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"output folder {str(parent)!r} does not exist; create it first or choose another -o path")
    if path.is_dir():
        raise ConfigError(f"output {str(path)!r} is a folder; give a file path such as {str(path / 'layer.geojson')!r}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {str(path)!r} exists; pass --overwrite (or overwrite: true) to replace it")


def _default_mode(path: Path) -> None:
    """Give a temp file (created 0600 by mkstemp) the mode a plain open() would: 0666 & ~umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_file(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success move it onto ``target``, else delete it.

    The temp file lives in the target's folder (same filesystem, so ``os.replace``
    is atomic) under a hidden name, so a killed run never leaves a file at the target.
    """
    check_target(target, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        check_target(target, overwrite)
        _default_mode(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def check_batch_crs(loader: str, batch: FeatureBatch, expected: CRS | None) -> None:
    """Refuse a batch whose geometries are in another CRS than the writer was opened for.

    ``batch.crs is None`` is accepted (the schema was checked when the writer opened);
    tables pass. Raises CapabilityError naming both CRSs and the fix.
    """
    if batch.geometry is None or batch.crs is None or batch.crs is expected:
        return
    if expected is None or not batch.crs.equals(expected, ignore_axis_order=True):
        from ags_etl.crs import describe_crs

        raise CapabilityError(
            f"{loader}: a batch arrived in {describe_crs(batch.crs)}, the output was opened for "
            f"{describe_crs(expected)}; reproject every batch to that CRS before this loader"
        )
