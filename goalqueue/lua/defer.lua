#!lua flags=allow-oom
-- DEFER: pause delivery for everyone until `until`; the next probe tests the API. A 429 or a
-- timeout after sending (`halve` = 1) that finds delivery running also halves the shared pace,
-- or starts one at half the rate the workers were sending at (at least 10 goals/s): the ones
-- that come back while a pause is on are answers to the same rush. A 429 also marks the rate
-- that drew it as the ceiling the pace grows back to slowly; a timeout (reason 'slow') says
-- nothing about the rate (the workers had stalled, waiting for the answers), so the pace grows
-- back from it as from a start, doubling each second while it holds goals back. Returns the new
-- rate (goals/s, as text), or nil when the pace was left alone.
-- allow-oom: a pause writes only keys of a fixed size (pause, probe, pace), and comes with the
-- SETTLE that frees the goal's ledger entry.
local pause_key, probe_key, pace_key, sent_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local until_, reason, streak, fingerprint = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local now, max_rate, halve = tonumber(ARGV[5]), tonumber(ARGV[6]), ARGV[7] == '1'

local running = redis.call('EXISTS', pause_key) == 0
redis.call('HSET', pause_key, 'until', until_, 'reason', reason, 'streak', streak,
           'key', fingerprint)
redis.call('DEL', probe_key)
if not (halve and running) then return false end
local drawn = reason ~= 'slow'  -- whether the rate sent at drew this answer
local pace = pace_load(pace_key, now, max_rate, false)
if pace then
  if drawn then pace.ceiling = pace.rate end
  pace.rate = math.max(PACE_MIN, pace.rate / 2)
else
  local sending = sent_rate(sent_key, now)
  pace = {rate = math.max(PACE_START, sending / 2), ceiling = drawn and sending or 0, at = now}
end
pace.tokens, pace.grown, pace.dry = 0, now, false
pace_save(pace_key, pace)
return tostring(pace.rate)
