/* eng_int.h (engine-internal): what session.c and pool.c share. */
#ifndef VL_ENGINE_INT_H
#define VL_ENGINE_INT_H

#include <uv.h>

#include "engine/engine.h"
#include "engine/tls.h"

typedef struct eng__sess eng__sess_t;

struct eng_pool {
    uv_loop_t *loop;
    eng_route_t route; /* strings below are the pool's own copies */
    char *host, *ca_file, *user, *password, *helo;
    char port_str[8];
    eng_target_t *targets; /* the pool's copy of route.targets, or NULL */
    size_t ntargets;
    size_t tgt_good;    /* the target new connections try first */
    tls_ctx_t *tls_ctx; /* NULL for ENG_TLS_NONE */

    eng_msg_t *qhead, *qtail; /* submitted, not started */
    size_t nqueued;
    size_t pending; /* submitted and not done */

    eng__sess_t *sessions; /* doubly linked, every open session */
    unsigned nsess;        /* open sessions, any state */
    unsigned nsetup;       /* of which still in set-up */
    unsigned nquitting;    /* of which sent QUIT or are about to */
    unsigned nready;       /* of which are set up and idle (state READY) */
    unsigned next_id;

    unsigned max_conn, msgs_cap, rcpts_cap;
    unsigned consecutive_failures;
    uint64_t backoff_until_ms;
    uv_timer_t backoff_timer;
    int backoff_timer_open;

    eng_stats_t stats;

    int closing;
    void (*on_closed)(void *ud);
    void *closed_ud;
};

/* session.c */
/* Open a new connection for pool p (its counters are updated). 0 or VL_ENOMEM. */
int eng__sess_open(eng_pool_t *p);
/* Let an idle (ready) session take queued work, if it is idle. */
void eng__sess_kick(eng__sess_t *s);
/* Unlink a closed session from its pool's list and counters. */
void eng__sess_unlink(eng_pool_t *p, eng__sess_t *s);
/* Ask a session to finish: QUIT when idle, after its transaction otherwise, or
 * at once (now) failing what it carries. */
void eng__sess_finish(eng__sess_t *s, int now);
/* Retire a session: it takes no new message, QUITs once the transactions under way end,
 * and counts as quitting at once (its replacement may open meanwhile). */
void eng__sess_retire(eng__sess_t *s);
/* The session's connection id (eng_result_t.conn_id). */
unsigned eng__sess_id(const eng__sess_t *s);
/* Has the session finished its set-up and not begun to close? */
int eng__sess_established(const eng__sess_t *s);
/* Is the session ready and idle? */
int eng__sess_idle(const eng__sess_t *s);
eng__sess_t *eng__sess_next(const eng__sess_t *s);

/* pool.c: called by sessions */
/* Take the next queued message if it fits a connection that has carried
 * `msgs` messages and `rcpts` recipients under the pool's caps, or NULL. */
eng_msg_t *eng__pool_take(eng_pool_t *p, unsigned msgs, unsigned rcpts);
/* A session finished its set-up (ready) or failed it. */
void eng__pool_setup_done(eng_pool_t *p, eng__sess_t *s, const eng_event_t *ev);
/* A session is gone (its handles are closed); the pool unlinks it. */
void eng__pool_sess_gone(eng_pool_t *p, eng__sess_t *s, const eng_event_t *ev);
/* Deliver a message's result to its owner. */
void eng__pool_complete(eng_pool_t *p, eng_msg_t *m, const eng_result_t *res);
/* Look for work for idle sessions and open connections as needed. */
void eng__pool_kick(eng_pool_t *p);
/* Should a session with this many messages and recipients stop taking more? */
int eng__pool_over_ceiling(const eng_pool_t *p);

/* eng_pool_new() with the client TLS context given (borrowed: the pool takes
 * its own reference) rather than made from r->ca_file; NULL makes one as
 * eng_pool_new() does. The MX router passes its one context to every
 * per-domain pool. */
int eng__pool_new_tls(eng_pool_t **out, uv_loop_t *loop, const eng_route_t *r, tls_ctx_t *shared,
                      char *errbuf, size_t errlen);

/* Monotonic clock in microseconds. */
uint64_t eng__now_us(void);

/* Copy a reader reply into a result reply (truncating the text). */
struct smtp_reply;
void eng__reply_copy(eng_reply_t *dst, const struct smtp_reply *src);

#endif
