"""The sandbox as a Starlette app: the goals endpoint, the admin routes, DataFast-shaped errors."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from goalqueue.sandbox.admin import admin_routes
from goalqueue.sandbox.answers import error_response
from goalqueue.sandbox.goals import goal_route
from goalqueue.sandbox.state import SandboxState


def _message(request: Request, exc: HTTPException) -> str:
    if exc.status_code == 404:
        return f"No route for {request.url.path}"
    return "Method not allowed" if exc.status_code == 405 else exc.detail


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's 404 and 405 (with its ``Allow`` header) in DataFast's error shape."""
    assert isinstance(exc, HTTPException)
    return error_response(exc.status_code, _message(request, exc), headers=exc.headers)


def build_app(state: SandboxState) -> Starlette:
    """The sandbox serving ``state`` (HTTP only; uvicorn runs it without lifespan)."""
    routes = [goal_route(state), *admin_routes(state)]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})
