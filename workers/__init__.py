"""The worker side of goalqueue: ``celery -A workers worker`` delivers queued goals.

``app`` is the app for the settings in the environment (see :func:`workers.app.load_app`);
``create_app(settings)`` makes one for explicit settings.
"""

from workers.app import create_app, load_app

app = load_app()

__all__ = ["app", "create_app"]
