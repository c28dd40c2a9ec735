-- set_state.lua: set a campaign's state (pause, resume, cancel) unless it is
-- already done or cancelled. One script, so a worker finishing the campaign
-- meanwhile is never overwritten.
--
-- KEYS[1] meta  ARGV[1] the new state
-- Returns the state it had ("" for none).
local s = redis.call('HGET', KEYS[1], 'state') or ''
if s ~= 'done' and s ~= 'cancelled' then
    redis.call('HSET', KEYS[1], 'state', ARGV[1])
end
return s
