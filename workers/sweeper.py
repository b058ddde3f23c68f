"""The sweeper: a thread in every worker that keeps waiting and lost goals moving, and dead
letters within bounds.

Each round it

* moves due goals from the waiting set back onto the queue (only the single probe while
  delivery is paused),
* re-queues ledger entries that a worker took off the queue but never settled, older than the
  visibility timeout: the goals a worker killed right after kombu's BRPOP would otherwise lose.
  That time runs only while Redis answers and workers sweep: after a stall the goals in flight
  get the whole timeout again, so that the outcomes their writes were retrying land first, and
* prunes the oldest dead letters, at most ``PER_CALL`` a round: those older than
  ``GOALQUEUE_DEAD_RETENTION_DAYS``, then those beyond ``GOALQUEUE_DEAD_MAX``.

Each step is a single Lua call, so any number of workers can sweep at once. Each runs when Redis
is full (their scripts are flagged ``allow-oom``): the reconciler brings back goals whose
messages were freed, a prune frees memory, and goals waiting for a retry come back only while
the queue holds fewer than ``PER_CALL`` messages, so that a sweep never fills Redis further than
that. A round that
cannot reach Redis is reported to the process's :class:`~workers.outage.Outage`, which logs the
outage once rather than every round.
"""

from __future__ import annotations

import logging
import random
import threading
import time

import redis

from goalqueue import stats
from goalqueue.config import Settings
from goalqueue.keys import PER_CALL
from workers.outage import Outage
from workers.scripts import SweeperScripts

logger = logging.getLogger(__name__)


def stall_seconds(settings: Settings) -> float:
    """A gap between reconciler runs longer than this is a stall (Redis frozen or down, no
    worker sweeping), not time a goal's lease runs: well above the sweepers' spacing, well
    below the visibility timeout."""
    return max(settings.visibility_timeout_seconds / 4, 3 * settings.sweep_interval_seconds)


class Sweeper:
    """Runs :meth:`sweep_once` every ``sweep_interval_seconds`` (jittered) until stopped."""

    def __init__(
        self, settings: Settings, client: redis.Redis, outage: Outage | None = None
    ) -> None:
        self.settings = settings
        self.outage = outage or Outage(settings.outage_reminder_seconds)
        self.redis = client
        self.scripts = SweeperScripts(client, settings.keys)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start sweeping, every ``sweep_interval_seconds``, on a thread of its own."""
        self._thread = threading.Thread(target=self._run, name="goalqueue-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def sweep_once(self, now: float | None = None) -> tuple[int, int]:
        """One round; returns (goals moved from waiting, lost goals re-queued)."""
        now = time.time() if now is None else now
        memory = stats.memory(self.redis)
        cap = PER_CALL if memory is not None and memory.full else 0
        moved = 0
        while True:
            count = self.scripts.sweep(
                now, PER_CALL, self.settings.key_fingerprint, self.settings.probe_lease_ms, cap
            )
            moved += count
            if count < PER_CALL:
                break
        settings = self.settings
        recovered = self.scripts.reconcile(
            now, settings.visibility_timeout_seconds, PER_CALL, stall_seconds(settings)
        )
        if recovered:
            logger.warning(
                "re-queued %d goal(s) a lost worker had taken but not settled", recovered
            )
        self.prune(now)
        return moved, recovered

    def prune(self, now: float) -> tuple[int, int]:
        """Delete the oldest dead letters past the retention or the cap, at most ``PER_CALL``;
        returns how many went for each."""
        settings = self.settings
        cutoff = now - settings.dead_retention_seconds
        expired, over = self.scripts.prune(cutoff, settings.dead_max, PER_CALL)
        if expired or over:
            logger.info(
                "pruned %d dead letter(s) older than %g days and %d beyond the newest %d",
                expired, settings.dead_retention_days, over, settings.dead_max,
            )  # fmt: skip
        return expired, over

    def _run(self) -> None:
        interval = self.settings.sweep_interval_seconds
        while not self._stop.wait(interval * (0.75 + random.random() / 2)):
            try:
                self.sweep_once()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.outage.failed("sweep", exc)
            except redis.RedisError as exc:
                logger.warning("sweep failed: %s", exc)
            else:
                self.outage.succeeded()
