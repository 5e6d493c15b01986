"""Output locations: a local path or an object-storage URL (``s3://``, ``gs://``, ``az://``),
and the atomic commit on each.

An :class:`OutputLocation` is what a file sink's ``path`` names. Local paths are written as
before (a hidden temp file beside the target, renamed onto it: :func:`~ags_etl.loaders.base.atomic_file`).
URLs go through `fsspec <https://filesystem-spec.readthedocs.io>`_ and its backends (``s3fs``,
``gcsfs``, ``adlfs``: the ``cloud`` extra), imported only when a URL is used, so local runs
never need them.

Object storage has no rename, but it has one atomic step: an object becomes visible only when
its upload is complete (one PUT, or the completion of a multipart upload). A single-file output
is therefore written to a local temp file and uploaded whole to the final key at commit
(:func:`atomic_output`); a reader sees the earlier object or the new one, never half of one.
Datasets (a folder of part files) use a manifest written last; see
:mod:`ags_etl.loaders.geoparquet_dataset`.

Credentials come only from each provider's usual sources (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3``,
``AWS_DEFAULT_REGION``, ``~/.aws``; ``GOOGLE_APPLICATION_CREDENTIALS``;
``AZURE_STORAGE_CONNECTION_STRING``, ``AZURE_STORAGE_ACCOUNT_NAME`` …). The sink's
``storage_options`` carry non-secret settings only (``endpoint_url``, ``region_name`` …): a key
that looks like a secret is refused, so pipeline files never hold one. Secrets never reach a
message: error texts from the backends pass through :func:`redact_secrets`, and the backends'
debug loggers (which print signed request headers) are capped at WARNING.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ags_etl.errors import ConfigError, LoadError, OutputExistsError

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = [
    "CLOUD_EXTRA",
    "OutputLocation",
    "atomic_output",
    "is_url",
    "names_folder",
    "redact_secrets",
]

#: URL scheme → (fsspec protocol, the module that implements it, its pip package).
BACKENDS: dict[str, tuple[str, str, str]] = {
    "s3": ("s3", "s3fs", "s3fs"),
    "gs": ("gs", "gcsfs", "gcsfs"),
    "gcs": ("gs", "gcsfs", "gcsfs"),
    "az": ("az", "adlfs", "adlfs"),
    "abfs": ("abfs", "adlfs", "adlfs"),
    "abfss": ("abfs", "adlfs", "adlfs"),
}

#: How to install the backends, as every message about a missing one says.
CLOUD_EXTRA = "pip install 'ags_etl[cloud]'"

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")

#: Words in a storage_options key that mark a secret (refused: secrets come from the environment).
_SECRET_WORDS = ("key", "secret", "token", "password", "credential", "connection_string", "sas", "signature")

#: Environment variables whose values are secrets (never shown in a message).
SECRET_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_STORAGE_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
    "AZURE_CLIENT_SECRET",
    "GOOGLE_OAUTH_ACCESS_TOKEN",
)

#: Loggers of the backends; their DEBUG records hold signed request headers (and session tokens).
_BACKEND_LOGGERS = ("botocore", "aiobotocore", "s3fs", "gcsfs", "adlfs", "azure", "google.auth", "fsspec")


def is_url(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is text with a ``scheme://`` prefix (local paths never have one)."""
    return isinstance(path, str) and _SCHEME_RE.match(path) is not None


