"""``goalqueue metrics``: serve the deployment's Prometheus metrics in the foreground."""

from __future__ import annotations

import dataclasses

import click
from prometheus_client import CollectorRegistry

from goalqueue import connections
from goalqueue.config import get_settings
from goalqueue.errors import ConfigError
from goalqueue.listening import listen_options
from goalqueue.metrics.collector import GoalQueueCollector
from goalqueue.metrics.server import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULT_TIMEOUT,
    metrics_app,
    serve,
)


@click.command("metrics")
@listen_options(DEFAULT_HOST, DEFAULT_PORT)
@click.option(
    "--basic-auth",
    metavar="USER:PASSWORD",
    default=None,
    help="Ask for this login [default: GOALQUEUE_METRICS_BASIC_AUTH, or none]. The variable "
    "keeps the password out of the process list.",
)
@click.option(
    "--timeout",
    default=DEFAULT_TIMEOUT,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="Close a connection that sends no request for this long.",
)
def metrics_command(host: str, port: int, basic_auth: str | None, timeout: float) -> None:
    """Serve GET /metrics for Prometheus: the whole deployment, read from Redis at each
    scrape."""
    try:
        settings = get_settings()
        if basic_auth is not None:
            settings = dataclasses.replace(settings, metrics_basic_auth=basic_auth)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GoalQueueCollector(connections.client(settings), settings.keys))
    app = metrics_app(registry, settings.metrics_credentials)

    def announce(url: str) -> None:
        login = "basic auth" if settings.metrics_credentials else "no login"
        click.echo(f"goalqueue metrics on {url} ({login}, namespace {settings.namespace})")

    try:
        serve(app, host, port, on_listening=announce, timeout=timeout)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
