"""A micro-batch prototype, measured without touching ``workers/`` (experiment only).

Every ``goalqueue.deliver`` task also takes up to ``BENCH_BATCH - 1`` more goal messages
straight off the ``goalqueue`` list (one Lua call: ``RPOP key count`` and parse), and delivers
the whole batch concurrently before returning, so Celery acks the carrier message only after
every goal in the batch has its outcome recorded in the ledger. The extra messages never enter
kombu's unacked bookkeeping: if the worker dies mid-batch, the reconciler re-queues their
ledger entries (exactly as it does for a message lost after kombu's BRPOP).

``BENCH_BATCH_MODE``:

* ``simple`` - each goal runs the unchanged ``Deliverer.deliver`` (TAKE, POST, settle) in a
  per-process thread pool: only Celery's per-message cost is shared.
* ``pipelined`` (default) - one pipelined round trip TAKEs the batch, the POSTs run
  concurrently, one pipelined round trip settles every delivered goal; any goal that is not a
  plain "send" or not delivered falls back to the unchanged code path.

``BENCH_HTTP``: ``threads`` (default; one sync httpx client shared by a per-process thread
pool), ``thread-clients`` (each pool thread its own one-connection client: httpcore's pool
costs O(connections x waiting requests) per request, see encode/httpcore#1035) or ``async``
(one asyncio loop thread per process with ``httpx.AsyncClient``).

``BENCH_LEAN=1`` also applies :mod:`benchmarks.experiments.lean` (no task events, kombu
reusing its bookkeeping client).

    --variant "BENCH_BATCH=16 -c 4 -A benchmarks.experiments.microbatch"
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from goalqueue import keys
from goalqueue.event import GoalEvent
from workers.celery import app, runtime, settings
from workers.client import USER_AGENT, build_client, post_goal
from workers.delivery import Deliverer
from workers.policy import RETRY_AFTER_MAX_SECONDS, Outcome, classify

if os.environ.get("BENCH_LEAN"):
    from benchmarks.experiments import lean  # noqa: F401

BATCH = int(os.environ.get("BENCH_BATCH", "16"))
MODE = os.environ.get("BENCH_BATCH_MODE", "pipelined")
HTTP = os.environ.get("BENCH_HTTP", "threads")

# ARGV: how many. Pops up to that many messages, returns {event id, seq, ...}; anything that
# is not a goalqueue.deliver message goes back on the consuming end, untouched.
POP_MORE = """
local popped = redis.call('RPOP', KEYS[1], ARGV[1])
if not popped then return {} end
local out = {}
for _, message in ipairs(popped) do
  local ok, envelope = pcall(cjson.decode, message)
  local args = nil
  if ok and type(envelope) == 'table' and type(envelope['headers']) == 'table'
     and envelope['headers']['task'] == ARGV[2] then
    local ok2, body = pcall(cjson.decode, envelope['body'])
    if ok2 and type(body) == 'table' and type(body[1]) == 'table' then args = body[1] end
  end
  if args and type(args[1]) == 'string' and type(args[2]) == 'number' then
    table.insert(out, args[1])
    table.insert(out, args[2])
  else
    redis.call('RPUSH', KEYS[1], message)
  end
