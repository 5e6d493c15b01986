"""``ags-etl serve DIR``: the data files of DIR as a local ArcGIS FeatureServer.

Prints one line on stdout once it listens (``--port 0`` picks a free port; the
line tells which) and serves until Ctrl-C or SIGTERM, then exits 0. A bind
address other than loopback first gets a warning on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ags_etl.cli._common import handle_errors
from ags_etl.errors import ConfigError


def _token_auth(value: str | None) -> tuple[str | None, str | None]:
    if value is None:
        return None, None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--token-auth must be USER:PASSWORD with both parts non-empty")
    return user, password


@click.command("serve")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (loopback unless you say otherwise).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True, help="Port; 0 picks a free one.")
@click.option("--max-record-count", type=click.IntRange(min=1), default=1000, show_default=True, help="Page cap.")
@click.option("--no-pagination", is_flag=True, help="Act as a 10.0-era layer: no resultOffset/resultRecordCount/orderByFields.")
@click.option(
    "--box-only",
    is_flag=True,
    help="Act as a layer that answers only plain and envelope queries: no counts, id lists, statistics or pagination.",
)
@click.option("--count-answers-features", is_flag=True, help="With --box-only: answer returnCountOnly with features.")
@click.option("--latency-ms", type=click.IntRange(min=0), default=0, show_default=True, help="Sleep per request.")
@click.option("--fail-rate", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True, help="Share of query requests that fail.")
@click.option("--seed", type=int, default=None, help="Seed of the failure draws (same seed, same failures).")
@click.option(
    "--token-auth",
    metavar="USER:PASSWORD",
    envvar="AGS_ETL_SERVE_TOKEN_AUTH",
    default=None,
    help="Require tokens from /arcgis/tokens/generateToken [env AGS_ETL_SERVE_TOKEN_AUTH].",
)
@click.option("--token-ttl", type=click.IntRange(min=1), default=None, help="Token lifetime cap in seconds.")
@click.option(
    "--query-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Time limit of one query request; beyond it the query is stopped and answered with an error.",
)
@click.option(
    "--cors",
    "cors_origins",
    multiple=True,
    metavar="ORIGIN",
    help="Let web pages from ORIGIN (scheme://host[:port], or '*' for any) read answers; repeatable. Default: none.",
)
@click.option(
    "--editable",
    is_flag=True,
    help="Allow edits: applyEdits, addFeatures, updateFeatures, deleteFeatures (POST), kept across restarts.",
)
@click.option(
    "--store",
    "store_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="DIR",
    help="With --editable: folder of the layer stores [default: DIRECTORY/.ags_etl_serve].",
)
@click.option(
    "--drop-edit-answers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="With --editable: close the connection unanswered after committing each of the first N edit requests.",
)
@click.option(
    "--edit-answer-delay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="With --editable: wait this long between committing an edit request and answering it.",
)
@handle_errors(writes_output=False)
def serve_cmd(
    directory: Path,
    host: str,
    port: int,
    max_record_count: int,
    no_pagination: bool,
    box_only: bool,
    count_answers_features: bool,
    latency_ms: int,
    fail_rate: float,
    seed: int | None,
    token_auth: str | None,
    token_ttl: int | None,
    query_timeout: float,
    cors_origins: tuple[str, ...],
    editable: bool,
    store_dir: Path | None,
    drop_edit_answers: int,
    edit_answer_delay: float,
) -> None:
    """Serve each .geojson/.json/.shp/.parquet file of DIRECTORY as a FeatureServer layer.

    \b
    Layout (service and folder names: the names made [A-Za-z0-9_]):
      DIR/roads.geojson            service roads, layer 0
      DIR/Parcels.FeatureServer/   service Parcels: each data file in it is a layer,
                                   ids 0, 1 ... in file-name order, named by its stem
      DIR/Hydro/                   folder Hydro (one level deep): its files and
                                   NAME.FeatureServer/ folders are services Hydro/NAME

    Every service and layer is also a portal item: /sharing/rest/content/items/ID
    (ID = md5 hex of "service:NAME" or "layer:NAME/ID") and /sharing/rest/search?q=TEXT.

    Read-only unless --editable. With --editable every layer gets a GlobalID field
    and the editor-tracking fields CreationDate, Creator, EditDate, Editor (set by
    the server; Creator/Editor = the --token-auth user, else "ags-etl"), object ids
    are never reused, and the layers live in SQLite stores in the --store folder:
    edits survive a restart. At start a store is reused when its source file is
    unchanged (size, mtime and SHA-256 recorded in the store); a changed source
    rebuilds it and its edits are dropped. Delete the store folder to start over.
    --drop-edit-answers and --edit-answer-delay imitate lost and slow answers to
    committed edits.
    """
    from ags_etl.server.app import bind_warning, serve
    from ags_etl.server.cors import normalize_origin
    from ags_etl.server.options import ServerOptions

    user, password = _token_auth(token_auth)
    if token_ttl is not None and user is None:
        raise ConfigError("--token-ttl needs --token-auth USER:PASSWORD")
    if count_answers_features and not box_only:
        raise ConfigError("--count-answers-features needs --box-only")
    if not editable:
        for name, value in (("--store", store_dir), ("--drop-edit-answers", drop_edit_answers or None),
                            ("--edit-answer-delay", edit_answer_delay or None)):
            if value is not None:
                raise ConfigError(f"{name} needs --editable (the server is read-only without it)")
    options = ServerOptions(
        host=host,
        port=port,
        max_record_count=max_record_count,
        pagination=not (no_pagination or box_only),
        box_only=box_only,
        count_answers_features=count_answers_features,
        latency_ms=latency_ms,
        fail_rate=fail_rate,
        seed=seed,
        token_user=user,
        token_password=password,
        token_ttl=token_ttl,
        query_timeout=query_timeout,
        cors_origins=tuple(dict.fromkeys(normalize_origin(o) for o in cors_origins)),
        editable=editable,
        store_dir=None if store_dir is None else str(store_dir),
        drop_edit_answers=drop_edit_answers,
        edit_answer_delay=edit_answer_delay,
    )
    warning = bind_warning(host)

    def ready(base_url: str, layers: int) -> None:
        if warning is not None:
            click.echo(f"ags-etl serve: warning: {warning}", err=True)
        click.echo(f"ags-etl serve: listening on {base_url}/arcgis/rest/services ({layers} layers)")
        sys.stdout.flush()

    serve(directory, options, ready)
