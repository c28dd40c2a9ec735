-- quota.lua: the Redis twin of rl_quota_take (ratelimit/quota.c); keep them in step.
-- KEYS[1..k]: one counter per quota window (the window id is part of the key name).
-- ARGV: now_ms, n, then limit_1, window_end_ms_1, ..., limit_k, window_end_ms_k.
-- Counts n on every key or on none. n < 0 gives back -n (never below zero).
-- Returns {1, 0, 0} or {0, index of the full key (1-based), end of its window in ms}.
-- Keys expire an hour after their window ends: long enough for late workers whose clock
-- is a little behind, short enough that a year of daily windows leaves nothing behind.
local n = tonumber(ARGV[2])
local k = #KEYS
if #ARGV ~= 2 + 2 * k then
  return redis.error_reply('quota: need now_ms, n and a limit and window end per key')
end
local counts = {}
for i = 1, k do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
if n >= 0 then
  for i = 1, k do
    local limit = tonumber(ARGV[1 + 2 * i])
    if counts[i] + n > limit then
      return {0, i, tonumber(ARGV[2 + 2 * i])}
    end
  end
end
for i = 1, k do
  local v = counts[i] + n
  if v < 0 then v = 0 end
  local expire_at = tonumber(ARGV[2 + 2 * i]) + 3600000
  redis.call('SET', KEYS[i], string.format('%.0f', v), 'PXAT', string.format('%.0f', expire_at))
end
return {1, 0, 0}
