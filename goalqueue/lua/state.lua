#!lua flags=no-writes
-- STATE: what `goalqueue stats` and the metrics exporter report, read at one instant. A script,
-- not a MULTI: at maxmemory Redis refuses every MULTI but still runs a script flagged no-writes.
-- Returns queued, waiting, ledger entries, delivered, dead letters, the pause's end and reason,
-- the waiting goal due first, the message next in line, the shared send rate (nil if none), and
-- the pause by hand's since, until, reason, by and at (nil if none).
local queue_key, waiting_key, ledger_key, count_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local dead_key, pause_key, pace_key, operator_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]

local pause = redis.call('HMGET', pause_key, 'until', 'reason')
local hand = redis.call('HMGET', operator_key, 'since', 'until', 'reason', 'by', 'at')
return {
  redis.call('LLEN', queue_key),
  redis.call('ZCARD', waiting_key),
  redis.call('ZCARD', ledger_key),
  redis.call('GET', count_key),
  redis.call('HLEN', dead_key),
  pause[1],
  pause[2],
  redis.call('ZRANGE', waiting_key, 0, 0)[1] or false,
  redis.call('LINDEX', queue_key, -1),
  redis.call('HGET', pace_key, 'rate'),
  hand[1], hand[2], hand[3], hand[4], hand[5],
}
