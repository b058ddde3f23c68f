-- SETTLE: record outcomes. Each acts only if this copy still owns the ledger entry: when two
-- copies of a goal race (a slow worker and a re-queued copy), exactly one of them moves it on.
-- A delivered goal is counted once, by whichever copy first sets its marker. Returns how many
-- entries this call owned.
local ledger_key, count_key, dead_key, waiting_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local marker_ttl_ms, marker_prefix = ARGV[1], ARGV[2]
-- ARGV[3..]: four fields per outcome:
--   delivered, entry, event id, DataFast's event id   mark it delivered
--   bury,      entry, event id, dead letter JSON      dead-letter it
--   park,      entry, due time, event JSON            put it in the waiting set
--   forget,    entry, '', ''                          it was delivered before: drop the entry

local owned = 0
for i = 3, #ARGV, 4 do
  local kind, entry, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local mine = redis.call('ZREM', ledger_key, entry)
  owned = owned + mine
  if kind == 'delivered' then
    if redis.call('SET', marker_prefix .. a, b, 'PX', marker_ttl_ms, 'NX') then
      redis.call('INCR', count_key)
    end
  elseif mine == 1 and kind == 'bury' then
    redis.call('HSET', dead_key, a, b)
  elseif mine == 1 and kind == 'park' then
    redis.call('ZADD', waiting_key, a, b)
  end
end
return owned
