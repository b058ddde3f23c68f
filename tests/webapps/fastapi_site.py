"""A FastAPI app on the asyncio producer: ``uvicorn tests.webapps.fastapi_site:app``."""

from __future__ import annotations

from fastapi import FastAPI

from goalqueue.integrations.fastapi import Goals, lifespan

app = FastAPI(lifespan=lifespan)


@app.post("/signup", status_code=201)
async def signup(goals: Goals) -> dict[str, str | None]:
    return {"goal": await goals.track_async("signup", metadata={"plan": "pro"})}
