-- Shared by ENQUEUE, which writes the visitor index, and VISITED, which reads it (after
-- marker.lua, whose buckets and shards it uses). The visitor index (`goalqueue show --visitor`): the goals enqueued in the last
-- VISITOR_WINDOW_MS, in buckets and shards as the markers', but placed by the visitor's hash,
-- so that a visitor's goals of a bucket are in one shard: field = the event id packed as a
-- marker's (goals whose id is not a UUID, never made by the producer, are left out), value = the visitor's hash (4 bytes), then the enqueue time in ms after the bucket's
-- start (4 bytes).
local VISITOR_WINDOW_MS = 3600 * 1000
local VISITOR_BUCKET_MS = VISITOR_WINDOW_MS / 6

local function visitor_hash(visitor_id)
  if redis.sha1hex then return tonumber(string.sub(redis.sha1hex(visitor_id), 1, 8), 16) end
  local h = 0  -- fakeredis has no sha1hex
  for i = 1, #visitor_id do h = (h * 31 + byte(visitor_id, i)) % 4294967296 end
  return h
end

local function visitor_entry_hash(_, value)
  return unpack_u32(value, 1)
end

-- Adds a goal (`field`: its packed UUID) of `visitor_id` to the index.
local function visitor_add(reg, live, now_ms, visitor_id, field)
  local h = visitor_hash(visitor_id)
  local value = function(offset_ms) return pack_u32(h) .. pack_u32(offset_ms) end
  bucketed_add(reg, live, now_ms, VISITOR_BUCKET_MS, VISITOR_WINDOW_MS, field, value, h,
               visitor_entry_hash)
end

-- The visitor in a stored goal (see goalqueue/event.py: its id, then its visitor, come first).
local function visitor_of(payload)
  local visitor = string.match(payload, '^{"i":"[^"\\]*","v":"([^"\\]*)"')
  if visitor then return visitor end
  local ok, event = pcall(cjson.decode, payload)
  if ok and type(event) == 'table' and type(event['v']) == 'string' then return event['v'] end
  return nil
end

-- The event ids and enqueue times (ms) of `visitor_id`'s goals in the index, newest bucket first.
local function visitor_goals(live, visitor_id)
  local h, found = visitor_hash(visitor_id), {}
  for _, bucket in ipairs(live) do
    local entries = redis.call('HGETALL', marker_shard(h, bucket))
    for i = 1, #entries, 2 do
      local field, value = entries[i], entries[i + 1]
      if unpack_u32(value, 1) == h then
        table.insert(found, string.format('%08x-%04x-%04x-%04x-%04x%08x', unpack_u32(field, 1),
                                          unpack_be(field, 5, 2), unpack_be(field, 7, 2),
                                          unpack_be(field, 9, 2), unpack_be(field, 11, 2),
                                          unpack_u32(field, 13)))
        table.insert(found, string.format('%.0f', bucket.start + unpack_u32(value, 5)))
      end
    end
  end
  return found
end
