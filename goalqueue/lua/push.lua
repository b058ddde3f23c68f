-- Shared by every script that puts a goal on the queue: take the next sequence number,
-- (re)score the goal's ledger entry with it, and LPUSH its Celery message (the message
-- template has three slots: sequence, event id, sequence; see goalqueue/message.py).
local function push(seq_key, ledger_key, queue_key, template, event_id, payload)
  local seq = redis.call('INCR', seq_key)
  redis.call('ZADD', ledger_key, seq, payload)
  redis.call('LPUSH', queue_key, string.format(template, seq, event_id, seq))
  return seq
end

-- The event id in a stored goal, or 'unreadable' (the worker dead-letters it as poison).
local function event_id_of(payload)
  local ok, event = pcall(cjson.decode, payload)
  if ok and type(event) == 'table' and type(event['i']) == 'string' then return event['i'] end
  return 'unreadable'
end

