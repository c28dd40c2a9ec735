-- ingest.lua: add a batch of CSV rows to a campaign, idempotently.
-- A row already present (by row number) is left alone, so rerunning an
-- interrupted ingest adds nothing twice.
-- KEYS[1] meta  KEYS[2] row  KEYS[3] res  KEYS[4] count  KEYS[5] providers
-- KEYS[6..] the due sets of the providers named in ARGV[2..1+#KEYS-5]
-- ARGV[1] number of rows; after the provider names, 7 values per row:
--   row, provider index (1-based among the due keys, 0 for none), due_ms,
--   fields (JSON array), email, status ("pending" | "rejected"), response
-- Returns the number of rows added.
local ndue = #KEYS - 5
-- Rows that arrive after a cancel are cancelled at once, never left due.
local cancelled = redis.call('HGET', KEYS[1], 'state') == 'cancelled'
local n = tonumber(ARGV[1])
local at = 2 + ndue
local added = 0
local hrow, zadd, incr = {}, {}, {}
for i = 1, ndue do
    redis.call('SADD', KEYS[5], ARGV[1 + i])
end
for _ = 1, n do
    local row, pidx, due = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2]
    local fields, email, status, response = ARGV[at + 3], ARGV[at + 4], ARGV[at + 5], ARGV[at + 6]
    at = at + 7
    local provider = pidx > 0 and ARGV[1 + pidx] or ''
    if cancelled and status == 'pending' then
        status = 'cancelled'
        response = 'the campaign was cancelled'
    end
    local res = cjson.encode({email = email, provider = provider, status = status,
                              attempts = 0, code = 0, enhanced = '', response = response,
                              first = 0, last = 0, host = ''})
    if redis.call('HSETNX', KEYS[3], row, res) == 1 then
        added = added + 1
        hrow[#hrow + 1] = row
        hrow[#hrow + 1] = fields
        if status == 'pending' then
            local z = zadd[5 + pidx] or {}
            zadd[5 + pidx] = z
            z[#z + 1] = due
            z[#z + 1] = row
        else
            incr[status] = (incr[status] or 0) + 1
            incr.final = (incr.final or 0) + 1
        end
    end
end
-- One command per key for the whole batch.
if #hrow > 0 then
    redis.call('HSET', KEYS[2], unpack(hrow))
end
for k, args in pairs(zadd) do
    redis.call('ZADD', KEYS[k], unpack(args))
end
incr.total = added
for k, v in pairs(incr) do
    if v > 0 then
        redis.call('HINCRBY', KEYS[4], k, v)
    end
end
redis.call('HSET', KEYS[1], 'total', redis.call('HGET', KEYS[4], 'total') or 0)
return added
