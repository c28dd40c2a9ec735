/* campaign.h: a campaign's state in Redis for the commands that look at it
 * or change it: whether it exists, its meta data and counts, status, pause,
 * resume, cancel, and its results streamed row by row for reports.
 *
 * This is the only code outside the worker's hot path (claims and records in
 * worker.c) that reads or writes a campaign's keys; the layout (keys.h) and
 * the result encoding (result.h) stay private to scheduler/. The calls are
 * synchronous, over a hiredis context the caller connected
 * (sched_redis_connect_sync); the worker's list of campaigns is the one
 * asynchronous call.
 *
 * Errors: every function returns 0 (or a count) on success, else a VL_E*
 * code with a message in err (errlen bytes; may be 0):
 *   VL_ENETWORK  the connection failed: no reply ("Redis: WHAT: why")
 *   VL_EREDIS    Redis answered with an error, or a reply of the wrong shape
 *   VL_ENOENT    no such campaign
 *   VL_ESTATE    the campaign cannot do that (done, cancelled, older layout)
 *   VL_ENOMEM    out of memory
 */
#ifndef VL_SCHED_CAMPAIGN_H
#define VL_SCHED_CAMPAIGN_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "common/buf.h"
#include "scheduler/redis.h"
#include "scheduler/status.h"

/* ---- what a campaign is -------------------------------------------------------------- */

/* Whether campaign id (borrowed) is known on the server: 1, 0, or VL_E*. */
int sched_campaign_exists(redisContext *c, const char *id, char *err, size_t errlen);

/* A campaign's meta data. */
typedef struct sched_campaign_info {
    char state[32];  /* running | paused | cancelled | done; "" when unset */
    long long total; /* data rows ingested so far, bad ones included */
    int ingested;    /* 1 once the whole CSV is in */
    int email_col;   /* 0-based column of the address */
    long long created_ms, started_ms, finished_ms; /* 0 when not (yet) */
    char stop_reason[512]; /* why a provider's sending stopped; "" when it did not */
    int schema_ok;         /* 0 when its "schema" names another layout than this volley's */
} sched_campaign_info_t;

/* Read campaign id's (borrowed) meta data into *out. 0, VL_ENOENT when the
 * campaign is unknown ("unknown campaign 'ID'"), or VL_ENETWORK / VL_EREDIS.
 * A campaign of an older layout is read as far as it can be, with
 * out->schema_ok 0. */
int sched_campaign_info(redisContext *c, const char *id, sched_campaign_info_t *out, char *err,
                        size_t errlen);

/* The counts a campaign keeps as its rows are recorded. */
typedef struct sched_counts {
    long long n[SCHED_NFINAL]; /* rows by final status (index: sched_status_t) */
    long long final;           /* the sum of n */
    long long attempts;        /* servers tried */
    long long deferred;        /* attempts that were requeued */
} sched_counts_t;

/* Read campaign id's (borrowed) counts into *out (zeros for a campaign not
 * started). 0 or VL_ENETWORK / VL_EREDIS. */
int sched_campaign_counts(redisContext *c, const char *id, sched_counts_t *out, char *err,
                          size_t errlen);

/* Rows leased to workers now (being sent), into *out. 0 or VL_E*. */
int sched_campaign_leased(redisContext *c, const char *id, long long *out, char *err,
                          size_t errlen);

/* ---- status -------------------------------------------------------------------------- */

/* A limit learned from replies (AIMD), as stored. */
typedef struct sched_learned {
    char *name, *value; /* owned by the status */
} sched_learned_t;

typedef struct sched_provider_status {
    char *name;                   /* owned by the status */
    long long due_now, later;     /* rows waiting: due now, scheduled later */
    long long suspended_until_ms; /* 0 unless the provider is suspended now */
    char *suspend_reason;         /* owned; NULL when none was given */
    sched_learned_t *learned;     /* owned; nlearned of them, in the stored order */
    size_t nlearned;
} sched_provider_status_t;

typedef struct sched_campaign_status {
    sched_campaign_info_t info;
    sched_counts_t counts;
    long long pending;                  /* rows waiting in due sets */
    long long due_now;                  /* of those, due at now_ms */
    long long leased;                   /* rows being sent by workers */
    sched_provider_status_t *providers; /* owned; nproviders of them */
    size_t nproviders;
} sched_campaign_status_t;

/* Everything `volley status` shows of campaign id (borrowed) at now_ms into
 * *out, which the caller frees with sched_campaign_status_free (also after
 * an error). Rows waiting are counted from the rows' states, not from the
 * members of the due sets alone (a part given back after a stop still names
 * rows that went final). 0, VL_ENOENT, or VL_ENETWORK / VL_EREDIS /
 * VL_ENOMEM. */
int sched_campaign_status(redisContext *c, const char *id, long long now_ms,
                          sched_campaign_status_t *out, char *err, size_t errlen);

/* Free what sched_campaign_status allocated in s (not s itself); s is then
 * empty. */
void sched_campaign_status_free(sched_campaign_status_t *s);

/* ---- changing the state -------------------------------------------------------------- */

typedef enum sched_campaign_state {
    SCHED_CAMPAIGN_RUNNING,
    SCHED_CAMPAIGN_PAUSED,
    SCHED_CAMPAIGN_CANCELLED,
} sched_campaign_state_t;

