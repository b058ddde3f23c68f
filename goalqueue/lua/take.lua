#!lua flags=allow-oom
-- TAKE: a task's goal, and as many more as it may claim, off to delivery. Unless the shared
-- pace leaves no token for the task's own goal, it claims up to `claim` goal messages off the
-- consuming end of the queue (no more than the tokens allow; anything that is not a goal's
-- message goes back where it was, for kombu's consumer to deal with: see workers/transport.py),
-- then takes every goal. Returns the wait in ms, the pauses by hand max age leaves out ("start:end
-- ...", see operator.lua), then five fields per goal: event id, seq, standing, ledger entry,
-- pause streak. A wait alone means no token yet: try again after that long (a patient call
-- changes nothing else). The standing is one of
--   gone  - the entry was settled or re-queued under another sequence, or the sequence is now
--           another goal's (after a failover): drop this copy
--   done  - the goal was already delivered: settle without sending
--   halt  - delivery is paused by hand (`goalqueue pause`): park the goal in the waiting set
--   hold  - delivery is paused for everyone, or (an impatient call) there is no token: park the
--           goal in the waiting set, due after the wait
--   probe - the pause is over and this goal is the one allowed to test the API
--   send  - deliver it
--   poison - the sequence is not one the queue handed out (not a whole number from 1 to
--           `<ns>:seq`: a stray write, a bad migration); the entry field holds the message
--           (the task's own goal: its id and sequence) to dead-letter. It moves nothing: as
--           `taken`, a sequence beyond the last would have the reconciler re-queue every goal.
-- allow-oom: at maxmemory workers must still drain the queue. TAKE frees the messages it claims
-- and writes otherwise only keys of a fixed size (taken, probe, pace, sent).
local queue_key, taken_key, ledger_key, pause_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local probe_key, pace_key, sent_key, seq_key = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local operator_key = KEYS[9]
local now, fingerprint, probe_lease_ms = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local claim, task_name, markers_key = tonumber(ARGV[4]), ARGV[5], ARGV[6]
local max_rate, patient = tonumber(ARGV[7]), ARGV[8] == '1'
local goals = {}  -- ARGV[9..]: event id, seq of the task's own goal (none for a claim alone)
for i = 9, #ARGV, 2 do
  local own = string.format('{"id":%s,"args":[%s]}', cjson.encode(ARGV[i]), ARGV[i + 1])
  table.insert(goals, {ARGV[i], tonumber(ARGV[i + 1]), own})
end

local function claimed_goal(message)
  local ok, envelope = pcall(cjson.decode, message)
  if not (ok and type(envelope) == 'table' and type(envelope['headers']) == 'table'
          and envelope['headers']['task'] == task_name
          and type(envelope['body']) == 'string') then
    return nil
  end
  local event_id = envelope['headers']['id']
  local ok_body, body = pcall(cjson.decode, envelope['body'])
  if type(event_id) == 'string' and ok_body and type(body) == 'table'
     and type(body[1]) == 'table' and #body[1] == 1 and type(body[1][1]) == 'number' then
    return {event_id, body[1][1], message}
  end
  return nil
end

local last = tonumber(redis.call('GET', seq_key) or '0')
local function handed_out(seq)
  return seq ~= nil and seq >= 1 and seq <= last and seq == math.floor(seq)
end

-- Whether the ledger entry at a copy's sequence is that copy's goal. After a failover the new
-- primary may have handed out again the sequence of a goal it never received (its enqueue was
-- rolled back), while a worker still holds that goal's message: the entry is then another
-- goal's, and acting on it ('done' would drop it) could lose that goal. An entry too broken to
-- name a goal stays the copy's, to be dead-lettered as poison.
local function owns(entry, event_id)
  local prefix = '{"i":"' .. event_id .. '"'
  if string.sub(entry, 1, #prefix) == prefix then return true end
  local named = event_id_of(entry)
  return named == event_id or named == 'unreadable'
end

local live = nil  -- the delivered markers' buckets, read at the first goal that needs them
local function standing(event_id, pause, pace, halted)
  live = live or marker_window(markers_key, marker_now_ms())
  if marker_find(live, marker_field(event_id)) then return 'done' end
  if halted then return 'halt' end
  if pause[1] then
    local probe = redis.call('GET', probe_key)
    if probe == event_id then return 'probe' end
    if not probe and now >= tonumber(pause[1]) then
      redis.call('SET', probe_key, event_id, 'PX', probe_lease_ms)
      return 'probe'
    end
    return 'hold'
  end
  if pace then
    if pace.tokens < 1 then return 'hold' end
    pace.tokens = pace.tokens - 1
  end
  return 'send'
end

local pause = redis.call('HMGET', pause_key, 'until', 'reason', 'key', 'streak')
if pause[1] and outdated_pause(pause[2], pause[3], fingerprint) then
  redis.call('DEL', pause_key, probe_key)
  pause = {}
end
local operator = redis.call('HMGET', operator_key, 'since', 'until', 'spans')
local halted = operator_paused(operator[1], operator[2], now)
local wait, pace = 0, nil
if not (pause[1] or halted) then pace = pace_load(pace_key, now, max_rate, true) end
if pace then
  if pace.tokens < #goals then
    wait = math.ceil((#goals - pace.tokens) / pace.rate * 1000)
    pace.dry = true
    if patient then pace_save(pace_key, pace); return {wait} end
  end
  local allowed = math.max(0, math.floor(pace.tokens) - #goals)
  if allowed < claim then claim, pace.dry = allowed, true end
end
local popped = claim > 0 and redis.call('RPOP', queue_key, claim) or {}
for _, message in ipairs(popped) do
  local goal = claimed_goal(message)
  if goal then table.insert(goals, goal) else redis.call('RPUSH', queue_key, message) end
end
-- A `taken` no sequence reached (a stray write) is replaced, not kept for good.
local highest = tonumber(redis.call('GET', taken_key) or '0') or 0
if highest > last then highest = 0 end
local replies, sends = {wait, operator_spans(operator[1], operator[2], operator[3], now)}, 0
for _, goal in ipairs(goals) do
  local event_id, seq = goal[1], goal[2]
  local state, entry, streak = 'poison', goal[3], ''
  if handed_out(seq) then
    if seq > highest then highest = seq; redis.call('SET', taken_key, seq) end
    entry = redis.call('ZRANGEBYSCORE', ledger_key, seq, seq)[1]
    if entry and owns(entry, event_id) then
      state = standing(event_id, pause, pace, halted)
      if pause[1] and not halted then streak = pause[4] or '' end
    else
      state, entry = 'gone', ''
    end
  else
    seq = 0
  end
  if state == 'send' or state == 'probe' then sends = sends + 1 end
  for _, field in ipairs({event_id, seq, state, entry, streak}) do table.insert(replies, field) end
end
if pace then pace_save(pace_key, pace) end
if sends > 0 then sent_add(sent_key, now, sends) end
return replies
