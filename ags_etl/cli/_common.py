"""Shared CLI pieces: auth options, error → exit code mapping, output of one clear line."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ags_etl.arcgis.auth import ApiKeyAuth, Auth, NoAuth, TokenAuth, UserPasswordAuth
from ags_etl.arcgis.client import redact
from ags_etl.errors import AgsEtlError, ConfigError, OutputExistsError, PipelineFileError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130


def fail(message: str, code: int) -> None:
    click.echo(f"ags-etl: error: {redact(message)}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Map ags_etl errors to one line on stderr and an exit code (only the CLI does this)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PipelineFileError as exc:
            fail(str(exc), EXIT_CONFIG)
        except (ConfigError, OutputExistsError) as exc:
            fail(str(exc), EXIT_USAGE)
        except AgsEtlError as exc:
            fail(str(exc), EXIT_FAILED)
        except KeyboardInterrupt:
            click.echo("ags-etl: interrupted; no output was written", err=True)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def auth_options(fn: F) -> F:
    """--token/--api-key/--username/--password (each also from AGS_ETL_* variables)."""
    opts = [
        click.option("--token", envvar="AGS_ETL_TOKEN", help="ArcGIS token [env AGS_ETL_TOKEN]."),
        click.option("--api-key", envvar="AGS_ETL_API_KEY", help="ArcGIS API key [env AGS_ETL_API_KEY]."),
        click.option("--username", envvar="AGS_ETL_USERNAME", help="User name for token auth [env AGS_ETL_USERNAME]."),
        click.option(
            "--password", envvar="AGS_ETL_PASSWORD", help="Password for token auth [env AGS_ETL_PASSWORD]."
        ),
        click.option("--token-url", help="Token endpoint, when it cannot be found from /rest/info."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def build_auth(
    token: str | None, api_key: str | None, username: str | None, password: str | None, token_url: str | None
) -> Auth:
    given = [n for n, v in (("--token", token), ("--api-key", api_key), ("--username", username)) if v]
    if len(given) > 1:
        raise ConfigError(f"give only one of {', '.join(given)}")
    if username:
        if not password:
            raise ConfigError("--username needs --password (or AGS_ETL_PASSWORD)")
        return UserPasswordAuth(username, password, token_url=token_url)
    if password:
        raise ConfigError("--password needs --username (or AGS_ETL_USERNAME)")
    if token:
        return TokenAuth(token)
    if api_key:
        return ApiKeyAuth(api_key)
    return NoAuth()


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
