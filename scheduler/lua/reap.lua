-- reap.lua: rows whose lease expired (their worker died or stalled) become
-- due again, in their provider's due set, at once.
-- KEYS[1] lease  KEYS[2] leasep  KEYS[3..] the due sets of the providers named
-- in ARGV[3..]
-- ARGV[1] now_ms: when the rows become due
-- ARGV[2] cutoff_ms: leases expiring before this are taken back (a send on its
--         own embedded Redis passes "+inf" to take back every lease of a run
--         that was killed)
-- Returns the number of rows put back.
local now = tonumber(ARGV[1])
local idx = {}
for i = 3, #KEYS do
    idx[ARGV[i]] = KEYS[i]
end
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1000)
local n = 0
for _, row in ipairs(rows) do
    local p = redis.call('HGET', KEYS[2], row)
    local due = p and idx[p]
    if due then
        redis.call('ZADD', due, now, row)
        redis.call('ZREM', KEYS[1], row)
        redis.call('HDEL', KEYS[2], row)
        n = n + 1
    end
end
return n
