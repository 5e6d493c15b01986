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
import errno
import os
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

from pyproj import CRS

from ags_etl.batch import FeatureBatch
from ags_etl.errors import CapabilityError, ConfigError, LoadError, OutputExistsError
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
    ``object_storage``: the path may be an ``s3://``, ``gs://`` or ``az://`` URL
    (:mod:`ags_etl.loaders.storage`).
    """

    extensions: tuple[str, ...]
    required_crs: CRS | None = None
    max_field_name_length: int | None = None
    single_geometry_type: bool = False
    supports_tables: bool = True
    object_storage: bool = False


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
    """Base of every sink. Subclasses set ``name`` and ``capabilities``.

    A sink need not be a file (the feature-service loader writes through applyEdits): this
    base knows nothing of paths. The pipeline calls :meth:`preflight` before any network
    request, :meth:`check` once the output schema is known, then :meth:`open`.
    """

    name: ClassVar[str]
    capabilities: ClassVar[LoaderCapabilities]

    def __init__(self, *, overwrite: bool = False, **options: Any) -> None:
        self.overwrite = overwrite
        self.options = options

    @property
    def target(self) -> str | None:
        """Where the output goes, for messages and run reports (a path or a URL), or None."""
        return None

    def preflight(self) -> None:
        """Checks that need no schema and no network (run before the first request). Default: none."""

    def check(self, schema: LayerSchema) -> None:
        """Raise CapabilityError if this sink cannot take ``schema``. No network, no writing."""
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
        """Open a writer for ``schema``; leaving the block normally commits the output, an
        exception leaves any earlier output as it was."""


class FileLoader(Loader):
    """A sink that writes one file (or file set) at ``path``, atomically.

    The output is written beside the target and renamed onto it only on success (see the
    module docstring); an existing target is replaced only with ``overwrite``.
    """

    def __init__(self, path: str | os.PathLike[str], *, overwrite: bool = False, **options: Any) -> None:
        super().__init__(overwrite=overwrite, **options)
        from ags_etl.loaders.storage import OutputLocation

        #: Where the output goes (a local path or, for loaders with ``object_storage``, a URL).
        self.location = OutputLocation.parse(path, options.get("storage_options"))
        if self.location.remote and not self.capabilities.object_storage:
            raise ConfigError(
                f"{self.name}: cannot write to {self.location.scheme}:// URLs; object storage takes geoparquet and "
                "geojson sinks only; write to a local path (and copy it), or choose one of those formats"
            )
        self.path = Path(path)  # for a URL only a name for messages: use ``location``

    @property
    def target(self) -> str | None:
        return str(self.location) if self.location.remote else str(self.path)

    def preflight(self) -> None:
        """The folder exists and is writable; no existing target without ``overwrite``."""
        self.location.preflight(self.overwrite)

    def check(self, schema: LayerSchema) -> None:
        self.location.preflight(self.overwrite)
        super().check(schema)


def check_target(path: Path, overwrite: bool) -> None:
    """Refuse a target in a missing or unwritable folder, a folder as target, or an existing one
    without overwrite.

    Writability is probed by creating and removing a temp file in the folder (``os.access``
    says yes to root even on a read-only mount). Raises ConfigError / OutputExistsError.
    """
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise ConfigError(f"output folder {str(parent)!r} does not exist; create it first or choose another -o path")
    if not parent.is_dir():
        raise ConfigError(f"output folder {str(parent)!r} is not a folder; choose another -o path")
    if path.is_dir():
        raise ConfigError(f"output {str(path)!r} is a folder; give a file path such as {str(path / 'layer.geojson')!r}")
    if path.exists() and not overwrite:
        raise OutputExistsError(f"output {str(path)!r} exists; pass --overwrite (or overwrite: true) to replace it")
    try:
        _probe_writable(parent)
    except OSError as exc:
        raise ConfigError(f"output folder {str(parent)!r} cannot be written ({_reason(exc)}); {_fix(exc)}") from exc


def _probe_writable(folder: Path) -> None:
    """Create a file in ``folder`` and remove it; raise the OSError when that fails.

    Linux: an unnamed O_TMPFILE file, which never shows in the folder's listing. Elsewhere,
    or on a file system without O_TMPFILE, a hidden named file removed at once.
    """
    tmpfile_flag = getattr(os, "O_TMPFILE", None)
    if tmpfile_flag is not None:
        try:
            os.close(os.open(folder, tmpfile_flag | os.O_WRONLY, 0o600))
            return
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
                raise
    fd, probe = tempfile.mkstemp(prefix=".ags-etl-probe.", dir=folder)
    os.close(fd)
    os.unlink(probe)

#: errno values that mean the output's file system refused a write (not a network failure).
_OUTPUT_ERRNOS = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO, errno.EMFILE}
)


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _fix(exc: OSError) -> str:
    """What the user can do about an output write failure, by errno."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return "free some space there or choose another -o folder"
    if exc.errno == errno.EROFS:
        return "the file system is mounted read-only; choose another -o folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "make the folder writable for this user or choose another -o folder"
    if exc.errno == errno.EFBIG:
        return "the file is too large for this file system; choose another -o folder or a format that splits"
    return "check the folder (permissions, free space, mount) or choose another -o folder"


