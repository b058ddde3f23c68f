-- Shared by every script that writes dead letters: the hash `dead_key` (event id -> letter
-- JSON) and, for each reason, its index `dead_key .. ':' .. reason` (event ids scored by when
-- they died; see goalqueue/keys.py). A letter and its index entry are written and deleted
-- together, by these functions alone, so that an index's size is its reason's count (what a
-- scrape reads) and its order is the letters' age (what a prune and `dead list` read).

-- The reasons named in `text`, separated by spaces: every reason a letter is indexed under.
local function words(text)
  local list = {}
  for word in string.gmatch(text, '%S+') do table.insert(list, word) end
  return list
end

local function bury_letter(dead_key, event_id, letter, reason, dead_at)
  redis.call('HSET', dead_key, event_id, letter)
  redis.call('ZADD', dead_key .. ':' .. reason, dead_at, event_id)
end

-- Deletes a letter and its index entry, whichever reason it is under; returns 1 if the hash
-- held it, else 0.
local function drop_letter(dead_key, reasons, event_id)
  for _, reason in ipairs(reasons) do redis.call('ZREM', dead_key .. ':' .. reason, event_id) end
  return redis.call('HDEL', dead_key, event_id)
end

