"""Partitioned GeoParquet datasets: a folder of part files and a manifest, committed atomically.

A dataset at ``out/parcels/`` (local) or ``s3://bucket/parcels/`` holds::

    part-00000.parquet      GeoParquet 1.1 files, each with its own complete ``geo`` metadata
    part-00001.parquet      (bbox and geometry types of that part), all with one schema
    _manifest.json          written last: the parts, their row counts and bboxes, the totals

Readers take the folder as one table: ``geopandas.read_parquet(folder)``,
``pyarrow.dataset.dataset(folder)`` (both skip names starting with ``_`` and ``.``) and DuckDB
``read_parquet('folder/*.parquet')``.

Two levels, so that parts can be written by other processes (a cluster's workers):

* :meth:`DatasetWriter.begin` (the driver) checks the target and prepares the staging place;
  the :class:`DatasetWriter` it returns is picklable and can be sent to workers;
* :meth:`DatasetWriter.write_part` (anywhere) writes one part under a deterministic name
  (``part-<name>.parquet``), so a retried task overwrites its part rather than adding one, and
  returns a :class:`PartInfo`;
* :meth:`DatasetWriter.commit` (the driver) writes the manifest listing the parts it accepted,
  then makes the dataset visible; :meth:`DatasetWriter.abort` removes what this run wrote.

Atomic commit:

* **local**: parts and manifest go into a hidden staging folder beside the target,
  ``.NAME.<random>.part/``; commit renames it onto the target (an earlier target, replaced
  only with ``overwrite``, is first renamed away, then removed). The folder appears complete
  or not at all; a killed run leaves only the hidden staging folder, which the next run reports.
* **object storage** (no rename there): parts are uploaded under the final prefix with a
  run-unique component, ``part-<run>-<name>.parquet``, each as one whole object; the manifest is
  uploaded last, in one PUT. A reader that follows the manifest sees the earlier dataset or the
  new one, never a partial one. After the new manifest is written, part files it does not list
  (an earlier dataset's, or those of failed runs) are deleted; a failed run deletes its own
  parts. Readers that list the prefix instead of reading the manifest can see the parts of a run
  in progress: point them at the manifest, or read between runs. One run per target at a time.

The GeoParquet metadata of each part comes from :mod:`ags_etl.loaders.geoparquet` (one writer
for files and parts).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ags_etl.batch import FeatureBatch
from ags_etl.errors import ConfigError, LoadError, OutputExistsError
from ags_etl.loaders.base import LoadStats, output_write_error
from ags_etl.loaders.geoparquet import (
    DEFAULT_ROW_GROUP_BYTES,
    DEFAULT_ROW_GROUP_SIZE,
    GEOPARQUET_VERSION,
    _GeoParquetWriter,
)
from ags_etl.loaders.storage import OutputLocation, check_folder_target, remote_exists, storage_error, upload
from ags_etl.schema import LayerSchema

__all__ = ["DEFAULT_ROWS_PER_PART", "MANIFEST_NAME", "DatasetWriter", "PartInfo", "open_dataset", "read_manifest"]

MANIFEST_NAME = "_manifest.json"
MANIFEST_FORMAT = "ags_etl.geoparquet-dataset"
MANIFEST_VERSION = 1
DEFAULT_ROWS_PER_PART = 1_000_000

_PART_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,100}")


@dataclass(frozen=True)
class PartInfo:
    """One written part: its file name inside the dataset, rows, bbox (None when no feature has
    a geometry), geometry types and size in bytes."""

    file: str
    rows: int
    bbox: tuple[float, float, float, float] | None
    geometry_types: tuple[str, ...]
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {
            "path": self.file,
            "rows": self.rows,
            "bbox": None if self.bbox is None else list(self.bbox),
            "geometry_types": list(self.geometry_types),
            "bytes": self.bytes,
        }


class PartWriter:
    """Writes batches into one part file (local temp file); made by :meth:`DatasetWriter.open_part`."""

    def __init__(self, writer: _GeoParquetWriter, stats: LoadStats) -> None:
        self._writer = writer
        self.stats = stats
        #: Set once the part is in place (after the ``open_part`` block).
        self.info: PartInfo | None = None

    @property
    def rows(self) -> int:
        return self.stats.features

    def write(self, batch: FeatureBatch) -> None:
        self._writer.write(batch)


@dataclass(frozen=True)
class DatasetWriter:
    """The parts of one dataset run. Picklable: give it to workers, which call
    :meth:`write_part`; the driver calls :meth:`commit` (or :meth:`abort`).

    ``staging`` is where parts are written: the hidden staging folder (local) or the final
    prefix (object storage); ``run_id`` is unique per run.
    """

    location: OutputLocation
    schema: LayerSchema
    run_id: str
    staging: str
    overwrite: bool = False
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES
    warnings: list[str] = field(default_factory=list, compare=False)

    # ------------------------------------------------------------------ driver

    @classmethod
    def begin(
        cls,
        location: OutputLocation,
        schema: LayerSchema,
        *,
        overwrite: bool = False,
        row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
        row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
    ) -> DatasetWriter:
        """Check the target (an existing dataset without ``overwrite``: OutputExistsError) and
        create the staging place. Call on the driver, once per run."""
        run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + secrets.token_hex(4)
        folder = location.as_folder()
        if folder.remote:
            fs, prefix = folder.filesystem()
            _refuse_existing_manifest(fs, prefix, folder, overwrite)
            staging = folder.text
        else:
            target = folder.local_path
            check_folder_target(target, overwrite)
            try:
                staging = tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
            except OSError as exc:
                raise output_write_error(exc, target) from exc
        return cls(folder, schema, run_id, staging, overwrite, row_group_size, row_group_bytes)

    def commit(self, parts: Sequence[PartInfo]) -> dict[str, Any]:
        """Write the manifest listing ``parts`` (the ones the driver accepted), then make the
        dataset visible. Returns the manifest. Raises OutputExistsError when a target appeared
        meanwhile without ``overwrite``, LoadError when a part is missing or the write fails."""
        manifest = self.manifest(parts)
        data = (json.dumps(manifest, indent=1) + "\n").encode()
        if self.location.remote:
            self._commit_remote(parts, data)
        else:
            self._commit_local(parts, data)
        return manifest

    def abort(self) -> None:
        """Remove what this run wrote: the staging folder (local) or this run's part objects."""
        if not self.location.remote:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        with contextlib.suppress(Exception):  # best effort: the run is failing already
            fs, prefix = self.location.filesystem()
            mine = [key for key in _part_keys(fs, prefix) if key.rsplit("/", 1)[-1].startswith(f"part-{self.run_id}-")]
            if mine:
                fs.rm(mine)

    def manifest(self, parts: Sequence[PartInfo]) -> dict[str, Any]:
        """The manifest for ``parts``: totals, CRS (PROJJSON or null), every part."""
        boxes = [p.bbox for p in parts if p.bbox is not None]
        bbox = None
        if boxes:
            bbox = [min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes)]
        types = sorted({t for p in parts for t in p.geometry_types})
        crs = self.schema.crs
        return {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "geoparquet_version": GEOPARQUET_VERSION,
            "run_id": self.run_id,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "layer": self.schema.name,
            "rows": sum(p.rows for p in parts),
            "bbox": bbox,
            "geometry_types": types,
            "crs": None if crs is None or self.schema.geometry_type is None else crs.to_json_dict(),
            "parts": [p.to_json() for p in parts],
        }

    # ------------------------------------------------------------------ parts (any process)

    def part_file(self, name: str) -> str:
        """The file name of part ``name`` (letters, digits, ``_``, ``-``): ``part-<name>.parquet``,
        with the run id in front of ``name`` on object storage."""
        if not _PART_NAME_RE.fullmatch(name):
            raise ConfigError(f"part name {name!r} must be 1-100 letters, digits, '_' or '-'")
        return f"part-{self.run_id}-{name}.parquet" if self.location.remote else f"part-{name}.parquet"

    @contextlib.contextmanager
    def open_part(self, name: str) -> Iterator[PartWriter]:
        """Writer for part ``name``; when the block ends without error the part is in place
        (replacing one of the same name) and ``writer.info`` is set. An error leaves no part."""
        file = self.part_file(name)
        tmp_dir = Path(tempfile.mkdtemp(prefix=f".{file}.", suffix=".part", dir=None if self.location.remote else self.staging))
        tmp = tmp_dir / file
        stats = LoadStats()
        try:
            writer = _GeoParquetWriter(
                self.schema, tmp, self.row_group_size, self.row_group_bytes, stats, store_schema=False
            )
            part = PartWriter(writer, stats)
            try:
                yield part
                writer.close()
            except BaseException:
                writer.abort()
                raise
            self.warnings.extend(w for w in stats.warnings if w not in self.warnings)
            info = _part_info(file, writer, stats, tmp.stat().st_size)
            if self.location.remote:
                fs, prefix = self.location.filesystem()
                try:
                    upload(fs, tmp, f"{prefix}/{file}")
                except Exception as exc:  # the backends raise their own types (botocore, google, azure)
                    raise storage_error(exc, self.location.child(file), "upload") from exc
            else:
                try:
                    os.replace(tmp, Path(self.staging) / file)
                except OSError as exc:
                    raise output_write_error(exc, self.location.local_path) from exc
            part.info = info
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)

    def write_part(self, name: str, batches: FeatureBatch | Iterable[FeatureBatch]) -> PartInfo:
        """Write ``batches`` as part ``name`` and return its :class:`PartInfo`. Usable in a worker
        process given this (pickled) writer; writing the same name again replaces the part."""
        if isinstance(batches, FeatureBatch):
            batches = [batches]
        with self.open_part(name) as part:
            for batch in batches:
                part.write(batch)
        assert part.info is not None
        return part.info

    # ------------------------------------------------------------------ commit internals

    def _commit_local(self, parts: Sequence[PartInfo], data: bytes) -> None:
        staging = Path(self.staging)
        target = self.location.local_path
        missing = [p.file for p in parts if not (staging / p.file).is_file()]
        if missing:
            raise LoadError(f"dataset {str(target)!r}: part(s) {missing} were accepted but not written; rerun the job")
        try:
            (staging / MANIFEST_NAME).write_bytes(data)
            _default_folder_mode(staging)
        except OSError as exc:
            raise output_write_error(exc, target) from exc
        check_folder_target(target, self.overwrite)
        old: Path | None = None
        if target.exists() or target.is_symlink():
            old = target.parent / f".{target.name}.{secrets.token_hex(6)}.part"
            try:
                os.rename(target, old)
            except OSError as exc:
                raise output_write_error(exc, target) from exc
        try:
            os.rename(staging, target)
        except OSError as exc:
            if old is not None:
                os.rename(old, target)
            raise output_write_error(exc, target) from exc
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)

    def _commit_remote(self, parts: Sequence[PartInfo], data: bytes) -> None:
        fs, prefix = self.location.filesystem()
        try:
            present = {key.rsplit("/", 1)[-1] for key in _part_keys(fs, prefix)}
        except Exception as exc:  # the backends raise their own types (botocore, google, azure)
            raise storage_error(exc, self.location, "list") from exc
        missing = [p.file for p in parts if p.file not in present]
        if missing:
            raise LoadError(f"dataset {str(self.location)!r}: part(s) {missing} were accepted but are not there; rerun the job")
        _refuse_existing_manifest(fs, prefix, self.location, self.overwrite)
        with tempfile.TemporaryDirectory(prefix="ags-etl-manifest.") as tmp:
            local = Path(tmp) / MANIFEST_NAME
            local.write_bytes(data)
            try:
                upload(fs, local, f"{prefix}/{MANIFEST_NAME}")
            except Exception as exc:  # the backends raise their own types (botocore, google, azure)
                raise storage_error(exc, self.location, "write the manifest of") from exc
        keep = {p.file for p in parts}
        stale = [f"{prefix}/{name}" for name in present if name not in keep]
        if stale:
            try:
                fs.rm(stale)
            except Exception as exc:  # noqa: BLE001 - the dataset is committed; leftovers are only a warning
                self.warnings.append(
                    f"geoparquet: could not remove {len(stale)} part file(s) of earlier runs under "
                    f"{str(self.location)!r} ({type(exc).__name__}); they are not in the manifest"
                )


