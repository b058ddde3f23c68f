-- Shared by every script that reads or writes delivered markers (see goalqueue/keys.py and
-- goalqueue/markers.py). A marker is one field of a small hash: the markers of a time bucket
-- are spread over shards that each stay in Redis's compact listpack encoding (at most 128
-- fields of at most 64 bytes, Redis's defaults), and expire together, a bucket at a time.
--   registry  `reg` (hash): '<bucket start ms>:<expiry ms>' -> markers in the bucket
--   shard     `reg:<start>:<shard>` (hash): a canonical (lowercase) UUID's 16 bytes -> value
--   others    `reg:<start>:x` (hash): any other event id (poison letters', tests'), as it is
-- value: a kind byte (0: no DataFast id, 1: DataFast's 24-hex id packed in 12 bytes, 2:
-- DataFast's id as text), the delivery time in ms after the bucket's start (4 bytes), the id.
-- A bucket's shards grow by linear hashing: with n shards, a field's shard is its hash modulo
-- the largest power of two `low` <= n, or modulo 2 * low when that lands on a shard already
-- split; a new marker that takes the bucket past MARKER_LOAD markers a shard splits the next
-- shard in line. A lookup reads the registry once per call and one shard per live bucket.
-- Redis's `struct` packs when there is one (fakeredis, which the demo may run on, has none).
local MARKER_LOAD = 48
local MARKER_REMOTE_MAX = 48  -- a longer DataFast id (never seen) is not kept
local OTHERS = 'x'

-- A marker lives `ttl_ms` after its bucket ends: 6 buckets a lifetime, so that a lookup that
-- finds nothing (most of them) reads 7 shards, and a marker outlives its time by a sixth at most
-- (a twelfth on average).
local function marker_bucket_ms(ttl_ms)
  return math.max(1000, math.ceil(ttl_ms / 6))
end

local function marker_now_ms()
  local clock = redis.call('TIME')
  return tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
end

local byte, sub, char, floor = string.byte, string.sub, string.char, math.floor
local unpack = unpack or table.unpack

-- `n` (a whole number below 2^(8 * size)) in `size` bytes, big-endian.
local function pack_be(n, size)
  local bytes = {}
  for i = size, 1, -1 do
    bytes[i] = n % 256
    n = floor(n / 256)
  end
  return char(unpack(bytes))
end

local function unpack_be(text, from, size)
  local n = 0
  for i = from, from + size - 1 do n = n * 256 + byte(text, i) end
  return n
end

local pack_u32 = function(n) return pack_be(n, 4) end
local unpack_u32 = function(text, from) return unpack_be(text, from, 4) end
local pack_uuid = function(a, b, c, d, e, f)
  return pack_be(a, 4) .. pack_be(b, 2) .. pack_be(c, 2) .. pack_be(d, 2) .. pack_be(e, 2)
    .. pack_be(f, 4)
end
if struct then
  pack_u32 = function(n) return struct.pack('>I4', n) end
  unpack_u32 = function(text, from) return (struct.unpack('>I4', text, from)) end
  pack_uuid = function(a, b, c, d, e, f)
    return struct.pack('>I4I2I2I2I2I4', a, b, c, d, e, f)
  end
end

-- A canonical UUID's 16 bytes, or nil for an id of any other form.
local function marker_uuid(event_id)
  if #event_id == 36 and byte(event_id, 9) == 45 and byte(event_id, 14) == 45
     and byte(event_id, 19) == 45 and byte(event_id, 24) == 45
     and not string.find(event_id, '[^0-9a-f-]') then
    local a, b = tonumber(sub(event_id, 1, 8), 16), tonumber(sub(event_id, 10, 13), 16)
    local c, d = tonumber(sub(event_id, 15, 18), 16), tonumber(sub(event_id, 20, 23), 16)
    local e, f = tonumber(sub(event_id, 25, 28), 16), tonumber(sub(event_id, 29, 36), 16)
    -- a dash elsewhere leaves a group that is not a number (or, leading, a signed one)
    if a and b and c and d and e and f and byte(event_id, 1) ~= 45 and byte(event_id, 10) ~= 45
       and byte(event_id, 15) ~= 45 and byte(event_id, 20) ~= 45 and byte(event_id, 25) ~= 45
       and byte(event_id, 29) ~= 45 then
      return pack_uuid(a, b, c, d, e, f)
    end
  end
  return nil
end

-- The field that stands for `event_id`, and whether it is a packed UUID.
local function marker_field(event_id)
  local packed = marker_uuid(event_id)
  if packed then return packed, true end
  return event_id, false
end

-- Where a packed UUID goes: its first and last four bytes added up (random in a UUID of
-- version 4; in version 1, the first vary with time; in version 7, the last are random).
local function marker_hash(field)
  return (unpack_u32(field, 1) + unpack_u32(field, 13)) % 4294967296
end

local function marker_shards(count)
  local n = math.max(1, math.ceil(count / MARKER_LOAD))
  local low = 1
  while low * 2 <= n do low = low * 2 end
  return n, low
end

local function marker_shard(h, bucket)
  local shard = h % bucket.low
  if shard < bucket.split then shard = h % bucket.high end
  return bucket.prefix .. shard
end

local function marker_bucket(reg, name, count)
  local start, expires = string.match(name, '^(%d+):(%d+)$')
  local n, low = marker_shards(count)
  return {name = name, start = tonumber(start), expires = tonumber(expires), count = count,
          n = n, low = low, split = n - low, high = 2 * low, prefix = reg .. ':' .. start .. ':'}
end

-- The live buckets (newest first) and the names of expired ones, read once per call.
local function marker_window(reg, now_ms)
  local fields = redis.call('HGETALL', reg)
  local live, expired = {}, {}
  for i = 1, #fields, 2 do
    local bucket = marker_bucket(reg, fields[i], tonumber(fields[i + 1]))
    if bucket.expires and bucket.expires > now_ms then
      table.insert(live, bucket)
    else
      table.insert(expired, fields[i])
    end
  end
  table.sort(live, function(a, b) return a.start > b.start end)
  return live, expired
end

-- The bucket and value of the marker of `field` (a packed UUID if `packed`), or nil.
local function marker_find(live, field, packed)
  if not packed then
    for _, bucket in ipairs(live) do
      local value = redis.call('HGET', bucket.prefix .. OTHERS, field)
      if value then return bucket, value end
    end
    return nil
  end
  local h = marker_hash(field)
  for _, bucket in ipairs(live) do
    local value = redis.call('HGET', marker_shard(h, bucket), field)
    if value then return bucket, value end
  end
  return nil
end

-- A marker's delivery time (ms) and DataFast's id ('' when not kept).
local function marker_read(bucket, value)
  local kind, offset_ms = byte(value, 1), unpack_u32(value, 2)
  local remote = sub(value, 6)
  if kind == 1 then
    remote = string.format('%08x%08x%08x', unpack_u32(remote, 1), unpack_u32(remote, 5),
                           unpack_u32(remote, 9))
  end
  return bucket.start + offset_ms, remote
end

-- Splits the next shard in line; `hash_of(field, value)` is the hash that places an entry.
local function marker_split(bucket, hash_of)
  local low, old = bucket.low, bucket.n - bucket.low
  local from, to = bucket.prefix .. old, bucket.prefix .. bucket.n
  local entries = redis.call('HGETALL', from)
  for i = 1, #entries, 2 do
    if hash_of(entries[i], entries[i + 1]) % (2 * low) == bucket.n then
      redis.call('HSET', to, entries[i], entries[i + 1])
      redis.call('HDEL', from, entries[i])
    end
  end
  if redis.call('EXISTS', to) == 1 then redis.call('PEXPIREAT', to, bucket.expires) end
  bucket.n, bucket.low = marker_shards(bucket.count)
  bucket.split, bucket.high = bucket.n - bucket.low, 2 * bucket.low
end

local function marker_value(offset_ms, remote)
  local kind = 0
  if #remote == 24 and not string.find(remote, '[^0-9a-f]') then
    kind = 1
    remote = pack_u32(tonumber(sub(remote, 1, 8), 16))
      .. pack_u32(tonumber(sub(remote, 9, 16), 16)) .. pack_u32(tonumber(sub(remote, 17, 24), 16))
  elseif remote ~= '' and #remote <= MARKER_REMOTE_MAX then
    kind = 2
  else
    remote = ''
  end
  return char(kind) .. pack_u32(offset_ms) .. remote
end

-- Adds `field` = value(offset in ms from its bucket's start) to the current bucket of
-- `bucket_ms` in `reg`, its shard placed by `h` (nil: the bucket's others), entries by `hash_of`
-- (see marker_split); the bucket expires `ttl_ms` after it ends.
local function bucketed_add(reg, live, now_ms, bucket_ms, ttl_ms, field, value, h, hash_of)
  local start = math.floor(now_ms / bucket_ms) * bucket_ms
  local name = string.format('%.0f:%.0f', start, start + bucket_ms + ttl_ms)
  local bucket
  for _, candidate in ipairs(live) do
    if candidate.name == name then bucket = candidate end
  end
  if not bucket then
    bucket = marker_bucket(reg, name, 0)
    table.insert(live, 1, bucket)
  end
  bucket.count = redis.call('HINCRBY', reg, name, 1)
  if math.ceil(bucket.count / MARKER_LOAD) > bucket.n then marker_split(bucket, hash_of) end
  local shard = h and marker_shard(h, bucket) or bucket.prefix .. OTHERS
  redis.call('HSET', shard, field, value(now_ms - start))
  redis.call('PEXPIREAT', shard, bucket.expires)
end

-- Marks `field` (a packed UUID if `packed`) delivered at now_ms (DataFast's id `remote`) in the
-- current bucket of `bucket_ms`, whose markers expire `ttl_ms` after it ends. The caller checked
-- marker_find.
local function marker_add(reg, live, now_ms, bucket_ms, ttl_ms, field, packed, remote)
  local value = function(offset_ms) return marker_value(offset_ms, remote) end
  local h = packed and marker_hash(field) or nil
  bucketed_add(reg, live, now_ms, bucket_ms, ttl_ms, field, value, h, marker_hash)
end

-- Forgets the registry's expired buckets (their shards expired with them).
local function marker_prune(reg, expired)
  if #expired > 0 then redis.call('HDEL', reg, unpack(expired)) end
end

