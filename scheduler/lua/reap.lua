-- reap.lua: members whose lease expired (their worker died or stalled)
-- become due again, in their provider's due set, at once. Rows of a batch
-- part that were finished meanwhile are skipped by the next claim (state bits).
-- KEYS[1] lease  KEYS[2..] the due sets of the providers named in ARGV[3..]
-- ARGV[1] now_ms: when the members become due
-- ARGV[2] cutoff_ms: leases expiring before this are taken back (a send on its
--         own embedded Redis passes "+inf" to take back every lease of a run
--         that was killed)
-- Returns the number of members put back.
local now = tonumber(ARGV[1])
local idx = {}
for i = 2, #KEYS do
    idx[ARGV[i + 1]] = KEYS[i]
end
local leased = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, 1000)
local n = 0
for _, lm in ipairs(leased) do
    local m, p = lm:match('^([^|]*)|(.*)$')
    local due = p and idx[p]
    if due then
        redis.call('ZADD', due, now, m)
        redis.call('ZREM', KEYS[1], lm)
        n = n + 1
    end
end
return n