end
return out
"""

_original_deliver = Deliverer.deliver
_lock = threading.Lock()
_state: dict[str, Any] = {}


def _pool() -> tuple[ThreadPoolExecutor, httpx.Client]:
    """A thread pool and a sync client sized for every goal of every concurrent batch."""
    with _lock:
        if _state.get("pid") != os.getpid():
            limit = max(BATCH * runtime.pool_size, 4)
            _state.update(
                pid=os.getpid(),
                pool=ThreadPoolExecutor(limit),
                client=build_client(settings, limit),
            )
        return _state["pool"], _state["client"]


def _loop() -> tuple[asyncio.AbstractEventLoop, httpx.AsyncClient]:
    with _lock:
        if _state.get("loop_pid") != os.getpid():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, daemon=True, name="bench-http").start()
            limit = BATCH * runtime.pool_size
            client = httpx.AsyncClient(
                headers={"Authorization": f"Bearer {settings.api_key}", "User-Agent": USER_AGENT},
                timeout=httpx.Timeout(settings.http_timeout_seconds),
                limits=httpx.Limits(max_connections=limit, max_keepalive_connections=limit),
            )
            _state.update(loop_pid=os.getpid(), loop=loop, aclient=client)
        return _state["loop"], _state["aclient"]


def _pop_more(deliverer: Deliverer, count: int) -> list[tuple[str, int]]:
    script = _state.get("pop_script")
    if script is None:
        script = _state["pop_script"] = deliverer.redis.register_script(POP_MORE)
    flat = script(keys=[keys.QUEUE], args=[count, keys.TASK_NAME])
    return [(str(flat[i]), int(flat[i + 1])) for i in range(0, len(flat), 2)]


def _post_all(deliverer: Deliverer, events: list[GoalEvent]) -> list[Any]:
    url = settings.api_url
    if HTTP == "async":
        loop, client = _loop()

        async def post(event: GoalEvent) -> Any:
            try:
                return await client.post(
                    url, json=event.api_body(), headers={"Idempotency-Key": event.event_id}
                )
            except httpx.HTTPError as exc:
                return exc

        async def post_batch() -> list[Any]:
            return list(await asyncio.gather(*(post(e) for e in events)))

        return asyncio.run_coroutine_threadsafe(post_batch(), loop).result()
    pool, shared = _pool()
    if HTTP == "thread-clients":
        return list(pool.map(lambda event: post_goal(_thread_client(), url, event), events))
    return list(pool.map(lambda event: post_goal(shared, url, event), events))


_local = threading.local()


def _thread_client() -> httpx.Client:
    client: httpx.Client | None = getattr(_local, "client", None)
    if client is None:
        client = _local.client = build_client(settings, 1)
    return client


def _deliver_pipelined(deliverer: Deliverer, pairs: list[tuple[str, int]]) -> None:
    now = deliverer.clock()
    args = [settings.key_fingerprint, deliverer.probe_lease_ms]
    with deliverer.redis.pipeline(transaction=False) as pipe:
        for event_id, seq in pairs:
            deliverer.scripts.take(
                [seq, event_id, now, *args], client=pipe, DELIVERED=keys.delivered(event_id)
            )
        replies = pipe.execute()
    sends: list[tuple[str, GoalEvent]] = []
    fallback: list[tuple[str, int]] = []
    for (event_id, seq), reply in zip(pairs, replies, strict=True):
        if reply[0] == "gone":
            continue
        try:
            event = GoalEvent.from_json(reply[1])
        except ValueError:
            fallback.append((event_id, seq))
            continue
        if reply[0] == "send" and now - event.enqueued_at <= settings.max_age_seconds:
            sends.append((reply[1], event))
        else:
            fallback.append((event_id, seq))
    results = _post_all(deliverer, [event for _, event in sends])
    ttl = int(settings.delivered_ttl_seconds * 1000)
    later: list[Callable[[], object]] = []
    with deliverer.redis.pipeline(transaction=False) as pipe:
        for (entry, event), result in zip(sends, results, strict=True):
            verdict = classify(result, now=deliverer.clock(), max_wait=RETRY_AFTER_MAX_SECONDS)
            if verdict.outcome is Outcome.DELIVERED:
                deliverer.scripts.delivered(
                    [entry, verdict.remote_id or "", ttl],
                    client=pipe,
                    DELIVERED=keys.delivered(event.event_id),
                )
            else:
                attempted = event.attempted(now, verdict.status_code, verdict.error)
                later.append(
                    lambda e=entry, a=attempted, v=verdict: deliverer._settle(
                        e, a, v, probe=False, streak=0
                    )
                )
        pipe.execute()
    for settle in later:
        settle()
    for event_id, seq in fallback:
        _original_deliver(deliverer, event_id, seq)


def deliver_batch(self: Deliverer, event_id: str, seq: int) -> str:
    pairs = [(event_id, seq), *(_pop_more(self, BATCH - 1) if BATCH > 1 else [])]
    if MODE == "simple":
        self.http = _pool()[1]  # the runtime's client has only `concurrency` connections
        futures = [_pool()[0].submit(_original_deliver, self, e, s) for e, s in pairs[1:]]
        outcome = _original_deliver(self, event_id, seq)
        for future in futures:
            future.result()
        return f"{outcome} (+{len(futures)})"
    _deliver_pipelined(self, pairs)
    return f"batch of {len(pairs)}"


Deliverer.deliver = deliver_batch  # type: ignore[method-assign]

__all__ = ["app"]
