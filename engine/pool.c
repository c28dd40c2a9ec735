/* pool.c: the connections of one route, the queue in front of them, and the
 * policy that opens, reuses and closes them.
 *
 * Connections are opened while there is queued work nobody is set up to take
 * and the ceiling allows; a connection that finishes a transaction takes the
 * next message itself (so the next envelope can be pipelined behind the body
 * it just wrote). After a failed set-up the pool backs off exponentially with
 * jitter before opening more; when set-ups keep failing and no connection is
 * up, queued messages are failed with the reason rather than left waiting.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"
#include "engine/eng_int.h"

#define BACKOFF_BASE_MS 100
#define BACKOFF_MAX_MS 30000

static const char *const stage_names[] = {
#define ENG_STAGE_STR(name, str) str,
    ENG_STAGE_MAP(ENG_STAGE_STR)
#undef ENG_STAGE_STR
};

const char *eng_stage_name(eng_stage_t s)
{
    return (unsigned)s < ENG_STAGE_LAST ? stage_names[s] : "?";
}

const char *eng_status_name(eng_status_t s)
{
    switch (s) {
    case ENG_DELIVERED:
        return "delivered";
    case ENG_REJECTED:
        return "rejected";
    case ENG_FAILED:
        return "failed";
    case ENG_UNKNOWN:
        return "unknown";
    case ENG_CANCELLED:
        return "cancelled";
    }
    return "?";
}

void eng_route_init(eng_route_t *r)
{
    memset(r, 0, sizeof *r);
    r->tls = ENG_TLS_OPPORTUNISTIC;
    r->port = 25;
    r->max_connections = 1;
}

static void fill_timeouts(eng_timeouts_t *t)
{
    /* RFC 5321 §4.5.3.2 where it names a value. */
#define DEF(field, ms)                                                                             \
    if (!t->field) t->field = (ms)
    DEF(connect, 30000);
    DEF(greeting, 300000);
    DEF(ehlo, 300000);
    DEF(starttls, 300000);
    DEF(auth, 300000);
    DEF(mail, 300000);
    DEF(rcpt, 300000);
    DEF(data_init, 120000);
    DEF(data_block, 180000);
    DEF(data_term, 600000);
    DEF(rset, 300000);
    DEF(quit, 10000);
    DEF(idle, 30000);
#undef DEF
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void pool_free(eng_pool_t *p)
{
    free(p->host);
    free(p->ca_file);
    free(p->user);
    if (p->password) {
        /* The secret does not linger in freed memory. */
        volatile char *v = p->password;
        while (*v)
            *v++ = '\0';
        free(p->password);
    }
    free(p->helo);
    free(p->targets);
    tls_ctx_free(p->tls_ctx);
    free(p);
}

int eng_pool_new(eng_pool_t **out, uv_loop_t *loop, const eng_route_t *r, char *errbuf,
                 size_t errlen)
{
    return eng__pool_new_tls(out, loop, r, NULL, errbuf, errlen);
}

int eng__pool_new_tls(eng_pool_t **out, uv_loop_t *loop, const eng_route_t *r, tls_ctx_t *shared,
                      char *errbuf, size_t errlen)
{
    *out = NULL;
    if (!r->host || !*r->host) {
        snprintf(errbuf, errlen, "no host given");
        return VL_EINVAL;
    }
    if ((r->user == NULL) != (r->password == NULL)) {
        snprintf(errbuf, errlen, "AUTH needs both a user and a password");
        return VL_EINVAL;
    }
    eng_pool_t *p = calloc(1, sizeof *p);
    if (!p) {
        snprintf(errbuf, errlen, "out of memory");
        return VL_ENOMEM;
    }
    p->loop = loop;
    p->route = *r;
    fill_timeouts(&p->route.timeouts);
    p->host = strdup(r->host);
    p->ca_file = dup_or_null(r->ca_file);
    p->user = dup_or_null(r->user);
    p->password = dup_or_null(r->password);
    if (r->helo_name) {
        p->helo = strdup(r->helo_name);
    } else {
        char hn[256] = "localhost";
        if (gethostname(hn, sizeof hn - 1) != 0 || !*hn || strchr(hn, ' ')) strcpy(hn, "localhost");
        hn[sizeof hn - 1] = '\0';
        p->helo = strdup(hn);
    }
    p->route.host = p->host;
    p->route.ca_file = p->ca_file;
    p->route.user = p->user;
    p->route.password = p->password;
    p->route.helo_name = p->helo;
    snprintf(p->port_str, sizeof p->port_str, "%u", (unsigned)r->port);
    if (r->ntargets) {
        p->targets = malloc(r->ntargets * sizeof *p->targets);
        if (p->targets) {
            memcpy(p->targets, r->targets, r->ntargets * sizeof *p->targets);
            p->ntargets = r->ntargets;
        }
    }
    p->route.targets = p->targets;
    p->max_conn = r->max_connections ? r->max_connections : 1;
    p->msgs_cap = r->max_msgs_per_conn;
    p->rcpts_cap = r->max_rcpts_per_conn;
    if (!p->route.max_setup_failures) p->route.max_setup_failures = 3;
    for (int i = 0; i < ENG_STAGE_LAST; i++)
        hist_init(&p->stats.verb[i]);
    hist_init(&p->stats.txn);
    if (!p->host || !p->helo || (r->user && (!p->user || !p->password)) ||
        (r->ca_file && !p->ca_file) || (r->ntargets && !p->targets)) {
        pool_free(p);
        snprintf(errbuf, errlen, "out of memory");
        return VL_ENOMEM;
    }
    if (r->tls != ENG_TLS_NONE && shared) {
        p->tls_ctx = tls_ctx_ref(shared);
    } else if (r->tls != ENG_TLS_NONE) {
        int rc = tls_ctx_client_new(&p->tls_ctx, p->ca_file, r->tls_insecure, errbuf, errlen);
        if (rc) {
            pool_free(p);
            return rc;
        }
    }
    uv_timer_init(loop, &p->backoff_timer);
    p->backoff_timer.data = p;
    p->backoff_timer_open = 1;
    *out = p;
    return 0;
}

