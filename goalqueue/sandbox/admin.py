"""The admin endpoints under ``/_sandbox/``: inspect what arrived, change faults, key and visitors.

Each handler takes the state, the query and the JSON body and returns the JSON answer; a
ValueError becomes a 400 with its message.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from goalqueue.sandbox.answers import SandboxJSON, error_response
from goalqueue.sandbox.state import SandboxState

ADMIN_PREFIX = "/_sandbox/"

Query = Mapping[str, str]
Body = Mapping[str, Any]
AdminHandler = Callable[[SandboxState, Query, Body], dict[str, Any]]


def _string_list(value: Any, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{name} must be a list of non-empty strings")
    return value


def _health(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    return {"status": "ok"}


def _events(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    status = query.get("status")
    if status is not None and not status.isdigit():
        raise ValueError("status must be an integer")
    events = state.events(None if status is None else int(status))
    return {"events": [event.to_dict() for event in events]}


def _stats(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    return state.stats().to_dict()


def _faults(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    return {"faults": state.faults.to_dict()}


def _set_faults(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    return {"faults": state.set_faults(body).to_dict()}


def _clear_faults(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    state.clear_faults()
    return {"faults": state.faults.to_dict()}


def _visitors(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    mode = body.get("mode")
    if mode not in (None, "any", "registered"):
        raise ValueError('mode must be "any" or "registered"')
    state.register_visitors(_string_list(body.get("visitors", []), "visitors"), mode)
    return {"mode": state.visitor_mode, "visitors": len(state.visitors)}


def _bots(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    state.add_bots(_string_list(body.get("visitors", []), "visitors"))
    return {"bots": len(state.bots)}


def _key(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    key = body.get("key")
    if not isinstance(key, str) or not key:
        raise ValueError("key must be a non-empty string")
    state.key = key
    return {"status": "ok"}


def _reset(state: SandboxState, query: Query, body: Body) -> dict[str, Any]:
    state.reset()
    return {"status": "ok"}


ADMIN_ROUTES: dict[str, dict[str, AdminHandler]] = {
    "health": {"GET": _health},
    "events": {"GET": _events},
    "stats": {"GET": _stats},
    "faults": {"GET": _faults, "POST": _set_faults, "DELETE": _clear_faults},
    "visitors": {"POST": _visitors},
    "bots": {"POST": _bots},
    "key": {"POST": _key},
    "reset": {"POST": _reset},
}
"""Path under ``/_sandbox/`` -> method -> handler."""


def _json_object(raw: bytes) -> Body:
    value = json.loads(raw) if raw.strip() else {}
    if not isinstance(value, dict):
        raise ValueError("body must be a JSON object")
    return value


def _endpoint(state: SandboxState, methods: Mapping[str, AdminHandler]) -> Callable[[Request], Any]:
    async def admin(request: Request) -> Response:
        handler = methods["GET" if request.method == "HEAD" else request.method]
        query = {name: value for name, value in request.query_params.items() if value}
        try:
            payload = handler(state, query, _json_object(await request.body()))
        except ValueError as exc:
            return error_response(400, str(exc))
        return SandboxJSON(payload)

    return admin


def admin_routes(state: SandboxState) -> list[Route]:
    """One route per admin path, serving ``state``."""
    return [
        Route(ADMIN_PREFIX + path, _endpoint(state, methods), methods=list(methods))
        for path, methods in ADMIN_ROUTES.items()
    ]
