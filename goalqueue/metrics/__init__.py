"""``goalqueue metrics``: one Prometheus scrape target for the whole deployment.

Workers run no HTTP server: everything is read from Redis when Prometheus scrapes, the
counters included (the workers keep them in Redis as they record outcomes, see
:mod:`goalqueue.tally`). The modules: ``collector`` (what is exported), ``server`` (HTTP, basic
auth), ``cli`` (the command). Needs the ``metrics`` extra (prometheus-client).
"""

from goalqueue.metrics.cli import metrics_command

__all__ = ["metrics_command"]
