-- ENQUEUE: a ledger entry and a queue message for each goal whose event id is not known yet,
-- atomically. An id is known while its goal is pending (in the ledger or the waiting set: the
-- pending set), once it is delivered (its marker) and while it is a dead letter: a goal enqueued
-- again with the same event id (a retry after a lost answer, a spool re-send) adds nothing.
-- A new goal also enters the visitor index (lua/visitors.lua). The first write comes after every
-- lookup, so a Redis at maxmemory refuses the call before it changes anything. Returns, for
-- each goal, its sequence number, or 0 when its id was known.
local seq_key, ledger_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local pending_key, dead_key = KEYS[4], KEYS[5]
local template, markers_key, visitors_key = ARGV[1], ARGV[2], ARGV[3]
-- ARGV[4..]: event id, payload; event id, payload; ...

local now_ms = marker_now_ms()
local live = marker_window(markers_key, now_ms)
local fresh, seen = {}, {}
for i = 4, #ARGV, 2 do
  local event_id = ARGV[i]
  fresh[i] = not seen[event_id]
    and redis.call('SISMEMBER', pending_key, event_id) == 0
    and not marker_find(live, marker_field(event_id))
    and redis.call('HEXISTS', dead_key, event_id) == 0
  seen[event_id] = true
end
local visited, expired = nil, nil
local replies = {}
for i = 4, #ARGV, 2 do
  if fresh[i] then
    redis.call('SADD', pending_key, ARGV[i])
    local visitor, field = visitor_of(ARGV[i + 1]), marker_uuid(ARGV[i])
    if visitor and field then
      if not visited then
        visited, expired = marker_window(visitors_key, now_ms)
        marker_prune(visitors_key, expired)
      end
      visitor_add(visitors_key, visited, now_ms, visitor, field)
    end
    table.insert(replies, push(seq_key, ledger_key, queue_key, template, ARGV[i], ARGV[i + 1]))
  else
    table.insert(replies, 0)
  end
end
return replies
