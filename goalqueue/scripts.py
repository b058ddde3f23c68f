"""The Lua scripts that move a goal between queue, ledger and waiting set atomically.

Each script is one Redis call, so many producers and workers can run them at once without a
goal being lost or doubled. Every script that puts a goal on the queue uses the same ``push``:
take the next sequence number, (re)score the goal's ledger entry with it, and LPUSH the Celery
message (see :mod:`goalqueue.message`). The queue is FIFO, so once a worker has started on
sequence N, every goal with a smaller sequence has left the queue: that is what lets the
reconciler find goals lost between kombu's BRPOP and its unacked bookkeeping without scanning.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from redis import Redis
from redis.commands.core import Script

from goalqueue import keys

_PUSH = """
local function push(template, eid, payload)
  local seq = redis.call('INCR', KEYS_SEQ)
  redis.call('ZADD', KEYS_LEDGER, seq, payload)
  redis.call('LPUSH', KEYS_QUEUE, string.format(template, seq, eid, seq))
  return seq
end
local function event_id(payload)
  local ok, event = pcall(cjson.decode, payload)
  if ok and type(event) == 'table' and type(event['i']) == 'string' then return event['i'] end
  return 'unreadable'
end
"""

# ARGV: template, then (event id, payload) pairs. Returns the last sequence number.
ENQUEUE = """
local last = 0
for i = 2, #ARGV, 2 do last = push(ARGV[1], ARGV[i], ARGV[i + 1]) end
return last
"""

# ARGV: now, key fingerprint, probe lease (ms), how many more to claim, task name,
# delivered-marker key prefix, then (event id, seq) of the goals the task was given.
# Claims up to that many more goal messages off the consuming end of the queue (anything else
# goes back where it was, for kombu's consumer to deal with: see workers.transport), then takes
# every goal. Returns five fields per goal: event id, seq, verdict, ledger entry, pause streak;
# the verdict is one of
#   gone  - the entry was settled or re-queued under another sequence: drop this copy
#   done  - the goal was already delivered: settle without sending
#   hold  - delivery is paused for everyone: park the goal in the waiting set
#   probe - the pause is over and this goal is the one allowed to test the API
#   send  - deliver it
# The delivered markers' keys are built here from the prefix, as a claimed goal's id is only
# known once it is popped.
TAKE = """
local now, prefix = tonumber(ARGV[1]), ARGV[6]
local goals = {}
for i = 7, #ARGV, 2 do table.insert(goals, {ARGV[i], tonumber(ARGV[i + 1])}) end
local popped = tonumber(ARGV[4]) > 0 and redis.call('RPOP', KEYS_QUEUE, ARGV[4]) or {}
for _, message in ipairs(popped) do
  local eid, args = nil, nil
  local ok, envelope = pcall(cjson.decode, message)
  if ok and type(envelope) == 'table' and type(envelope['headers']) == 'table'
     and envelope['headers']['task'] == ARGV[5] and type(envelope['body']) == 'string' then
    eid = envelope['headers']['id']
    local ok_body, body = pcall(cjson.decode, envelope['body'])
    if ok_body and type(body) == 'table' and type(body[1]) == 'table' then args = body[1] end
  end
  if args and #args == 2 and type(args[1]) == 'string' then eid = args[1]; args = {args[2]} end
  if type(eid) == 'string' and args and #args == 1 and type(args[1]) == 'number' then
    table.insert(goals, {eid, args[1]})
  else
    redis.call('RPUSH', KEYS_QUEUE, message)
  end
end
local highest = tonumber(redis.call('GET', KEYS_TAKEN) or '0')
local pause = redis.call('HMGET', KEYS_PAUSE, 'until', 'reason', 'key', 'streak')
if pause[1] and pause[2] == 'auth' and pause[3] ~= ARGV[2] then
  redis.call('DEL', KEYS_PAUSE, KEYS_PROBE)
  pause = {}
end
local replies = {}
for _, goal in ipairs(goals) do
  local eid, seq = goal[1], goal[2]
  if seq > highest then highest = seq; redis.call('SET', KEYS_TAKEN, seq) end
  local entry = redis.call('ZRANGEBYSCORE', KEYS_LEDGER, seq, seq)[1]
  local verdict, streak = 'send', ''
  if not entry then
    verdict, entry = 'gone', ''
  elseif redis.call('EXISTS', prefix .. eid) == 1 then
    verdict = 'done'
  elseif pause[1] then
    local probe = redis.call('GET', KEYS_PROBE)
    streak = pause[4] or ''
    if probe == eid then
      verdict = 'probe'
    elseif not probe and now >= tonumber(pause[1]) then
      redis.call('SET', KEYS_PROBE, eid, 'PX', ARGV[3])
      verdict = 'probe'
    else
      verdict = 'hold'
    end
  end
  for _, field in ipairs({eid, seq, verdict, entry, streak}) do table.insert(replies, field) end
end
return replies
"""

# ARGV: template, now, limit, key fingerprint, probe lease (ms). Returns how many were moved.
SWEEP = """
local now, limit = tonumber(ARGV[2]), tonumber(ARGV[3])
local pause = redis.call('HMGET', KEYS_PAUSE, 'until', 'reason', 'key')
local probing = false
if pause[1] and pause[2] == 'auth' and pause[3] ~= ARGV[4] then
  redis.call('DEL', KEYS_PAUSE, KEYS_PROBE)
