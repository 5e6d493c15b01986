"""``ags-etl validate FILE``: check a pipeline file without any network request."""

from __future__ import annotations

import click

from ags_etl.cli._common import handle_errors
from ags_etl.config import load_pipeline


@click.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
@handle_errors(writes_output=False)
def validate_cmd(file: str) -> None:
    """Check the pipeline file FILE offline: keys, types, plugins, ${VAR}s, sinks.

    Prints "FILE: valid (N jobs: …)" and exits 0, or prints every problem, one per line
    (FILE:LINE: job: key path: what is accepted), and exits 78.
    """
    spec = load_pipeline(file)
    names = ", ".join(job.name for job in spec.jobs)
    count = len(spec.jobs)
    click.echo(f"{file}: valid ({count} job{'s' if count != 1 else ''}: {names})")
