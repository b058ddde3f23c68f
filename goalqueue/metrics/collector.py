"""The deployment's metrics, read from Redis at each scrape: a prometheus_client collector.

State comes from :func:`goalqueue.stats.collect` (what ``goalqueue stats`` prints), counters and
histograms from ``<ns>:metrics`` (:mod:`goalqueue.tally`), which the workers' SETTLE calls keep.
Labels are few and fixed: outcome result and reason, answer status class, pause reason, dead
letter reason, prune limit. Dead letters are counted by the sizes of their indexes, never by
reading the letters. When Redis does not answer, the scrape says so in ``goalqueue_redis_up`` alone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from goalqueue import stats, tally
from goalqueue.keys import Keys

logger = logging.getLogger(__name__)

PAUSE_REASONS = tally.DEFER_REASONS
OPERATOR = "operator"  # the pause reason of a pause by hand (goalqueue pause)


class GoalQueueCollector(Collector):
    """Every goalqueue metric of one namespace, read from Redis when Prometheus scrapes."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def collect(self) -> Iterator[Metric]:
        try:
            state = stats.collect(self.redis, self.keys)
            dead = stats.dead_by_reason(self.redis, self.keys)
            counters = tally.read(self.redis, self.keys)
        except redis.RedisError as exc:
            logger.error("cannot read goalqueue's metrics from Redis: %s", exc)
            yield _gauge("goalqueue_redis_up", "Whether Redis answered this scrape.", 0)
            return
        yield _gauge("goalqueue_redis_up", "Whether Redis answered this scrape.", 1)
        yield from _state(state, dead)
        yield from _counters(counters)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _state(state: dict[str, object], dead: dict[str, int]) -> Iterator[Metric]:
    for name, documentation in (
        ("queued", "Goals on the queue, waiting for a worker to take them."),
        ("waiting", "Goals set aside until a retry or a pause is due."),
        ("in_flight", "Goals taken off the queue by a worker and not settled yet."),
    ):
        yield _gauge(f"goalqueue_{name}_goals", documentation, _number(state[name]))
    yield _labelled(
        GaugeMetricFamily("goalqueue_dead_letters",
                          "Dead letters kept in Redis, by reason (corrupt: not readable as one; "
                          "unindexed: in no reason's index, see goalqueue dead recount).",
                          labels=["reason"]),
        dead,
    )  # fmt: skip
    for name, documentation in (
        ("oldest_waiting_age", "Age (since enqueue) of the waiting goal due first."),
        ("oldest_queued_age", "Age (since enqueue) of the goal next in line on the queue."),
    ):
        if state[name] is not None:
            yield _gauge(f"goalqueue_{name}_seconds", documentation, _number(state[name]))
    paused = GaugeMetricFamily(
        "goalqueue_paused",
        "1 while delivery is paused for everyone, with the pause's reason (auth: a 401, "
        "the API key is wrong; operator: paused by hand with goalqueue pause, which may be in "
        "force beside one of DataFast's).",
        labels=["reason"],
    )
    reason = str(state["pause_reason"] or "")
    for known in sorted({*PAUSE_REASONS, *([reason] if reason else [])}):
        paused.add_metric([known], 1 if known == reason else 0)
    paused.add_metric([OPERATOR], 0 if state["paused_by_hand"] is None else 1)
    yield paused
    if state["send_rate"] is not None:
        yield _gauge(
            "goalqueue_send_rate_limit",
            "The shared send rate all workers keep to, in goals per second (after a 429, or "
            "GOALQUEUE_MAX_RATE).",
            _number(state["send_rate"]),
        )
    yield from _memory(state)


def _memory(state: dict[str, object]) -> Iterator[Metric]:
    """Redis's memory, unless this Redis user may not run INFO."""
    if state["redis_full"] is None:
        return
    yield _gauge(
        "goalqueue_redis_full",
        "1 while Redis is within 1% of maxmemory: it refuses new goals (producers spool or "
        "fail) while workers drain the queue to free memory.",
        1 if state["redis_full"] else 0,
    )
    yield _gauge(
        "goalqueue_redis_memory_used_bytes",
        "Memory Redis uses, as it counts it against maxmemory.",
        _number(state["redis_used_memory"]),
    )
    yield _gauge(
        "goalqueue_redis_memory_max_bytes",
        "Redis's maxmemory (0: no limit).",
        _number(state["redis_maxmemory"]),
    )


def _counters(counters: tally.Counters) -> Iterator[Metric]:
    goals = CounterMetricFamily(
        "goalqueue_goals",
        "Goals by the outcome recorded for them: delivered, dead (by reason), deferred by a "
        "pause (by reason), transient (set aside for a retry).",
        labels=["result", "reason"],
    )
    for (result, reason), value in sorted(counters.outcomes.items()):
        goals.add_metric([result, reason], value)
    yield goals
    yield _labelled(
        CounterMetricFamily("goalqueue_datafast_answers",
                            "DataFast's answers to goal requests, by status class (timeouts and "
                            "connection errors as their own).", labels=["status_class"]),
        counters.answers,
    )  # fmt: skip
    yield _labelled(
        CounterMetricFamily("goalqueue_dead_letters_pruned",
                            "Dead letters the workers deleted: older than "
                            "GOALQUEUE_DEAD_RETENTION_DAYS (retention), the oldest beyond "
                            "GOALQUEUE_DEAD_MAX (max).", labels=["limit"]),
        counters.pruned,
    )  # fmt: skip
    yield CounterMetricFamily(
        "goalqueue_consumer_stalls",
        "Worker processes that found their consumer stalled (goals queued, room to take them, "
        "no task message for GOALQUEUE_CONSUMER_STALL_SECONDS) and shut down to be started "
        "again.",
        value=counters.consumer_stalls,
    )
    yield _histogram(
        "goalqueue_datafast_request_duration_seconds",
        "How long DataFast took to answer a goal request.",
        counters.request_seconds,
    )
    yield _histogram(
        "goalqueue_delivery_latency_seconds",
        "Time from enqueue to delivered, per goal delivered.",
        counters.latency_seconds,
    )


def _labelled(family: GaugeMetricFamily | CounterMetricFamily, values: dict[str, int]) -> Metric:
    """``family`` (with one label) with a sample for each of ``values``, by label value."""
    for label, value in sorted(values.items()):
        family.add_metric([label], value)
    return family


def _histogram(name: str, documentation: str, histogram: tally.Histogram) -> Metric:
    family = HistogramMetricFamily(name, documentation)
    family.add_metric([], [(bound, float(count)) for bound, count in histogram.buckets],
                      histogram.sum)  # fmt: skip
    return family


def _number(value: object) -> float:
    assert isinstance(value, int | float), value
    return float(value)