def output_write_error(exc: OSError, target: Path) -> LoadError:
    """A LoadError naming ``target``, the system's reason and the fix, for an OSError while
    writing or committing it. Raise it ``from exc``."""
    return LoadError(f"could not write {str(target)!r}: {_reason(exc)}; {_fix(exc)}")


def is_output_write_error(exc: BaseException) -> bool:
    """True for an OSError that comes from the output's file system (full, read-only, no access …)."""
    return isinstance(exc, OSError) and exc.errno in _OUTPUT_ERRNOS


def temp_name_pattern(target: Path) -> re.Pattern[str]:
    """The names of the hidden temp outputs (files or folders) made for ``target`` beside it:
    ``.NAME.<random>.part``, as :func:`atomic_file` and :func:`temp_dir` create them."""
    return re.compile(re.escape(f".{target.name}.") + r"[A-Za-z0-9_]+" + re.escape(".part"))


def stale_temp_outputs(target: Path) -> list[Path]:
    """Temp outputs for ``target`` left beside it by a run that was killed (SIGKILL, power loss).

    Only reads the folder; deleting them is safe only when no other run of the same job is in
    progress (its own temp output has the same shape of name). Sorted; empty when the folder
    cannot be listed.
    """
    parent = target.parent if str(target.parent) else Path(".")
    pattern = temp_name_pattern(target)
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    return sorted(parent / n for n in names if pattern.fullmatch(n))


def temp_dir(target: Path) -> Path:
    """Create a hidden temp folder beside ``target`` (``.NAME.<random>.part``) and return it.

    The caller removes it. An OSError (read-only, full, no access) becomes a LoadError naming
    the target and the fix.
    """
    try:
        return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent))
    except OSError as exc:
        raise output_write_error(exc, target) from exc


def _default_mode(path: Path) -> None:
    """Give a temp file (created 0600 by mkstemp) the mode a plain open() would: 0666 & ~umask."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_file(target: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp path beside ``target``; on success move it onto ``target``, else delete it.

    The temp file lives in the target's folder (same filesystem, so ``os.replace``
    is atomic) under a hidden name (``.NAME.<random>.part``), so a killed run never leaves
    a file at the target. An OSError from the output's file system — creating the temp file,
    writing it inside the block, or the final rename — becomes a LoadError naming the target
    and the fix; any exception (KeyboardInterrupt and SIGTERM included) removes the temp file.
    """
    check_target(target, overwrite)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    except OSError as exc:
        raise output_write_error(exc, target) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        check_target(target, overwrite)
        _default_mode(tmp)
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if is_output_write_error(exc):
            assert isinstance(exc, OSError)
            raise output_write_error(exc, target) from exc
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
