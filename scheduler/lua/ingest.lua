-- ingest.lua: add batches of CSV rows to a campaign, idempotently.
-- A batch is a run of consecutive rows ("F-L", first and last row number)
-- stored as one blob; a batch already present is left alone, so rerunning
-- an interrupted ingest adds nothing twice. Per row, Redis does nothing here:
-- that is what lets ingest keep up with sending (see keys.h).
-- KEYS[1] meta  KEYS[2] batch  KEYS[3] count  KEYS[4] providers  KEYS[5] state
-- KEYS[6] batches  KEYS[7..6+ARGV[2]] the due sets of the providers named in
-- ARGV[4..3+ARGV[2]], then the results hashes res:K for K from ARGV[3] on,
-- enough for every row of the call (rows rejected, or cancelled on arrival)
-- ARGV[1] number of batches  ARGV[2] due sets  ARGV[3] the first results
-- hash's K; after the provider names, per batch:
--   id ("F-L"), due_ms, blob, number of provider parts, then per part its
--   provider index (1-based among the due keys) and row count, then the
--   number of rejected rows and per rejected row: row, result (result.h)
-- Meta's rows_in is the last row of every batch added so far: a rerun skips
-- rows up to it (ingest.c), whatever batches it cuts; a batch that ends by
-- then is left out here too, and one that straddles it is an error (two
-- ingests at once that cut batches differently).
-- Returns the number of rows added.
local nb, ndue, k0 = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 1, ndue do
    redis.call('SADD', KEYS[4], ARGV[3 + i])
end
-- Rows that arrive after a cancel are cancelled at once, never left due.
local cancelled = redis.call('HGET', KEYS[1], 'state') == 'cancelled'
local email_col = tonumber(redis.call('HGET', KEYS[1], 'email_col') or '0') + 1
local at = 4 + ndue
local rows_in = tonumber(redis.call('HGET', KEYS[1], 'rows_in') or '0')
local last_in = rows_in
local added, incr, zadd, bits, hres = 0, {}, {}, {}, {}
-- A text column of a result, escaped as result.h says.
local escapes = {['\\'] = '\\\\', ['\t'] = '\\t', ['\r'] = '\\r', ['\n'] = '\\n'}
local function text(s)
    return (tostring(s):gsub('[\\\t\r\n]', escapes))
end
local function final(row, status, res)
    local k = 7 + ndue + math.floor(tonumber(row) / 64) - k0
    local h = hres[k] or {}
    hres[k] = h
    h[#h + 1] = row
    h[#h + 1] = res
    bits[#bits + 1] = 'SET'
    bits[#bits + 1] = 'u2'
    bits[#bits + 1] = '#' .. row
    bits[#bits + 1] = 2
    incr[status] = (incr[status] or 0) + 1
    incr.final = (incr.final or 0) + 1
end
-- Refuse the call before writing anything if a batch straddles rows_in.
do
    local a = at
    for _ = 1, nb do
        local f, l = ARGV[a]:match('^(%d+)-(%d+)$')
        if tonumber(f) <= rows_in and tonumber(l) > rows_in then
            return redis.error_reply('rows ' .. ARGV[a] .. ' overlap the rows already ' ..
                                     'ingested (1-' .. rows_in .. '): ingest again')
        end
        a = a + 4 + 2 * tonumber(ARGV[a + 3])
        a = a + 1 + 2 * tonumber(ARGV[a])
    end
end
for _ = 1, nb do
    local id, due, blob, np = ARGV[at], ARGV[at + 1], ARGV[at + 2], tonumber(ARGV[at + 3])
    at = at + 4
    local parts = {}
    for k = 1, np do
        parts[k] = {tonumber(ARGV[at]), ARGV[at + 1]}
        at = at + 2
    end
    local nrej = tonumber(ARGV[at])
    at = at + 1
    local f, l = id:match('^(%d+)-(%d+)$')
    f, l = tonumber(f), tonumber(l)
    local new = l > rows_in and redis.call('HSETNX', KEYS[2], id, blob) == 1
    if l > last_in then
        last_in = l
    end
    if new then
        redis.call('ZADD', KEYS[6], f, id)
        for k = 1, nrej do
            final(ARGV[at + 2 * k - 2], 'rejected', ARGV[at + 2 * k - 1])
        end
        added = added + nrej
        if cancelled then
            for row, p, fields in blob:gmatch('(%d+)\t([^\t]*)\t([^\n]*)\n') do
                local ok, f = pcall(cjson.decode, fields)
                local email = ok and type(f) == 'table' and f[email_col] or ''
                -- A result's columns (scheduler/result.h): status, attempts,
                -- code, enhanced, first, last, host, provider, email, response.
                final(row, 'cancelled', 'cancelled\t0\t0\t\t0\t0\t\t' .. text(p) .. '\t' ..
                    text(email) .. '\tthe campaign was cancelled')
                added = added + 1
            end
        else
            for _, part in ipairs(parts) do
                local z = zadd[6 + part[1]] or {}
                zadd[6 + part[1]] = z
                z[#z + 1] = due
                z[#z + 1] = id .. '/' .. part[2]
                added = added + tonumber(part[2])
            end
        end
    end
    at = at + 2 * nrej
end
-- One command per key for the whole call.
for k, h in pairs(hres) do
    redis.call('HSET', KEYS[k], unpack(h))
end
if #bits > 0 then
    redis.call('BITFIELD', KEYS[5], unpack(bits))
end
for k, args in pairs(zadd) do
    redis.call('ZADD', KEYS[k], unpack(args))
end
incr.total = added
for k, v in pairs(incr) do
    if v > 0 then
        redis.call('HINCRBY', KEYS[3], k, v)
    end
end
redis.call('HSET', KEYS[1], 'total', redis.call('HGET', KEYS[3], 'total') or 0,
           'rows_in', last_in)
return added
