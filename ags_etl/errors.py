"""The one exception tree of ags_etl.

::

    AgsEtlError
    ├── ConfigError                 bad option, pipeline key, CRS, path …   (exit 2 / 78)
    │   └── PipelineFileError       a pipeline file with problems (all listed)   (exit 78)
    ├── JobLockedError              another run holds the job's lock   (exit 75)
    ├── ArcGISError                 anything the server said or failed to say
    │   ├── ServiceError            an ``{"error": …}`` body (often sent with HTTP 200)
    │   │   └── QueryError          the server rejected the query (bad where clause, field …)
    │   ├── TokenError              498/499, or credentials refused
    │   ├── TransientError          timeouts, resets, 429, 5xx (retried before it is raised)
    │   ├── NotALayerError          the URL answers, but is not a feature/map layer
    │   └── PagingError             the paging plan cannot be carried out
    │       └── IncompleteExtractError  features written != server count
    ├── GeometryError               geometry that cannot be decoded
    ├── TransformError              a transformer could not do its work
    └── LoadError                   an output could not be written
        ├── CapabilityError         the loader cannot take this schema
        ├── OutputExistsError       target exists and overwrite was not asked
        └── EditError               applyEdits failures

Messages name the thing, the value and the fix. They never hold a token or a
password: the client redacts URLs and parameters before they reach a message.
Only the CLI maps these to exit codes.
"""

from __future__ import annotations


class AgsEtlError(Exception):
    """Root of every error ags_etl raises on purpose."""


class ConfigError(AgsEtlError):
    """An option, pipeline key, CRS, path or other user input is invalid."""


class PipelineFileError(ConfigError):
    """A pipeline file cannot be used. ``problems`` holds one line per problem, each naming
    the file, line, job and key path and what is accepted; no line holds a secret's value."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        super().__init__("\n".join([f"{source}: {count}", *self.problems]))


class JobLockedError(AgsEtlError):
    """Another run of the same job holds its lock; nothing was changed. ``job`` is its name."""

    def __init__(self, message: str, *, job: str) -> None:
        super().__init__(message)
        self.job = job


class ArcGISError(AgsEtlError):
    """Something went wrong talking to an ArcGIS REST endpoint."""


class ServiceError(ArcGISError):
    """The server answered with an error body.

    ``code`` is the server's error code (an int, or None when absent) and
    ``details`` its list of detail strings (possibly empty).
    """

    def __init__(self, message: str, *, code: int | None = None, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = list(details or [])


class QueryError(ServiceError):
    """The server rejected a query as invalid (HTTP 400 "Unable to complete operation" …)."""


class TokenError(ArcGISError):
    """A token is missing, invalid or expired, or the credentials were refused."""


class TransientError(ArcGISError):
    """A failure that may pass: timeout, reset, 429, 5xx. Raised once retries are used up."""


class NotALayerError(ArcGISError):
    """The URL answers but is not a FeatureServer/MapServer layer or table."""


class PagingError(ArcGISError):
    """The paging plan cannot be carried out against this server."""


class IncompleteExtractError(PagingError):
    """The number of distinct features read differs from the server's count."""

    def __init__(self, message: str, *, expected: int, got: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.got = got


class GeometryError(AgsEtlError):
    """A geometry could not be decoded or encoded."""


class TransformError(AgsEtlError):
    """A transformer could not do its work."""


class LoadError(AgsEtlError):
    """An output could not be written."""


class CapabilityError(LoadError):
    """A loader cannot take the given schema (CRS, geometry types, field names …)."""


class OutputExistsError(LoadError):
    """The output exists and overwriting was not asked for."""


class EditError(LoadError):
    """applyEdits reported failures."""
