"""What the subcommands share: the queue and Redis, each failing in one line, not a traceback."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
import redis

from goalqueue.config import get_settings
from goalqueue.deadline import connect
from goalqueue.errors import ConfigError
from goalqueue.keys import Keys
from goalqueue.producer import GoalQueue

T = TypeVar("T")


def queue() -> GoalQueue:
    """The queue the environment configures."""
    try:
        return GoalQueue(settings=get_settings())
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


def read(action: Callable[[redis.Redis, Keys], T]) -> T:
    """Run ``action(redis, keys)``, turning connection trouble into a one-line error."""
    try:
        settings = get_settings()
        return action(connect(settings), settings.keys)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis: {exc}") from exc


def parsed(parse: Callable[[str], object]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback reading each value with ``parse``, whose ``ValueError`` is the
    one-line error."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            if isinstance(value, tuple):
                return tuple(parse(item) for item in value)
            return None if value is None else parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc), ctx, param) from None

    return callback
