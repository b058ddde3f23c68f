-- The shared send rate: a token bucket in Redis that every worker draws from. There is none
-- until DataFast answers 429 or a request times out after sending (or GOALQUEUE_MAX_RATE caps
-- the rate from the start). Either halves the rate (defer.lua); while the bucket runs dry and
-- no 429 comes, the rate doubles every second up to half the rate of the last 429, and grows by
-- a tenth a second above that.
local PACE_START, PACE_MIN, PACE_BURST_SECONDS, PACE_TTL_MS = 10, 1, 0.1, 3600000
local PACE_EPSILON = 1e-6  -- float error in refills: a token short by less than this is whole

local function pace_burst(rate) return math.max(1, rate * PACE_BURST_SECONDS) end

-- The bucket at `now` (refilled, and grown if `grow`), or nil when no rate is in force.
local function pace_load(pace_key, now, max_rate, grow)
  local p = redis.call('HMGET', pace_key, 'rate', 'tokens', 'at', 'ceiling', 'grown', 'dry')
  local pace
  if p[1] then
    pace = {rate = tonumber(p[1]), tokens = tonumber(p[2]), at = tonumber(p[3]),
            ceiling = tonumber(p[4]), grown = tonumber(p[5]), dry = p[6] == '1'}
  elseif max_rate > 0 then
    pace = {rate = max_rate, tokens = pace_burst(max_rate), at = now, ceiling = 0, grown = now,
            dry = false}
  else
    return nil
  end
  if grow and now - pace.grown >= 1 then
    if pace.dry then
      local slow_start = pace.ceiling == 0 or pace.rate < pace.ceiling / 2
      pace.rate = pace.rate * (slow_start and 2 or 1.1)
    end
    pace.grown, pace.dry = now, false
  end
  if max_rate > 0 and pace.rate > max_rate then pace.rate = max_rate end
  local refill = pace.tokens + math.max(0, now - pace.at) * pace.rate + PACE_EPSILON
  pace.tokens = math.min(pace_burst(pace.rate), refill)
  pace.at = now
  return pace
end

local function pace_save(pace_key, pace)
  redis.call('HSET', pace_key, 'rate', pace.rate, 'tokens', pace.tokens, 'at', pace.at,
             'ceiling', pace.ceiling, 'grown', pace.grown, 'dry', pace.dry and 1 or 0)
  redis.call('PEXPIRE', pace_key, PACE_TTL_MS)
end

-- Goals sent by every worker, counted a second at a time, so that a first 429 knows the rate
-- that drew it.
local function sent_add(sent_key, now, n)
  local s = redis.call('HMGET', sent_key, 'since', 'count', 'recent')
  local since, count, recent = tonumber(s[1]) or now, tonumber(s[2]) or 0, tonumber(s[3]) or 0
  if now - since >= 1 then recent, count, since = count / (now - since), 0, now end
  redis.call('HSET', sent_key, 'since', since, 'count', count + n, 'recent', recent)
  redis.call('PEXPIRE', sent_key, 60000)
end

local function sent_rate(sent_key, now)
  local s = redis.call('HMGET', sent_key, 'since', 'count', 'recent')
  local since, count = tonumber(s[1]), tonumber(s[2]) or 0
  if not since then return 0 end
  if now - since >= 1 then return count / (now - since) end
  return math.max(tonumber(s[3]) or 0, count / math.max(now - since, 0.25))
end

