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
from typing import TYPE_CHECKING, Any

from redis import Redis

from goalqueue import keys

if TYPE_CHECKING:
    from redis.asyncio import Redis as AsyncRedis
    from redis.commands.core import AsyncScript, Script

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

# The shared send rate: a token bucket in Redis that every worker draws from. There is none
# until DataFast answers 429 (or GOALQUEUE_MAX_RATE caps the rate from the start). A 429 halves
# the rate (DEFER, below); while the bucket runs dry and no 429 comes, the rate doubles every
# second up to half the rate of the last 429, and grows by a tenth a second above that.
_PACE = """
local PACE_START, PACE_MIN, PACE_BURST_SECONDS, PACE_TTL_MS = 10, 1, 0.1, 3600000
local PACE_EPSILON = 1e-6  -- float error in refills: a token short by less than this is whole
local function pace_burst(rate) return math.max(1, rate * PACE_BURST_SECONDS) end
local function pace_load(now, max_rate, grow)
  local p = redis.call('HMGET', KEYS_PACE, 'rate', 'tokens', 'at', 'ceiling', 'grown', 'dry')
  local pace
  if p[1] then
    pace = {rate = tonumber(p[1]), tokens = tonumber(p[2]), at = tonumber(p[3]),
            ceiling = tonumber(p[4]), grown = tonumber(p[5]), dry = p[6] == '1'}
  elseif max_rate > 0 then
    pace = {rate = max_rate, tokens = pace_burst(max_rate), at = now, ceiling = 0, grown = now,
            dry = false}
  else
    return nil
  end
  if grow and now - pace.grown >= 1 then
    if pace.dry then
      local slow_start = pace.ceiling == 0 or pace.rate < pace.ceiling / 2
      pace.rate = pace.rate * (slow_start and 2 or 1.1)
    end
    pace.grown, pace.dry = now, false
  end
  if max_rate > 0 and pace.rate > max_rate then pace.rate = max_rate end
  local refill = pace.tokens + math.max(0, now - pace.at) * pace.rate + PACE_EPSILON
  pace.tokens = math.min(pace_burst(pace.rate), refill)
  pace.at = now
  return pace
end
local function pace_save(pace)
  redis.call('HSET', KEYS_PACE, 'rate', pace.rate, 'tokens', pace.tokens, 'at', pace.at,
             'ceiling', pace.ceiling, 'grown', pace.grown, 'dry', pace.dry and 1 or 0)
  redis.call('PEXPIRE', KEYS_PACE, PACE_TTL_MS)
end
-- Goals sent by every worker: counted a second at a time, so that a first 429 knows the rate
-- that drew it.
local function sent_add(now, n)
  local s = redis.call('HMGET', KEYS_SENT, 'since', 'count', 'recent')
  local since, count, recent = tonumber(s[1]) or now, tonumber(s[2]) or 0, tonumber(s[3]) or 0
  if now - since >= 1 then recent, count, since = count / (now - since), 0, now end
  redis.call('HSET', KEYS_SENT, 'since', since, 'count', count + n, 'recent', recent)
  redis.call('PEXPIRE', KEYS_SENT, 60000)
end
local function sent_rate(now)
  local s = redis.call('HMGET', KEYS_SENT, 'since', 'count', 'recent')
  local since, count = tonumber(s[1]), tonumber(s[2]) or 0
  if not since then return 0 end
  if now - since >= 1 then return count / (now - since) end
  return math.max(tonumber(s[3]) or 0, count / math.max(now - since, 0.25))
end
"""

