"""goalqueue's worker without Celery task events (Flower loses its live task view)."""

from workers.celery import app

app.conf.worker_send_task_events = False
app.conf.task_send_sent_event = False

__all__ = ["app"]
