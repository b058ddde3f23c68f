"""The worker side of goalqueue: ``celery -A workers worker`` delivers queued goals."""

from workers.celery import app

__all__ = ["app"]
