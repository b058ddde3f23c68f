"""FastAPI: track a ``signup`` goal when a user signs up, with the asyncio producer.

pip install 'goalqueue[fastapi]' uvicorn
GOALQUEUE_BROKER_URL=redis://localhost:6379/0 GOALQUEUE_SPOOL_DIR=/var/spool/goalqueue \
    uvicorn --app-dir examples fastapi_app:app
"""

from __future__ import annotations

from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel

from goalqueue.integrations.fastapi import Goals, lifespan

app = FastAPI(lifespan=lifespan)  # checks goalqueue's settings at start, closes its client


class Signup(BaseModel):
    email: str
    plan: Literal["free", "pro"] = "free"


def create_user(email: str, plan: str) -> dict[str, str]:
    """Stand-in for your user model."""
    return {"email": email, "plan": plan}


@app.post("/signup", status_code=201)
async def signup(body: Signup, goals: Goals) -> dict[str, object]:
    user = create_user(body.email, body.plan)
    # With GOALQUEUE_SPOOL_DIR set, a Redis outage spools the goal instead of failing the signup.
    event_id = await goals.track_async("signup", metadata={"plan": body.plan})
    return {"user": user, "goal": event_id}
