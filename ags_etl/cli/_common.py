"""Shared CLI pieces: auth options, option types, error → exit code mapping, one clear line.

Every command is wrapped in :func:`handle_errors`: an ags_etl error becomes one line on
stderr and its exit code, SIGTERM unwinds the run like Ctrl-C (temp outputs removed), and
no traceback reaches the user unless ``-vv`` asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar, overload

import click

from ags_etl.arcgis.auth import Auth, split_url_credentials
from ags_etl.arcgis.client import redact
from ags_etl.errors import AgsEtlError, ConfigError, OutputExistsError, PipelineFileError
from ags_etl.build import URL_CREDENTIALS_WARNING
from ags_etl.build import build_auth as auth_from_spec
from ags_etl.spec import AuthSpec

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_CONFIG = 78
EXIT_INTERRUPTED = 130  # 128 + SIGINT
EXIT_TERMINATED = 143  # 128 + SIGTERM

#: How long a stopped run waits for worker threads still in a request before leaving anyway.
_THREAD_GRACE_S = 2.0


def fail(message: str, code: int) -> None:
    click.echo(f"ags-etl: error: {redact(message)}", err=True)
    sys.exit(code)


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives, so every with-block unwinds as on Ctrl-C.

    A BaseException (like KeyboardInterrupt), so no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    # A second SIGTERM must not interrupt the cleanup the first one started.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """For the length of the block, SIGTERM raises :class:`Terminated` in the main thread.

    Outside the main thread (signals cannot be handled there) the block runs unchanged.
    The previous handler is restored on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _leave(code: int) -> None:
    """Exit with ``code`` after a stop; do not let worker threads still in a request hold the
    process open. Called only once the with-blocks unwound (temp outputs are gone)."""
    sys.stdout.flush()
    sys.stderr.flush()
    deadline = time.monotonic() + _THREAD_GRACE_S
    workers = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    for t in workers:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    left = sum(t.is_alive() for t in workers)
    if left:
        # Python would wait for them at exit (a request may take --timeout × retries).
        log.debug("leaving %d worker thread(s) behind that are still in a request", left)
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def _stopped(what: str, writes_output: bool, code: int) -> None:
    note = "; no output was written (an earlier output is unchanged)" if writes_output else ""
    click.echo(f"ags-etl: {what}{note}", err=True)
    _leave(code)


def _unexpected(exc: Exception) -> None:
    """One line for a bug; the (redacted) traceback goes to the debug log (``-vv``)."""
    log.debug("traceback:\n%s", redact("".join(traceback.format_exception(exc))).rstrip())
    # Redacted before the "; rerun" is added: a redacted value runs up to the next "&" or space.
    click.echo(
        f"ags-etl: error: unexpected {type(exc).__name__}: {redact(str(exc))}; "
        "rerun with -vv to see the traceback and report it",
        err=True,
    )
    sys.exit(EXIT_FAILED)


def _os_error(exc: OSError) -> None:
    """One line for an OSError no loader turned into a LoadError: the path, the reason, a fix."""
    if exc.filename is None:
        _unexpected(exc)
        return
    where = repr(str(exc.filename)) + (f" → {str(exc.filename2)!r}" if exc.filename2 is not None else "")
    fail(
        f"could not use {where}: {exc.strerror or exc}; check that path (permissions, free space) "
        "and rerun",
        EXIT_FAILED,
    )


@overload
def handle_errors(fn: F) -> F: ...


@overload
def handle_errors(*, writes_output: bool = True) -> Callable[[F], F]: ...


def handle_errors(fn: F | None = None, *, writes_output: bool = True) -> F | Callable[[F], F]:
    """Wrap a command so that nothing but one line and an exit code reaches the user.

    ConfigError/OutputExistsError → exit 2; any other AgsEtlError → 1; an OSError → 1 with
    the path and reason; any other exception → 1, "unexpected …" (traceback with -vv);
    Ctrl-C → 130; SIGTERM → 143 (handled like Ctrl-C: the run unwinds, temp outputs go).
    click's own usage errors pass through (exit 2). ``writes_output=False`` (inspect, serve)
    leaves "no output was written" out of the stop message. Use as ``@handle_errors`` or
    ``@handle_errors(writes_output=False)``.
    """

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                with sigterm_unwinds():
                    return fn(*args, **kwargs)
            except (click.ClickException, click.exceptions.Exit, click.Abort):
                raise
            except PipelineFileError as exc:
                fail(str(exc), EXIT_CONFIG)
            except (ConfigError, OutputExistsError) as exc:
                fail(str(exc), EXIT_USAGE)
            except AgsEtlError as exc:
                fail(str(exc), EXIT_FAILED)
            except KeyboardInterrupt:
                _stopped("interrupted", writes_output, EXIT_INTERRUPTED)
            except Terminated:
                _stopped("stopped by SIGTERM", writes_output, EXIT_TERMINATED)
            except OSError as exc:
                _os_error(exc)
            except Exception as exc:  # noqa: BLE001 - the last resort: a bug becomes one line, not a traceback
                _unexpected(exc)

        return wrapper  # type: ignore[return-value]

    return decorate(fn) if fn is not None else decorate


