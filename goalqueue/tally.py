"""The counters kept for monitoring: what each field of ``<ns>:metrics`` counts, the histograms'
bucket bounds, and reading them back.

The counts live in Redis and move in the SETTLE call that records the outcomes they count
(``lua/settle.lua``): right for the whole deployment however many workers run, kept across
worker restarts, and never counted twice, since an outcome is counted only by the copy of a
goal that owns its ledger entry (a delivered goal, by the copy that sets its marker). A worker
adds up one write's answers in Python and SETTLE adds each non-zero field once. Fields:

    dead:<reason>               goals dead-lettered: bad_request, unknown_visitor, client_error,
                                expired, maybe_delivered, unexpected_response, poison
    deferred:<reason>           goals set aside by a pause for everyone: rate_limited (429),
                                suspended (403), auth (401), redirect (3xx), tls (a TLS
                                failure), slow (a timeout after sending)
    transient                   goals set aside for a retry: 5xx, a 2xx that was not
                                DataFast's, a network error or timeout before sending
    answers:<class>             DataFast's answers: 2xx (its success body), unexpected_2xx
                                (any other 2xx), 3xx, 4xx, 5xx; and requests that got none:
                                timeout_before_send, timeout_after_send, connection_refused,
                                connection_reset, tls_error, connection_error (anything else);
                                counted with the outcome a write records
    request:<i>                 requests to DataFast that took at most REQUEST_BOUNDS[i] seconds
                                (and more than the bound before); i = len(bounds): longer
    request:sum_us              their total duration, in microseconds
    latency:<i>, latency:sum_us the same for enqueue-to-delivered latency (LATENCY_BOUNDS),
                                counted once per goal, by the copy that marks it delivered
    pruned:<limit>              dead letters the workers' sweepers deleted (``lua/prune.lua``):
                                retention (older than GOALQUEUE_DEAD_RETENTION_DAYS), max (the
                                oldest beyond GOALQUEUE_DEAD_MAX)
    consumer_stalls             worker processes that found their consumer stalled (goals
                                queued, room to take them, none received for
                                GOALQUEUE_CONSUMER_STALL_SECONDS) and shut down to be started
                                again (``workers/watchdog.py``, one HINCRBY each)

Goals delivered are counted in ``<ns>:count:delivered``, which ``goalqueue stats`` reports.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

import redis

from goalqueue.keys import Keys

# Request duration to DataFast: its timeout is 10 s by default.
REQUEST_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Enqueue to delivered: from an idle queue (milliseconds) to a long pause (hours).
LATENCY_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                  3600.0, 21600.0, 86400.0)  # fmt: skip

DEAD_REASONS = ("bad_request", "unknown_visitor", "client_error", "expired", "maybe_delivered",
                "unexpected_response", "poison")  # fmt: skip
# What each dead letter is indexed under (see keys.py), the index's size its count: its reason,
# or corrupt for a value `goalqueue dead recount` found that is not a dead letter.
CORRUPT = "corrupt"
LETTER_REASONS = (*DEAD_REASONS, CORRUPT)
PRUNE_LIMITS = ("retention", "max")
CONSUMER_STALLS = "consumer_stalls"
DEFER_REASONS = ("rate_limited", "suspended", "auth", "redirect", "tls", "slow")
ANSWER_CLASSES = ("2xx", "unexpected_2xx", "3xx", "4xx", "5xx", "timeout_before_send",
                  "timeout_after_send", "connection_refused", "connection_reset", "tls_error",
                  "connection_error")  # fmt: skip


def bucket(bounds: tuple[float, ...], seconds: float) -> int:
    """The index of the first bound ``seconds`` does not exceed (``len(bounds)``: none)."""
    return bisect_left(bounds, seconds)


def micros(seconds: float) -> int:
    """Seconds as whole microseconds, for a histogram's sum (HINCRBY takes integers)."""
    return round(max(0.0, seconds) * 1_000_000)


@dataclass(frozen=True)
class Histogram:
    """One histogram read back: cumulative counts per upper bound (the last one ``+Inf``),
    the sum of the observations (seconds) and their number."""

    buckets: list[tuple[str, int]]
    sum: float
    count: int


@dataclass(frozen=True)
class Counters:
    """Everything in ``<ns>:metrics``, plus goals delivered."""

    outcomes: dict[tuple[str, str], int]
    answers: dict[str, int]
    pruned: dict[str, int]
    consumer_stalls: int
    request_seconds: Histogram
    latency_seconds: Histogram


def read(client: redis.Redis, keys: Keys) -> Counters:
    """The counters of ``keys``' namespace, every known outcome and answer class included."""
    with client.pipeline(transaction=False) as pipe:  # Redis refuses a MULTI when full
        pipe.hgetall(keys.metrics)
        pipe.get(keys.delivered_count)
        fields, delivered = pipe.execute()
    counts = {str(name): int(value) for name, value in fields.items()}
    outcomes = {("delivered", ""): int(delivered or 0), ("transient", ""): 0}
    outcomes |= {("dead", reason): 0 for reason in DEAD_REASONS}
    outcomes |= {("deferred", reason): 0 for reason in DEFER_REASONS}
    answers = dict.fromkeys(ANSWER_CLASSES, 0)
    pruned = dict.fromkeys(PRUNE_LIMITS, 0)
    for name, value in counts.items():
        kind, _, label = name.partition(":")
        if kind in ("dead", "deferred", "transient"):
            outcomes[kind, label] = value
        elif kind == "answers":
            answers[label] = value
        elif kind == "pruned":
            pruned[label] = value
    return Counters(
        outcomes,
        answers,
        pruned,
        counts.get(CONSUMER_STALLS, 0),
        _histogram(counts, "request", REQUEST_BOUNDS),
        _histogram(counts, "latency", LATENCY_BOUNDS),
    )


def _histogram(counts: dict[str, int], name: str, bounds: tuple[float, ...]) -> Histogram:
    running, buckets = 0, []
    for index, bound in enumerate((*bounds, float("inf"))):
        running += counts.get(f"{name}:{index}", 0)
        buckets.append(("+Inf" if bound == float("inf") else f"{bound:g}", running))
    return Histogram(buckets, counts.get(f"{name}:sum_us", 0) / 1_000_000, running)
