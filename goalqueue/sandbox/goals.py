"""``POST /api/v1/goals``: injected faults first, then DataFast's rules; every request recorded."""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from goalqueue.sandbox.answers import Refusal, SandboxJSON, refusal_response
from goalqueue.sandbox.faults import OddAnswer, check_faults
from goalqueue.sandbox.rules import check_auth, check_goal, check_visitor
from goalqueue.sandbox.state import RecordedEvent, SandboxState

GOALS_PATH = "/api/v1/goals"

HANG_SECONDS = 300.0
"""How long a request hangs under the ``hang`` fault unless the fault is cleared first."""
_HANG_POLL_SECONDS = 0.02


async def _delay(state: SandboxState) -> None:
    """Apply the latency and hang faults without blocking the event loop."""
    if state.faults.latency_ms > 0:
        await asyncio.sleep(state.faults.latency_ms / 1000)
    if state.faults.hang:
        deadline = time.monotonic() + HANG_SECONDS
        while state.faults.hang and time.monotonic() < deadline:
            await asyncio.sleep(_HANG_POLL_SECONDS)


def _new_event_id() -> str:
    """A 24-hex id shaped like a MongoDB ObjectId (4-byte time, then random)."""
    return f"{int(time.time()) & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"


def _parse_json(raw: bytes) -> tuple[Any, bool]:
    """(value, True) for valid JSON; otherwise (raw text or None, False)."""
    try:
        return json.loads(raw), True
    except ValueError:
        return (raw.decode("utf-8", "replace") or None), False


def _judge(
    state: SandboxState, authorization: str | None, website_id: str | None, raw: bytes
) -> tuple[Any, Refusal | None]:
    """The body, and the refusal to answer with (None to accept) after faults and rules."""
    body, is_json = _parse_json(raw)
    try:
        check_faults(state.faults)
        check_auth(state, authorization, website_id)
        if not is_json:
            raise Refusal(400, "Request body is not valid JSON")
        check_visitor(state, check_goal(body))
    except Refusal as refusal:
        return body, refusal
    return body, None


def _record(
    state: SandboxState, request: Request, body: Any, status: int, event_id: str | None
) -> None:
    key = request.headers.get("idempotency-key")
    website_id = _website_id(request)
    state.record(RecordedEvent(time.time(), status, body, key, website_id, event_id))


def _website_id(request: Request) -> str | None:
    return request.query_params.get("websiteId") or None


def _accepted(event_id: str, truncated: bool = False) -> Response:
    data = [{"message": "Custom event created successfully", "eventId": event_id}]
    answer = SandboxJSON({"status": "success", "data": data})
    if not truncated:
        return answer
    return Response(answer.body[: len(answer.body) // 2], media_type="application/json")


# What answers in front of DataFast under the odd_answer fault; DataFast never sees the goal.
_FRONT_ANSWERS = {
    OddAnswer.HTML: lambda: Response(
        "<!doctype html><html><head><title>Sign in to the network</title></head>"
        "<body><p>Please log in to continue.</p></body></html>",
        media_type="text/html",
    ),
    OddAnswer.NO_CONTENT: lambda: Response(status_code=204),
    OddAnswer.REDIRECT: lambda: Response(
        status_code=301, headers={"Location": "https://datafast.example/api/v1/goals"}
    ),
}


class CountInFlight:
    """Counts a goal request in flight from when it reaches its route until the last part of
    its answer is handed to the server.

    Route middleware, so the count also covers the sending of the answer's head, which Starlette
    does after the endpoint returns; refusals and hung requests count like the others. The count
    ends just before the last part goes, not after: a client can read an answer before the
    server's send returns, and whoever sees the answer must find it no longer in flight.
    """

    def __init__(self, app: ASGIApp, state: SandboxState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with self.state.answering() as answered:

            async def send_counted(message: Message) -> None:
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    answered()
                await send(message)

            await self.app(scope, receive, send_counted)


def goal_route(state: SandboxState) -> Route:
    """The goals endpoint serving ``state``."""

    async def post_goal(request: Request) -> Response:
        authorization = request.headers.get("authorization")
        raw = await request.body()
        await _delay(state)
        odd = state.faults.odd_answer
        # Record before answering: whoever sees the answer also finds the record.
        if odd in _FRONT_ANSWERS:
            front = _FRONT_ANSWERS[odd]()
            _record(state, request, _parse_json(raw)[0], front.status_code, None)
            return front
        body, refusal = _judge(state, authorization, _website_id(request), raw)
        if refusal is not None:
            _record(state, request, body, refusal.status, None)
            return refusal_response(refusal)
        event_id = _new_event_id()
        _record(state, request, body, 200, event_id)
        return _accepted(event_id, truncated=odd is OddAnswer.TRUNCATED)

    counted = [Middleware(CountInFlight, state=state)]
    return Route(GOALS_PATH, post_goal, methods=["POST"], middleware=counted)
