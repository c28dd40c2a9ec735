-- record.lua: record a batch of attempts and their rows' state changes in one
-- step, and give back the leases the worker is done with. A row already final
-- stays as it is (a late record from a worker whose lease expired, a row
-- cancelled meanwhile, or a batch sent again after a lost reply), so counts
-- never double. The worker composes each result (see keys.h); no JSON is
-- parsed here. Reads and writes go one command per key for the batch.
-- KEYS[1] lease  KEYS[2] res  KEYS[3] count  KEYS[4] meta  KEYS[5] state
-- KEYS[6..] due sets of the providers the records name by index
-- ARGV[1] now_ms  ARGV[2] records  ARGV[3] releases  ARGV[4] returns, then
--   per record (7 values): row, status (a final state, or "deferred": the row
--     is retried on its own as member "F-L:row" at retry_at), result JSON,
--     retry_at_ms, due index (1-based among KEYS[6..]), batch id "F-L",
--     attempted ("1" when a server was tried);
--   per release: a lease member ("member|P") whose rows are all recorded;
--   per return (2 values): a lease member to put back due now (a worker that
--     stops gives back what it did not try), due index.
-- Returns the number of records applied.
local now = tonumber(ARGV[1])
local n, nrel, nret = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[4], 'state')
local applied = 0
local incr = {}
if n > 0 then
    local get = {}
    for i = 1, n do
        get[3 * i - 2] = 'GET'
        get[3 * i - 1] = 'u2'
        get[3 * i] = '#' .. ARGV[5 + 7 * (i - 1)]
    end
    local cur = redis.call('BITFIELD', KEYS[5], unpack(get))
    local hset, set, zadd = {}, {}, {}
    for i = 1, n do
        local at = 5 + 7 * (i - 1)
        local row, status, res = ARGV[at], ARGV[at + 1], ARGV[at + 2]
        if cur[i] ~= 2 then
            if status == 'deferred' and state == 'cancelled' then
                status = 'cancelled'
                res = res:gsub('"status":"deferred"', '"status":"cancelled"', 1)
            end
            hset[#hset + 1] = row
            hset[#hset + 1] = res
            set[#set + 1] = 'SET'
            set[#set + 1] = 'u2'
            set[#set + 1] = '#' .. row
            if status == 'deferred' then
                set[#set + 1] = 1
                local k = 5 + tonumber(ARGV[at + 4])
                zadd[k] = zadd[k] or {}
                table.insert(zadd[k], tonumber(ARGV[at + 3]))
                table.insert(zadd[k], ARGV[at + 5] .. ':' .. row)
                incr.deferred = (incr.deferred or 0) + 1
            else
                set[#set + 1] = 2
                incr[status] = (incr[status] or 0) + 1
                incr.final = (incr.final or 0) + 1
            end
            if ARGV[at + 6] == '1' then
                incr.attempts = (incr.attempts or 0) + 1
            end
            applied = applied + 1
        end
    end
    if #hset > 0 then
        redis.call('HSET', KEYS[2], unpack(hset))
        redis.call('BITFIELD', KEYS[5], unpack(set))
    end
    for k, args in pairs(zadd) do
        redis.call('ZADD', KEYS[k], unpack(args))
    end
end
local at = 5 + 7 * n
if nrel > 0 then
    local rel = {}
    for i = 1, nrel do
        rel[i] = ARGV[at + i - 1]
    end
    redis.call('ZREM', KEYS[1], unpack(rel))
    at = at + nrel
end
for i = 1, nret do
    local lm, k = ARGV[at], 5 + tonumber(ARGV[at + 1])
    at = at + 2
    if redis.call('ZREM', KEYS[1], lm) == 1 then
        redis.call('ZADD', KEYS[k], now, lm:match('^([^|]*)|'))
    end
end
for k, v in pairs(incr) do
    redis.call('HINCRBY', KEYS[3], k, v)
end
if incr.final then
    local done = tonumber(redis.call('HGET', KEYS[3], 'final') or '0')
    local total = tonumber(redis.call('HGET', KEYS[3], 'total') or '0')
    if done >= total and redis.call('HGET', KEYS[4], 'ingested') == '1' then
        if state ~= 'cancelled' then
            redis.call('HSET', KEYS[4], 'state', 'done')
        end
        redis.call('HSET', KEYS[4], 'finished_ms', now)
    end
end
return applied
