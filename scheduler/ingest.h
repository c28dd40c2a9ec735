/* ingest.h: stream a campaign's CSV rows into Redis.
 *
 * Rows go in batches of consecutive rows (keys.h) through ingest.lua, which
 * adds a batch only if its id is new: an interrupted ingest is simply run
 * again, and adds nothing twice as long as the CSV is the same. Each good row
 * is routed to its provider (by recipient domain) and made due at the
 * campaign's start time or its own send_at; a bad row is recorded at once as
 * `rejected` with the reason, so it is reported, never silently dropped.
 */
#ifndef VL_SCHED_INGEST_H
#define VL_SCHED_INGEST_H

#include <hiredis/hiredis.h>
#include <stdint.h>

#include "ratelimit/provider.h"
#include "templates/csv.h"

/* The next row (borrowed until the next call): 1 and *row, 0 at the end, < 0
 * on a fatal error (the message is the caller's to report). */
typedef int (*sched_row_fn)(void *ud, tpl_csv_row_t **row);

typedef struct sched_ingest_opts {
    const char *id;             /* campaign id */
    const char *path;           /* absolute path of the campaign file (workers open it) */
    const char *const *columns; /* the CSV header */
    size_t ncolumns;
    int email_col;                   /* index of `email` */
    int send_at_col;                 /* index of `send_at`, or -1 */
    int64_t start_at_ms;             /* due time of rows without send_at */
    const rl_providers_t *providers; /* borrowed */
    sched_row_fn next;
    void *ud;
    /* Optional: each row rejected as bad data, with the reason. */
    void (*on_reject)(void *ud, const tpl_csv_row_t *row, const char *why);
    int64_t now_ms;
    int partial; /* a trial run (--limit): do not mark the campaign fully ingested */
} sched_ingest_opts_t;

typedef struct sched_ingest_stats {
    unsigned long rows;     /* rows read */
    unsigned long added;    /* new in Redis */
    unsigned long rejected; /* bad data (recorded as rejected) */
    int skipped;            /* 1 when the campaign was fully ingested before */
} sched_ingest_stats_t;

/* Ingest every row of o->next into campaign o->id on c (borrowed, sync). Sets
 * the campaign's meta (state running on first ingest) and registers it in
 * volley:campaigns. 0, or a VL_E* code with err filled. */
int sched_ingest(redisContext *c, const sched_ingest_opts_t *o, sched_ingest_stats_t *st, char *err,
                 size_t errlen);

/* Parse "2026-11-23T10:00:00Z", "...+08:00", "2026-11-23 10:00[:00]" (UTC when no
 * offset) or seconds since the epoch into ms. 0, or -1 when s is not a time. */
int sched_parse_time(const char *s, size_t len, int64_t *ms);

#endif
