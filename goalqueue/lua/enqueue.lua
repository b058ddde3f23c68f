-- ENQUEUE: a ledger entry and a queue message for each goal whose event id is not known yet,
-- atomically. An id is known while its goal is pending (in the ledger or the waiting set: the
-- pending set), once it is delivered (its marker) and while it is a dead letter: a goal enqueued
-- again with the same event id (a retry after a lost answer, a spool re-send) adds nothing.
-- Every write comes after every read, so a Redis at maxmemory refuses the call before it changes
-- anything. Returns, for each goal, its sequence number, or 0 when its id was known.
local seq_key, ledger_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local pending_key, dead_key = KEYS[4], KEYS[5]
local template, markers_key = ARGV[1], ARGV[2]
-- ARGV[3..]: event id, payload; event id, payload; ...

local live = marker_window(markers_key, marker_now_ms())
local fresh, seen = {}, {}
for i = 3, #ARGV, 2 do
  local event_id = ARGV[i]
  fresh[i] = not seen[event_id]
    and redis.call('SISMEMBER', pending_key, event_id) == 0
    and not marker_find(live, marker_field(event_id))
    and redis.call('HEXISTS', dead_key, event_id) == 0
  seen[event_id] = true
end
local replies = {}
for i = 3, #ARGV, 2 do
  if fresh[i] then
    redis.call('SADD', pending_key, ARGV[i])
    table.insert(replies, push(seq_key, ledger_key, queue_key, template, ARGV[i], ARGV[i + 1]))
  else
    table.insert(replies, 0)
  end
end
return replies