# ARGV: now, key fingerprint, probe lease (ms), how many more to claim, task name,
# delivered-marker key prefix, max rate (goals/s, 0 for none), patient (1 or 0), then
# (event id, seq) of the goals the task was given.
# Unless the shared rate leaves no token for the task's own goals, claims up to that many more
# goal messages off the consuming end of the queue (no more than the tokens allow; anything that
# is not a goal goes back where it was, for kombu's consumer to deal with: see
# workers.transport), then takes every goal. Returns the wait in ms, then five fields per goal:
# event id, seq, verdict, ledger entry, pause streak. A wait above zero with no goals means: no
# token yet, try again after that long (a patient call changes nothing else). The verdict is one of
#   gone  - the entry was settled or re-queued under another sequence: drop this copy
#   done  - the goal was already delivered: settle without sending
#   hold  - delivery is paused for everyone, or (an impatient call) there is no token: park the
#           goal in the waiting set, due after the wait
#   probe - the pause is over and this goal is the one allowed to test the API
#   send  - deliver it
# The delivered markers' keys are built here from the prefix, as a claimed goal's id is only
# known once it is popped.
TAKE = """
local now, prefix, max_rate = tonumber(ARGV[1]), ARGV[6], tonumber(ARGV[7])
local goals = {}
for i = 9, #ARGV, 2 do table.insert(goals, {ARGV[i], tonumber(ARGV[i + 1])}) end
local pause = redis.call('HMGET', KEYS_PAUSE, 'until', 'reason', 'key', 'streak')
if pause[1] and pause[2] == 'auth' and pause[3] ~= ARGV[2] then
  redis.call('DEL', KEYS_PAUSE, KEYS_PROBE)
  pause = {}
end
local claim, wait = tonumber(ARGV[4]), 0
local pace = nil
if not pause[1] then pace = pace_load(now, max_rate, true) end
if pace then
  if pace.tokens < #goals then
    wait = math.ceil((#goals - pace.tokens) / pace.rate * 1000)
    pace.dry = true
    if ARGV[8] == '1' then pace_save(pace); return {wait} end
  end
  local allowed = math.max(0, math.floor(pace.tokens) - #goals)
  if allowed < claim then claim, pace.dry = allowed, true end
end
local popped = claim > 0 and redis.call('RPOP', KEYS_QUEUE, claim) or {}
for _, message in ipairs(popped) do
  local eid, args = nil, nil
  local ok, envelope = pcall(cjson.decode, message)
  if ok and type(envelope) == 'table' and type(envelope['headers']) == 'table'
     and envelope['headers']['task'] == ARGV[5] and type(envelope['body']) == 'string' then
    eid = envelope['headers']['id']
    local ok_body, body = pcall(cjson.decode, envelope['body'])
    if ok_body and type(body) == 'table' and type(body[1]) == 'table' then args = body[1] end
  end
  if type(eid) == 'string' and args and #args == 1 and type(args[1]) == 'number' then
    table.insert(goals, {eid, args[1]})
  else
    redis.call('RPUSH', KEYS_QUEUE, message)
  end
end
local highest = tonumber(redis.call('GET', KEYS_TAKEN) or '0')
local replies, sends = {wait}, 0
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
  elseif pace then
    if pace.tokens >= 1 then pace.tokens = pace.tokens - 1 else verdict = 'hold' end
  end
  if verdict == 'send' or verdict == 'probe' then sends = sends + 1 end
  for _, field in ipairs({eid, seq, verdict, entry, streak}) do table.insert(replies, field) end
end
if pace then pace_save(pace) end
if sends > 0 then sent_add(now, sends) end
return replies
"""

# ARGV: until, reason, streak, key fingerprint, now, max rate, halve (1 or 0).
# Pauses delivery for everyone until ``until``; the next probe tests the API. A 429 (halve = 1)
# that finds delivery running also halves the shared rate, starting one if there was none at
# half the rate the workers were sending at (at least 10 goals/s): the 429s that come back
# while a pause is on are answers to the same rush. Returns the new rate (goals/s, as text), or
# nil when the rate was left alone.
DEFER = """
local running = redis.call('EXISTS', KEYS_PAUSE) == 0
redis.call('HSET', KEYS_PAUSE, 'until', ARGV[1], 'reason', ARGV[2], 'streak', ARGV[3],
           'key', ARGV[4])
redis.call('DEL', KEYS_PROBE)
if ARGV[7] ~= '1' or not running then return false end
local now = tonumber(ARGV[5])
local pace = pace_load(now, tonumber(ARGV[6]), false)
if pace then
  pace.ceiling, pace.rate = pace.rate, math.max(PACE_MIN, pace.rate / 2)
else
  local sending = sent_rate(now)
  pace = {rate = math.max(PACE_START, sending / 2), ceiling = sending, at = now}
end
pace.tokens, pace.grown, pace.dry = 0, now, false
pace_save(pace)
return tostring(pace.rate)
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

    def __init__(self, redis: Redis | AsyncRedis) -> None:
        self.enqueue = _register(redis, ENQUEUE, "SEQ", "LEDGER", "QUEUE")
        self.take = _register(
            redis, TAKE, "QUEUE", "TAKEN", "LEDGER", "PAUSE", "PROBE", "PACE", "SENT"
        )
        self.defer = _register(redis, DEFER, "PAUSE", "PROBE", "PACE", "SENT")
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
    "PACE": keys.PACE,
    "SENT": keys.SENT,
}


ScriptArg = str | int | float


class BoundScript:
    """A registered script and the keys it declares, in order."""

    def __init__(self, script: Script | AsyncScript, names: tuple[str, ...]) -> None:
        self.script = script
        self.names = names

    def __call__(self, args: Sequence[ScriptArg], client: Any = None) -> Any:
        return self.script(keys=[_KEYS[name] for name in self.names], args=args, client=client)


def _register(redis: Redis | AsyncRedis, body: str, *names: str) -> BoundScript:
    source = (_PUSH if "SEQ" in names else "") + (_PACE if "PACE" in names else "") + body
    for index, name in enumerate(names, start=1):
        source = source.replace(f"KEYS_{name}", f"KEYS[{index}]")
    return BoundScript(redis.register_script(source), names)
