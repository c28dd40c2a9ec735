-- pending.lua: the rows in a due or lease set that are still to be sent,
-- and of those the ones with a score <= ARGV[1]. A member (keys.h) is a
-- batch part "F-L/n", n rows of the provider in batch F-L, or one row
-- "F-L:r"; in the lease set it is followed by "|NAME". A part given back
-- after a stop, a kill or a pause still says n though some of its rows went
-- final: its rows are counted from the state bits (0: waiting in the batch),
-- and from the batch blob for the provider's rows when some are not 0.
-- Counting n alone showed more rows pending than were left.
--
-- KEYS[1] the set  KEYS[2] state  KEYS[3] batch
-- ARGV[1] the score limit  ARGV[2] the provider of a due set, "" for the
--   lease set
-- Returns {rows up to ARGV[1], all rows}.
local all, upto = 0, 0
local z = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local lim = tonumber(ARGV[1])
for i = 1, #z, 2 do
    local m, prov = z[i], ARGV[2]
    if prov == '' then
        m, prov = z[i]:match('^(.*)|(.*)$')
    end
    local n = 1
    local f, l, k = (m or ''):match('^(%d+)%-(%d+)/(%d+)$')
    local r = (m or ''):match('^%d+%-%d+:(%d+)$')
    if f then
        f, l, n = tonumber(f), tonumber(l), tonumber(k)
        local base = math.floor(f / 4)
        local bytes = redis.call('GETRANGE', KEYS[2], base, math.floor(l / 4))
        local clean = true
        for row = f, l do
            if row_state(bytes, base, row) ~= 0 then
                clean = false
                break
            end
        end
        if not clean then
            n = 0
            local blob = redis.call('HGET', KEYS[3], f .. '-' .. l) or ''
            for row, p in blob:gmatch('(%d+)\t([^\t]*)\t[^\n]*\n') do
                if p == prov and row_state(bytes, base, tonumber(row)) == 0 then
                    n = n + 1
                end
            end
        end
    elseif r then
        r = tonumber(r)
        local b = redis.call('GETRANGE', KEYS[2], math.floor(r / 4), math.floor(r / 4))
        if row_state(b, math.floor(r / 4), r) == 2 then
            n = 0
        end
    end
    all = all + n
    if tonumber(z[i + 1]) <= lim then
        upto = upto + n
    end
end
return {upto, all}
