"""goalqueue: durable delivery of server-side DataFast goals through Celery on Redis.

import goalqueue
event_id = goalqueue.track_goal(visitor_id, "signup", metadata={"plan": "pro"})

From an event loop: ``await goalqueue.atrack_goal(...)``, or an :class:`AsyncGoalQueue`.
"""

from goalqueue.asyncio import AsyncGoalQueue, atrack_goal, atrack_goals
from goalqueue.config import Settings
from goalqueue.errors import (
    ConfigError,
    EnqueueError,
    GoalQueueError,
    InvalidGoal,
    MaybeEnqueued,
    NotEnqueued,
)
from goalqueue.producer import GoalQueue, track_goal, track_goals
from goalqueue.web import VISITOR_COOKIE, visitor_id_from_cookies

__all__ = [
    "VISITOR_COOKIE",
    "AsyncGoalQueue",
    "ConfigError",
    "EnqueueError",
    "GoalQueue",
    "GoalQueueError",
    "InvalidGoal",
    "MaybeEnqueued",
    "NotEnqueued",
    "Settings",
    "atrack_goal",
    "atrack_goals",
    "track_goal",
    "track_goals",
    "visitor_id_from_cookies",
]
