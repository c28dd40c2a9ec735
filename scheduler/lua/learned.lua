-- learned.lua: share one provider's learned limits and achieved rates between the
-- workers that send to it, once a second per worker (scheduler/worker.c, "learned
-- limits, shared"; the controller is ratelimit/ctl.h).
--
-- KEYS[1] {p:NAME}:learned     hash: rate, connections, messages_per_connection,
--                                    recipients_per_connection, paused_until,
--                                    changed_ms, reason (what `status` shows)
-- KEYS[2] {p:NAME}:learned_ms  hash: the same fields -> when each was set (kept for
--                                    status and older readers)
-- KEYS[3] {p:NAME}:achieved    hash: worker -> "rate:ms", what each worker achieved
-- ARGV: now_ms, worker, achieved rate, publish (0/1), then when publishing: rate,
--       connections, messages_per_connection, recipients_per_connection,
--       paused_until, changed_ms, reason.
-- A worker's values replace the stored ones when they are as new (changed_ms) or
-- newer; a later pause is kept whatever the times say. 0 means nothing learned
-- (the field is removed). Returns the stored values, in that order, then the sum of
-- the other workers' achieved rates of the last 3 s (as strings).
local now = tonumber(ARGV[1])
local fields = {'rate', 'connections', 'messages_per_connection',
                'recipients_per_connection', 'paused_until', 'changed_ms', 'reason'}

redis.call('HSET', KEYS[3], ARGV[2], ARGV[3] .. ':' .. ARGV[1])
redis.call('PEXPIRE', KEYS[3], 60000)

if ARGV[4] == '1' then
  local stored = tonumber(redis.call('HGET', KEYS[1], 'changed_ms') or '0')
  local changed = tonumber(ARGV[10])
  local pause = tonumber(ARGV[9])
  local old_pause = tonumber(redis.call('HGET', KEYS[1], 'paused_until') or '0')
  -- Decreases within 2 s of the stored one answer the same refusals, each from one
  -- worker's share of the rate: the largest rate stands (ratelimit/ctl.c, adopt).
  local stored_rate = tonumber(redis.call('HGET', KEYS[1], 'rate') or '0')
  local rate = tonumber(ARGV[5])
  if changed >= stored and changed < stored + 2000 and rate > 0 and stored_rate > rate then
    ARGV[5] = tostring(stored_rate)
  end
  if changed >= stored then
    for i = 1, 7 do
      local v = ARGV[4 + i]
      if fields[i] == 'paused_until' and old_pause > pause then v = tostring(old_pause) end
      if v == '0' or v == '' then
        redis.call('HDEL', KEYS[1], fields[i])
      else
        redis.call('HSET', KEYS[1], fields[i], v)
        redis.call('HSET', KEYS[2], fields[i], ARGV[10])
      end
    end
  elseif pause > old_pause then
    redis.call('HSET', KEYS[1], 'paused_until', ARGV[9])
    redis.call('HSET', KEYS[2], 'paused_until', ARGV[1])
  end
end

local out = redis.call('HMGET', KEYS[1], unpack(fields))
for i = 1, 7 do out[i] = out[i] or '0' end
local sum = 0
local all = redis.call('HGETALL', KEYS[3])
for i = 1, #all, 2 do
  local rate, ms = string.match(all[i + 1], '^([^:]*):(%d+)$')
  ms = tonumber(ms or '0')
  if all[i] ~= ARGV[2] and ms >= now - 3000 then
    sum = sum + (tonumber(rate) or 0)
  elseif ms < now - 60000 then
    redis.call('HDEL', KEYS[3], all[i])
  end
end
out[8] = tostring(sum)
return out
