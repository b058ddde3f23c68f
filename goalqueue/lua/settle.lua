#!lua flags=allow-oom
-- SETTLE: record outcomes. Each acts only if this copy still owns the ledger entry: when two
-- copies of a goal race (a slow worker and a re-queued copy), exactly one of them moves it on.
-- A delivered goal is counted once, by whichever copy first sets its marker. The counters for
-- monitoring (the metrics hash, see goalqueue/tally.py) move with the outcomes they count; the
-- answers only when the call recorded something, so that a write repeated after a lost reply
-- does not count them twice. A goal delivered, dead-lettered or forgotten leaves the pending set
-- (see enqueue.lua): its marker or its dead letter now says that its event id is known. Returns
-- how many entries this call owned.
-- allow-oom: recording an outcome frees its ledger entry (and its message has left the queue);
-- what it writes in its place (a marker, a dead letter, a waiting entry) is about as large.
local ledger_key, count_key, dead_key, waiting_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local metrics_key, pending_key = KEYS[5], KEYS[6]
local marker_ttl_ms, markers_key, attempts_prefix = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local log_ttl_ms, dead_log_ttl_ms, answer_fields = ARGV[4], ARGV[5], tonumber(ARGV[6])
-- ARGV[7 .. 6 + answer_fields]: field, amount pairs for the answers this call records.
-- Then seven fields per outcome (the last, attempt, left out here):
--   delivered, entry, event id, DataFast's event id, latency bucket, latency (us)   mark it
--   bury,      entry, event id, dead letter JSON,    reason,         dead at        dead-letter it
--                                                    (entry '': a poison message, no entry)
--   park,      entry, due time, event JSON,          counter or '',  event id       wait
--   forget,    entry, event id, '',                  '',             0              drop the entry
--                                                    (it was delivered before)
-- attempt: the attempt (goalqueue/attempts.py) to add to the goal's log, '' for none: a goal
-- delivered at its first attempt keeps no log. A log keeps the goal's last ATTEMPTS_KEPT
-- attempts: as long as its marker once the goal is delivered, for the dead-letter retention once
-- it is dead, else for `log_ttl_ms` (a waiting goal's).
local ATTEMPTS_KEPT = 10
local bucket_ms = marker_bucket_ms(marker_ttl_ms)

local counts = {}
local function count(field, amount)
  counts[field] = (counts[field] or 0) + amount
end

local function log_attempt(event_id, attempt, ttl_ms)
  local key = attempts_prefix .. event_id
  if redis.call('RPUSH', key, attempt) > ATTEMPTS_KEPT then
    redis.call('LTRIM', key, -ATTEMPTS_KEPT, -1)
  end
  redis.call('PEXPIRE', key, ttl_ms)
end

local now_ms, live = marker_now_ms(), nil
local owned, marked = 0, 0
for i = 7 + answer_fields, #ARGV, 7 do
  local kind, entry, a, b, label = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
  local mine = redis.call('ZREM', ledger_key, entry)
  owned = owned + mine
  if kind == 'delivered' or kind == 'forget' or (mine == 1 and kind == 'bury') then
    redis.call('SREM', pending_key, a)
  end
  if kind == 'delivered' then
    local field, packed = marker_field(a)
    if not live then
      local expired
      live, expired = marker_window(markers_key, now_ms)
      marker_prune(markers_key, expired)
    end
    if not marker_find(live, field, packed) then
      marker_add(markers_key, live, now_ms, bucket_ms, marker_ttl_ms, field, packed, b)
      redis.call('INCR', count_key)
      marked = marked + 1
      count('latency:' .. label, 1)
      count('latency:sum_us', tonumber(ARGV[i + 5]))
    end
  elseif kind == 'bury' and (mine == 1 or entry == '') then
    bury_letter(dead_key, a, b, label, ARGV[i + 5])
    count('dead:' .. label, 1)
  elseif mine == 1 and kind == 'park' then
    redis.call('ZADD', waiting_key, a, b)
    if label ~= '' then count(label, 1) end
  end
  local attempt = ARGV[i + 6]
  if attempt ~= '' then
    local event_id = kind == 'park' and ARGV[i + 5] or a
    local ttl_ms = log_ttl_ms
    if kind == 'bury' then
      ttl_ms = dead_log_ttl_ms
    elseif kind == 'delivered' then
      ttl_ms = marker_ttl_ms
    end
    log_attempt(event_id, attempt, ttl_ms)
  end
end
if owned + marked > 0 then
  for i = 7, 6 + answer_fields, 2 do count(ARGV[i], tonumber(ARGV[i + 1])) end
end
for field, amount in pairs(counts) do
  redis.call('HINCRBY', metrics_key, field, amount)
end
return owned
