"""``ags-etl plugins``: every extractor, transformer and loader name, and where it comes from."""

from __future__ import annotations

import click

from ags_etl.cli._common import handle_errors
from ags_etl.registry import KINDS, plugins


@click.command("plugins")
@handle_errors(writes_output=False)
def plugins_cmd() -> None:
    """List plugin names by kind: built-in, or the distribution (and version) that registers them.

    Nothing is imported: names come from package metadata (entry points).
    """
    rows = [(p.kind[:-1], p.name, p.origin, p.target) for kind in KINDS for p in plugins(kind)]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for kind, name, origin, target in rows:
        click.echo(f"{kind:<{widths[0]}}  {name:<{widths[1]}}  {origin:<{widths[2]}}  {target}")
