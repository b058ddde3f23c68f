"""click's lazy-loading group: each subcommand's module is imported when the command is looked
up, and one whose extra is missing becomes a command that says, in one line, what to install."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

import click


@dataclass(frozen=True)
class Extra:
    """One of goalqueue's pip extras, and the top-level modules of what it installs."""

    name: str
    modules: frozenset[str]

    def explain(self, exc: ModuleNotFoundError, command: str) -> str:
        """The one line for ``goalqueue COMMAND`` that lacks this extra; re-raises ``exc`` when
        the missing module is not one this extra installs (a bug, not an install to fix)."""
        missing = (exc.name or "").partition(".")[0]
        if missing not in self.modules:
            raise exc
        return (
            f"goalqueue {command} needs the {self.name} extra (no module named {missing!r}):"
            f" pip install 'goalqueue[{self.name}]'"
        )


WORKER = Extra(
    "worker", frozenset({"celery", "kombu", "httpx", "httpx_aiohttp", "aiohttp", "packaging"})
)
SANDBOX = Extra("sandbox", frozenset({"starlette", "uvicorn"}))
METRICS = Extra("metrics", frozenset({"prometheus_client"}))
DEMO = Extra("demo", WORKER.modules | SANDBOX.modules)
# What the core install has: a missing module is a bug, never an extra to name.
CORE = Extra("core", frozenset())


@dataclass(frozen=True)
class LazyCommand:
    """A subcommand imported only when it is looked up (``module:attribute``), the extra it
    needs, and the modules that only its child processes import, checked when it runs."""

    target: str
    extra: Extra = CORE
    child_modules: tuple[str, ...] = ()

    def load(self) -> click.Command:
        module, _, attribute = self.target.partition(":")
        command = getattr(importlib.import_module(module), attribute)
        assert isinstance(command, click.Command), self.target
        return command

    def check_children(self) -> None:
        for name in self.child_modules:
            importlib.import_module(name)


class LazyGroup(click.Group):
    """A group whose ``lazy`` subcommands are imported when looked up."""

    def __init__(self, *args: Any, lazy: dict[str, LazyCommand], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        lazy = self.lazy.get(cmd_name)
        if lazy is None:
            return super().get_command(ctx, cmd_name)
        try:
            return lazy.load()
        except ModuleNotFoundError as exc:
            return _unavailable(cmd_name, lazy.extra, lazy.extra.explain(exc, cmd_name))

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        """As click does, and then (only for a command about to run, not for the listing in
        ``--help``) imports what its child processes need."""
        name, command, rest = super().resolve_command(ctx, args)
        lazy = self.lazy.get(name or "")
        if name is not None and lazy is not None:
            try:
                lazy.check_children()
            except ModuleNotFoundError as exc:
                command = _unavailable(name, lazy.extra, lazy.extra.explain(exc, name))
        return name, command, rest


def _unavailable(name: str, extra: Extra, message: str) -> click.Command:
    """A command that takes any arguments, prints ``message`` and exits with status 1; listed
    in ``goalqueue --help`` with the extra to install."""

    def fail(args: Sequence[str]) -> NoReturn:
        raise SystemExit(message)

    return click.Command(
        name,
        callback=fail,
        params=[click.Argument(["args"], nargs=-1, type=click.UNPROCESSED)],
        help=message,
        short_help=f"Not installed: pip install 'goalqueue[{extra.name}]'",
        add_help_option=False,
        context_settings={"ignore_unknown_options": True},
    )
