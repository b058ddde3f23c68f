#!lua flags=no-writes
-- VISITED: a visitor's goals in the visitor index (the last hour's enqueues; see visitors.lua):
-- event id, enqueued at (unix ms); ...
local visitors_key, visitor_id = KEYS[1], ARGV[1]

return visitor_goals(marker_window(visitors_key, marker_now_ms()), visitor_id)
