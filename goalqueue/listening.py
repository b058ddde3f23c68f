"""The ``--host`` and ``--port`` options of the commands that serve HTTP (``goalqueue sandbox``,
``goalqueue metrics``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

F = TypeVar("F", bound=Callable[..., object])


def listen_options(host: str, port: int) -> Callable[[F], F]:
    """``--host`` and ``--port`` with these defaults (port 0 picks a free one)."""

    def decorate(command: F) -> F:
        command = click.option(
            "--port",
            default=port,
            show_default=True,
            type=click.IntRange(0, 65535),
            help="Port to listen on (0 picks a free one).",
        )(command)
        return click.option(
            "--host", default=host, show_default=True, help="Interface to listen on."
        )(command)

    return decorate
