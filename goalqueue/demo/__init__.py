"""``goalqueue demo``: the whole pipeline on this machine, end to end, in a few seconds.

It finds a broker, starts the DataFast sandbox and one real worker, enqueues a mix of goals
(valid ones, a bot's, an unknown visitor's; a burst of 429s with ``Retry-After`` and a burst of
503s meet some of the valid ones), shows live progress and ends with a table of what happened to
each kind of goal. It exits 0 only when every valid goal reached the sandbox and both permanent
failures are dead letters, and it stops everything it started, also on Ctrl-C and SIGTERM.

The broker is the first of these that works (``--broker`` picks one):

1. ``env``: the Redis at ``GOALQUEUE_BROKER_URL``, only if it answers and its database is empty;
   the demo deletes its own keys when it ends. A database with anything in it is left alone.
2. ``redis-server``: one from PATH, started on a free port in a temporary directory, with
   nothing kept on disk.
3. ``fakeredis``: fakeredis's Redis-protocol server in a thread (needs ``fakeredis[lua]``
   2.41 or later).

The modules: ``brokers`` (finding a broker), ``scenario`` (the goals, the faults, the worker),
``report`` (live progress and the final table), ``command`` (the click command), with
``processes`` (a free port for what it starts, and stopping it) and ``errors`` (why it stops early).
"""

from goalqueue.demo.brokers import BROKERS, Broker, forget_demo_keys, start_broker
from goalqueue.demo.command import demo_command, run_demo
from goalqueue.demo.errors import BrokerUnavailable, DemoFailed, TimedOut
from goalqueue.demo.processes import free_port, stop_process
from goalqueue.demo.report import Progress, Row, Sent, Snapshot, problems, render_table, table_rows
from goalqueue.demo.scenario import (
    BURST_429,
    BURST_503,
    VALID_GOALS,
    Run,
    start_worker,
    worker_command,
)

__all__ = [
    "BROKERS",
    "BURST_429",
    "BURST_503",
    "VALID_GOALS",
    "Broker",
    "BrokerUnavailable",
    "DemoFailed",
    "Progress",
    "Row",
    "Run",
    "Sent",
    "Snapshot",
    "TimedOut",
    "demo_command",
    "forget_demo_keys",
    "free_port",
    "problems",
    "render_table",
    "run_demo",
    "start_broker",
    "start_worker",
    "stop_process",
    "table_rows",
    "worker_command",
]
