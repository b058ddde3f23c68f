-- ENQUEUE_NEW: ENQUEUE (enqueue.lua) for goals whose event ids the producer has just made for
-- them (random UUIDs, never sent before): no goal can know them, so none is looked up and every
-- goal goes in. Its first write is its first command: a Redis at maxmemory refuses the call
-- before it changes anything. Returns each goal's sequence number.
-- ARGV: event id, payload; event id, payload; ... (keys and template: enqueued.lua)

local replies = {}
for i = 1, #ARGV, 2 do
  replies[#replies + 1] = admit(ARGV[i], ARGV[i + 1])
end
return replies
