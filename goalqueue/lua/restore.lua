#!lua flags=allow-oom
-- RESTORE: an unacknowledged message back onto its queue(s), if it is still unacknowledged as it
-- was read (what kombu's QoS.restore_by_tag does with WATCH and MULTI, which Redis refuses at
-- maxmemory). allow-oom: the message moves from the unacked hash back to the queue. Returns 1 if
-- it was restored, 0 if it was acked or restored meanwhile.
local unacked_key, index_key = KEYS[1], KEYS[2]
local tag, expected, push = ARGV[1], ARGV[2], ARGV[3] == '1' and 'LPUSH' or 'RPUSH'
-- KEYS[3..]: the queues it goes back to; ARGV[4..]: the message for each

if redis.call('HGET', unacked_key, tag) ~= expected then return 0 end
redis.call('HDEL', unacked_key, tag)
redis.call('ZREM', index_key, tag)
for i = 3, #KEYS do redis.call(push, KEYS[i], ARGV[i + 1]) end
return 1
