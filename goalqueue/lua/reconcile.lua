#!lua flags=allow-oom
-- RECONCILE: re-queue the goals a lost worker took off the queue and never settled. The queue
-- is FIFO, so once a worker has started on sequence N, every unsettled ledger entry below N that
-- was first seen more than `threshold` seconds ago was lost (checkpoints: the highest sequence
-- taken, scored by when it was first seen). Returns how many goals were re-queued.
-- allow-oom: at maxmemory this is what brings back the goals whose messages a worker took (the
-- memory they held was freed then); each entry is re-queued once and re-scored above `taken`.
local taken_key, checkpoints_key = KEYS[1], KEYS[2]
local seq_key, ledger_key, queue_key, reconciled_key = KEYS[3], KEYS[4], KEYS[5], KEYS[6]
local unacked_index_key = KEYS[7]
local template, now, threshold, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local stall = tonumber(ARGV[5])

-- A lease runs only while Redis answers. When no reconciler has run for more than `stall`
-- seconds (Redis frozen, down or restarting, or no worker sweeping), every checkpoint, and
-- every message in kombu's unacked index, moves forward by that gap, on Redis's clock: the
-- goals workers hold get the whole `threshold` from when Redis answers again, and an outcome
-- whose write waited out the stall is not taken for a lost goal (and sent again). kombu's
-- restore waits for this (see workers/transport.py).
local clock = redis.call('TIME')
local redis_now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local last_run = tonumber(redis.call('GET', reconciled_key) or '')
redis.call('SET', reconciled_key, string.format('%.6f', redis_now))
if last_run and redis_now - last_run > stall then
  for _, key in ipairs({checkpoints_key, unacked_index_key}) do
    local held = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
    for i = 1, #held, 2 do
      redis.call('ZADD', key, tonumber(held[i + 1]) + redis_now - last_run, held[i])
    end
  end
end

local last_seq = redis.call('GET', seq_key) or '0'
local last = tonumber(last_seq)
-- A ledger entry scored beyond the last sequence handed out (a stray write) has no message and
-- would never be re-queued: it goes back on the queue under a sequence of its own (where a
-- worker dead-letters it as poison if it is not a goal).
local stray = redis.call('ZRANGEBYSCORE', ledger_key, '(' .. last_seq, '+inf', 'LIMIT', 0, limit)
for _, payload in ipairs(stray) do
  push(seq_key, ledger_key, queue_key, template, event_id_of(payload), payload)
end
-- A `taken` or checkpoint beyond the last sequence (a stray write) would have every unsettled
-- goal re-queued at every sweep: it is dropped instead (the next TAKE sets `taken`).
local function beyond(value)
  local n = tonumber(value)
  return not n or n > last
end
local taken = redis.call('GET', taken_key)
if taken and beyond(taken) then
  redis.call('DEL', taken_key)
  taken = false
end
if taken then redis.call('ZADD', checkpoints_key, 'NX', now, taken) end
local seen = redis.call('ZREVRANGEBYSCORE', checkpoints_key, now - threshold, '-inf',
                        'WITHSCORES', 'LIMIT', 0, 1)
if #seen == 0 then return #stray end
if beyond(seen[1]) then
  redis.call('ZREM', checkpoints_key, seen[1])
  return #stray
end
redis.call('ZREMRANGEBYSCORE', checkpoints_key, '-inf', '(' .. seen[2])
local lost = redis.call('ZRANGEBYSCORE', ledger_key, '-inf', seen[1], 'LIMIT', 0, limit)
for _, payload in ipairs(lost) do
  push(seq_key, ledger_key, queue_key, template, event_id_of(payload), payload)
end
return #stray + #lost
