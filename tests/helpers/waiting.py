"""Waiting for a condition by polling it, never for a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_for(
    condition: Callable[[], object], timeout: float = 30.0, interval: float = 0.05
) -> None:
    """Poll ``condition`` until it is truthy; fail the test with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s: {condition.__doc__ or condition}")
        time.sleep(interval)
