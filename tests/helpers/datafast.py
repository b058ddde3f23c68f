"""DataFast's answers, for an ``httpx.MockTransport`` in place of the real API."""

from __future__ import annotations

from collections.abc import Callable

import httpx

Handler = Callable[[httpx.Request], object]
"""An ``httpx.MockTransport`` handler: returns a response, or a coroutine that gives one."""


class FakeDataFast:
    """A MockTransport handler answering from a script of responses; records every request."""

    def __init__(self, *answers: httpx.Response) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answers:
            return self.answers.pop(0)
        return ok()


def ok() -> httpx.Response:
    return httpx.Response(200, json={"status": "success", "data": [{"eventId": "e" * 24}]})


def error(status: int, message: str = "nope", **headers: str) -> httpx.Response:
    body = {"status": "error", "error": {"code": status, "message": message}}
    return httpx.Response(status, json=body, headers=headers)
