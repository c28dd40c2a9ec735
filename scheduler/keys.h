/* keys.h: every Redis key volley uses, in one place.
 *
 * All keys of one campaign share the hash tag {c:ID}, and all keys of one
 * provider's shared limits share {p:NAME}, so every Lua script touches keys
 * of a single slot (each script gets them all in KEYS) and the schema runs
 * unchanged on Redis Cluster. Two keys are global and touched only by plain
 * commands: the campaign registry and the suppression list.
 *
 * Campaign ID (tag {c:ID}):
 *   {c:ID}:meta        HASH  id, path (absolute campaign file), state
 *                            (running | paused | cancelled | done), columns (JSON
 *                            array of the CSV header), email_col (0-based),
 *                            ingested ("1" once the whole CSV is in), total (data
 *                            rows ingested, bad ones included), created_ms,
 *                            started_ms, finished_ms, stop_reason (set when a
 *                            provider's sending is stopped: a person must act)
 *   {c:ID}:row         HASH  row number -> JSON array of the row's fields
 *   {c:ID}:res         HASH  row number -> JSON result object:
 *                            {"email","provider","status","attempts","code",
 *                             "enhanced","response","first","last","host"}
 *                            status: pending | deferred | delivered | bounced |
 *                            failed | suppressed | rejected | cancelled;
 *                            first/last: attempt times in ms since the epoch (0 if
 *                            none); code 0 when no reply was involved
 *   {c:ID}:count       HASH  total, delivered, bounced, failed, suppressed,
 *                            rejected, cancelled, final (sum of the final states),
 *                            attempts, deferred (attempts that were requeued)
 *   {c:ID}:providers   SET   provider names that have rows in this campaign
 *   {c:ID}:due:NAME    ZSET  row -> due time (ms): rows waiting for provider NAME
 *   {c:ID}:lease       ZSET  row -> lease expiry (ms): rows claimed by a worker
 *   {c:ID}:leasep      HASH  row -> provider name, for rows in :lease
 *
 * Provider NAME's limits, shared by every worker and campaign (tag {p:NAME}):
 *   {p:NAME}:gcra      STRING GCRA theoretical arrival time (ratelimit/lua/gcra.lua)
 *   {p:NAME}:quota:I:W STRING count of quota I's window W (quota.lua)
 *   {p:NAME}:slots     ZSET  connection-slot holders scored by lease expiry (slots.lua)
 *   {p:NAME}:suspend   HASH  {until, reason} (suspend.lua)
 *   {p:NAME}:learned   HASH  limits learnt from replies (AIMD): connections,
 *                            messages_per_connection, recipients_per_connection
 *
 * Global:
 *   volley:campaigns   SET   ids of campaigns enqueued on this server
 *   volley:suppress    SET   suppressed addresses, lowercased
 *
 * Row numbers are the CSV's data-row numbers, 1-based, as `volley render --row N`.
 */
#ifndef VL_SCHED_KEYS_H
#define VL_SCHED_KEYS_H

#define SCHED_KEY_CAMPAIGNS "volley:campaigns"
#define SCHED_KEY_SUPPRESS "volley:suppress"

/* snprintf formats: the campaign id (or provider name) first. */
#define SCHED_KEY_META "{c:%s}:meta"
#define SCHED_KEY_ROW "{c:%s}:row"
#define SCHED_KEY_RES "{c:%s}:res"
#define SCHED_KEY_COUNT "{c:%s}:count"
#define SCHED_KEY_PROVIDERS "{c:%s}:providers"
#define SCHED_KEY_DUE "{c:%s}:due:%s" /* id, provider */
#define SCHED_KEY_LEASE "{c:%s}:lease"
#define SCHED_KEY_LEASEP "{c:%s}:leasep"

#define SCHED_KEY_P_GCRA "{p:%s}:gcra"
#define SCHED_KEY_P_QUOTA "{p:%s}:quota:%d:%s" /* provider, quota index, window id */
#define SCHED_KEY_P_SLOTS "{p:%s}:slots"
#define SCHED_KEY_P_SUSPEND "{p:%s}:suspend"
#define SCHED_KEY_P_LEARNED "{p:%s}:learned"

/* The final states, in the order reports list them. */
#define SCHED_FINAL_STATES "delivered", "bounced", "failed", "suppressed", "rejected", "cancelled"

#endif