elseif pause[1] then
  if now < tonumber(pause[1]) or redis.call('EXISTS', KEYS_PROBE) == 1 then return 0 end
  probing, limit = true, 1
end
local due = redis.call('ZRANGEBYSCORE', KEYS_WAITING, '-inf', now, 'LIMIT', 0, limit)
for _, payload in ipairs(due) do
  local eid = event_id(payload)
  if probing then redis.call('SET', KEYS_PROBE, eid, 'PX', ARGV[5]) end
  redis.call('ZREM', KEYS_WAITING, payload)
  push(ARGV[1], eid, payload)
end
return #due
"""

# ARGV: template, now, threshold (s), limit. Returns how many lost goals were re-queued.
RECONCILE = """
local now = tonumber(ARGV[2])
local taken = redis.call('GET', KEYS_TAKEN)
if taken then redis.call('ZADD', KEYS_CHECKPOINTS, 'NX', now, taken) end
local seen = redis.call('ZREVRANGEBYSCORE', KEYS_CHECKPOINTS, now - tonumber(ARGV[3]), '-inf',
                        'WITHSCORES', 'LIMIT', 0, 1)
if #seen == 0 then return 0 end
redis.call('ZREMRANGEBYSCORE', KEYS_CHECKPOINTS, '-inf', '(' .. seen[2])
local lost = redis.call('ZRANGEBYSCORE', KEYS_LEDGER, '-inf', seen[1],
                        'LIMIT', 0, tonumber(ARGV[4]))
for _, payload in ipairs(lost) do push(ARGV[1], event_id(payload), payload) end
return #lost
"""

# ARGV: template, event id, payload. Enqueues a dead letter's event if it is still dead;
# returns its new sequence number, or 0 when another replay took it first.
REPLAY = """
if redis.call('HDEL', KEYS_DEAD, ARGV[2]) == 0 then return 0 end
return push(ARGV[1], ARGV[2], ARGV[3])
"""

# ARGV: delivered-marker TTL (ms), delivered-marker key prefix, then four fields per outcome:
#   delivered, entry, event id, DataFast's event id  - mark delivered (counted once, by whichever
#                                                      copy first sets the marker)
#   bury,      entry, event id, dead letter JSON     - dead-letter it
#   park,      entry, due time, event JSON           - put it in the waiting set
#   forget,    entry, '', ''                         - it was delivered before: drop the entry
# Each acts only if this copy still owns the ledger entry: when two copies of a goal race (a slow
# worker and a re-queued copy), exactly one of them moves it on. Returns how many it owned.
SETTLE = """
local owned = 0
for i = 3, #ARGV, 4 do
  local kind, entry, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local mine = redis.call('ZREM', KEYS_LEDGER, entry)
  owned = owned + mine
  if kind == 'delivered' then
    if redis.call('SET', ARGV[2] .. a, b, 'PX', ARGV[1], 'NX') then
      redis.call('INCR', KEYS_COUNT)
    end
  elseif mine == 1 and kind == 'bury' then
    redis.call('HSET', KEYS_DEAD, a, b)
  elseif mine == 1 and kind == 'park' then
    redis.call('ZADD', KEYS_WAITING, a, b)
  end
end
return owned
"""


class Scripts:
    """The scripts above, registered on one Redis client, with the keys each one touches."""

    def __init__(self, redis: Redis) -> None:
        self.enqueue = _register(redis, ENQUEUE, "SEQ", "LEDGER", "QUEUE")
        self.take = _register(redis, TAKE, "QUEUE", "TAKEN", "LEDGER", "PAUSE", "PROBE")
        self.sweep = _register(redis, SWEEP, "PAUSE", "PROBE", "WAITING", "SEQ", "LEDGER", "QUEUE")
        self.reconcile = _register(
            redis, RECONCILE, "TAKEN", "CHECKPOINTS", "SEQ", "LEDGER", "QUEUE"
        )
        self.replay = _register(redis, REPLAY, "DEAD", "SEQ", "LEDGER", "QUEUE")
        self.settle = _register(redis, SETTLE, "LEDGER", "COUNT", "DEAD", "WAITING")


_KEYS = {
    "SEQ": keys.SEQ,
    "LEDGER": keys.LEDGER,
    "QUEUE": keys.QUEUE,
    "TAKEN": keys.TAKEN,
    "CHECKPOINTS": keys.CHECKPOINTS,
    "WAITING": keys.WAITING,
    "PAUSE": keys.PAUSE,
    "PROBE": keys.PROBE,
    "DEAD": keys.DEAD,
    "COUNT": keys.DELIVERED_COUNT,
}


ScriptArg = str | int | float


class BoundScript:
    """A registered script and the keys it declares, in order."""

    def __init__(self, script: Script, names: tuple[str, ...]) -> None:
        self.script = script
        self.names = names

    def __call__(self, args: Sequence[ScriptArg], client: Redis | None = None) -> Any:
        return self.script(keys=[_KEYS[name] for name in self.names], args=args, client=client)


def _register(redis: Redis, body: str, *names: str) -> BoundScript:
    source = (_PUSH if "SEQ" in names else "") + body
    for index, name in enumerate(names, start=1):
        source = source.replace(f"KEYS_{name}", f"KEYS[{index}]")
    return BoundScript(redis.register_script(source), names)
