"""How goalqueue's processes log: ``GOALQUEUE_LOG_FORMAT`` ``text`` (the default: the
human-readable lines each process has always written) or ``json`` (one JSON object per line).

A JSON line carries ``time`` (UTC, ISO 8601), ``level``, ``logger`` and ``message``, plus
whichever of :data:`FIELDS` the call passed through ``extra=`` (null where one does not apply,
such as the status of a request that got no answer): the same call writes both
formats, the text line saying in words what the JSON line also has as fields. The worker's
Celery logging takes the format through its ``after_setup_logger`` signals
(:mod:`workers.app`); the node and the CLI through :func:`configure`.

No setting is ever logged whole: the API key travels only in the request's header, and what is
logged of DataFast's answers is their status and a short error.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterable
from typing import TextIO

TEXT = "text"
JSON = "json"
FORMATS = (TEXT, JSON)
FIELDS = ("event_id", "outcome", "reason", "status", "attempt", "duration")
"""The structured fields a log call may pass through ``extra=``."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": _iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            if hasattr(record, name):
                line[name] = getattr(record, name)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    """The formatter of ``log_format`` (``text``: the message alone, as the node and the CLI
    have always written it)."""
    return JsonFormatter() if log_format == JSON else logging.Formatter("%(message)s")


def use(log_format: str, handlers: Iterable[logging.Handler]) -> None:
    """Have ``handlers`` (Celery's, once it has set them up) write ``log_format``; ``text``
    leaves them as they are."""
    if log_format == JSON:
        for handler in handlers:
            handler.setFormatter(JsonFormatter())


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Log to stderr in ``log_format`` from this process's root logger (the node, the CLI)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def say(message: str, stream: TextIO | None = None) -> None:
    """Write ``message`` as a JSON line straight to ``stream`` (stderr by default), as Celery's
    ``safe_say`` writes its plain notices from signal handlers: no logging lock is taken."""
    line = {"time": _iso(time.time()), "level": "WARNING", "logger": "celery", "message": message}
    print(json.dumps(line, ensure_ascii=False), file=stream or sys.__stderr__, flush=True)


def _iso(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"
