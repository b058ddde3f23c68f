-- REINDEX: what `goalqueue dead recount` read, made true of the indexes. For each event id:
-- with a digest, its letter, if still what was read (its SHA1), goes into the index of the
-- reason given and out of every other; without one (an index entry), it goes out of every
-- index if its letter is gone. Returns how many entries were added, and how many removed.
local dead_key, reasons = KEYS[1], words(ARGV[1])
-- ARGV[2..]: event id, reason, dead_at, digest; ...

local added, removed = 0, 0
for i = 2, #ARGV, 4 do
  local event_id, reason, dead_at, digest = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local letter = redis.call('HGET', dead_key, event_id)
  if digest == '' and not letter then
    for _, other in ipairs(reasons) do
      removed = removed + redis.call('ZREM', dead_key .. ':' .. other, event_id)
    end
  elseif digest ~= '' and letter and redis.sha1hex(letter) == digest then
    for _, other in ipairs(reasons) do
      if other ~= reason then
        removed = removed + redis.call('ZREM', dead_key .. ':' .. other, event_id)
      end
    end
    added = added + redis.call('ZADD', dead_key .. ':' .. reason, 'NX', dead_at, event_id)
  end
end
return {added, removed}
