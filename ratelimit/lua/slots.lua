-- slots.lua: a connection-slot semaphore shared by every worker of a provider.
-- KEYS[1]: a ZSET of slot holders ("worker:connection" ids) scored by lease expiry (ms).
-- ARGV: op, now_ms, holder, ceiling, lease_ms.
--   acquire: take a slot if fewer than ceiling unexpired holders (or renew one we hold)
--   renew:   extend our lease; fails if it expired and was reaped (the slot is lost)
--   release: give the slot back
--   count:   only report
-- Returns {ok (0|1), unexpired holders after the operation}.
-- A worker that dies stops renewing; its slots come back when their leases expire.
local op = ARGV[1]
local now = tonumber(ARGV[2])
local holder = ARGV[3]
local ceiling = tonumber(ARGV[4] or '0')
local lease = tonumber(ARGV[5] or '0')
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%.0f', now))
local ok = 1
if op == 'acquire' then
  if redis.call('ZSCORE', KEYS[1], holder) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), holder)
  elseif redis.call('ZCARD', KEYS[1]) < ceiling then
    redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), holder)
  else
    ok = 0
  end
elseif op == 'renew' then
  if redis.call('ZSCORE', KEYS[1], holder) then
    redis.call('ZADD', KEYS[1], string.format('%.0f', now + lease), holder)
  else
    ok = 0
  end
elseif op == 'release' then
  ok = redis.call('ZREM', KEYS[1], holder)
elseif op ~= 'count' then
  return redis.error_reply('slots: op is acquire, renew, release or count')
end
local count = redis.call('ZCARD', KEYS[1])
-- The set vanishes when every lease has run out.
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', tonumber(last[2]) + 1000))
end
return {ok, count}