static uint64_t now_ms(eng_pool_t *p)
{
    return uv_now(p->loop);
}

static void on_backoff_timer(uv_timer_t *t)
{
    eng__pool_kick(t->data);
}

void eng__pool_kick(eng_pool_t *p)
{
    if (p->closing) return;
    /* Idle connections first: they are set up already. Busy ones take the
     * next message themselves when their transaction ends, so the walk is
     * needed only when some are idle (not once per submitted message). */
    for (eng__sess_t *s = p->nready ? p->sessions : NULL; s && p->nqueued;) {
        eng__sess_t *next = eng__sess_next(s);
        eng__sess_kick(s);
        s = next;
    }
    if (!p->nqueued) return;
    uint64_t now = now_ms(p);
    if (now < p->backoff_until_ms) {
        uv_timer_start(&p->backoff_timer, on_backoff_timer, p->backoff_until_ms - now, 0);
        return;
    }
    /* Open connections for the work that no connection in set-up will take,
     * within the pool's ceiling and the budget it shares with other pools. */
    eng_budget_t *b = p->route.budget;
    while (p->nsetup < p->nqueued && p->nsess - p->nquitting < p->max_conn &&
           (!b || b->used < b->max)) {
        if (eng__sess_open(p)) break;
        if (b) b->used++;
    }
}

int eng_pool_submit(eng_pool_t *p, eng_msg_t *m)
{
    if (p->closing) return VL_ESTATE;
    if (!m->nrcpts || !m->rcpts || !m->rcpt_status || !m->on_done || !m->mail_from)
        return VL_EINVAL;
    m->next = NULL;
    m->t_submit = m->t_start = uv_hrtime() / 1000;
    if (p->qtail)
        p->qtail->next = m;
    else
        p->qhead = m;
    p->qtail = m;
    p->nqueued++;
    p->pending++;
    eng__pool_kick(p);
    return 0;
}

eng_msg_t *eng__pool_take(eng_pool_t *p, unsigned msgs, unsigned rcpts)
{
    eng_msg_t *m = p->qhead;
    if (!m) return NULL;
    if (p->msgs_cap && msgs >= p->msgs_cap) return NULL;
    /* A message with more recipients than the cap still goes, alone, on a
     * fresh connection; otherwise it waits for one with room. */
    if (p->rcpts_cap && rcpts && rcpts + m->nrcpts > p->rcpts_cap) return NULL;
    p->qhead = m->next;
    if (!p->qhead) p->qtail = NULL;
    p->nqueued--;
    m->next = NULL;
    return m;
}

int eng__pool_over_ceiling(const eng_pool_t *p)
{
    return p->nsess - p->nquitting > p->max_conn;
}

void eng__pool_complete(eng_pool_t *p, eng_msg_t *m, const eng_result_t *res)
{
    p->pending--;
    m->on_done(m, res);
}

/* Fail every queued message with a set-up failure's reason. */
static void fail_queued(eng_pool_t *p, eng_status_t st, const eng_event_t *ev)
{
    while (p->qhead) {
        eng_msg_t *m = p->qhead;
        p->qhead = m->next;
        if (!p->qhead) p->qtail = NULL;
        p->nqueued--;
        eng_result_t res = {.status = st,
                            .stage = ev ? ev->stage : ENG_STAGE_NONE,
                            .err = ev ? ev->err : VL_ECANCELED,
                            .errstr = ev && ev->errstr ? ev->errstr : vl_err_str(VL_ECANCELED),
                            .remote = "",
                            .queued_us = uv_hrtime() / 1000 - m->t_submit};
        if (ev) res.reply = ev->reply;
        eng__pool_complete(p, m, &res);
    }
}

