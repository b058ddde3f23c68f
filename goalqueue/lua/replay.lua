-- REPLAY: dead letters' goals back onto the queue, each if it is still dead. Returns, for each,
-- its new sequence number, or 0 when it is no longer a dead letter (another replay, a purge or
-- a prune took it first). The first write (an SADD) is one a full Redis refuses, so at maxmemory
-- the call fails before it changes anything: the letters stay.
local dead_key, seq_key, ledger_key, queue_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pending_key = KEYS[5]
local template, reasons = ARGV[1], words(ARGV[2])
-- ARGV[3..]: event id, payload; event id, payload; ...

local replies = {}
for i = 3, #ARGV, 2 do
  local event_id = ARGV[i]
  if redis.call('HEXISTS', dead_key, event_id) == 1 then
    redis.call('SADD', pending_key, event_id)
    drop_letter(dead_key, reasons, event_id)
    table.insert(replies, push(seq_key, ledger_key, queue_key, template, event_id, ARGV[i + 1]))
  else
    table.insert(replies, 0)
  end
end
return replies
