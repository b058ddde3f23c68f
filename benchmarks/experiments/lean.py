"""Both cheap fixes together: no task events, and kombu reusing its bookkeeping client."""

from benchmarks.experiments import kombu_client_reuse, no_events
from workers.celery import app

__all__ = ["app", "kombu_client_reuse", "no_events"]
