"""The staging folder of a resumable pull: completed page tasks kept beside the target.

``pull --resume`` (``resume: true`` on a pipeline job) gives the extractor a
:class:`StagingStore` for ``.<target name>.resume/`` beside the target. The folder holds:

* ``manifest.json`` — what the chunks are valid for (:func:`manifest_for`): the layer URL
  (no credentials), a digest of the query (where clause, fields, out SR, spatial filter,
  response format, page size), the layer's fingerprint (count, highest OID,
  ``editingInfo.lastEditDate``) and the plan (strategy and a digest of its task list);
* one Arrow IPC file (Feather v2, zstd) per completed task, named by :func:`task_id`, a
  digest of the task's fields, so the same plan names the same tasks in every run.

Contracts:

* every file is written to a temp name, fsync'd and renamed: a run killed at any moment
  leaves whole chunks or none, never half of one;
* a staged chunk holds the page exactly as the worker returned it (rows, OIDs, the
  ``exceededTransferLimit`` flag, the stray count), *before* duplicates are removed, so
  the planner and the driver replay it exactly as in the run that fetched it;
* :meth:`StagingStore.begin` discards every chunk, with one message naming what
  changed, when the manifest differs from the one of this run (or is missing);
* the store knows nothing of planners or servers; the driver consults it before
  submitting a task and fills it after the planner accepted a page
  (:func:`ags_etl.extractors.driver.drive`), the extractor removes it after success.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import shapely
from pyarrow import ipc

from ags_etl.arcgis.client import display_url
from ags_etl.arcgis.layer import LayerInfo
from ags_etl.arcgis.paging import Plan, Probes
from ags_etl.batch import FeatureBatch
from ags_etl.errors import LoadError
from ags_etl.extractors.tasks import PageResult, PageTask, page_oids
from ags_etl.schema import LayerSchema

log = logging.getLogger(__name__)

#: Bumped when the chunk or manifest layout changes: an older folder is then discarded.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_SUFFIX = ".arrow"
#: Schema metadata keys of a chunk (geometry rides as the last column, ISO WKB).
_META_GEOMETRY = b"ags_etl.geometry"
_META_EXCEEDED = b"ags_etl.exceeded"
_META_STRAYS = b"ags_etl.strays"
_META_TASK = b"ags_etl.task"

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def staging_folder(target: str | os.PathLike[str]) -> Path:
    """``.<target name>.resume`` beside ``target`` (characters other than letters, digits,
    ``.``, ``_`` and ``-`` in the name become ``_``)."""
    path = Path(target)
    return path.parent / f".{_UNSAFE.sub('_', path.name)}.resume"


def task_id(task: PageTask) -> str:
    """A digest of the task's kind and fields: the same task gets the same id in every run.

    Tasks are frozen dataclasses of ints, floats and tuples, whose ``repr`` is exact and stable.
    """
    return hashlib.blake2b(repr(task).encode(), digest_size=16).hexdigest()


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _plan_tasks(plan: Plan, probes: Probes, info: LayerInfo) -> str:
    """A digest of what the plan's task list is made from (same digest, same first tasks)."""
    ids = probes.ids
    return _digest(
        {
            "strategy": plan.strategy.value,
            "page_size": plan.page_size,
            "count": plan.count,
            "ids": None if ids is None else hashlib.sha256(np.ascontiguousarray(ids, dtype=np.int64).tobytes()).hexdigest(),
            "oid_range": [probes.oid_min, probes.oid_max],
            "extent": info.extent,
        }
    )


def manifest_for(
    info: LayerInfo,
    params: dict[str, Any],
    response_format: str,
    plan: Plan,
    probes: Probes,
    max_oid: int | None,
) -> dict[str, Any]:
    """The manifest of a run: what its staged chunks are valid for (pure; no secrets).

    ``params`` are the base query parameters (where, outFields, outSR, spatial filter;
    credentials never travel in them); ``max_oid`` the highest OID matching the query
    (None when the server gives none).
    """
    editing = info.raw.get("editingInfo")
    last_edit = editing.get("lastEditDate") if isinstance(editing, dict) else None
    return {
        "version": FORMAT_VERSION,
        "layer": display_url(info.url),
        "query": _digest({"params": params, "format": response_format, "page_size": plan.page_size}),
        "count": probes.count,
        "max_oid": max_oid,
        "last_edit_date": last_edit,
        "strategy": plan.strategy.value,
        "tasks": _plan_tasks(plan, probes, info),
    }


#: manifest key → how a difference is named in the discard message ({old} and {new} are filled).
_CHANGES: tuple[tuple[str, str], ...] = (
    ("version", "the staging format changed"),
    ("layer", "the layer URL differs"),
    ("query", "the query differs (where, fields, output CRS, spatial filter, response format or page size)"),
    ("count", "the layer changed: its count went from {old} to {new}"),
    ("max_oid", "the layer changed: its highest OID went from {old} to {new}"),
    ("last_edit_date", "the layer changed: its last edit date went from {old} to {new}"),
    ("strategy", "the paging strategy went from {old} to {new}"),
    ("tasks", "the paging plan differs (page size or the layer's ids or extent)"),
)


