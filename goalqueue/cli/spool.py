"""``goalqueue spool``: see and re-send goals kept on local disk while Redis was unreachable."""

from __future__ import annotations

import json
import sqlite3
import sys
import time

import click

from goalqueue.cli.context import queue
from goalqueue.config import get_settings
from goalqueue.errors import ConfigError, EnqueueError
from goalqueue.keys import PER_CALL
from goalqueue.spool import Spool
from goalqueue.terminal import figures

_SPOOL_DIR = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Spool directory (default: GOALQUEUE_SPOOL_DIR).",
)


@click.group()
def spool() -> None:
    """See and re-send goals kept on local disk while Redis was unreachable."""


@spool.command("status")
@_SPOOL_DIR
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def spool_status(directory: str | None, as_json: bool) -> None:
    """How many goals wait in the spool, and since when."""
    opened = _open(directory)
    oldest = opened.oldest()
    values = {
        "directory": str(opened.directory),
        "pending": opened.pending(),
        "oldest_age_seconds": None if oldest is None else round(time.time() - oldest, 3),
    }
    click.echo(json.dumps(values) if as_json else "\n".join(figures(values)))


@spool.command("flush")
@_SPOOL_DIR
@click.option("--batch", default=PER_CALL, show_default=True, help="Goals per Redis call.")
def spool_flush(directory: str | None, batch: int) -> None:
    """Re-send the spooled goals to Redis now; exits 1 if Redis still cannot take them."""
    opened = _open(directory)
    target = queue()
    sent = 0
    with click.progressbar(length=opened.pending(), label="re-sending", file=sys.stderr) as bar:

        def progress(count: int) -> None:
            nonlocal sent
            sent += count
            bar.update(count)

        try:
            opened.flush(target, batch=batch, progress=progress)
        except EnqueueError as exc:
            failure: EnqueueError | None = exc
        else:
            failure = None
    click.echo(f"re-sent {sent} spooled goal(s)")
    if failure is not None:
        raise click.ClickException(f"{opened.pending()} goal(s) still wait: {failure}")


def _open(directory: str | None) -> Spool:
    try:
        directory = directory or get_settings().spool_dir
        if not directory:
            raise click.UsageError("GOALQUEUE_SPOOL_DIR is not set; give --dir")
        return Spool(directory)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except (OSError, sqlite3.Error) as exc:
        raise click.ClickException(f"cannot open the spool in {directory}: {exc}") from exc
