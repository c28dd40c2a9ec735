-- gcra.lua: the Redis twin of rl_gcra_take (ratelimit/gcra.c); keep them in step.
-- KEYS[1]: the TAT key (microseconds). ARGV: now_ms, interval_us, burst, n.
-- Returns {allowed (0|1), retry_after_ms}.
-- Numbers stay below 2^53 (now in microseconds is about 1.8e15), so Lua's doubles are
-- exact; they are written back with %.0f because tostring() would use exponents.
local now = tonumber(ARGV[1]) * 1000
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
if n < 1 or burst < 1 or n > burst or interval < 1 then
  return redis.error_reply('gcra: need 1 <= n <= burst and interval >= 1')
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local new_tat = tat + n * interval
local allow_at = new_tat - burst * interval
if allow_at > now then
  return {0, math.floor((allow_at - now + 999) / 1000)}
end
-- The key is worthless once the backlog has drained: let it expire then.
local ttl = math.floor((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {1, 0}
