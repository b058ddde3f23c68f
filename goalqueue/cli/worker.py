"""``goalqueue worker``: a worker node, one Celery worker process per core."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import click

from goalqueue import logs
from goalqueue.cli.lazy import WORKER
from goalqueue.config import get_settings
from goalqueue.errors import ConfigError


@click.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes to run [default: one per core].",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(processes: int | None, celery_args: Sequence[str]) -> None:
    """Run a worker node: a Celery worker process per core, each delivering on its own event
    loop. Takes any `celery worker` option (see `celery -A workers worker --help`)."""
    try:
        from workers.node import Node, default_processes
    except ModuleNotFoundError as exc:
        raise SystemExit(WORKER.explain(exc, "worker")) from None

    try:
        settings = get_settings()
        settings.require_credentials()
    except ConfigError as exc:
        raise SystemExit(f"goalqueue worker cannot start: {exc}") from None
    logs.configure(settings.log_format)
    sys.exit(Node(processes or default_processes(), celery_args).run())
