"""Why the demo stops early."""

from __future__ import annotations


class DemoFailed(Exception):
    """The demo cannot go on; the message says why."""


class BrokerUnavailable(Exception):
    """One way of getting a broker does not work here; the message says why."""


class TimedOut(Exception):
    """The demo's deadline passed while it waited; the message says for what."""
