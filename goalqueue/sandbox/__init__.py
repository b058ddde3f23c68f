"""A local stand-in for DataFast's goals endpoint, for trying, testing and benchmarking offline.

The sandbox is a Starlette app served by uvicorn. It answers ``POST /api/v1/goals`` the way
DataFast does (bearer key, field rules, bots, visitors without pageviews) and records every
request it receives, accepted or not. Faults can be injected at start or at run time: added
latency, random 503s, the next N requests failing with a chosen status, rate limiting (429 +
``Retry-After``), a suspended website (403) and hanging requests (to exercise client timeouts).

Rate limiting comes in two kinds. ``{"rate_limit": {"per_second": 200, "retry_after": 1}}``
(``set_faults(rate_limit={...})``, ``goalqueue sandbox --rate-limit 200``) is a real limit: a
token bucket holding one second's worth of goal requests (at least one), refilled continuously,
lets up to 200 a second through and answers the rest 429 with ``Retry-After``. Without
``per_second`` - ``{"rate_limit": {"retry_after": 1}}``, a bare Retry-After value, or true
(1 s) - every goal request gets 429 while it is set; null or false turns either off.

Three ways to run it:

* ``Sandbox`` - a context manager that serves in a background thread on 127.0.0.1,
  for tests, demos and benchmarks; its ``state`` can be inspected and changed directly.
* ``serve()`` - blocking, in the foreground.
* ``sandbox_command`` - the click command behind ``goalqueue sandbox``.

Admin endpoints under ``/_sandbox/`` (JSON, no auth; a loopback tool):

    GET    /_sandbox/health                  {"status": "ok"}
    GET    /_sandbox/events[?status=200]     {"events": [...]}
    GET    /_sandbox/stats                   counts by status, distinct keys, duplicates, and
                                             in_flight: goal requests not yet answered
    GET    /_sandbox/faults                  the current faults
    POST   /_sandbox/faults                  partial update, e.g. {"fail_next": {"status": 503}}
    DELETE /_sandbox/faults                  clear all faults
    POST   /_sandbox/visitors                {"visitors": [...], "mode": "any" | "registered"}
    POST   /_sandbox/bots                    {"visitors": [...]}
    POST   /_sandbox/key                     {"key": "..."}
    POST   /_sandbox/reset                   forget recorded events and clear faults

The modules, one concept each: ``state`` (what it knows and recorded), ``faults`` (injected
faults), ``rules`` (DataFast's rules), ``answers`` (its JSON bodies), ``goals`` and ``admin``
(the routes), ``app`` (the Starlette app), ``server`` (uvicorn, ``Sandbox``), ``cli``.
"""

from goalqueue.sandbox.admin import ADMIN_PREFIX
from goalqueue.sandbox.answers import RetryAfter
from goalqueue.sandbox.app import build_app
from goalqueue.sandbox.cli import sandbox_command
from goalqueue.sandbox.faults import FailNext, Faults, RateLimit, parse_fault_changes
from goalqueue.sandbox.goals import GOALS_PATH, HANG_SECONDS
from goalqueue.sandbox.server import DEFAULT_HOST, DEFAULT_PORT, Sandbox, serve
from goalqueue.sandbox.state import (
    DEFAULT_KEY,
    RecordedEvent,
    SandboxState,
    SandboxStats,
    VisitorMode,
)

__all__ = [
    "ADMIN_PREFIX",
    "DEFAULT_HOST",
    "DEFAULT_KEY",
    "DEFAULT_PORT",
    "GOALS_PATH",
    "HANG_SECONDS",
    "FailNext",
    "Faults",
    "RateLimit",
    "RecordedEvent",
    "RetryAfter",
    "Sandbox",
    "SandboxState",
    "SandboxStats",
    "VisitorMode",
    "build_app",
    "parse_fault_changes",
    "sandbox_command",
    "serve",
]
