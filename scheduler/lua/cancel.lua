-- cancel.lua: cancel the members ARGV[4..] of one provider's due set
-- (keys.h), those still in it: each of their rows still waiting gets status
-- "cancelled" in its results hash (the fields of a result it already has
-- kept) and is counted, all in one script, so a worker's claim sees either
-- the row due or the row final. The caller reads the members first (ZRANGE)
-- so that it can pass their results hashes in KEYS; a member claimed
-- meanwhile is no longer in the set and is left to its worker.
--
-- KEYS[1] meta  KEYS[2] retry  KEYS[3] count  KEYS[4] due:P  KEYS[5] batch
-- KEYS[6] state, then results hashes
-- ARGV[1] now_ms  ARGV[2] provider name  ARGV[3] n, then per member: the
--   member, the index in KEYS of the results hash of its batch's first row F
--   (row r's is that index plus r/64 - F/64)
-- Returns {rows cancelled, members left in the due set}.
local email_col = tonumber(redis.call('HGET', KEYS[1], 'email_col') or '0') + 1
local escapes = {['\\'] = '\\\\', ['\t'] = '\\t', ['\r'] = '\\r', ['\n'] = '\\n'}
local function text(s)
    return (tostring(s):gsub('[\\\t\r\n]', escapes))
end
local n = 0
for i = 1, tonumber(ARGV[3]) do
    local m, kidx = ARGV[2 + 2 * i], tonumber(ARGV[3 + 2 * i])
    local f, l, kind, v = m:match('^(%d+)-(%d+)([/:])(%d+)$')
    if redis.call('ZREM', KEYS[4], m) == 1 and f then
        kidx = kidx - math.floor(tonumber(f) / 64)
        local blob = redis.call('HGET', KEYS[5], f .. '-' .. l) or ''
        for row, p, fields in blob:gmatch('(%d+)\t([^\t]*)\t([^\n]*)\n') do
            local st = redis.call('BITFIELD', KEYS[6], 'GET', 'u2', '#' .. row)[1]
            local mine
            if kind == ':' then
                mine = row == v and st ~= 2
            else
                mine = p == ARGV[2] and st == 0
            end
            if mine then
                local raw = redis.call('HGET', KEYS[2], row)
                local res
                if raw then
                    res = with_status(raw, 'cancelled')
                    redis.call('HDEL', KEYS[2], row)
                else
                    local ok, fv = pcall(cjson.decode, fields)
                    local email = ok and type(fv) == 'table' and fv[email_col] or ''
                    res = 'cancelled\t0\t0\t\t0\t0\t\t' .. text(p) .. '\t' .. text(email) .. '\t'
                end
                redis.call('HSET', KEYS[kidx + math.floor(tonumber(row) / 64)], row, res)
                redis.call('BITFIELD', KEYS[6], 'SET', 'u2', '#' .. row, 2)
                redis.call('HINCRBY', KEYS[3], 'cancelled', 1)
                redis.call('HINCRBY', KEYS[3], 'final', 1)
                n = n + 1
            end
        end
    end
end
local left = redis.call('ZCARD', KEYS[4])
if left == 0 and all_final(KEYS[3], KEYS[1]) and not redis.call('HGET', KEYS[1], 'finished_ms') then
    redis.call('HSET', KEYS[1], 'finished_ms', ARGV[1])
end
return {n, left}
