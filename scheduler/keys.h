/* keys.h: every Redis key volley uses, in one place. Private to scheduler/:
 * other modules reach these keys only through the scheduler's functions
 * (campaign.h, suppress.h, ingest.h, worker.h).
 *
 * All keys of one campaign share the hash tag {c:ID}, and all keys of one
 * provider's shared limits share {p:NAME}, so every Lua script touches keys
 * of a single slot (each script gets them all in KEYS) and the schema runs
 * unchanged on Redis Cluster. Two keys are global and touched only by plain
 * commands: the campaign registry and the suppression list.
 *
 * Campaign ID (tag {c:ID}):
 *   {c:ID}:meta        HASH  id, schema (SCHED_SCHEMA), path (absolute campaign
 *                            file), state
 *                            (running | paused | cancelled | done), columns (JSON
 *                            array of the CSV header), email_col (0-based),
 *                            ingested ("1" once the whole CSV is in), rows_in
 *                            (the last row of the batches added so far: a
 *                            rerun of ingest skips rows up to it), total (data
 *                            rows ingested, bad ones included), created_ms,
 *                            started_ms, finished_ms, stop_reason (set when a
 *                            provider's sending is stopped: a person must act)
 *   {c:ID}:batch       HASH  batch id "F-L" -> blob: the good rows F..L of the CSV
 *                            (at most SCHED_BATCH_ROWS consecutive rows with one
 *                            due time), one line each: "row<TAB>provider<TAB>
 *                            fields as a JSON array<LF>". Rejected rows are not
 *                            in the blob; they have a result from the start.
 *   {c:ID}:batches     ZSET  batch id -> F: finds the batch of a row (reports)
 *   {c:ID}:state       STRING 2 bits a row (BITFIELD u2 #row): 0 waiting in its
 *                            batch, 1 retried on its own (member "F-L:row"),
 *                            2 final. Claims skip rows that left their batch;
 *                            records skip rows already final.
 *   {c:ID}:res:K       HASH  the results of rows 64K..64K+63 (K = row / 64,
 *                            SCHED_RES_ROWS), written by the worker with each
 *                            attempt (a row without one has not been tried
 *                            yet: pending). Rows recorded together that all
 *                            went from waiting to final share one field
 *                            "gR" (R the first of them) of lines
 *                            "row<TAB>result<LF>"; any other row has its own
 *                            field, row number -> result, which readers
 *                            prefer. A result is one line of ten
 *                            tab-separated columns
 *                            (scheduler/result.h; text columns escape \ TAB
 *                            CR LF as \\ \t \r \n):
 *                            status attempts code enhanced first last host
 *                            provider email response
 *                            status: deferred | delivered | bounced | failed |
 *                            suppressed | rejected | cancelled; first/last:
 *                            attempt times in ms since the epoch (0 if none);
 *                            code 0 when no reply was involved
 *   {c:ID}:retry       HASH  row number -> its result so far, for rows retried
 *                            on their own (state 1) only: what a claim of
 *                            "F-L:row" needs; removed when the row is final
 *   {c:ID}:count       HASH  total, delivered, bounced, failed, suppressed,
 *                            rejected, cancelled, final (sum of the final states),
 *                            attempts, deferred (attempts that were requeued)
 *   {c:ID}:providers   SET   provider names that have rows in this campaign
 *   {c:ID}:due:NAME    ZSET  member -> due time (ms). A member is a batch part
 *                            "F-L/n" (provider NAME's n rows of batch F-L) or a
 *                            single row "F-L:r" retried on its own
 *   {c:ID}:lease       ZSET  "member|NAME" -> lease expiry (ms): members claimed
 *                            by a worker, renewed while it holds them
 *
 * Why batches: per-row Redis commands cost more than sending the message (a
 * benchmark of the per-row schema spent most of Redis's time on them). With
 * batches, ingest and claims cost Redis one command per batch; per row only
 * the result is written (a line of a group's field and two state bits, in one
 * call per REC_BATCH results). Results are spread over small hashes of 64 rows rather
 * than one hash of every row: one hash of 1,000,000 fields spent a third of
 * Redis's time for record.lua in dictionary lookups and rehashing of a table
 * far larger than the caches; a hash of 64 fields being written stays in them.
 *
 * Provider NAME's limits, shared by every worker and campaign (tag {p:NAME}):
 *   {p:NAME}:gcra      STRING GCRA theoretical arrival time (ratelimit/lua/gcra.lua)
 *   {p:NAME}:quota:I:W STRING count of quota I's window W (quota.lua)
 *   {p:NAME}:slots     ZSET  connection-slot holders scored by lease expiry (slots.lua)
 *   {p:NAME}:suspend   HASH  {until, reason} (suspend.lua)
 *   {p:NAME}:learned   HASH  limits learnt from replies (ratelimit/ctl.h): rate (per
 *                            second), connections, messages_per_connection,
 *                            recipients_per_connection, paused_until (ms), changed_ms,
 *                            reason (absent: the configured value holds; learned.lua)
 *   {p:NAME}:learned_ms HASH the same fields -> when each was last learnt (ms);
 *                            every worker adopts the newest (scheduler/worker.c)
 *   {p:NAME}:achieved  HASH  worker -> "rate:ms": what each worker sent a second lately,
 *                            so a decrease starts from the provider's total
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
#define SCHED_KEY_BATCH "{c:%s}:batch"
#define SCHED_KEY_BATCHES "{c:%s}:batches"
#define SCHED_KEY_STATE "{c:%s}:state"
#define SCHED_KEY_RES "{c:%s}:res:%lu" /* id, row / SCHED_RES_ROWS */
#define SCHED_KEY_RETRY "{c:%s}:retry"
#define SCHED_KEY_COUNT "{c:%s}:count"
#define SCHED_KEY_PROVIDERS "{c:%s}:providers"
#define SCHED_KEY_DUE "{c:%s}:due:%s" /* id, provider */
#define SCHED_KEY_LEASE "{c:%s}:lease"

#define SCHED_KEY_P_GCRA "{p:%s}:gcra"
#define SCHED_KEY_P_QUOTA "{p:%s}:quota:%d:%s" /* provider, quota index, window id */
#define SCHED_KEY_P_SLOTS "{p:%s}:slots"
#define SCHED_KEY_P_SUSPEND "{p:%s}:suspend"
#define SCHED_KEY_P_LEARNED "{p:%s}:learned"
#define SCHED_KEY_P_LEARNED_MS "{p:%s}:learned_ms"
#define SCHED_KEY_P_ACHIEVED "{p:%s}:achieved" /* worker -> "rate:ms" (learned.lua) */

/* The layout version in {c:ID}:meta "schema": a campaign with another (or
 * none) was written by an older volley and is refused. 2: one hash of all
 * results; 3: results in hashes of SCHED_RES_ROWS rows; 4: results as
 * tab-separated columns rather than JSON objects. */
#define SCHED_SCHEMA "4"

/* Rows per batch: big enough that per-batch commands vanish next to the
 * per-row work, small enough that a claimed batch is sent well within a
 * lease. */
#define SCHED_BATCH_ROWS 64

/* Rows per results hash ({c:ID}:res:K). A batch spans at most two. The
 * scripts (record.lua, ingest.lua, cancel.lua) compute K as row / 64
 * themselves: change them together. */
#define SCHED_RES_ROWS 64UL

/* Row states in {c:ID}:state. */
enum { SCHED_ROW_WAITING = 0, SCHED_ROW_ALONE = 1, SCHED_ROW_FINAL = 2 };

#endif
