"""The one goal every benchmark sends, so that every row moves the same bytes."""

from __future__ import annotations

import uuid
from typing import Any

API_KEY = "df_sandbox"
GOAL_NAME = "checkout_completed"
METADATA = {"plan": "pro", "amount": "49"}


def visitor_id() -> str:
    """A ``datafast_visitor_id`` cookie value: a UUID, as DataFast's script sets it."""
    return str(uuid.uuid4())


def goal_fields(index: int = 0) -> dict[str, Any]:
    """Keyword arguments for ``track_goal``/``track_goals`` (``index`` is unused but keeps the
    call sites honest about producing distinct goals)."""
    del index
    return {"visitor_id": visitor_id(), "name": GOAL_NAME, "metadata": dict(METADATA)}


def goal_body(visitor: str | None = None) -> dict[str, Any]:
    """The JSON body POSTed to DataFast's goals endpoint for this goal."""
    return {
        "datafast_visitor_id": visitor or visitor_id(),
        "name": GOAL_NAME,
        "metadata": dict(METADATA),
    }
