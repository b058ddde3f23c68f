"""How the sandbox answers: DataFast's JSON bodies, and the refusal that ends a goal request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from starlette.responses import JSONResponse

RetryAfter = int | str
"""A ``Retry-After`` value: whole seconds, or a string sent verbatim (e.g. an HTTP-date)."""


class Refusal(Exception):
    """Ends a goal request early with an error answer."""

    def __init__(self, status: int, message: str, retry_after: RetryAfter | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after


class SandboxJSON(JSONResponse):
    """Compact JSON that, unlike Starlette's default, also renders what ``json.loads`` accepted.

    Recorded bodies are shown back as received: they may hold NaN or lone surrogates.
    """

    def render(self, content: Any) -> bytes:
        return json.dumps(content, separators=(",", ":")).encode()


def error_response(
    status: int,
    message: str,
    retry_after: RetryAfter | None = None,
    headers: Mapping[str, str] | None = None,
) -> SandboxJSON:
    """DataFast's error body, with ``Retry-After`` when given."""
    extra = dict(headers or {})
    if retry_after is not None:
        extra["Retry-After"] = str(retry_after)
    payload = {"status": "error", "error": {"code": status, "message": message}}
    return SandboxJSON(payload, status, headers=extra)


def refusal_response(refusal: Refusal) -> SandboxJSON:
    """The answer a refusal calls for."""
    return error_response(refusal.status, refusal.message, refusal.retry_after)
