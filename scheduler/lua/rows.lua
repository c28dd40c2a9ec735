-- rows.lua: helpers for the scripts of scheduler/campaign.c that read or
-- change rows' states and results (pending.lua, cancel.lua). scripts/embed.py
-- puts this text before each of them. record.lua applies the same rules
-- inline on its hot path (and is run as it stands by the integration tests):
-- change them together.

-- The state (0 waiting in its batch, 1 retried on its own, 2 final; keys.h)
-- of row in bytes, the state string read from byte base on (GETRANGE): 2
-- bits a row, row r's are bits 2r and 2r+1, byte r/4 shifted 6 - 2(r%4)
-- from the right. Bytes past the end read as 0, as Redis's do.
local function row_state(bytes, base, row)
    local b = string.byte(bytes, math.floor(row / 4) - base + 1) or 0
    return bit.band(bit.rshift(b, 6 - (row % 4) * 2), 3)
end

-- A stored result (scheduler/result.h) with its status, the first column,
-- replaced by status.
local function with_status(res, status)
    return status .. (res:match('^[^\t]*(\t.*)$') or '')
end

-- Whether every row of the campaign is final: its count hash says so and
-- the whole CSV is in (meta "ingested").
local function all_final(count_key, meta_key)
    local done = tonumber(redis.call('HGET', count_key, 'final') or '0')
    local total = tonumber(redis.call('HGET', count_key, 'total') or '0')
    return done >= total and redis.call('HGET', meta_key, 'ingested') == '1'
end
