-- ENQUEUE: a goal for each event id not known yet, atomically, for callers that chose their
-- ids (ENQUEUE_NEW, enqueue_new.lua, takes the ids the producer has just made). An id is known
-- while its goal is pending (in the ledger or the waiting set: the pending set), once it is
-- delivered (its marker) and while it is a dead letter: a goal enqueued again with the same
-- event id (a retry after a lost answer, a spool re-send) adds nothing. The first write comes
-- after every lookup, so a Redis at maxmemory refuses the call before it changes anything.
-- Returns, for each goal, its sequence number, or 0 when its id was known.
-- ARGV: event id, payload; event id, payload; ... (keys and template: enqueued.lua)

local live = marker_window(DELIVERED_KEY, marker_now_ms())
local fresh, seen = {}, {}
for i = 1, #ARGV, 2 do
  local event_id = ARGV[i]
  fresh[i] = not seen[event_id]
    and redis.call('SISMEMBER', PENDING_KEY, event_id) == 0
    and not marker_find(live, marker_field(event_id))
    and redis.call('HEXISTS', DEAD_KEY, event_id) == 0
  seen[event_id] = true
end
local replies = {}
for i = 1, #ARGV, 2 do
  replies[#replies + 1] = fresh[i] and admit(ARGV[i], ARGV[i + 1]) or 0
end
return replies
