"""goalqueue: durable delivery of server-side DataFast goals through Celery on Redis.

import goalqueue
event_id = goalqueue.track_goal(visitor_id, "signup", metadata={"plan": "pro"})
"""

from goalqueue.config import Settings
from goalqueue.errors import ConfigError, EnqueueError, GoalQueueError, InvalidGoal
from goalqueue.producer import GoalQueue, track_goal
from goalqueue.web import VISITOR_COOKIE, visitor_id_from_cookies

__all__ = [
    "VISITOR_COOKIE",
    "ConfigError",
    "EnqueueError",
    "GoalQueue",
    "GoalQueueError",
    "InvalidGoal",
    "Settings",
    "track_goal",
    "visitor_id_from_cookies",
]
