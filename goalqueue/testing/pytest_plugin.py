"""goalqueue's pytest plugin (the ``pytest11`` entry point ``goalqueue``): the
``goalqueue_recorder`` fixture for an app's own test suite. See :mod:`goalqueue.testing`."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from goalqueue.testing import GoalRecorder


@pytest.fixture
def goalqueue_recorder() -> Iterator[GoalRecorder]:
    """Every goal the test tracks, recorded instead of enqueued: no Redis, no worker. Assert
    with ``goalqueue_recorder.assert_tracked("signup", visitor_id=..., metadata=...)``."""
    from goalqueue.testing import recording

    with recording() as recorder:
        yield recorder
