"""``ags-etl pull URL -o PATH``: one layer into one file, format from the extension.

The options become a :class:`~ags_etl.spec.JobSpec` (the same spec a pipeline file gives) and
:func:`~ags_etl.build.build_pipeline` builds the run; this module only parses options.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ags_etl.cli._common import (
    CONCURRENCY,
    PAGE_SIZE,
    RETRIES,
    TIMEOUT,
    auth_options,
    auth_spec,
    handle_errors,
    network_options,
)
from ags_etl.build import build_pipeline
from ags_etl.errors import ConfigError
from ags_etl.loaders.base import check_target, stale_temp_outputs
from ags_etl.progress import make_progress
from ags_etl.registry import loader_name_for_path
from ags_etl.spec import JobSpec, SinkSpec, SourceSpec, TransformSpec, check_job


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise ConfigError(f"{value!r} names no field; give a comma-separated list such as NAME,STATUS")
    return items


def _pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values:
        old, sep, new = v.partition("=")
        if not sep or not old or not new:
            raise ConfigError(f"{option} {v!r} is not OLD=NEW")
        out[old] = new
    return out


def _warn_stale_temps(path: Path) -> None:
    """Name the temp outputs a killed run left beside the target (they are not deleted: another
    run of the same job may be writing one of them right now)."""
    stale = stale_temp_outputs(path)
    if stale:
        shown = ", ".join(p.name for p in stale[:5]) + (f" and {len(stale) - 5} more" if len(stale) > 5 else "")
        click.echo(
            f"warning: {shown} in {str(path.parent)!r} {'is a temp output' if len(stale) == 1 else 'are temp outputs'} "
            "of an earlier run that was killed; delete them once no other run of this job is in progress",
            err=True,
        )


def _transforms(
    rename: tuple[str, ...],
    drop: str | None,
    cast: tuple[str, ...],
    decode_domains: bool,
    clip: str | None,
    clip_file: str | None,
    clip_crs: str | None,
    t_srs: str | None,
    server_side_reproject: bool,
) -> list[TransformSpec]:
    """The transform list ``pull``'s options stand for, in the order they apply: fields, clip,
    reproject (the same list a pipeline file would give)."""
    out: list[TransformSpec] = []
    renames = _pairs(rename, "--rename")
    casts = _pairs(cast, "--cast")
    drops = _csv(drop) if drop is not None else None
    if renames or casts or drops or decode_domains:
        out.append(
            TransformSpec(
                type="fields", rename=renames or None, drop=drops, cast=casts or None, decode_domains=decode_domains
            )
        )
    if clip is not None and clip_file is not None:
        raise ConfigError("--clip and --clip-file exclude each other; give one")
    if clip is not None or clip_file is not None:
        area: dict[str, Any] = {"bbox": clip} if clip is not None else {"mask": clip_file}
        out.append(TransformSpec(type="clip", crs=clip_crs, **area))
    elif clip_crs is not None:
        raise ConfigError(f"--clip-crs {clip_crs!r} needs --clip or --clip-file; add one or drop --clip-crs")
    if t_srs is not None:
        if server_side_reproject and out:
            raise ConfigError(
                "--server-side-reproject cannot be combined with --clip or field options; drop one of them"
            )
        out.append(TransformSpec(type="reproject", to=t_srs, server_side=server_side_reproject))
    elif server_side_reproject:
        raise ConfigError("--server-side-reproject needs --t-srs")
    return out


#: transform type → the pull options that stand for it (for messages in option terms).
_OPTION_FOR = {"fields": "--rename/--drop/--cast/--decode-domains", "clip": "--clip/--clip-file", "reproject": "--t-srs"}


def _check(job: JobSpec) -> None:
    """Every offline problem of the job, named by the option that caused it (ConfigError)."""
    issues = check_job(job)
    if not issues:
        return
    parts = []
    for issue in issues:
        loc = issue.loc
        if len(loc) >= 2 and loc[0] == "transforms" and isinstance(loc[1], int):
            where = _OPTION_FOR.get(job.transforms[loc[1]].type, "a transform option")
        elif loc[:1] == ("sink",):
            where = "-o/--format"
        elif loc[:1] == ("source",):
            where = "URL" if loc[1:2] == ("url",) else f"--{str(loc[1]).replace('_', '-')}" if len(loc) > 1 else "URL"
        else:
            where = "the options"
        parts.append(f"{where}: {issue.message}")
    raise ConfigError("; ".join(parts))


def _run(job: JobSpec, bar: Any) -> Any:
    """Run the job here, or with its pages on a Dask cluster (ags_etl.cluster)."""
    pipeline = build_pipeline(job, progress=bar)
    if job.executor != "dask":
        return pipeline.run()
    from ags_etl.cluster import Clusters
    from ags_etl.extractors.dask_executor import run_on_cluster

    with Clusters() as clusters:
        return run_on_cluster(pipeline, job, clusters.client(job.scheduler))


@click.command("pull")
@click.argument("url")
@click.option("-o", "--output", "output", required=True, type=click.Path(dir_okay=False), help="Output file.")
@click.option("--format", "fmt", help="Output format: geojson, geojsonl, shapefile, kmz, geoparquet (default: from -o).")
@click.option("--where", help="SQL where clause evaluated by the server.")
@click.option("--fields", help="Comma-separated fields to fetch (the OID field is always kept).")
@click.option("--rename", multiple=True, help="Rename a field, OLD=NEW (repeatable).")
@click.option("--drop", help="Comma-separated fields to leave out of the output.")
@click.option("--cast", multiple=True, help="Cast a field, NAME=TYPE (int, bigint, double, string, date; repeatable).")
@click.option("--decode-domains", is_flag=True, help="Replace coded-value domain codes by their labels.")
@click.option("--t-srs", "t_srs", help="Reproject to this CRS (EPSG code, WKT or PROJ string).")
@click.option("--server-side-reproject", is_flag=True, help="Ask the server for --t-srs (outSR) instead of pyproj.")
@click.option("--clip", help="Clip to xmin,ymin,xmax,ymax (layer CRS unless --clip-crs).")
@click.option("--clip-file", type=click.Path(exists=True, dir_okay=False), help="Clip to the polygons of this file.")
@click.option("--clip-crs", help="CRS of --clip (a --clip-file with its own CRS keeps it).")
@click.option("--page-size", type=PAGE_SIZE, help="Features per request (never above the server's maxRecordCount).")
@click.option("--concurrency", type=CONCURRENCY, default=4, show_default=True, help="Requests in flight at once.")
@click.option(
    "--strategy",
    type=click.Choice(["oid-list", "offset", "oid-range", "spatial", "box-split"]),
    help="Force a paging strategy (default: chosen from metadata and probes).",
)
@click.option("--response-format", type=click.Choice(["json", "geojson", "pbf", "auto"]), default="json", show_default=True)
@click.option("--timeout", type=TIMEOUT, default=60.0, show_default=True, help="Seconds per request.")
@click.option("--retries", type=RETRIES, default=5, show_default=True, help="Retries of a failed request.")
@network_options
@click.option("--name-field", help="KMZ: the field that names each placemark (default: the first string field).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output (only once the new one is complete).")
@click.option(
    "--resume", is_flag=True,
    help="Keep completed pages in .NAME.resume/ beside the output and reuse them after a stopped run.",
)
@click.option("-q", "--quiet", is_flag=True, help="Print nothing on success.")
@click.option(
    "--executor", type=click.Choice(["threads", "dask"]), default="threads", show_default=True,
    help="Where page requests run: this process's threads, or a Dask cluster (needs -o DIR/ , a GeoParquet dataset).",
)
@click.option(
    "--scheduler", metavar="ADDRESS",
    help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: DASK_SCHEDULER_ADDRESS, else a local cluster).",
)
@auth_options
@handle_errors
def pull_cmd(
    url: str,
    output: str,
    fmt: str | None,
    where: str | None,
    fields: str | None,
    rename: tuple[str, ...],
    drop: str | None,
    cast: tuple[str, ...],
    decode_domains: bool,
    t_srs: str | None,
    server_side_reproject: bool,
    clip: str | None,
    clip_file: str | None,
    clip_crs: str | None,
    page_size: int | None,
    concurrency: int,
    strategy: str | None,
    response_format: str,
    timeout: float,
    retries: int,
    max_response_mb: int,
    proxy: str | None,
    ca_bundle: str | None,
    name_field: str | None,
    overwrite: bool,
    resume: bool,
    quiet: bool,
    executor: str,
    scheduler: str | None,
    token: str | None,
    api_key: str | None,
    username: str | None,
    password: str | None,
    token_url: str | None,
) -> None:
    """Pull every feature of the layer at URL into the file OUTPUT, exactly once.

    The output appears only when complete; an existing file is replaced only with
    --overwrite and only after the new one is complete.
    """
    # Everything below is checked before the first request.
    path = Path(output)
    dataset = output.endswith("/")  # a partitioned GeoParquet dataset folder
    loader_name = loader_name_for_path(path, fmt) if not dataset or fmt is not None else "geoparquet"
    sink_options: dict[str, Any] = {}
    if name_field is not None:
        if loader_name != "kmz":
            raise ConfigError(f"--name-field applies to KMZ output only, not {loader_name}; drop it")
        sink_options["name_field"] = name_field
    if not dataset:
        check_target(path, overwrite)
    _warn_stale_temps(path)
    job = JobSpec(
        name="pull",
        source=SourceSpec(
            url=url,
            where=where,
            fields=_csv(fields),
            auth=auth_spec(token, api_key, username, password, token_url),
            page_size=page_size,
            concurrency=concurrency,
            strategy=strategy,
            response_format=response_format,
            timeout=timeout,
            retries=retries,
            max_response_mb=max_response_mb,
            proxy=proxy,
            ca_bundle=ca_bundle,
        ),
        transforms=_transforms(
            rename, drop, cast, decode_domains, clip, clip_file, clip_crs, t_srs, server_side_reproject
        ),
        sink=SinkSpec(type=loader_name, path=output if dataset else str(path), overwrite=overwrite, **sink_options),
        resume=resume,
        executor=executor,
        scheduler=scheduler,
    )
    _check(job)
    with make_progress(quiet, brief=True) as progress:
        bar = progress.job(path.name)
        try:
            result = _run(job, bar)
        except BaseException:
            bar.finish(ok=False)
            raise
        bar.finish(ok=True)
    if not quiet:
        ex = result.extract
        extra = "".join(f", {k} {v}" for k, v in result.transform_counters.items() if v)
        if ex.resumed:
            extra += f", {ex.resumed} pages from the staging folder"
        click.echo(
            f"wrote {result.load.features} features to {path} ({ex.strategy}, {ex.pages} pages, "
            f"{ex.requests} requests, {ex.retries} retries{extra}, {result.seconds:.1f} s)",
            err=True,
        )
        for warning in result.load.warnings:
            click.echo(f"warning: {warning}", err=True)
        if ex.unchecked is not None:  # box-split on a layer without a count
            click.echo(f"note: {ex.unchecked}", err=True)
