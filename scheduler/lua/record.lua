-- record.lua: record a batch of attempts and their rows' state changes in one
-- step. A row that is already final stays as it is (a late record from a
-- worker whose lease expired, a row cancelled meanwhile, or a batch sent again
-- after a lost reply), so counts never double. Reads and writes go one command
-- per batch.
-- KEYS[1] lease  KEYS[2] leasep  KEYS[3] res  KEYS[4] count  KEYS[5] meta
-- KEYS[6..] due sets of the providers the records name by index
-- ARGV[1] now_ms  ARGV[2] number of records, then 9 values per record:
--   row, status (a final state, or "deferred": requeue at retry_at), code,
--   enhanced, response, host, attempted ("1" when a server was tried),
--   retry_at_ms, due index (1-based among KEYS[6..])
-- Returns the number of records applied.
local final = {delivered = true, bounced = true, failed = true, suppressed = true,
               rejected = true, cancelled = true}
local now = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
if n == 0 then
    return 0
end
local state = redis.call('HGET', KEYS[5], 'state')
local rows = {}
for i = 1, n do
    rows[i] = ARGV[3 + 9 * (i - 1)]
end
redis.call('ZREM', KEYS[1], unpack(rows))
redis.call('HDEL', KEYS[2], unpack(rows))
local raws = redis.call('HMGET', KEYS[3], unpack(rows))
local incr, hset, zrem, zadd = {}, {}, {}, {}
local applied = 0
for i = 1, n do
    local at = 3 + 9 * (i - 1)
    local row, status, code, enhanced = ARGV[at], ARGV[at + 1], ARGV[at + 2], ARGV[at + 3]
    local response, host, attempted = ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
    local retry_at, didx = ARGV[at + 7], 5 + tonumber(ARGV[at + 8])
    local raw = raws[i]
    if raw then
        local res = cjson.decode(raw)
        zrem[didx] = zrem[didx] or {}
        if final[res.status] then
            table.insert(zrem[didx], row)
        else
            if attempted == '1' then
                res.attempts = (res.attempts or 0) + 1
                if (res.first or 0) == 0 then
                    res.first = now
                end
                res.last = now
                incr.attempts = (incr.attempts or 0) + 1
            end
            res.code = tonumber(code)
            res.enhanced = enhanced
            res.response = response
            if host ~= '' then
                res.host = host
            end
            if status == 'deferred' and state == 'cancelled' then
                status = 'cancelled'
            end
            res.status = status
            hset[#hset + 1] = row
            hset[#hset + 1] = cjson.encode(res)
            if status == 'deferred' then
                incr.deferred = (incr.deferred or 0) + 1
                zadd[didx] = zadd[didx] or {}
                table.insert(zadd[didx], tonumber(retry_at))
                table.insert(zadd[didx], row)
            else
                table.insert(zrem[didx], row)
                incr[status] = (incr[status] or 0) + 1
                incr.final = (incr.final or 0) + 1
            end
            applied = applied + 1
        end
    end
end
if #hset > 0 then
    redis.call('HSET', KEYS[3], unpack(hset))
end
for k, members in pairs(zrem) do
    if #members > 0 then
        redis.call('ZREM', KEYS[k], unpack(members))
    end
end
for k, args in pairs(zadd) do
    redis.call('ZADD', KEYS[k], unpack(args))
end
for k, v in pairs(incr) do
    redis.call('HINCRBY', KEYS[4], k, v)
end
if incr.final then
    local done = tonumber(redis.call('HGET', KEYS[4], 'final') or '0')
    local total = tonumber(redis.call('HGET', KEYS[4], 'total') or '0')
    if done >= total and redis.call('HGET', KEYS[5], 'ingested') == '1' then
        if state ~= 'cancelled' then
            redis.call('HSET', KEYS[5], 'state', 'done')
        end
        redis.call('HSET', KEYS[5], 'finished_ms', now)
    end
end
return applied
