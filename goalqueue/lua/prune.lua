#!lua flags=allow-oom
-- PRUNE: the oldest dead letters deleted, at most `limit` of them: first those that died before
-- `cutoff` (GOALQUEUE_DEAD_RETENTION_DAYS), then the oldest beyond `keep` letters
-- (GOALQUEUE_DEAD_MAX). Each is counted in the metrics hash (pruned:retention, pruned:max; see
-- goalqueue/tally.py). Returns how many went for each.
-- allow-oom: a prune frees memory, and a full Redis needs it most.
local dead_key, metrics_key = KEYS[1], KEYS[2]
local reasons, cutoff = words(ARGV[1]), ARGV[2]
local keep, limit = tonumber(ARGV[3]), tonumber(ARGV[4])

-- The event ids of the `n` letters that died first, before `below`, whatever their reason.
local function oldest(n, below)
  if n <= 0 then return {} end
  local heads = {}
  for _, reason in ipairs(reasons) do
    local index = dead_key .. ':' .. reason
    local page = redis.call('ZRANGEBYSCORE', index, '-inf', below, 'WITHSCORES', 'LIMIT', 0, n)
    for j = 1, #page, 2 do table.insert(heads, {tonumber(page[j + 1]), page[j]}) end
  end
  table.sort(heads, function(x, y) return x[1] < y[1] end)
  local ids = {}
  for j = 1, math.min(n, #heads) do ids[j] = heads[j][2] end
  return ids
end

local function prune(event_ids, cause)
  local pruned = 0
  for _, event_id in ipairs(event_ids) do
    pruned = pruned + drop_letter(dead_key, reasons, event_id)
  end
  if pruned > 0 then redis.call('HINCRBY', metrics_key, 'pruned:' .. cause, pruned) end
  return pruned
end

local expired = prune(oldest(limit, '(' .. cutoff), 'retention')
local kept = 0
for _, reason in ipairs(reasons) do kept = kept + redis.call('ZCARD', dead_key .. ':' .. reason) end
local over = prune(oldest(math.min(limit - expired, kept - keep), '+inf'), 'max')
return {expired, over}
