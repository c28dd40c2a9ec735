-- claim.lua: lease up to n due rows of one provider to a worker.
-- Nothing is claimed unless the campaign is running. A claimed row moves from
-- the due set to the lease set (scored by lease expiry); if the worker dies,
-- reap.lua puts it back when the lease expires. Each step is one command for
-- the whole batch: per-row calls cost more than the work itself.
-- KEYS[1] due:P  KEYS[2] lease  KEYS[3] leasep  KEYS[4] row  KEYS[5] res  KEYS[6] meta
-- ARGV[1] now_ms  ARGV[2] n  ARGV[3] lease_ms  ARGV[4] provider name
-- Returns {row1, fields1, res1, row2, ...}.
local state = redis.call('HGET', KEYS[6], 'state')
if state ~= 'running' then
    return {}
end
local now = tonumber(ARGV[1])
local rows = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
if #rows == 0 then
    return {}
end
redis.call('HSETNX', KEYS[6], 'started_ms', now)
local until_ms = now + tonumber(ARGV[3])
local zargs, hargs = {}, {}
for i, row in ipairs(rows) do
    zargs[2 * i - 1] = until_ms
    zargs[2 * i] = row
    hargs[2 * i - 1] = row
    hargs[2 * i] = ARGV[4]
end
redis.call('ZREM', KEYS[1], unpack(rows))
redis.call('ZADD', KEYS[2], unpack(zargs))
redis.call('HSET', KEYS[3], unpack(hargs))
local fields = redis.call('HMGET', KEYS[4], unpack(rows))
local res = redis.call('HMGET', KEYS[5], unpack(rows))
local out = {}
for i, row in ipairs(rows) do
    out[3 * i - 2] = row
    out[3 * i - 1] = fields[i] or '[]'
    out[3 * i] = res[i] or '{}'
end
return out
