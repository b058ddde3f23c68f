#!lua flags=allow-oom
-- SWEEP: due goals from the waiting set back onto the queue; none while delivery is paused by
-- hand; while DataFast's pause is on, only the one probe once that pause is over. A pause for a
-- configuration other than `fingerprint` (a 401, a redirect or a TLS failure, since fixed: see
-- pause.lua) is dropped. With a `cap` (Redis is full), only as many as bring the queue up to
-- `cap` messages. Returns how many goals were moved.
-- allow-oom: goals that wait for a retry must come back when Redis is full, or a full Redis whose
-- goals all wait would stay full for good; the cap bounds what a sweep adds (a message a goal).
local pause_key, probe_key, waiting_key = KEYS[1], KEYS[2], KEYS[3]
local seq_key, ledger_key, queue_key = KEYS[4], KEYS[5], KEYS[6]
local template, now, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local fingerprint, probe_lease_ms, cap = ARGV[4], ARGV[5], tonumber(ARGV[6])
local operator_key = KEYS[7]

local operator = redis.call('HMGET', operator_key, 'since', 'until')
if operator_paused(operator[1], operator[2], now) then return 0 end

if cap > 0 then
  limit = math.min(limit, cap - redis.call('LLEN', queue_key))
  if limit <= 0 then return 0 end
end

local pause = redis.call('HMGET', pause_key, 'until', 'reason', 'key')
local probing = false
if pause[1] and outdated_pause(pause[2], pause[3], fingerprint) then
  redis.call('DEL', pause_key, probe_key)
elseif pause[1] then
  if now < tonumber(pause[1]) or redis.call('EXISTS', probe_key) == 1 then return 0 end
  probing, limit = true, 1
end
local due = redis.call('ZRANGEBYSCORE', waiting_key, '-inf', now, 'LIMIT', 0, limit)
for _, payload in ipairs(due) do
  local event_id = event_id_of(payload)
  if probing then redis.call('SET', probe_key, event_id, 'PX', probe_lease_ms) end
  redis.call('ZREM', waiting_key, payload)
  push(seq_key, ledger_key, queue_key, template, event_id, payload)
end
return #due
