#!lua flags=no-writes
-- DEAD_COUNTS: the dead letters in the hash, then in each reason's index (their counts), read
-- at one instant. A script flagged no-writes, as STATE: Redis runs it when full.
local dead_key, reasons = KEYS[1], words(ARGV[1])

local counts = {redis.call('HLEN', dead_key)}
for _, reason in ipairs(reasons) do
  table.insert(counts, redis.call('ZCARD', dead_key .. ':' .. reason))
end
return counts
