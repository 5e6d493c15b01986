"""The ``ags-etl`` command line. One module per subcommand; errors map to exit codes here only.

Exit codes: 0 success; 1 a job failed (incomplete extraction included); 2 usage error;
75 another run holds the job's lock; 78 invalid pipeline file; 130 interrupted (Ctrl-C);
143 stopped by SIGTERM (handled like Ctrl-C). Every command is wrapped in
:func:`ags_etl.cli._common.handle_errors`, so no traceback reaches the user without ``-vv``.
"""

from __future__ import annotations

import importlib
import logging

import click

from ags_etl import __version__

#: subcommand name → "module:attribute"; imported lazily so `ags-etl --help` stays fast.
SUBCOMMANDS: dict[str, str] = {
    "inspect": "ags_etl.cli.inspect:inspect_cmd",
    "plugins": "ags_etl.cli.plugins:plugins_cmd",
    "pull": "ags_etl.cli.pull:pull_cmd",
    "run": "ags_etl.cli.run:run_cmd",
    "serve": "ags_etl.cli.serve:serve_cmd",
    "state": "ags_etl.cli.state:state_cmd",
    "validate": "ags_etl.cli.validate:validate_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(SUBCOMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in SUBCOMMANDS:
            module, attr = SUBCOMMANDS[cmd_name].split(":")
            return getattr(importlib.import_module(module), attr)
        return super().get_command(ctx, cmd_name)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="ags-etl")
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ETL for ArcGIS REST feature services."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