def _part_info(file: str, writer: _GeoParquetWriter, stats: LoadStats, size: int) -> PartInfo:
    geo = writer.geo_metadata()
    column = geo["columns"][geo["primary_column"]]
    box = column.get("bbox")
    bbox = None if box is None or not all(math.isfinite(v) for v in box) else (box[0], box[1], box[2], box[3])
    return PartInfo(file, stats.features, bbox, tuple(column["geometry_types"]), size)


def _default_folder_mode(folder: Path) -> None:
    """Give the staging folder (created 0700 by mkdtemp) the mode a plain mkdir would, and its
    files (0600) those of a plain open()."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for child in folder.iterdir():
        os.chmod(child, 0o666 & ~umask)


def _part_keys(fs: Any, prefix: str) -> list[str]:
    """Keys of part files directly under ``prefix`` (none when it does not exist)."""
    fs.invalidate_cache(prefix)
    try:
        names = fs.ls(prefix, detail=False)
    except FileNotFoundError:
        return []
    return [n for n in names if re.fullmatch(r"part-.*\.parquet", str(n).rsplit("/", 1)[-1])]


def _refuse_existing_manifest(fs: Any, prefix: str, location: OutputLocation, overwrite: bool) -> None:
    if overwrite:
        return
    try:
        exists = remote_exists(fs, f"{prefix}/{MANIFEST_NAME}")
    except Exception as exc:  # the backends raise their own types (botocore, google, azure)
        raise storage_error(exc, location, "check") from exc
    if exists:
        raise OutputExistsError(
            f"output {str(location)!r} holds a dataset ({MANIFEST_NAME}); pass --overwrite (or overwrite: true) to replace it"
        )


def read_manifest(location: OutputLocation | str) -> dict[str, Any]:
    """The manifest of the dataset at ``location`` (a folder path or URL). Raises LoadError
    when there is none (no complete dataset there)."""
    if isinstance(location, str):
        location = OutputLocation.parse(location, folder=True)
    try:
        if location.remote:
            fs, prefix = location.filesystem()
            with fs.open(f"{prefix}/{MANIFEST_NAME}", "rb") as fh:
                data = fh.read()
        else:
            data = (location.local_path / MANIFEST_NAME).read_bytes()
    except FileNotFoundError as exc:
        raise LoadError(f"{str(location)!r} holds no complete dataset (no {MANIFEST_NAME}); run the job that writes it") from exc
    manifest: dict[str, Any] = json.loads(data)
    return manifest


class DatasetStreamWriter:
    """The loader's writer: batches are cut into parts of ``rows_per_part`` rows
    (``part-00000``, ``part-00001`` …). A batch is never split, so a part may hold up to one
    batch more. An empty stream gives one empty part (so readers learn the schema)."""

    def __init__(self, dataset: DatasetWriter, rows_per_part: int) -> None:
        self.dataset = dataset
        self.rows_per_part = rows_per_part
        self.stats = LoadStats()
        self.parts: list[PartInfo] = []
        self._stack = contextlib.ExitStack()
        self._current: PartWriter | None = None

    def write(self, batch: FeatureBatch) -> None:
        if len(batch) == 0:
            return
        if self._current is None:
            self._current = self._stack.enter_context(self.dataset.open_part(f"{len(self.parts):05d}"))
        self._current.write(batch)
        self.stats.features += len(batch)
        if self._current.rows >= self.rows_per_part:
            self._finish_part()

    def _finish_part(self) -> None:
        part = self._current
        assert part is not None
        self._current = None
        self._stack.close()
        assert part.info is not None
        self.parts.append(part.info)

    def close(self) -> list[PartInfo]:
        if self._current is None and not self.parts:
            self._current = self._stack.enter_context(self.dataset.open_part(f"{len(self.parts):05d}"))
        if self._current is not None:
            self._finish_part()
        return self.parts

    def abort(self) -> None:
        """Drop the part being written (call from an ``except`` block: it gets the exception)."""
        self._current = None
        self._stack.__exit__(*sys.exc_info())


@contextlib.contextmanager
def open_dataset(
    location: OutputLocation,
    schema: LayerSchema,
    *,
    overwrite: bool,
    rows_per_part: int = DEFAULT_ROWS_PER_PART,
    row_group_size: int = DEFAULT_ROW_GROUP_SIZE,
    row_group_bytes: int = DEFAULT_ROW_GROUP_BYTES,
) -> Iterator[DatasetStreamWriter]:
    """The GeoParquet loader's dataset mode: a writer taking batches; the dataset is committed
    when the block ends without error, and nothing of this run is left at the target otherwise."""
    dataset = DatasetWriter.begin(
        location, schema, overwrite=overwrite, row_group_size=row_group_size, row_group_bytes=row_group_bytes
    )
    writer = DatasetStreamWriter(dataset, rows_per_part)
    try:
        try:
            yield writer
            parts = writer.close()
        except BaseException:
            writer.abort()
            raise
        dataset.commit(parts)
    except BaseException:
        dataset.abort()
        raise
    writer.stats.warnings.extend(dataset.warnings)
