"""Turn one single-layer :class:`~ags_etl.spec.JobSpec` into a runnable :class:`~ags_etl.pipeline.Pipeline`.

:func:`build_pipeline` is what ``ags-etl run`` (and ``pull``) call once a job names one layer
(``ags_etl.arcgis.catalog.expand_job`` splits multi-layer jobs first). Every part comes from
the registry and every option is validated — by each plugin's ``Options`` model, then by its
constructor — before anything talks to the network; the first request is made by
:meth:`Pipeline.run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import logging

from ags_etl.arcgis.auth import ApiKeyAuth, Auth, NoAuth, TokenAuth, UserPasswordAuth, split_url_credentials
from ags_etl.arcgis.client import display_url
from ags_etl.errors import ConfigError
from ags_etl.pipeline import Pipeline
from ags_etl.spec import LAYER_PLACEHOLDER, AuthSpec, JobSpec, SourceSpec, check_job, make_plugin

__all__ = ["URL_CREDENTIALS_WARNING", "build_auth", "build_extractor", "build_pipeline", "network_options"]

log = logging.getLogger(__name__)

#: Logged when a URL carries ``user:pass@``.
URL_CREDENTIALS_WARNING = (
    "credentials in the URL are visible in `ps` and shell history; use --username/--password "
    "or AGS_ETL_USERNAME/AGS_ETL_PASSWORD"
)

#: Placeholders that only ``expand_job`` can fill (it knows the layer and service names).
_PLACEHOLDERS = (LAYER_PLACEHOLDER, "{service}")


def build_auth(auth: AuthSpec | None) -> Auth:
    """The client-side auth object for ``auth`` (NoAuth when None)."""
    if auth is None:
        return NoAuth()
    if auth.token is not None:
        return TokenAuth(auth.token.get_secret_value())
    if auth.api_key is not None:
        return ApiKeyAuth(auth.api_key.get_secret_value())
    if auth.username is not None and auth.password is not None:
        return UserPasswordAuth(auth.username, auth.password.get_secret_value(), token_url=auth.token_url)
    raise ConfigError("auth needs one of {username, password}, {token} or {api_key}")


def network_options(source: SourceSpec) -> dict[str, Any]:
    """The ``proxy`` and ``ca_bundle`` keyword arguments of ArcGISClient for ``source``."""
    proxy = source.proxy.get_secret_value() if source.proxy is not None else None
    return {"proxy": proxy, "ca_bundle": source.ca_bundle}


def build_extractor(source: SourceSpec) -> Any:
    """The extractor for ``source``: the built-in ArcGIS one from the spec's keys, or a third
    party's from its options (see :func:`ags_etl.spec.make_plugin`). No request is made."""
    if source.type != "arcgis":
        return make_plugin("extractors", source.type, source.options)
    from ags_etl.registry import load

    cls = load("extractors", "arcgis")
    if source.url is None or source.item is not None or source.layers is not None:
        raise ConfigError(
            "build_pipeline takes a job whose source is one layer URL; expand a service, "
            "layers: selection or portal item first with ags_etl.arcgis.catalog.expand_job"
        )
    url, auth = _url_and_auth(source)
    return cls(
        url,
        where=source.where,
        fields=source.fields,
        auth=auth,
        page_size=source.page_size,
        concurrency=source.concurrency,
        strategy=source.strategy,
        response_format=source.response_format,
        timeout=source.timeout,
        retries=source.retries,
        max_response_bytes=source.max_response_mb * 2**20,
        **network_options(source),
    )


def _url_and_auth(source: SourceSpec) -> tuple[str, Auth]:
    """The layer URL without ``user:pass@`` and the auth to use.

    Credentials written into the URL are accepted as username/password with a warning (they
    show in ``ps``, shell history and pipeline files); they are never sent inside a URL.
    """
    assert source.url is not None
    from ags_etl.extractors.feature_layer import validate_url

    url, username, password = split_url_credentials(source.url)
    validate_url(url)  # a URL that cannot be a layer fails before the warning below
    if username is None and password is None:
        return url, build_auth(source.auth)
    log.warning(URL_CREDENTIALS_WARNING)
    if source.auth is not None:
        raise ConfigError(
            f"layer URL {display_url(url)} holds credentials and auth gives others; keep only the auth ones"
        )
    if not username or not password:
        raise ConfigError(
            f"layer URL {display_url(url)} holds a user name or password but not both; "
            "give both with --username/--password (or auth: {username, password})"
        )
    return url, UserPasswordAuth(username, password)


def build_pipeline(job: JobSpec, *, progress: Callable[[int, int | None], None] | None = None) -> Pipeline:
    """Extractor, transformers and loader of ``job``, wired; nothing is requested yet.

    Raises ConfigError listing every problem :func:`ags_etl.spec.check_job` finds, or when the
    source is not one layer or the sink path still holds a ``{layer}``/``{service}`` placeholder.
    """
    issues = check_job(job)
    if issues:
        raise ConfigError(f"job {job.name!r}: " + "; ".join(str(i) for i in issues))
    sink = job.sink
    left = [p for p in _PLACEHOLDERS if sink.path is not None and p in sink.path]
    if left:
        raise ConfigError(
            f"job {job.name!r}: sink path {sink.path!r} still holds {', '.join(left)}; "
            "expand the job with ags_etl.arcgis.catalog.expand_job first, which fills them per layer"
        )
    transformers = [make_plugin("transformers", t.type, t.options) for t in job.transforms]
    loader_args: tuple[Any, ...] = () if sink.path is None else (sink.path,)
    loader = make_plugin("loaders", sink.type, sink.options, *loader_args, overwrite=sink.overwrite)
    extractor = build_extractor(job.source)
    if sink.path is not None and job.source.type == "arcgis":
        _attach_staging(job, extractor, sink.path)
    return Pipeline(extractor, transformers, loader, progress=progress)


def _attach_staging(job: JobSpec, extractor: Any, path: str) -> None:
    """``resume``: give the extractor the staging folder beside ``path``. Without it, an
    existing staging folder is left alone and reported (a later ``--resume`` run uses it)."""
    from ags_etl.extractors.staging import StagingStore
    from ags_etl.loaders.storage import is_url

    if is_url(path):
        return  # check_job refused resume for URL sinks
    store = StagingStore.beside(path)
    if job.resume:
        extractor.staging = store
    elif store.exists():
        log.warning(
            "%s holds pages staged by an earlier run of job %r that was stopped; run with --resume "
            "(resume: true) to reuse them, or delete the folder",
            store.folder,
            job.name,
        )


def dry_run_job(job: JobSpec) -> JobSpec:
    """``job`` with ``dry_run: true`` added to its sink (``ags-etl run --dry-run``): a sink that
    edits a service prints the edits it would send and sends none. A sink without a dry run
    (the file sinks) raises ConfigError naming the job."""
    from ags_etl.registry import load, options_model
    from ags_etl.spec import SinkSpec

    sink = job.sink
    if "dry_run" not in options_model(load("loaders", sink.type), "loaders", sink.type).model_fields:
        raise ConfigError(
            f"job {job.name!r}: --dry-run previews the edits of a feature_service sink, and the {sink.type} sink has "
            "no dry run; run this job without --dry-run (pick the others with --job)"
        )
    dry = SinkSpec.model_validate({**sink.model_dump(), "dry_run": True})
    return job.model_copy(update={"sink": dry})
