-- claim.lua: lease up to m due members of one provider to a worker.
-- A member is a batch part ("F-L/n": provider P's rows of batch F-L) or one
-- row of a batch ("F-L:r", a row retried on its own). Nothing is claimed
-- unless the campaign is running. A claimed member moves from the due set to
-- the lease set as "member|P", scored by lease expiry; if the worker dies,
-- reap.lua puts it back when the lease expires. With each member come its
-- batch blob, the state bits of rows F..L (2 bits a row from bit 2F: 0 in
-- its batch, 1 retried on its own, 2 final; the worker skips rows that are
-- not 0 for a batch part) and, for a single row, its result so far (kept in
-- retry while the row is retried on its own).
-- KEYS[1] due:P  KEYS[2] lease  KEYS[3] batch  KEYS[4] state  KEYS[5] retry  KEYS[6] meta
-- ARGV[1] now_ms  ARGV[2] m  ARGV[3] lease_ms  ARGV[4] provider name
-- Returns {member1, blob1, bits1, res1, member2, ...}.
if redis.call('HGET', KEYS[6], 'state') ~= 'running' then
    return {}
end
local now = tonumber(ARGV[1])
local members = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[2]))
if #members == 0 then
    return {}
end
redis.call('HSETNX', KEYS[6], 'started_ms', now)
local until_ms = now + tonumber(ARGV[3])
local zargs, out = {}, {}
for i, m in ipairs(members) do
    zargs[2 * i - 1] = until_ms
    zargs[2 * i] = m .. '|' .. ARGV[4]
    local f, l, rest = m:match('^(%d+)-(%d+)(.*)$')
    local single = rest:match('^:(%d+)$')
    out[4 * i - 3] = m
    out[4 * i - 2] = redis.call('HGET', KEYS[3], f .. '-' .. l) or ''
    out[4 * i - 1] = redis.call('GETRANGE', KEYS[4], math.floor(2 * tonumber(f) / 8),
                                math.floor((2 * tonumber(l) + 1) / 8))
    out[4 * i] = single and (redis.call('HGET', KEYS[5], single) or '') or ''
end
redis.call('ZREM', KEYS[1], unpack(members))
redis.call('ZADD', KEYS[2], unpack(zargs))
return out
