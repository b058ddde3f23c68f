"""A minimal, fast stand-in for DataFast's goals endpoint, for throughput benchmarks.

The project's sandbox validates every goal and records it in full; under pure-Python uvicorn
(h11, no uvloop) that costs more CPU per request than the workers under test spend, on the
same two cores. This server does the least an HTTP/1.1 keep-alive endpoint can: read a
request, answer ``200`` with DataFast's success body after ``latency_ms``, and remember when
each goal arrived and its ``Idempotency-Key``.

    python -m benchmarks.endpoint [--port 0] [--latency-ms 50]

prints ``LISTENING <port>`` once bound. Admin routes (JSON):

    GET  /_bench/stats    {"count": n, "first": t0, "last": tn}
    GET  /_bench/events   {"events": [[arrival time, idempotency key], ...]}
    POST /_bench/config   {"latency_ms": 50}
    POST /_bench/reset    forget recorded goals
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sys
import time
from typing import Any

GOALS_PATH = b"/api/v1/goals"
ADMIN_PREFIX = b"/_bench/"
_HEADER_END = b"\r\n\r\n"
_MAX_HEADER = 64 * 1024


class State:
    """What the endpoint remembers: the latency to add and every accepted goal."""

    def __init__(self, latency_ms: float) -> None:
        self.latency = latency_ms / 1000
        self.times: list[float] = []
        self.keys: list[str] = []
        self.served = 0

    def record(self, key: str) -> None:
        self.times.append(time.time())
        self.keys.append(key)

    def admin(self, method: bytes, path: bytes, body: bytes) -> dict[str, Any]:
        route = path[len(ADMIN_PREFIX) :].split(b"?")[0]
        if route == b"stats":
            times = self.times
            return {
                "count": len(times),
                "first": times[0] if times else None,
                "last": times[-1] if times else None,
            }
        if route == b"events":
            return {"events": list(zip(self.times, self.keys, strict=True))}
        if route == b"config" and method == b"POST":
            self.latency = float(json.loads(body or b"{}").get("latency_ms", 0)) / 1000
            return {"latency_ms": self.latency * 1000}
        if route == b"reset" and method == b"POST":
            self.times, self.keys = [], []
            return {"status": "ok"}
        raise KeyError(route)


def _response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 "
        + status
        + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body
    )


def _goal_response() -> bytes:
    event_id = f"{int(time.time()) & 0xFFFFFFFF:08x}{os.urandom(8).hex()}"
    body = json.dumps(
        {
            "status": "success",
            "data": [{"message": "Custom event created successfully", "eventId": event_id}],
        },
        separators=(",", ":"),
    ).encode()
    return _response(b"200 OK", body)


class HttpProtocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive and in-order answers; enough for httpx and nothing more."""

    def __init__(self, state: State, loop: asyncio.AbstractEventLoop) -> None:
        self.state = state
        self.loop = loop
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        # Answers must leave in request order even when latency delays them.
        self.pending: list[list[bytes | None]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(_HEADER_END)
            if end < 0:
                if len(self.buffer) > _MAX_HEADER and self.transport is not None:
                    self.transport.close()
                return
            head = self.buffer[:end]
            method, path, headers = _parse_head(head)
            length = int(headers.get(b"content-length", b"0"))
            start = end + len(_HEADER_END)
            if len(self.buffer) < start + length:
                return
            body = self.buffer[start : start + length]
            self.buffer = self.buffer[start + length :]
            self._handle(method, path, headers, body)

    def _handle(self, method: bytes, path: bytes, headers: dict[bytes, bytes], body: bytes) -> None:
        slot: list[bytes | None] = [None]
        self.pending.append(slot)
        if path.split(b"?")[0] == GOALS_PATH and method == b"POST":
            self.state.served += 1
            key = headers.get(b"idempotency-key", b"").decode("latin-1")
            if self.state.latency > 0:
                self.loop.call_later(self.state.latency, self._answer_goal, slot, key)
            else:
                self._answer_goal(slot, key)
            return
        if path.startswith(ADMIN_PREFIX):
            try:
                payload = self.state.admin(method, path, body)
            except (KeyError, ValueError):
                slot[0] = _response(b"404 Not Found", b"{}")
            else:
                slot[0] = _response(b"200 OK", json.dumps(payload).encode())
        else:
            slot[0] = _response(b"404 Not Found", b"{}")
        self._flush()

    def _answer_goal(self, slot: list[bytes | None], key: str) -> None:
        self.state.record(key)
        slot[0] = _goal_response()
        self._flush()

    def _flush(self) -> None:
        while self.pending and self.pending[0][0] is not None:
            answer = self.pending.pop(0)[0]
            if self.transport is not None and not self.transport.is_closing():
                assert answer is not None
                self.transport.write(answer)


def _parse_head(head: bytes) -> tuple[bytes, bytes, dict[bytes, bytes]]:
    lines = head.split(b"\r\n")
    method, path, _ = lines[0].split(b" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return method, path, headers


async def _serve(port: int, latency_ms: float) -> None:
    loop = asyncio.get_running_loop()
    state = State(latency_ms)
    server = await loop.create_server(
        lambda: HttpProtocol(state, loop), "127.0.0.1", port, backlog=2048
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"LISTENING {bound}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    asyncio.run(_serve(args.port, args.latency_ms))
    sys.exit(0)


if __name__ == "__main__":
    main()