/* The stored name of s ("running", "paused", "cancelled"); static. */
const char *sched_campaign_state_name(sched_campaign_state_t s);

/* Pause or resume campaign id (borrowed): set its state to want unless it is
 * done or cancelled, in one step, so a worker finishing it meanwhile is never
 * overwritten. Workers read the state before each claim. The state it had
 * goes to was (waslen bytes; "" for none). 0; VL_ESTATE when it is done or
 * cancelled (state unchanged, "campaign ID is done; its state cannot change
 * any more"); or VL_ENETWORK / VL_EREDIS. For want CANCELLED use
 * sched_campaign_cancel. */
int sched_campaign_set_state(redisContext *c, const char *id, sched_campaign_state_t want,
                             char *was, size_t waslen, char *err, size_t errlen);

/* Cancel campaign id (borrowed): set its state to cancelled (unless it is
 * done), then finish every row still waiting in a due set with status
 * "cancelled", a batch of members per script call, so a worker's claim sees
 * each row either due or final. Rows leased to workers are finished by them.
 * Cancelling a cancelled campaign again finishes what is still waiting.
 * *cancelled (may be NULL) gets the rows cancelled, *leased (may be NULL)
 * the rows still leased afterwards, was the state it had. now_ms is stored
 * as finished_ms when that ends the campaign. 0, VL_ESTATE when it is done,
 * or VL_ENETWORK / VL_EREDIS. */
int sched_campaign_cancel(redisContext *c, const char *id, long long now_ms, long long *cancelled,
                          long long *leased, char *was, size_t waslen, char *err, size_t errlen);

/* ---- results ------------------------------------------------------------------------- */

/* Text columns of a row keep at most this many bytes (longer ones are cut):
 * responses are the only long ones, and a report need not hold more. */
enum { SCHED_ROW_TEXT_MAX = 8192 };

/* One row's result, decoded. */
typedef struct sched_row {
    unsigned long row;     /* the CSV data row, 1-based */
    sched_status_t status; /* SCHED_ST_PENDING: no result yet; SCHED_ST_UNKNOWN:
                            * unreadable (response says so) */
    long long attempts, code, first_ms, last_ms; /* times 0 when no attempt */
    /* Unescaped text (owned by the row; empty buffers may have data NULL).
     * A pending row has only email and provider, from its batch. */
    buf_t email, provider, enhanced, response, host;
} sched_row_t;

/* Make r an empty row; sched_row_free releases it. */
void sched_row_init(sched_row_t *r);

/* Release r's memory; r is empty and reusable afterwards. */
void sched_row_free(sched_row_t *r);

/* Decode the stored result s (len bytes, borrowed) into r (its row number
 * kept). 0; VL_EPARSE when s is not a result (r is then empty, status
 * SCHED_ST_UNKNOWN); VL_ENOMEM. A stored status this volley does not know
 * decodes as SCHED_ST_UNKNOWN. Pure: no I/O. */
int sched_row_decode(sched_row_t *r, const char *s, size_t len);

/* A reader of a campaign's results, rows 1 to its total. */
typedef struct sched_results sched_results_t;

/* Start reading the results of campaign id (borrowed; copied) over c
 * (borrowed; must outlive the reader, and carry no other command until
 * sched_results_close). Rows are read a results hash at a time with many
 * asked for ahead, so Redis works while the caller writes rows, and memory
 * stays flat however many rows there are. *info (may be NULL) gets the
 * campaign's meta data. 0 and *out (the caller closes it), or VL_ENOENT,
 * VL_ESTATE (a campaign written by an older volley: "... report it with that
 * version"), VL_ENETWORK / VL_EREDIS / VL_ENOMEM. */
int sched_results_open(sched_results_t **out, redisContext *c, const char *id,
                       sched_campaign_info_t *info, char *err, size_t errlen);

/* The next row into *row (borrowed from it, valid until the next call or
 * close). 1 with a row, 0 after the last, or VL_ENETWORK / VL_EREDIS /
 * VL_ENOMEM. A result that cannot be read is a row of status
 * SCHED_ST_UNKNOWN, not an error: the other rows are still worth having. */
int sched_results_next(sched_results_t *it, const sched_row_t **row, char *err, size_t errlen);

/* Stop reading and free it (NULL allowed). Replies still on the connection
 * are read and dropped, so c can carry other commands afterwards unless it
 * failed. */
void sched_results_close(sched_results_t *it);

/* ---- the worker's list --------------------------------------------------------------- */

/* A campaign enqueued on the server: id, its state and campaign file path
 * (all borrowed, valid during the call; state and path "" when unset), and
 * whether its layout is this volley's. */
typedef void (*sched_campaign_seen_cb)(const char *id, const char *state, const char *path,
                                       int schema_ok, void *ud);

/* Whether to look at campaign id (borrowed) at all; NULL means every one. */
typedef int (*sched_campaign_want_cb)(const char *id, void *ud);

/* List the campaigns enqueued on r's server: for each one want accepts, read
 * its meta data and call seen. ud (borrowed) must stay valid until every
 * callback came: until r is closed, or the loop ran a command timeout. 0 when
 * the list was asked for, else VL_E* of sched_redis_cmd (then no callback). A
 * campaign whose meta could not be read is skipped: the next scan tries it
 * again. */
int sched_campaigns_scan(sched_redis_t *r, sched_campaign_want_cb want, sched_campaign_seen_cb seen,
                         void *ud);

#endif
