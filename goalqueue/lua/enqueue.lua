-- ENQUEUE: a ledger entry and a queue message for each goal, atomically.
-- Returns the last sequence number handed out.
local seq_key, ledger_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local template = ARGV[1]
-- ARGV[2..]: event id, payload; event id, payload; ...

local last = 0
for i = 2, #ARGV, 2 do
  last = push(seq_key, ledger_key, queue_key, template, ARGV[i], ARGV[i + 1])
end
return last
