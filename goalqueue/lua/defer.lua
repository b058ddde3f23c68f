#!lua flags=allow-oom
-- DEFER: pause delivery for everyone until `until`; the next probe tests the API. A 429
-- (`halve` = 1) that finds delivery running also halves the shared pace, or starts one at half
-- the rate the workers were sending at (at least 10 goals/s): the 429s that come back while a
-- pause is on are answers to the same rush. Returns the new rate (goals/s, as text), or nil
-- when the pace was left alone.
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
local pace = pace_load(pace_key, now, max_rate, false)
if pace then
  pace.ceiling, pace.rate = pace.rate, math.max(PACE_MIN, pace.rate / 2)
else
  local sending = sent_rate(sent_key, now)
  pace = {rate = math.max(PACE_START, sending / 2), ceiling = sending, at = now}
end
pace.tokens, pace.grown, pace.dry = 0, now, false
pace_save(pace_key, pace)
return tostring(pace.rate)
