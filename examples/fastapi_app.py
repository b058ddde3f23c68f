"""FastAPI: track a ``signup`` goal when a user signs up.

pip install 'goalqueue[fastapi]' uvicorn
GOALQUEUE_BROKER_URL=redis://localhost:6379/0 uvicorn --app-dir examples fastapi_app:app
"""

from __future__ import annotations

import logging
from typing import Literal

from fastapi import FastAPI
from pydantic import BaseModel

from goalqueue import EnqueueError
from goalqueue.integrations.fastapi import Goals

app = FastAPI()


class Signup(BaseModel):
    email: str
    plan: Literal["free", "pro"] = "free"


def create_user(email: str, plan: str) -> dict[str, str]:
    """Stand-in for your user model."""
    return {"email": email, "plan": plan}


@app.post("/signup", status_code=201)
async def signup(body: Signup, goals: Goals) -> dict[str, object]:
    user = create_user(body.email, body.plan)
    try:
        event_id = await goals.track_async("signup", metadata={"plan": body.plan})
    except EnqueueError:  # Redis is down: analytics must not fail the signup
        logging.getLogger(__name__).exception("signup goal not tracked")
        event_id = None
    return {"user": user, "goal": event_id}
