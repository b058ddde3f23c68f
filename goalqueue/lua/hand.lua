#!lua flags=allow-oom
-- PAUSE BY HAND and RESUME (`goalqueue pause`, `goalqueue resume`) on <ns>:operator_pause.
-- op 'pause': in force from now (or from the start of a pause by hand still in force, which it
-- updates) until `until` (0: until resumed), for `reason`, set `by` someone. op 'resume': ends
-- it. A pause that ended (resumed now, or its `until` passed) joins `spans`, the past pauses by
-- hand that max age leaves out: a span is dropped once more than `max_age` seconds not paused by
-- hand have followed it (a goal enqueued before it has expired by then whatever it says), and
-- the two oldest merge while there are more than MAX_SPANS (a merged span counts the gap
-- between them as paused: a goal may live a little longer, never shorter). DataFast's pause
-- (<ns>:pause) is another key: neither ends the other. Returns the pause before the call:
-- since, until, reason, by, at (false if none), and 1 if it was in force.
-- allow-oom: an operator must be able to pause a full Redis; the hash is of a bounded size.
local key = KEYS[1]
local op, now, until_, reason, by = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local max_age = tonumber(ARGV[6])
local MAX_SPANS = 16

local old = redis.call('HMGET', key, 'since', 'until', 'reason', 'by', 'at', 'spans')
local active = operator_paused(old[1], old[2], now)
local keep_on = active and op == 'pause'
local spans = {}
local text = keep_on and (old[6] or '') or operator_spans(old[1], old[2], old[6], now)
for s, e in string.gmatch(text, '([%d%.]+):([%d%.]+)') do
  table.insert(spans, {tonumber(s), tonumber(e)})
end
local kept, unpaused, later = {}, 0, now
if keep_on then later = tonumber(old[1]) end
for i = #spans, 1, -1 do
  unpaused = unpaused + math.max(0, later - spans[i][2])
  if unpaused > max_age then break end
  table.insert(kept, 1, spans[i])
  later = spans[i][1]
end
while #kept > MAX_SPANS do
  kept[2][1] = kept[1][1]
  table.remove(kept, 1)
end
local parts = {}
for _, span in ipairs(kept) do
  table.insert(parts, string.format('%.3f:%.3f', span[1], span[2]))
end
local joined = table.concat(parts, ' ')

if op == 'pause' then
  local since = keep_on and old[1] or string.format('%.3f', now)
  redis.call('HSET', key, 'since', since, 'until', until_, 'reason', reason, 'by', by,
             'at', string.format('%.3f', now), 'spans', joined)
elseif joined == '' then
  redis.call('DEL', key)
else
  redis.call('HDEL', key, 'since', 'until', 'reason', 'by', 'at')
  redis.call('HSET', key, 'spans', joined)
end
return {old[1], old[2], old[3], old[4], old[5], active and 1 or 0}