def names_folder(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is text ending in ``/`` (a dataset folder rather than a file)."""
    return isinstance(path, str) and path.endswith(("/", os.sep))


def _installed(module: str) -> bool:
    """Whether ``module`` can be imported (without importing it). A ``None`` entry in
    ``sys.modules`` marks a module as blocked, as Python's import system treats it."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def redact_secrets(text: str) -> str:
    """``text`` with the values of the secret environment variables replaced by ``***``."""
    for name in SECRET_VARIABLES:
        value = os.environ.get(name)
        if value is not None and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def _secret_keys(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    found = []
    for key, value in options.items():
        dotted = f"{prefix}{key}"
        if any(word in str(key).lower() for word in _SECRET_WORDS):
            found.append(dotted)
        elif isinstance(value, Mapping):
            found += _secret_keys(value, dotted + ".")
    return found


@dataclass(frozen=True)
class OutputLocation:
    """Where one output goes: a local path or a URL of object storage. Picklable (no open
    connection is held), so a worker process can be given one.

    ``text`` is the path or URL as given (a trailing ``/`` stripped); ``folder`` says the
    output is a dataset folder rather than one file; ``storage_options`` are the fsspec
    backend's keyword arguments (non-secret settings only).
    """

    text: str
    folder: bool = False
    storage_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        path: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        *,
        folder: bool = False,
    ) -> OutputLocation:
        """Check ``path`` and ``storage_options`` offline. Raises ConfigError for an unknown URL
        scheme, credentials inside a URL, storage_options on a local path, or a secret in them."""
        text = os.fspath(path)
        match = _SCHEME_RE.match(text)
        options = dict(storage_options or {})
        if match is None:
            if options:
                raise ConfigError(
                    f"storage_options apply to object-storage URLs (s3://, gs://, az://) only, not the local "
                    f"path {text!r}; drop storage_options"
                )
            stripped = text.rstrip("/" + os.sep) or text
            return cls(stripped, folder=folder, storage_options=options)
        scheme = match.group(1).lower()
        if scheme not in BACKENDS:
            raise ConfigError(
                f"output URL scheme {scheme + '://'!r} is not supported; use a local path or one of "
                f"{', '.join(s + '://' for s in sorted(BACKENDS))}"
            )
        rest = text[match.end():]
        if "@" in rest.split("/", 1)[0]:
            raise ConfigError(
                f"the {scheme}:// output URL holds credentials before '@'; remove them from the URL and give them "
                "through the provider's environment variables (e.g. AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            )
        bucket = rest.split("/", 1)[0]
        if not bucket:
            raise ConfigError(f"output URL {text!r} names no bucket or container; write {scheme}://BUCKET/path")
        secret = _secret_keys(options)
        if secret:
            raise ConfigError(
                f"storage_options {secret} look like secrets, which pipeline files must not hold; give credentials "
                "through the provider's environment variables (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
                "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_CONNECTION_STRING …) and keep only settings such as "
                "endpoint_url in storage_options"
            )
        return cls(text.rstrip("/"), folder=folder, storage_options=options)

    def as_folder(self, folder: bool = True) -> OutputLocation:
        """This location, naming a dataset folder (``folder=True``) or one file."""
        return replace(self, folder=folder)

    # ------------------------------------------------------------------ naming

    @property
    def remote(self) -> bool:
        """True for an object-storage URL."""
        return _SCHEME_RE.match(self.text) is not None

    @property
    def scheme(self) -> str | None:
        match = _SCHEME_RE.match(self.text)
        return None if match is None else match.group(1).lower()

    @property
    def name(self) -> str:
        """The last component of the path or key (``x.parquet``, ``ds``)."""
        return self.text.rstrip("/").rsplit("/", 1)[-1] if self.remote else Path(self.text).name

    @property
    def local_path(self) -> Path:
        """The local path; ConfigError for a URL."""
        if self.remote:
            raise ConfigError(f"{self.text!r} is an object-storage URL, not a local path")
        return Path(self.text)

    def child(self, name: str) -> str:
        """The path or URL of ``name`` inside this (folder) location."""
        return f"{self.text}/{name}" if self.remote else str(Path(self.text) / name)

    def __str__(self) -> str:
        return self.text + ("/" if self.folder and self.remote else "")

    # ------------------------------------------------------------------ backends

    def require_backend(self) -> None:
        """ConfigError naming the extra to install when the URL's fsspec backend is missing.
        Offline (looks for the modules only); nothing to do for local paths."""
        scheme = self.scheme
        if scheme is None:
            return
        _protocol, module, package = BACKENDS[scheme]
        missing = [m for m in ("fsspec", module) if not _installed(m)]
        if missing:
            raise ConfigError(
                f"writing to {scheme}:// needs {' and '.join(p if p != module else package for p in missing)}, "
                f"which {'is' if len(missing) == 1 else 'are'} not installed; run {CLOUD_EXTRA}"
            )

    def filesystem(self) -> tuple[AbstractFileSystem, str]:
        """(the fsspec file system, this location's path within it). fsspec keeps one instance
        per protocol and options in a process; listings are re-read before every check here."""
        self.require_backend()
        import fsspec

        for name in _BACKEND_LOGGERS:
            logger = logging.getLogger(name)
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
        scheme = self.scheme
        assert scheme is not None
        protocol = BACKENDS[scheme][0]
        try:
            fs = fsspec.filesystem(protocol, **self.storage_options)
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                f"storage_options for {scheme}:// were refused by {BACKENDS[scheme][2]}: "
                f"{redact_secrets(str(exc))}; see the backend's documentation for its settings"
            ) from exc
        return fs, fs._strip_protocol(self.text)

    # ------------------------------------------------------------------ checks

    def preflight(self, overwrite: bool) -> None:
        """Offline checks before the first request: a local target's folder exists and is
        writable and no target exists without ``overwrite``; a URL's backend is installed."""
        from ags_etl.loaders.base import check_target

        if self.remote:
            self.require_backend()
        elif self.folder:
            check_folder_target(self.local_path, overwrite)
        else:
            check_target(self.local_path, overwrite)


def check_folder_target(path: Path, overwrite: bool) -> None:
    """A dataset folder target: its parent exists and is writable; an existing target (folder
    or file) is replaced only with ``overwrite``. Raises ConfigError / OutputExistsError."""
    from ags_etl.loaders.base import check_target

    check_target(path.parent / f".{path.name}.preflight", overwrite=True)  # the parent folder's checks
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExistsError(f"output {str(path)!r} exists; pass --overwrite (or overwrite: true) to replace it")


def storage_error(exc: BaseException, location: OutputLocation | str, doing: str) -> LoadError:
    """A LoadError naming the URL, what failed, the backend's reason (secrets removed) and the fix."""
    reason = redact_secrets(str(exc)) or type(exc).__name__
    return LoadError(
        f"could not {doing} {str(location)!r}: {type(exc).__name__}: {reason}; check the bucket exists, the "
        "credentials in the provider's environment variables and the endpoint (AWS_ENDPOINT_URL or "
        "storage_options.endpoint_url)"
    )


def remote_exists(fs: AbstractFileSystem, key: str) -> bool:
    """Whether ``key`` exists now (listing caches dropped first)."""
    fs.invalidate_cache(key.rsplit("/", 1)[0])
    return bool(fs.exists(key))


def upload(fs: AbstractFileSystem, local: Path, key: str) -> None:
    """Upload the local file ``local`` to ``key`` as one object (one PUT or one completed
    multipart upload: the object appears whole or not at all)."""
    fs.put_file(str(local), key)
    fs.invalidate_cache(key.rsplit("/", 1)[0])


@contextlib.contextmanager
def atomic_output(location: OutputLocation, overwrite: bool) -> Iterator[Path]:
    """Yield a local temp path to write one output file to; on success it becomes ``location``.

    Local: :func:`~ags_etl.loaders.base.atomic_file` (temp file beside the target, renamed).
    URL: a temp file in the system's temp folder, uploaded whole to the final key when the
    block ends without error (an existing object is refused without ``overwrite``, checked
    before writing and again before the upload); the temp file is removed in every case, and
    a failed or interrupted run leaves no object. Backend failures become LoadErrors naming
    the URL (never a secret).
    """
    if not location.remote:
        from ags_etl.loaders.base import atomic_file

        with atomic_file(location.local_path, overwrite) as tmp:
            yield tmp
        return
    fs, key = location.filesystem()
    _refuse_existing(fs, key, location, overwrite)
    staging = Path(tempfile.mkdtemp(prefix="ags-etl-upload."))
    try:
        tmp = staging / location.name
        yield tmp
        _refuse_existing(fs, key, location, overwrite)
        try:
            upload(fs, tmp, key)
        except Exception as exc:  # the backends raise their own types (botocore, google, azure)
            raise storage_error(exc, location, "upload") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _refuse_existing(fs: AbstractFileSystem, key: str, location: OutputLocation, overwrite: bool) -> None:
    if overwrite:
        return
    try:
        exists = remote_exists(fs, key)
    except Exception as exc:  # the backends raise their own types (botocore, google, azure)
        raise storage_error(exc, location, "check") from exc
    if exists:
        raise OutputExistsError(f"output {str(location)!r} exists; pass --overwrite (or overwrite: true) to replace it")
