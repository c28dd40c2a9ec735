-- record.lua: record a row's attempt and its state change in one step.
-- A row that is already final stays as it is (a late record from a worker
-- whose lease expired, or a row cancelled meanwhile), so counts never double.
-- KEYS[1] lease  KEYS[2] leasep  KEYS[3] res  KEYS[4] count  KEYS[5] due:P  KEYS[6] meta
-- ARGV[1] row  ARGV[2] status: a final state, or "deferred" (requeue at ARGV[9])
-- ARGV[3] code  ARGV[4] enhanced  ARGV[5] response  ARGV[6] now_ms  ARGV[7] host
-- ARGV[8] attempted ("1" when a server was tried)  ARGV[9] retry_at_ms
-- Returns 1 when recorded, 0 when the row was already final.
local final = {delivered = true, bounced = true, failed = true, suppressed = true,
               rejected = true, cancelled = true}
local row, status = ARGV[1], ARGV[2]
local raw = redis.call('HGET', KEYS[3], row)
if not raw then
    return redis.error_reply('no such row ' .. row)
end
local res = cjson.decode(raw)
redis.call('ZREM', KEYS[1], row)
redis.call('HDEL', KEYS[2], row)
if final[res.status] then
    redis.call('ZREM', KEYS[5], row)
    return 0
end
local now = tonumber(ARGV[6])
if ARGV[8] == '1' then
    res.attempts = (res.attempts or 0) + 1
    if (res.first or 0) == 0 then
        res.first = now
    end
    res.last = now
    redis.call('HINCRBY', KEYS[4], 'attempts', 1)
end
res.code = tonumber(ARGV[3])
res.enhanced = ARGV[4]
res.response = ARGV[5]
if ARGV[7] ~= '' then
    res.host = ARGV[7]
end
if status == 'deferred' and redis.call('HGET', KEYS[6], 'state') == 'cancelled' then
    status = 'cancelled'
end
res.status = status
redis.call('HSET', KEYS[3], row, cjson.encode(res))
if status == 'deferred' then
    redis.call('HINCRBY', KEYS[4], 'deferred', 1)
    redis.call('ZADD', KEYS[5], tonumber(ARGV[9]), row)
else
    redis.call('ZREM', KEYS[5], row)
    redis.call('HINCRBY', KEYS[4], status, 1)
    local done = redis.call('HINCRBY', KEYS[4], 'final', 1)
    local total = tonumber(redis.call('HGET', KEYS[4], 'total') or '0')
    if done >= total and redis.call('HGET', KEYS[6], 'ingested') == '1' then
        if redis.call('HGET', KEYS[6], 'state') ~= 'cancelled' then
            redis.call('HSET', KEYS[6], 'state', 'done')
        end
        redis.call('HSET', KEYS[6], 'finished_ms', now)
    end
end
return 1
