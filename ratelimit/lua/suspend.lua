-- suspend.lua: a suspension of a provider or a sender until a time, shared by workers.
-- KEYS[1]: a hash {until = ms, reason = text}.
-- ARGV: op ("set" | "get" | "clear"), now_ms, until_ms, reason.
-- set keeps the later of the stored and the new time, so two workers that see different
-- replies never shorten each other's pause; the reason follows the time that wins.
-- Returns {until_ms, reason}, or {0, ''} when not suspended at now_ms.
local op = ARGV[1]
local now = tonumber(ARGV[2])
if op == 'clear' then
  redis.call('DEL', KEYS[1])
  return {0, ''}
end
if op == 'set' then
  local want = tonumber(ARGV[3])
  local cur = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
  if want > cur and want > now then
    redis.call('HSET', KEYS[1], 'until', string.format('%.0f', want), 'reason', ARGV[4] or '')
    redis.call('PEXPIREAT', KEYS[1], string.format('%.0f', want))
  end
elseif op ~= 'get' then
  return redis.error_reply('suspend: op is set, get or clear')
end
local v = redis.call('HMGET', KEYS[1], 'until', 'reason')
local untl = tonumber(v[1] or '0')
if untl <= now then
  return {0, ''}
end
return {untl, v[2] or ''}
