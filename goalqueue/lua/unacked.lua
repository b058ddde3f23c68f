#!lua flags=allow-oom
-- UNACKED: record a message kombu's consumer has just taken off the queue as unacknowledged
-- (what kombu's QoS.append does in a MULTI): its envelope in the unacked hash, its tag in the
-- index scored by now. allow-oom: the message has just left the queue, and a worker that cannot
-- record it cannot go on (Redis refuses kombu's MULTI at maxmemory, which stops the worker).
local unacked_key, index_key = KEYS[1], KEYS[2]
local tag, envelope, now = ARGV[1], ARGV[2], ARGV[3]

redis.call('ZADD', index_key, now, tag)
redis.call('HSET', unacked_key, tag, envelope)
