"""A web app's module that uses every public name of goalqueue, checked by ``mypy --strict``
against the installed package (tests/test_install.py): the package ships ``py.typed``."""

from __future__ import annotations

import asyncio
import uuid

import goalqueue
from goalqueue.testing import GoalRecorder, TrackedGoal, recording

VISITOR = "a3ab2331-989f-4cfa-91c6-2461c9e3c6bd"


def settings() -> goalqueue.Settings:
    return goalqueue.Settings.from_env({"GOALQUEUE_BROKER_URL": "redis://localhost:6379/0"})


def track(queue: goalqueue.GoalQueue) -> list[str]:
    order: uuid.UUID = uuid.uuid5(uuid.NAMESPACE_URL, "order-1")
    try:
        one: str = queue.track_goal(VISITOR, "signup", metadata={"plan": "pro"})
        many: list[str] = queue.track_goals([{"visitor_id": VISITOR, "name": "purchase"}])
        again: str = goalqueue.track_goal(VISITOR, "purchase", event_id=str(order))
        bulk: list[str] = goalqueue.track_goals([{"visitor_id": VISITOR, "name": "upgrade"}])
    except goalqueue.InvalidGoal as exc:
        problems: dict[str, list[str]] = exc.errors
        return list(problems)
    except goalqueue.MaybeEnqueued as exc:
        retry: list[str] = exc.unconfirmed
        return retry
    except goalqueue.NotEnqueued as exc:
        confirmed: list[str] = exc.enqueued
        return confirmed
    except (goalqueue.EnqueueError, goalqueue.ConfigError, goalqueue.GoalQueueError):
        return []
    return [one, *many, again, *bulk]


async def track_async() -> list[str]:
    async with goalqueue.AsyncGoalQueue(settings=settings()) as queue:
        one: str = await queue.track_goal(VISITOR, "signup")
        many: list[str] = await queue.track_goals([{"visitor_id": VISITOR, "name": "x"}])
    single: str = await goalqueue.atrack_goal(VISITOR, "signup")
    bulk: list[str] = await goalqueue.atrack_goals([{"visitor_id": VISITOR, "name": "y"}])
    return [one, *many, single, *bulk]


def visitor(cookies: dict[str, str]) -> str | None:
    assert goalqueue.VISITOR_COOKIE == "datafast_visitor_id"
    return goalqueue.visitor_id_from_cookies(cookies)


def recorded() -> list[TrackedGoal]:
    with recording() as recorder:
        track(goalqueue.GoalQueue(settings=settings()))
        asyncio.run(track_async())
    checked: GoalRecorder = recorder
    goal: TrackedGoal = checked.assert_tracked("signup", visitor_id=VISITOR)
    return [goal, *checked.goals]