class _WithFix:
    """Mixin for click range types: the range message is followed by how to fix the value."""

    fix: str

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return super().convert(value, param, ctx)  # type: ignore[misc]
        except click.BadParameter as exc:
            raise click.BadParameter(f"{exc.message.rstrip('.')}; {self.fix}", ctx=ctx, param=param) from None


class IntAtLeast(_WithFix, click.IntRange):
    """An int option of at least ``minimum``; a bad value is refused with ``fix`` (exit 2)."""

    def __init__(self, minimum: int, fix: str) -> None:
        super().__init__(min=minimum)
        self.fix = fix


class PositiveFloat(_WithFix, click.FloatRange):
    """A float option above 0; a bad value is refused with ``fix`` (exit 2)."""

    def __init__(self, fix: str) -> None:
        super().__init__(min=0, min_open=True)
        self.fix = fix


#: The option types shared by the commands that talk to a server.
TIMEOUT = PositiveFloat("give the seconds to wait for each answer, e.g. --timeout 60")
RETRIES = IntAtLeast(0, "give 0 for no retries or a small count, e.g. --retries 5")
CONCURRENCY = IntAtLeast(1, "give 1 for one request at a time, e.g. --concurrency 4")
PAGE_SIZE = IntAtLeast(1, "give the features per request, e.g. --page-size 1000, or leave it out")
MAX_RESPONSE_MB = IntAtLeast(1, "give the largest answer to accept in MB, e.g. --max-response-mb 256")


#: Said wherever a secret can be given: an option is visible to others, a variable is not.
_SECRET_HINT = "prefer the variable: options show in `ps` and shell history"


def auth_options(fn: F) -> F:
    """--token/--api-key/--username/--password (each also from AGS_ETL_* variables)."""
    opts = [
        click.option("--token", envvar="AGS_ETL_TOKEN", help=f"ArcGIS token [env AGS_ETL_TOKEN; {_SECRET_HINT}]."),
        click.option(
            "--api-key", envvar="AGS_ETL_API_KEY", help=f"ArcGIS API key [env AGS_ETL_API_KEY; {_SECRET_HINT}]."
        ),
        click.option("--username", envvar="AGS_ETL_USERNAME", help="User name for token auth [env AGS_ETL_USERNAME]."),
        click.option(
            "--password",
            envvar="AGS_ETL_PASSWORD",
            help=f"Password for token auth [env AGS_ETL_PASSWORD; {_SECRET_HINT}]; sent only to the token endpoint.",
        ),
        click.option("--token-url", help="Token endpoint, when it cannot be found from /rest/info."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def network_options(fn: F) -> F:
    """--max-response-mb, --proxy and --ca-bundle (the same for every command that talks to servers)."""
    opts = [
        click.option(
            "--max-response-mb", type=MAX_RESPONSE_MB, default=256, show_default=True,
            help="Refuse a server answer larger than this (MB).",
        ),
        click.option(
            "--proxy", metavar="URL",
            help="Proxy for every request, http://[USER:PASS@]host:port (default: HTTPS_PROXY/HTTP_PROXY and "
            "NO_PROXY; the variables keep proxy credentials out of ps and shell history).",
        ),
        click.option("--ca-bundle", metavar="PATH", help="PEM file of CA certificates to verify servers against."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def auth_spec(
    token: str | None,
    api_key: str | None,
    username: str | None,
    password: str | None,
    token_url: str | None,
) -> AuthSpec | None:
    """The auth options as the pipeline spec's ``auth`` (None: anonymous).

    Refuses contradictory options with ConfigError naming them.
    """
    given = [n for n, v in (("--token", token), ("--api-key", api_key), ("--username", username)) if v]
    if len(given) > 1:
        raise ConfigError(f"give only one of {', '.join(given)}")
    if username:
        if not password:
            raise ConfigError("--username needs --password (or AGS_ETL_PASSWORD)")
        return AuthSpec(username=username, password=password, token_url=token_url)
    if password:
        raise ConfigError("--password needs --username (or AGS_ETL_USERNAME)")
    if token:
        return AuthSpec(token=token)
    if api_key:
        return AuthSpec(api_key=api_key)
    return None


def build_auth(
    token: str | None,
    api_key: str | None,
    username: str | None,
    password: str | None,
    token_url: str | None,
    url: str | None = None,
) -> Auth:
    """The auth the options ask for; refuses contradictory options with ConfigError.

    With ``url``, credentials written into it (``https://user:pass@host/…``) count as
    --username/--password, with a warning that they are visible to others. Pass the URL
    itself on as ``split_url_credentials(url)[0]``: the userinfo is never sent in a URL.
    """
    if url is not None:
        _, url_username, url_password = split_url_credentials(url)
        if url_username is not None or url_password is not None:
            log.warning(URL_CREDENTIALS_WARNING)
            if username and url_username is not None:
                raise ConfigError("the URL holds a user name and --username gives another; give only one of them")
            if password and url_password is not None:
                raise ConfigError("the URL holds a password and --password gives another; give only one of them")
            username = username or url_username
            password = password or url_password
    return auth_from_spec(auth_spec(token, api_key, username, password, token_url))


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")
