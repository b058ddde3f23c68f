"""Every Redis key goalqueue uses, in one place, under one namespace.

``GOALQUEUE_NAMESPACE`` (default ``goalqueue``) prefixes every key goalqueue owns and names the
Celery queue, so that two deployments (staging and production, or two apps) can share one Redis
database and never see each other's goals, pauses, counters or dead letters. For the namespace
``<ns>``:

<ns>                    list    the Celery queue (kombu's Redis transport, priority 0)
<ns>:seq                string  last enqueue sequence number handed out
<ns>:ledger             zset    event JSON scored by its enqueue sequence; an entry lives from
                                enqueue until a final outcome or a deferral
<ns>:pending            set     event ids of the goals in the ledger or the waiting set: with
                                the delivered markers and the dead letters, the ids an enqueue
                                of the same event id finds known (and adds nothing)
<ns>:taken              string  highest sequence any worker has started on
<ns>:checkpoints        zset    taken values scored by when they were first seen
<ns>:reconciled         string  Redis's time (TIME) when the reconciler last ran
<ns>:waiting            zset    event JSON scored by the unix time it is due again
<ns>:dead               hash    event id -> dead letter JSON
<ns>:dead:<reason>      zset    the event ids of the reason's dead letters, scored by when they
                                died (a reason of tally.LETTER_REASONS): written with the
                                letters (lua/dead.lua); its size is the reason's count
<ns>:replaying:<fp>     hash    started, since, until, replayed: a `goalqueue dead replay` by
                                filters not finished yet (fp: its filters' fingerprint)
<ns>:delivered          hash    the delivered markers' time buckets: '<start ms>:<expiry ms>'
                                -> markers in the bucket (expired buckets are dropped by the
                                next SETTLE)
<ns>:delivered:<start ms>:<shard>
                        hash    a bucket's delivered markers, one shard of them: the event id
                                packed (a UUID's 16 bytes; an id of another form goes as it is
                                to the bucket's shard `x`) -> when it was delivered and
                                DataFast's event id, packed; every shard of a
                                bucket expires GOALQUEUE_DELIVERED_TTL_SECONDS after the bucket
                                ends (a sixth of that TTL long). Shards split as a bucket fills,
                                so that each stays in Redis's compact listpack encoding: about
                                40 B a delivered goal (see lua/marker.lua, goalqueue/markers.py)
<ns>:visitor:<visitor id>
                        string  the visitor index (`goalqueue show --visitor`): about the
                                visitor's last VISITOR_KEEP goals enqueued, oldest first, each
                                "<enqueued at> <event id>;" (enqueued_at in unix seconds); it
                                expires an hour (VISITOR_WINDOW_SECONDS) after the visitor's last
                                goal (lua/enqueued.lua): one small key per visitor of the hour
<ns>:attempts:<id>      list    the goal's last 10 attempts (goalqueue/attempts.py), oldest
                                first, for a goal that needed more than one, or waits, or died;
                                kept after its last attempt for GOALQUEUE_DELIVERED_TTL_SECONDS
                                once it is delivered, for the dead-letter retention once it is
                                dead, else (waiting) for the longer of that TTL and
                                GOALQUEUE_MAX_AGE_SECONDS; about 400 B a goal with two attempts
<ns>:count:delivered    string  goals delivered, ever
<ns>:metrics            hash    counters for monitoring, moved by the script that records each
                                outcome (see goalqueue/tally.py for the fields): goals by
                                outcome and reason, DataFast's answers by status class, and the
                                buckets, sum and count of the request duration and of the
                                enqueue-to-delivered latency histograms
<ns>:pause              hash    until, reason, streak, key: delivery paused for everyone
<ns>:operator_pause     hash    since, until, reason, by, at: delivery paused by hand for everyone
                                (`goalqueue pause`; until 0: until `goalqueue resume`), apart
                                from DataFast's <ns>:pause, which never ends it; spans: the past
                                pauses by hand max age still needs, "start:end ..." (see
                                goalqueue/pausing.py)
<ns>:probe              string  id of the one event allowed through when a pause ends
<ns>:pace               hash    rate, tokens, at, ceiling, grown, dry: the shared send rate (a
                                token bucket) after a 429 or a timeout after sending, or
                                under GOALQUEUE_MAX_RATE
<ns>:sent               hash    since, count, recent: goals sent by all workers, counted a
                                second at a time (a first 429's rate to start from)
<ns>:unacked            hash    kombu's unacknowledged messages (and <ns>:unacked_index,
                                their tags scored by when they were taken, and
                                <ns>:unacked_mutex), named by the app's transport options

kombu also keeps ``_kombu.binding.<exchange>`` sets for the queue's exchange (``<ns>``), the
task events' (``<ns>.events``) and the control commands' (``<ns>.pidbox``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

TASK_NAME = "goalqueue.deliver"
VISITOR_WINDOW_SECONDS = 3600  # the visitor index keeps a visitor's goals this long after its last
VISITOR_KEEP = 100  # a visitor's newest goals the visitor index keeps
# Items one Redis call carries at most (goals per enqueue or sweep script, fields per HSCAN,
# keys per DEL): large enough to amortise the round trip, small enough that no call holds
# Redis for long.
PER_CALL = 500
DEFAULT_NAMESPACE = "goalqueue"
NAMESPACE_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class Keys:
    """The keys of one namespace."""

    namespace: str = DEFAULT_NAMESPACE
    queue: str = field(init=False)
    seq: str = field(init=False)
    ledger: str = field(init=False)
    pending: str = field(init=False)
    taken: str = field(init=False)
    checkpoints: str = field(init=False)
    reconciled: str = field(init=False)
    waiting: str = field(init=False)
    dead: str = field(init=False)
    delivered: str = field(init=False)
    visitor_prefix: str = field(init=False)
    attempts_prefix: str = field(init=False)
    delivered_count: str = field(init=False)
    metrics: str = field(init=False)
    pause: str = field(init=False)
    operator_pause: str = field(init=False)
    probe: str = field(init=False)
    pace: str = field(init=False)
    sent: str = field(init=False)
    unacked: str = field(init=False)
    unacked_index: str = field(init=False)
    event_exchange: str = field(init=False)

    def __post_init__(self) -> None:
        ns = self.namespace
        names = {
            "queue": ns,
            "seq": f"{ns}:seq",
            "ledger": f"{ns}:ledger",
            "pending": f"{ns}:pending",
            "taken": f"{ns}:taken",
            "checkpoints": f"{ns}:checkpoints",
            "reconciled": f"{ns}:reconciled",
            "waiting": f"{ns}:waiting",
            "dead": f"{ns}:dead",
            "delivered": f"{ns}:delivered",
            "visitor_prefix": f"{ns}:visitor:",
            "attempts_prefix": f"{ns}:attempts:",
            "delivered_count": f"{ns}:count:delivered",
            "metrics": f"{ns}:metrics",
            "pause": f"{ns}:pause",
            "operator_pause": f"{ns}:operator_pause",
            "probe": f"{ns}:probe",
            "pace": f"{ns}:pace",
            "sent": f"{ns}:sent",
            "unacked": f"{ns}:unacked",
            "unacked_index": f"{ns}:unacked_index",
            "event_exchange": f"{ns}.events",
        }
        for name, key in names.items():
            object.__setattr__(self, name, key)

    def dead_index(self, reason: str) -> str:
        """Key of the index of ``reason``'s dead letters (lua/dead.lua builds it the same way)."""
        return f"{self.dead}:{reason}"

    def replaying(self, fingerprint: str) -> str:
        """Key of an unfinished ``goalqueue dead replay`` by the filters of ``fingerprint``."""
        return f"{self.namespace}:replaying:{fingerprint}"

    def visitor(self, visitor_id: str) -> str:
        """Key of ``visitor_id``'s goals in the visitor index."""
        return self.visitor_prefix + visitor_id

    def attempts(self, event_id: str) -> str:
        """Key of ``event_id``'s attempt log."""
        return self.attempts_prefix + event_id

    def kombu_transport_options(self) -> dict[str, str]:
        """kombu's bookkeeping keys for this namespace (Redis transport options)."""
        return {
            "unacked_key": self.unacked,
            "unacked_index_key": self.unacked_index,
            "unacked_mutex_key": f"{self.unacked}_mutex",
        }
