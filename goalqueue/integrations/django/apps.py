"""The Django app: goalqueue's settings read from ``settings.GOALQUEUE`` and checked at start.

Add ``"goalqueue.integrations.django"`` to ``INSTALLED_APPS``. When Django starts, the app makes
the process-wide queue (:func:`goalqueue.producer.default_queue`) from the ``GOALQUEUE`` dict
over the environment (the dict wins for the keys it sets; they are the variable names without
``GOALQUEUE_``, e.g. ``{"BROKER_URL": ..., "SPOOL_DIR": ...}``). A bad setting is reported

* by the system check framework, as ``goalqueue.E001``, when ``manage.py`` starts Django
  (``check``, ``runserver``, ``migrate``: one line, as for any check);
* otherwise (gunicorn, uwsgi, uvicorn: Django started by the WSGI or ASGI application) as
  :class:`~django.core.exceptions.ImproperlyConfigured` at start, so the server does not boot.

The message is the same one line ``goalqueue`` commands print.
"""

from __future__ import annotations

import sys
from typing import Any

from django.apps import AppConfig, apps
from django.conf import settings
from django.core import checks
from django.core.exceptions import ImproperlyConfigured

from goalqueue.config import Settings
from goalqueue.errors import ConfigError
from goalqueue.producer import GoalQueue, set_default_queue

PREFIX = "GOALQUEUE_"


class GoalQueueConfig(AppConfig):  # type: ignore[misc]
    name = "goalqueue.integrations.django"
    label = "goalqueue"
    verbose_name = "goalqueue"

    error: ConfigError | None = None
    goalqueue_settings: Settings | None = None

    def ready(self) -> None:
        checks.register(check_settings)
        try:
            self.goalqueue_settings = settings_from_django()
            set_default_queue(GoalQueue(settings=self.goalqueue_settings))
        except ConfigError as exc:
            self.error = exc
            if not _started_by_manage_py():
                raise ImproperlyConfigured(str(exc)) from None


def settings_from_django() -> Settings:
    """goalqueue's settings: ``settings.GOALQUEUE`` over the environment."""
    configured: Any = getattr(settings, "GOALQUEUE", None) or {}
    if not isinstance(configured, dict):
        raise ConfigError(f"settings.GOALQUEUE must be a dict, not {type(configured).__name__}")
    return Settings.from_env(overrides={PREFIX + str(k): v for k, v in configured.items()})


def check_settings(**_: Any) -> list[checks.CheckMessage]:
    """``goalqueue.E001`` for a bad setting, ``goalqueue.W001`` for a deployment without a
    spool (a goal whose enqueue fails after its commit is then only logged)."""
    config = apps.get_app_config(GoalQueueConfig.label)
    assert isinstance(config, GoalQueueConfig)
    if config.error is not None:
        return [checks.Error(str(config.error), id="goalqueue.E001")]
    configured = config.goalqueue_settings
    if configured is not None and not configured.spool_dir:
        return [
            checks.Warning(
                "GOALQUEUE_SPOOL_DIR is not set: a goal Redis cannot take after its transaction "
                "committed is logged, not kept",
                hint="Set GOALQUEUE['SPOOL_DIR'] to a local directory.",
                id="goalqueue.W001",
            )
        ]
    return []


def _started_by_manage_py() -> bool:
    """Whether ``manage.py`` (or ``django-admin``) is starting Django: its system checks then
    report a bad setting, and a command that needs no goals (``migrate``) can still run."""
    from django.core.management import ManagementUtility

    execute = ManagementUtility.execute.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is execute:
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False
