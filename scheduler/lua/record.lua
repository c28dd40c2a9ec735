-- record.lua: record a batch of attempts and their rows' state changes in one
-- step, and give back the leases the worker is done with. A row already final
-- stays as it is (a late record from a worker whose lease expired, a row
-- cancelled meanwhile, or a batch sent again after a lost reply), so counts
-- never double. The worker composes each result (see keys.h); none is
-- parsed here.
--
-- Records come grouped by batch and results hash, with nothing a row: a
-- row's facts are two characters of its group's list, its result a line of
-- the group's lines, and its state bits are read and written for the whole
-- group with one GETRANGE and one SETRANGE. A group whose rows all went from
-- waiting to final, nearly every group, is stored as one field "gR" (R its
-- first row) holding its lines. Per-row arguments, BITFIELD operations and
-- hash fields were most of Redis's time for this script: a replay of
-- 128-row calls cost Redis 2.4 us a row with a field a row, 1.4 with a
-- field a group.
--
-- A group whose rows are one unbroken run, none deferred (the worker sorts
-- a group's rows and says so with a tally), skips the per-row loop too: its
-- state bits are checked and set a byte at a time and its counts come from
-- the tally. That loop was a third of Redis's instructions in a campaign
-- (callgrind). A run with any row not waiting takes the per-row path.
--
-- KEYS[1] lease  KEYS[2] retry  KEYS[3] count  KEYS[4] meta  KEYS[5] state
-- KEYS[6..] due sets of the providers the records name by index, then the
--   results hashes (res:K) the groups name
-- ARGV[1] now_ms  ARGV[2] groups  ARGV[3] releases  ARGV[4] returns, then
--   per group (rows of one batch in one results hash): its batch id "F-L",
--     the index in KEYS of the results hash of row F (row r's is that index
--     plus r/64 - F/64, in whole numbers), its list (two characters a row:
--     "0" plus the row's offset from F, then its status letter: d delivered,
--     b bounced, f failed, s suppressed, r rejected, c cancelled, q deferred;
--     upper case when a server was tried), its lines (per row in list order
--     "row<TAB>result<LF>", the result as keys.h says), its tally (empty,
--     or when the list's rows ascend one by one and none is deferred: each
--     status letter of the list once, followed by its count, as "D62b2"),
--     then per deferred row in list order its retry_at_ms and due index
--     (1-based among KEYS[6..]): it is retried on its own as member
--     "F-L:row";
--   per release: a lease member ("member|P") whose rows are all recorded;
--   per return (2 values): a lease member to put back due now (a worker that
--     stops gives back what it did not try), due index.
-- Returns the number of records applied.
local now = tonumber(ARGV[1])
local ng, nrel, nret = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local state = redis.call('HGET', KEYS[4], 'state')
-- Status letters are handled as byte values: a string made per row (sub,
-- lower) was a large part of this script's time. Upper case (below 'a', 97)
-- marks a row whose server was tried.
local D, B, F, S, R, C, Q = 100, 98, 102, 115, 114, 99, 113
local names = {[D] = 'delivered', [B] = 'bounced', [F] = 'failed', [S] = 'suppressed',
               [R] = 'rejected', [C] = 'cancelled', [Q] = 'deferred'}
local band, bor, lshift, rshift, bnot = bit.band, bit.bor, bit.lshift, bit.rshift, bit.bnot
local byte, floor, format = string.byte, math.floor, string.format
local applied, attempts, nfinal = 0, 0, 0
local incr, hset, zadd = {}, {}, {}
local retry = {}
local at = 5
for _ = 1, ng do
    local id, kidx, list, lines, tally = ARGV[at], tonumber(ARGV[at + 1]), ARGV[at + 2],
        ARGV[at + 3], ARGV[at + 4]
    at = at + 5
    local n = #list / 2
    local f, l = id:match('^(%d+)-(%d+)$')
    f, l = tonumber(f), tonumber(l)
    kidx = kidx - floor(f / 64)
    -- Row r's two bits are bits 2r and 2r+1 (BITFIELD u2 #r): byte r/4,
    -- shifted 6 - 2(r%4) from the right.
    local b0, b1 = floor(f / 4), floor(l / 4)
    local bytes = {byte(redis.call('GETRANGE', KEYS[5], b0, b1), 1, -1)}
    for k = #bytes + 1, b1 - b0 + 1 do
        bytes[k] = 0
    end
    -- First the state bits and counts. The group is plain when every row
    -- was waiting in its batch and is now final: its lines are then stored
    -- as they came, one field for all (keys.h), which is most of the rows
    -- of a campaign. Otherwise each row gets a field of its own below.
    local plain, changed, r1 = true, false, nil
    local was_, due_ = {}, {}
    local run = tally ~= '' and n > 0
    if run then
        -- The rows r1..r2, all waiting? Then all final, a byte at a time:
        -- each row's two bits become 10.
        r1 = f + byte(list, 1) - 48
        local r2 = f + byte(list, 2 * n - 1) - 48
        run = r2 - r1 + 1 == n
        local masks = {}
        for k = floor(r1 / 4), run and floor(r2 / 4) or -1 do
            local m = 0
            for r = k * 4 > r1 and k * 4 or r1, k * 4 + 3 < r2 and k * 4 + 3 or r2 do
                m = bor(m, lshift(3, 6 - 2 * (r % 4)))
            end
            if band(bytes[k - b0 + 1], m) ~= 0 then
                run = false
                break
            end
            masks[k - b0 + 1] = m
        end
        if run then
            for k, m in pairs(masks) do
                bytes[k] = bor(bytes[k], band(0xAA, m))
            end
            changed = true
            for letter, count in tally:gmatch('(%a)(%d+)') do
                local c, cnt = byte(letter), tonumber(count)
                local lo = c < 97 and c + 32 or c
                incr[lo] = (incr[lo] or 0) + cnt
                nfinal = nfinal + cnt
                if c < 97 then
                    attempts = attempts + cnt
                end
                applied = applied + cnt
            end
        else
            r1 = nil
        end
    end
    for i = 1, run and 0 or n do
        local r = f + byte(list, 2 * i - 1) - 48
        local c = byte(list, 2 * i)
        local tried = c < 97
        local lo = tried and c + 32 or c
        local q = lo == Q
        if q then
            due_[i] = {ARGV[at], ARGV[at + 1]}
            at = at + 2
        end
        local k = floor(r / 4) - b0 + 1
        local sh = 6 - 2 * (r % 4)
        local was = band(rshift(bytes[k], sh), 3)
        was_[i] = was
        r1 = r1 or r
        if was ~= 2 then
            if lo == Q and state == 'cancelled' then
                lo = C
            end
            bytes[k] = bor(band(bytes[k], bnot(lshift(3, sh))), lshift(lo == Q and 1 or 2, sh))
            changed = true
            if lo ~= Q then
                nfinal = nfinal + 1
            end
            incr[lo] = (incr[lo] or 0) + 1
            if tried then
                attempts = attempts + 1
            end
            applied = applied + 1
        end
        if was ~= 0 or q then
            plain = false
        end
    end
    if changed then
        redis.call('SETRANGE', KEYS[5], b0, string.char(unpack(bytes)))
    end
    if plain and n > 0 then
        local hk = kidx + floor(r1 / 64)
        local h = hset[hk] or {}
        hset[hk] = h
        h[#h + 1] = 'g' .. format('%d', r1)
        h[#h + 1] = lines
    elseif n > 0 then
        local i = 0
        for rs, res in lines:gmatch('(%d+)\t([^\n]*)\n') do
            i = i + 1
            local was = was_[i]
            if was ~= 2 then
                local c = byte(list, 2 * i)
                local lo = c < 97 and c + 32 or c
                if lo == Q and state == 'cancelled' then
                    lo = C
                    -- The status is a result's first column (result.h).
                    res = 'cancelled' .. res:sub(#'deferred' + 1)
                end
                local hk = kidx + floor(tonumber(rs) / 64)
                local h = hset[hk] or {}
                hset[hk] = h
                h[#h + 1] = rs
                h[#h + 1] = res
                -- A row retried on its own keeps its result so far in retry
                -- for its claim (claim.lua), until it is final.
                if lo == Q then
                    retry[rs] = res
                    local key = 5 + tonumber(due_[i][2])
                    local z = zadd[key] or {}
                    zadd[key] = z
                    z[#z + 1] = due_[i][1]
                    z[#z + 1] = id .. ':' .. rs
                elseif was == 1 then
                    retry[rs] = false
                end
            end
        end
    end
end
for hk, h in pairs(hset) do
    redis.call('HSET', KEYS[hk], unpack(h))
end
local rset, rdel = {}, {}
for rs, res in pairs(retry) do
    if res then
        rset[#rset + 1] = rs
        rset[#rset + 1] = res
    else
        rdel[#rdel + 1] = rs
    end
end
if #rset > 0 then
    redis.call('HSET', KEYS[2], unpack(rset))
end
if #rdel > 0 then
    redis.call('HDEL', KEYS[2], unpack(rdel))
end
for k, args in pairs(zadd) do
    redis.call('ZADD', KEYS[k], unpack(args))
end
if attempts > 0 then
    incr.attempts = attempts
end
if nfinal > 0 then
    incr.final = nfinal
end
if nrel > 0 then
    local rel = {}
    for i = 1, nrel do
        rel[i] = ARGV[at + i - 1]
    end
    redis.call('ZREM', KEYS[1], unpack(rel))
    at = at + nrel
end
for _ = 1, nret do
    local lm, k = ARGV[at], 5 + tonumber(ARGV[at + 1])
    at = at + 2
    if redis.call('ZREM', KEYS[1], lm) == 1 then
        redis.call('ZADD', KEYS[k], now, lm:match('^([^|]*)|'))
    end
end
for k, v in pairs(incr) do
    redis.call('HINCRBY', KEYS[3], names[k] or k, v)
end
if nfinal > 0 then
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
