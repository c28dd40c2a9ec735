-- claim.lua: lease up to n due rows of one provider to a worker.
-- Nothing is claimed unless the campaign is running. A claimed row moves from
-- the due set to the lease set (scored by lease expiry); if the worker dies,
-- reap.lua puts it back when the lease expires.
-- KEYS[1] due:P  KEYS[2] lease  KEYS[3] leasep  KEYS[4] row  KEYS[5] res  KEYS[6] meta
-- ARGV[1] now_ms  ARGV[2] n  ARGV[3] lease_ms  ARGV[4] provider name
-- Returns {row1, fields1, res1, row2, ...}.
local state = redis.call('HGET', KEYS[6], 'state')
if state ~= 'running' then
    return {}
end
local now = tonumber(ARGV[1])
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
if #rows > 0 then
    redis.call('HSETNX', KEYS[6], 'started_ms', now)
end
for _, row in ipairs(rows) do
    redis.call('ZREM', KEYS[1], row)
    redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), row)
    redis.call('HSET', KEYS[3], row, ARGV[4])
    out[#out + 1] = row
    out[#out + 1] = redis.call('HGET', KEYS[4], row) or '[]'
    out[#out + 1] = redis.call('HGET', KEYS[5], row) or '{}'
end
return out
