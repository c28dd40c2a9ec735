/* lua.h: the Redis scripts of ratelimit/, compiled into the binary from ratelimit/lua/.
 *
 * Every key a script touches is passed in KEYS (the scheduler gives them one hash tag, so
 * the scripts run unchanged on Redis Cluster). Times come in ARGV from the caller's
 * injected clock rather than redis.call('TIME'): tests control time, and the C twins
 * (gcra.h, quota.h) compute the same answers. Workers sharing a Redis therefore need
 * NTP-synchronised clocks; a skew of s ms lets the shared rate drift by about s ms worth
 * of tokens, never more.
 *
 * rl_lua_gcra   KEYS[1] tat key. ARGV now_ms, interval_us, burst, n.
 *               -> {allowed 0|1, retry_after_ms}. The key expires when idle.
 * rl_lua_quota  KEYS[1..k] window counters. ARGV now_ms, n, then for each key
 *               limit_i, window_end_ms_i. Counts n on all or none (n < 0 gives back).
 *               -> {1, 0, 0} or {0, index of the full key (1-based), its window end}.
 *               Keys expire an hour after their window ends.
 * rl_lua_slots  KEYS[1] ZSET of holders scored by lease expiry. ARGV op, now_ms, holder,
 *               ceiling, lease_ms; op is "acquire", "renew", "release" or "count".
 *               -> {ok 0|1, holders not expired after the operation}.
 * rl_lua_suspend KEYS[1] suspension hash {until, reason}. ARGV op ("set" | "get" |
 *               "clear"), now_ms, until_ms, reason. set keeps the later of the stored
 *               and new times. -> {until_ms or 0 when not suspended, reason or ""}.
 */
#ifndef RL_LUA_H
#define RL_LUA_H

extern const char rl_lua_gcra[];
extern const char rl_lua_quota[];
extern const char rl_lua_slots[];
extern const char rl_lua_suspend[];

#endif
