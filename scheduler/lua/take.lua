-- take.lua: take up to n tokens from a provider's GCRA rate, as many as are
-- available now. The same arithmetic as ratelimit/lua/gcra.lua (whose all-
-- or-nothing take would make a worker wait for n tokens while others take
-- them, and lose the ones that overflow the burst meanwhile), so a shared
-- rate is used in full and never exceeded: at most R x window + burst.
-- KEYS[1]: the TAT key (microseconds). ARGV: now_ms, interval_us, burst, n.
-- Returns {granted (0..n), retry_after_ms (when 0 were granted)}.
local now = tonumber(ARGV[1]) * 1000
local interval = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
if n < 1 or burst < 1 or interval < 1 then
  return redis.error_reply('take: need n >= 1, burst >= 1 and interval >= 1')
end
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
-- Tokens that may go now: new_tat - burst * interval <= now.
local k = math.floor((now + burst * interval - tat) / interval)
if k > n then k = n end
if k < 1 then
  return {0, math.floor((tat + interval - burst * interval - now + 999) / 1000)}
end
local new_tat = tat + k * interval
local ttl = math.floor((new_tat - now) / 1000) + 1000
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl)
return {k, 0}