void eng__pool_setup_done(eng_pool_t *p, eng__sess_t *s, const eng_event_t *ev)
{
    (void)s;
    if (ev->kind == ENG_EV_READY) {
        p->consecutive_failures = 0;
        p->backoff_until_ms = 0;
    } else {
        p->stats.setup_failures++;
        /* Set-ups the pool started together fail together: one that fails
         * while the backoff of an earlier failure runs is of the same round
         * and does not count again. Counting each, 20 connections refused
         * at once went straight to the longest backoff. */
        uint64_t now = now_ms(p);
        if (now >= p->backoff_until_ms) {
            p->consecutive_failures++;
            unsigned k = p->consecutive_failures < 16 ? p->consecutive_failures : 16;
            uint64_t delay = (uint64_t)BACKOFF_BASE_MS << (k - 1);
            if (delay > BACKOFF_MAX_MS) delay = BACKOFF_MAX_MS;
            /* Jitter keeps many pools (and workers) from retrying in step. */
            delay = delay / 2 + (uint64_t)(rand() % (int)(delay / 2 + 1));
            p->backoff_until_ms = now + delay;
        }
    }
    if (p->route.on_event) p->route.on_event(p, ev, p->route.ud);
    if (ev->kind == ENG_EV_SETUP_FAILED) {
        /* Nobody is carrying mail and set-ups keep failing: tell the owners
         * of the queued messages now rather than let them wait forever. The
         * session that failed is still counted in nsess until it closes. */
        int established = 0;
        for (eng__sess_t *x = p->sessions; x; x = eng__sess_next(x))
            if (x != s && eng__sess_established(x)) established = 1;
        if (!established && p->consecutive_failures >= p->route.max_setup_failures) {
            fail_queued(p, ENG_FAILED, ev);
            p->consecutive_failures = 0;
        }
    }
}

static void on_pool_timer_closed(uv_handle_t *h);

void eng__pool_sess_gone(eng_pool_t *p, eng__sess_t *s, const eng_event_t *ev)
{
    eng__sess_unlink(p, s);
    eng_budget_t *b = p->route.budget;
    if (b && b->used) b->used--;
    if (p->route.on_event) p->route.on_event(p, ev, p->route.ud);
    /* After the owner has seen the event (and may have closed this pool):
     * another pool may be waiting for the room. */
    if (b && b->on_release) b->on_release(b);
    if (p->closing) {
        /* The last connection is gone: finish in the timer's close callback. */
        if (!p->nsess && !uv_is_closing((uv_handle_t *)&p->backoff_timer))
            uv_close((uv_handle_t *)&p->backoff_timer, on_pool_timer_closed);
        return;
    }
    /* A connection went away: its queued work needs another. */
    eng__pool_kick(p);
}

void eng_pool_set_max_connections(eng_pool_t *p, unsigned n)
{
    p->max_conn = n ? n : 1;
    /* Idle connections above the new ceiling leave now; busy ones leave
     * after their transaction (see the session's next-transaction check). */
    for (eng__sess_t *s = p->sessions; s && eng__pool_over_ceiling(p);) {
        eng__sess_t *next = eng__sess_next(s);
        if (eng__sess_idle(s)) eng__sess_finish(s, 0);
        s = next;
    }
    eng__pool_kick(p);
}

int eng_pool_retire(eng_pool_t *p, unsigned conn_id)
{
    for (eng__sess_t *s = p->sessions; s; s = eng__sess_next(s)) {
        if (eng__sess_id(s) != conn_id) continue;
        eng__sess_retire(s);
        eng__pool_kick(p);
        return 0;
    }
    return VL_ENOENT;
}

void eng_pool_close_idle(eng_pool_t *p)
{
    for (eng__sess_t *s = p->sessions; s;) {
        eng__sess_t *next = eng__sess_next(s);
        if (eng__sess_idle(s)) eng__sess_finish(s, 0);
        s = next;
    }
}

void eng_pool_set_caps(eng_pool_t *p, unsigned msgs_per_conn, unsigned rcpts_per_conn)
{
    p->msgs_cap = msgs_per_conn;
    p->rcpts_cap = rcpts_per_conn;
}

size_t eng_pool_queued(const eng_pool_t *p)
{
    return p->nqueued;
}

unsigned eng_pool_connections(const eng_pool_t *p)
{
    return p->nsess;
}

size_t eng_pool_pending(const eng_pool_t *p)
{
    return p->pending;
}

const eng_stats_t *eng_pool_stats(const eng_pool_t *p)
{
    return &p->stats;
}

static void on_pool_timer_closed(uv_handle_t *h)
{
    eng_pool_t *p = h->data;
    void (*cb)(void *) = p->on_closed;
    void *ud = p->closed_ud;
    pool_free(p);
    if (cb) cb(ud);
}

void eng_pool_close(eng_pool_t *p, int now, void (*on_closed)(void *ud), void *ud)
{
    if (p->closing) return;
    p->closing = 1;
    p->on_closed = on_closed;
    p->closed_ud = ud;
    uv_timer_stop(&p->backoff_timer);
    fail_queued(p, ENG_CANCELLED, NULL);
    for (eng__sess_t *s = p->sessions; s;) {
        eng__sess_t *next = eng__sess_next(s);
        eng__sess_finish(s, now);
        s = next;
    }
    if (!p->nsess) uv_close((uv_handle_t *)&p->backoff_timer, on_pool_timer_closed);
}
