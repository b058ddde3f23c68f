"""A test's short form, run by default, and its long form: marked ``slow`` and run only with
``GOALQUEUE_CHAOS=long``."""

from __future__ import annotations

import os
from typing import Any

import pytest

LONG_RUN = os.environ.get("GOALQUEUE_CHAOS") == "long"


def short_and_long(short: object, long: object, short_timeout: float, long_timeout: float) -> Any:
    """``pytest.mark.parametrize`` values for the two forms (ids ``short`` and ``long``), each
    with its timeout."""
    return [
        pytest.param(short, id="short", marks=pytest.mark.timeout(short_timeout)),
        pytest.param(
            long,
            id="long",
            marks=[
                pytest.mark.timeout(long_timeout),
                pytest.mark.slow,
                pytest.mark.skipif(not LONG_RUN, reason="the long form needs GOALQUEUE_CHAOS=long"),
            ],
        ),
    ]
