-- Shared by ENQUEUE (enqueue.lua) and ENQUEUE_NEW (enqueue_new.lua): a new goal goes in. Their
-- keys and the message template are constants of the namespace's script (made by
-- goalqueue/scripts.py): SEQ_KEY, LEDGER_KEY, QUEUE_KEY, PENDING_KEY, DEAD_KEY, DELIVERED_KEY,
-- TEMPLATE, and the visitor index's VISITOR_PREFIX, VISITOR_KEEP and VISITOR_WINDOW_MS.

-- The visitor and the enqueue time (unix seconds, as text to the ms: records of one width) of a
-- stored goal, or nil. In the form goalqueue/event.py writes, its id and then its visitor come
-- first, and ,"t": followed by a digit is its time: any quote inside a JSON string is escaped.
-- Any other form is decoded.
local function visit_of(payload)
  local visitor = string.match(payload, '^{"i":"[^"\\]*","v":"([^"\\]*)"')
  local at = visitor and tonumber(string.match(payload, ',"t":([%d.]+)'))
  if at then return visitor, string.format('%.3f', at) end
  local ok, event = pcall(cjson.decode, payload)
  if ok and type(event) == 'table' and type(event['v']) == 'string'
     and type(event['t']) == 'number' then
    return event['v'], string.format('%.3f', event['t'])
  end
  return nil
end

-- The goal's id in the pending set, in its visitor's entry in the visitor index
-- (goalqueue/keys.py: a string of "<enqueued at> <event id>;" records, oldest first, about its
-- last VISITOR_KEEP goals, kept VISITOR_WINDOW_MS after its last one: a string costs a third
-- less than a list), and on the queue (push.lua); returns its sequence number.
local function admit(event_id, payload)
  redis.call('SADD', PENDING_KEY, event_id)
  local visitor, at = visit_of(payload)
  if visitor then
    local key, record = VISITOR_PREFIX .. visitor, at .. ' ' .. event_id .. ';'
    local most = VISITOR_KEEP * #record
    if redis.call('APPEND', key, record) > most then
      local kept = redis.call('GETRANGE', key, -most, -1)
      redis.call('SET', key, string.sub(kept, string.find(kept, ';', 1, true) + 1))
    end
    redis.call('PEXPIRE', key, VISITOR_WINDOW_MS)
  end
  return push(SEQ_KEY, LEDGER_KEY, QUEUE_KEY, TEMPLATE, event_id, payload)
end