def manifest_change(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    """What differs between two manifests, in words (the first difference), or None."""
    for key, words in _CHANGES:
        if old.get(key) != new.get(key):
            return words.format(old=old.get(key), new=new.get(key))
    return None


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temp file beside ``path``, fsync'd and renamed onto it when the block succeeds."""
    fd, name = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    """Make renames in ``folder`` durable (POSIX; a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class StagingStore:
    """The staging folder of one target: manifest plus one chunk per completed task.

    Use: :meth:`begin` once the plan is known (keeps or discards what is there),
    :meth:`load` before submitting a task, :meth:`save` once the planner accepted a page,
    :meth:`remove` after the output was committed.
    """

    def __init__(self, folder: str | os.PathLike[str]) -> None:
        self.folder = Path(folder)
        self._schema: LayerSchema | None = None
        self._url = ""
        #: Task ids of the chunks on disk when the run began (kept after :meth:`begin`).
        self._on_disk: set[str] = set()

    @classmethod
    def beside(cls, target: str | os.PathLike[str]) -> StagingStore:
        return cls(staging_folder(target))

    def exists(self) -> bool:
        return self.folder.is_dir()

    def chunks(self) -> list[Path]:
        """The chunk files now in the folder."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.suffix == CHUNK_SUFFIX)

    def _error(self, what: str, exc: OSError) -> LoadError:
        return LoadError(
            f"cannot {what} in the staging folder {str(self.folder)!r}: {exc.strerror or exc}; free space or fix "
            f"the folder's permissions, or run without --resume"
        )

    def begin(self, manifest: dict[str, Any], schema: LayerSchema) -> str | None:
        """Keep the staged chunks when ``manifest`` matches the folder's, else discard them.

        Returns the one-line message of a discard (also logged as a warning), None otherwise.
        Writes the manifest, creating the folder when needed.
        """
        self._schema = schema
        self._url = str(manifest.get("layer", ""))
        message: str | None = None
        manifest_path = self.folder / MANIFEST
        if self.folder.is_dir():
            change: str | None
            try:
                old = json.loads(manifest_path.read_text("utf-8"))
                change = manifest_change(old, manifest) if isinstance(old, dict) else "its manifest is unreadable"
            except FileNotFoundError:
                change = "it has no manifest" if self.chunks() else None
            except (OSError, ValueError) as exc:
                change = f"its manifest is unreadable ({exc})"
            if change is not None:
                count = len(self.chunks())
                message = f"discarded {count} staged chunk(s) in {str(self.folder)!r}: {change}; pulling everything again"
                log.warning("%s", message)
                self.remove()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            with _atomic(manifest_path) as tmp:
                tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True), "utf-8")
            _fsync_dir(self.folder)
        except OSError as exc:
            raise self._error("write the manifest", exc) from exc
        self._on_disk = {p.stem for p in self.chunks()}
        return message

    def _path(self, task: PageTask) -> Path:
        return self.folder / (task_id(task) + CHUNK_SUFFIX)

    def load(self, task: PageTask) -> PageResult | None:
        """The staged result of ``task``, or None when it was not staged (or its chunk is unreadable)."""
        schema = self._require_schema()
        key = task_id(task)
        if key not in self._on_disk:
            return None
        path = self.folder / (key + CHUNK_SUFFIX)
        try:
            with pa.OSFile(str(path), "rb") as source:
                table = ipc.open_file(source).read_all()
        except (OSError, pa.ArrowInvalid) as exc:
            log.warning("staged chunk %s is unreadable (%s); fetching its page again", path, exc)
            self._on_disk.discard(key)
            return None
        meta = table.schema.metadata or {}
        if meta.get(_META_TASK) != repr(task).encode():
            return None  # a digest collision, however unlikely: fetch the page
        geometry = None
        if meta.get(_META_GEOMETRY) == b"last":
            wkb = table.column(table.num_columns - 1).to_numpy(zero_copy_only=False)
            geometry = shapely.from_wkb(wkb)
            table = table.remove_column(table.num_columns - 1)
        table = table.replace_schema_metadata(None)
        batch = FeatureBatch(table, geometry, schema.crs)
        oids = page_oids(batch, schema, self._url) if schema.oid_field is not None else None
        return PageResult(
            task, batch, exceeded=meta.get(_META_EXCEEDED) == b"1", oids=oids, strays=int(meta.get(_META_STRAYS, b"0"))
        )

    def save(self, result: PageResult) -> None:
        """Stage one page the planner accepted (atomically: temp name, fsync, rename)."""
        batch = result.batch
        table = batch.attributes
        meta = {
            _META_TASK: repr(result.task).encode(),
            _META_EXCEEDED: b"1" if result.exceeded else b"0",
            _META_STRAYS: str(result.strays).encode(),
            _META_GEOMETRY: b"none",
        }
        if batch.geometry is not None:
            # The last column, whatever its name (an attribute may be called "geometry").
            wkb = shapely.to_wkb(batch.geometry, flavor="iso", output_dimension=3)
            table = table.append_column("ags_etl_geometry_wkb", pa.array(wkb, type=pa.binary()))
            meta[_META_GEOMETRY] = b"last"
        table = table.replace_schema_metadata(meta)
        path = self._path(result.task)
        try:
            with _atomic(path) as tmp:
                options = ipc.IpcWriteOptions(compression="zstd")
                with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, table.schema, options=options) as writer:
                    writer.write_table(table)
        except OSError as exc:
            raise self._error(f"stage the page of task {task_id(result.task)}", exc) from exc
        _fsync_dir(self.folder)
        self._on_disk.add(path.stem)

    def remove(self) -> None:
        """Delete the folder and every chunk in it (after success, or when discarded)."""
        shutil.rmtree(self.folder, ignore_errors=True)
        self._on_disk = set()

    def _require_schema(self) -> LayerSchema:
        if self._schema is None:
            raise RuntimeError("call StagingStore.begin(manifest, schema) before load/save")
        return self._schema
