"""``goalqueue sandbox``: run the sandbox in the foreground."""

from __future__ import annotations

from collections.abc import Callable

import click

from goalqueue.listening import listen_options
from goalqueue.sandbox.admin import ADMIN_PREFIX
from goalqueue.sandbox.faults import Faults, OddAnswer, RateLimit
from goalqueue.sandbox.goals import GOALS_PATH
from goalqueue.sandbox.server import DEFAULT_HOST, DEFAULT_PORT, serve
from goalqueue.sandbox.state import DEFAULT_KEY, SandboxState


def _announce(key: str) -> Callable[[str], None]:
    def announce(base_url: str) -> None:
        url = base_url + GOALS_PATH
        click.echo(f"DataFast sandbox listening on {url}")
        click.echo("Point workers at it with:")
        click.echo(f"  DATAFAST_API_URL={url} DATAFAST_API_KEY={key}")
        click.echo(f"Admin endpoints: {base_url}{ADMIN_PREFIX}(events|stats|faults|visitors|...)")

    return announce


@click.command("sandbox")
@listen_options(DEFAULT_HOST, DEFAULT_PORT)
@click.option("--key", default=DEFAULT_KEY, show_default=True, help="API key to accept.")
@click.option(
    "--latency-ms", default=0.0, type=click.FloatRange(min=0), help="Added latency per goal."
)
@click.option(
    "--error-rate", default=0.0, type=click.FloatRange(0, 1), help="Probability of a 503."
)
@click.option(
    "--rate-limit",
    type=click.FloatRange(min=0, min_open=True),
    metavar="PER_SECOND",
    help="Answer 429 (Retry-After: 1) beyond this many goals per second.",
)
@click.option(
    "--odd-answer",
    type=click.Choice([kind.value for kind in OddAnswer]),
    help="Answer every goal with something other than DataFast's answer (see the README).",
)
@click.option(
    "--registered-only", is_flag=True, help="Refuse (404) visitors not registered with --visitor."
)
@click.option("--bot", "bots", multiple=True, metavar="VISITOR", help="A bot visitor (400).")
@click.option("--visitor", "visitors", multiple=True, metavar="VISITOR", help="A known visitor.")
def sandbox_command(
    host: str,
    port: int,
    key: str,
    latency_ms: float,
    error_rate: float,
    rate_limit: float | None,
    odd_answer: str | None,
    registered_only: bool,
    bots: tuple[str, ...],
    visitors: tuple[str, ...],
) -> None:
    """Run a local stand-in for DataFast's goals API (POST /api/v1/goals)."""
    state = SandboxState(
        key=key,
        visitor_mode="registered" if registered_only else "any",
        visitors=set(visitors),
        bots=set(bots),
        faults=Faults(
            latency_ms=latency_ms,
            error_rate=error_rate,
            rate_limit=None if rate_limit is None else RateLimit(per_second=rate_limit),
            odd_answer=None if odd_answer is None else OddAnswer(odd_answer),
        ),
    )
    try:
        serve(host, port, state, on_listening=_announce(key))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc}") from exc
