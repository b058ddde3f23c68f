-- REPLAY: a dead letter's goal back onto the queue, if it is still dead. Returns its new
-- sequence number, or 0 when another replay took it first. The first write (SADD) is one a full
-- Redis refuses, so at maxmemory the call fails before it changes anything: the letter stays.
local dead_key, seq_key, ledger_key, queue_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pending_key = KEYS[5]
local template, event_id, payload = ARGV[1], ARGV[2], ARGV[3]

if redis.call('HEXISTS', dead_key, event_id) == 0 then return 0 end
redis.call('SADD', pending_key, event_id)
redis.call('HDEL', dead_key, event_id)
return push(seq_key, ledger_key, queue_key, template, event_id, payload)
