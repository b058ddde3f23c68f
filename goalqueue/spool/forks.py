"""A forked child starts the spool over: its own file, writer and flusher, not its parent's."""

from __future__ import annotations

import os
import weakref
from typing import Protocol


class ForkAware(Protocol):
    def after_fork(self) -> None:
        """Called in a forked child, on its copy of the object."""


_FORK_AWARE: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def start_over_after_fork(thing: ForkAware) -> None:
    """Have ``thing.after_fork()`` called in every forked child while ``thing`` lives."""
    _FORK_AWARE.add(thing)


def _after_fork_in_child() -> None:
    for thing in list(_FORK_AWARE):
        thing.after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
