"""Which tests pytest-xdist must not run beside each other (``--dist loadgroup``)."""

from __future__ import annotations

import pytest

TIMED = pytest.mark.xdist_group("timed")
"""Tests bound by time (an answer within a margin of the enqueue timeout, a failover or a
stall judged by its length) or heavy on CPU (the benchmark's smoke run, chaos): they run one
after another in one worker, so that none of them shares the two cores with another while the
other worker runs the rest."""
