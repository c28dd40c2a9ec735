/* lua.h: the scheduler's Redis scripts, compiled in from scheduler/lua/.
 * Each script's header comment documents its KEYS, ARGV and reply; every key
 * it touches is in KEYS and all share the campaign's hash tag.
 *
 * sched_lua_ingest  add a batch of rows (idempotent)
 * sched_lua_claim   lease due rows of one provider to a worker
 * sched_lua_record  record an attempt and the row's state change atomically
 * sched_lua_reap    return rows whose lease expired to their due sets
 * sched_lua_take    take up to n tokens of a provider's shared GCRA rate
 * sched_lua_learned    share a provider's learned limits and achieved rates
 * sched_lua_set_state  pause, resume or cancel a campaign (scheduler/campaign.c)
 * sched_lua_pending    count the rows of a due or lease set still to be sent
 * sched_lua_cancel     finish the waiting rows of some due-set members as cancelled
 *
 * pending and cancel begin with rows.lua, helpers they share (state bits, a
 * result's status column, the all-final check), the rules record.lua applies
 * inline. Private to scheduler/.
 */
#ifndef VL_SCHED_LUA_H
#define VL_SCHED_LUA_H

extern const char sched_lua_ingest[];
extern const char sched_lua_claim[];
extern const char sched_lua_record[];
extern const char sched_lua_reap[];
extern const char sched_lua_take[];
extern const char sched_lua_learned[];
extern const char sched_lua_set_state[];
extern const char sched_lua_pending[];
extern const char sched_lua_cancel[];

#endif
