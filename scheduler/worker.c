#include "scheduler/worker.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "common/prio.h"
#include "engine/engine.h"
#include "engine/link.h"
#include "ratelimit/aimd.h"
#include "ratelimit/ctl.h"
#include "ratelimit/gcra.h"
#include "ratelimit/lua.h"
#include "ratelimit/quota.h"
#include "ratelimit/rules.h"
#include "scheduler/keys.h"
#include "scheduler/lua.h"
#include "scheduler/result.h"

#define TICK_MS 10
#define PROGRESS_MS 500
#define REAP_MS 5000
#define WINDOW_PER_CONN                                                                            \
    8 /* messages per connection submitted ahead: one being answered,                              \
       * one pipelined behind it, two waiting in the pool's queue */
#define KEYLEN 300
#define LEASELEN 384
#define MAX_SLOTS 256 /* connection slots one worker may hold per provider */
#define SLOT_LEASE_MS 10000
#define SLOT_RENEW_MS 1000
#define MAX_PROVS_PROGRESS 64
#define REC_BATCH 128     /* results per record.lua call */
#define MAX_LEASE_OPS 256 /* releases and returns per record.lua call */
#define MAX_CLAIM 64      /* members per claim */
#define MAX_FIELDS 256    /* CSV columns a message can use */
/* record.lua's list gives a row's offset in its batch as one character. */
_Static_assert(SCHED_BATCH_ROWS <= 64, "a row's offset in its batch must fit '0'..'o'");
#define RENDER_CHUNK 128   /* rows per render work item */
#define RENDER_PAR_MAX 4   /* render work items running at once, at most */
#define RENDER_MIN_ITEM 32 /* grants of fewer rows render on the loop */

typedef struct prov prov_t;
typedef struct job job_t;

/* A due-set member this worker holds under a lease (keys.h): a batch part
 * or a single row. It is released (or, when the worker stops, returned to
 * the due set) once each of its rows is recorded or given up. */
typedef struct held {
    struct held *next, *prev;
    prov_t *p;
    unsigned left;        /* rows not yet recorded or given up */
    int giving_up;        /* the worker stopped: return it rather than release it */
    char lease[LEASELEN]; /* "member|NAME" */
} held_t;

/* A result waiting for the next record.lua batch. */
typedef struct pend {
    prov_t *p;
    size_t res_off, res_len; /* the result, in the worker's pres */
    char row[24], batch[48];
    unsigned long rown; /* row as a number */
    uint64_t retry_at;  /* deferred rows: when to try again (ms) */
    char letter;        /* status_letter(status, attempted), found once */
} pend_t;

typedef struct lease_op {
    prov_t *p;
    int ret; /* 1: back to due now; 0: release */
    char lease[LEASELEN];
} lease_op_t;

struct prov {
    sched_worker_t *w;
    const rl_provider_t *cfg;
    eng_link_t *link; /* one pool (smtp://, smtps://) or the MX router (route "mx") */
    int is_mx;
    const rl_rules_t *chain[3];
    size_t nchain;
    /* The provider's controller (ratelimit/ctl.h): the learned rate, connection ceiling,
     * per-connection caps and back-off pauses. apply_limits() is the one place that
     * turns what it says, with the slots held, into the link's ceiling and caps. */
    rl_ctl_t *ctl;
    rl_ctl_limits_t lim; /* what it said at the last apply_limits() */
    unsigned applied_conns, applied_msgs, applied_rcpts;
    char last_why[256];        /* the controller's last reason logged */
    uint64_t rate_interval_us; /* the rate in force as GCRA arithmetic (0: none) */
    uint32_t rate_burst;
    uint64_t ach_t0; /* this worker's achieved rate, for the others */
    unsigned long long ach_n0, accepted;
    double achieved;
    rl_route_t route;
    unsigned inflight;       /* submitted to the engine, not yet recorded */
    job_t *back, *back_tail; /* claimed rows waiting for tokens */
    unsigned nback;
    int claiming; /* a claim round trip is under way */
    int taking;   /* a rate/quota round trip is under way */
    uint64_t next_claim_ms, next_take_ms;
    uint64_t suspended_until_ms;
    int stopped; /* a configuration problem: a person must act */
    char reason[512];
    char key_due[KEYLEN];
    char key_slots[KEYLEN];
    char key_learned[KEYLEN], key_learned_ms[KEYLEN], key_achieved[KEYLEN];
    uint64_t next_learned_ms;
    int learned_busy;
    /* Connection slots held in {p:NAME}:slots, so that the connections of
     * every worker together stay within the provider's ceiling. */
    unsigned char slot_ok[MAX_SLOTS];
    unsigned held;
    uint64_t next_slot_ms;
};

typedef struct slot_ctx {
    prov_t *p;
    unsigned i;
} slot_ctx_t;

/* One claimed row, from its claim to its record. */
struct job {
    job_t *next;
    sched_worker_t *w;
    prov_t *p;
    held_t *h;     /* the lease it came with */
    int submitted; /* handed to the engine */
    eng_msg_t msg;
    eng_rcpt_status_t st[1];
    const char *rcpts[1];
    msg_out_t *out;
    buf_t fields; /* the row's CSV fields, decoded (sched_fields_decode) */
    int nf;       /* fields, or < 0 when the stored row is unreadable */
    size_t foff[MAX_FIELDS], flen[MAX_FIELDS];
    char row[24], batch[48];
    unsigned long rown; /* row as a number */
    char email[512];    /* as in the CSV (results, suppression check) */
    unsigned attempts;  /* before this one */
    uint64_t first_ms, last_ms;
    /* What render_job() left: why the row cannot be sent (NULL when j->out
     * holds its message; static or in j->out), and the recipient's domain
     * in ASCII (the MX router's key). */
    const char *why;
    char domain[256];
};

/* Rows whose tokens were granted, rendered off the loop: the render is most
 * of a row's CPU on the loop, and the loop (the connections' I/O, Redis,
 * the scheduling) is what bounds a fast campaign. The factory is read-only
 * and each job has its own output object, so a work item touches nothing
 * the loop touches until its after-work callback runs on the loop. Items
 * are submitted in the order they were queued, so messages go out in the
 * order their rows were claimed. */
typedef struct render_work {
    uv_work_t req;
    struct render_work *next; /* the worker's FIFO */
    sched_worker_t *w;
    const msg_factory_t *factory; /* copies: the thread reads no worker state */
    int email_col;
    int done;
    unsigned n;
    job_t *jobs[RENDER_CHUNK];
} render_work_t;

struct sched_worker {
    uv_loop_t *loop;
    sched_redis_t *r;
    sched_worker_opts_t o;
    char *id;
    prov_t *provs;
    size_t nprovs;
    uv_timer_t tick;
    int tick_open;
    uint64_t last_progress, last_reap, last_renew;
    job_t *free_jobs;
    unsigned inflight; /* jobs alive: waiting for tokens or submitted */
    held_t *helds;     /* leases held */
    int stopping, finished, progress_busy;
    int paused;        /* the campaign's state is paused (seen at the last progress poll) */
    int orphan_check;  /* rows for unknown providers: 0 to ask, 1 asked, 2 answered */
    int progress_soon; /* idle with every result recorded: ask now if done */
    int existed; /* the campaign's meta was read, or a row of it got a result: its loss is an error
                  */
    int reclaim_pending;            /* take back every lease once connected */
    struct rec *retry, *retry_tail; /* records waiting for Redis to come back, in order */
    unsigned records;               /* records sent and not yet answered */
    uint64_t stop_ms;               /* when stopping began */
    pend_t pend[REC_BATCH];
    unsigned npend;
    lease_op_t ops[MAX_LEASE_OPS];
    unsigned nops;
    buf_t pres;   /* the pending results (result.h), one after another */
    char wid[96]; /* this worker's name in slot holders */
    int closing_pools;
    int rc;
    char why[1024];
    render_work_t *rq, *rq_tail; /* render work, oldest first: running, done or waiting */
    unsigned rq_running;         /* items handed to the thread pool */
    unsigned render_par;         /* items that may run at once */
    char k_meta[KEYLEN], k_batch[KEYLEN], k_state[KEYLEN], k_retry[KEYLEN], k_count[KEYLEN],
        k_lease[KEYLEN];
    /* recent delivery rate */
    uint64_t rate_t0;
    long long rate_n0, delivered;
    double rate;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t rnd(void *arg)
{
    (void)arg;
    return ((uint64_t)rand() << 32) ^ (uint64_t)rand();
}

static void maybe_finish(sched_worker_t *w);
static void drop_backlog(sched_worker_t *w, int cancelled);
static void try_provider(prov_t *p, uint64_t now);

static int prov_ready(const prov_t *p)
{
    return p->link != NULL;
}

static unsigned prov_connections(const prov_t *p)
{
    return p->link ? eng_link_connections(p->link) : 0;
}

/* The rate the controller allows as GCRA arithmetic: the configured rate's own (with
 * its burst) while nothing lower was learned, else the learned one per second, with
 * the default burst of ratelimit/gcra.h. */
static void set_rate(prov_t *p, double rate)
{
    const rl_rate_t *cfg = &p->cfg->rate;
    double cfg_rate = cfg->interval_us ? 1e6 / (double)cfg->interval_us : 0;
    if (rate <= 0) {
        p->rate_interval_us = 0;
    } else if (cfg->interval_us && rate >= cfg_rate * 0.999) {
        p->rate_interval_us = cfg->interval_us;
        p->rate_burst = cfg->burst ? cfg->burst : 1;
    } else {
        p->rate_interval_us = (uint64_t)(1e6 / rate + 0.999);
        p->rate_burst = rl_rate_default_burst(rate);
    }
}

/* The one writer of the link's ceiling and caps: the controller's values, the ceiling
 * also bounded by the connection slots this worker holds in Redis (so that every
 * worker's connections together stay within the provider's ceiling). Called when
 * either changes; the link is told only what changed. */
static void apply_limits(prov_t *p, uint64_t now)
{
    if (!prov_ready(p)) return;
    rl_ctl_limits(p->ctl, now, &p->lim);
    set_rate(p, p->lim.rate_per_s);
    /* Every change but the quiet raises, once: what a person reading the log needs to
     * know of why the provider is sent to more slowly. */
    if (p->lim.why && strcmp(p->lim.why, p->last_why)) {
        snprintf(p->last_why, sizeof p->last_why, "%s", p->lim.why);
        if (strstr(p->lim.why, "raised"))
            VL_DEBUG("provider %s: %s", p->cfg->name, p->lim.why);
        else
            VL_INFO("provider %s: %s", p->cfg->name, p->lim.why);
    }
    unsigned conns = p->lim.max_connections;
    if (p->held < conns) conns = p->held;
    if (!conns) conns = 1; /* until the first slot is granted */
    if (conns != p->applied_conns) {
        p->applied_conns = conns;
        eng_link_set_max_connections(p->link, conns);
    }
    if (p->lim.msgs_per_conn != p->applied_msgs || p->lim.rcpts_per_conn != p->applied_rcpts) {
        p->applied_msgs = p->lim.msgs_per_conn;
        p->applied_rcpts = p->lim.rcpts_per_conn;
        eng_link_set_caps(p->link, p->applied_msgs, p->applied_rcpts);
    }
}

/* ---- recording ---------------------------------------------------------- */

/* Results are recorded in batches (one record.lua call for up to REC_BATCH
 * rows, flushed every tick), so Redis does one script call per batch rather
 * than per message. A batch that could not reach Redis is kept and sent
 * again, in order, when Redis is back: the result of a message that went out
 * must not be lost, and record.lua ignores rows already final, so a second
 * try is safe. Order matters because a batch may release a lease whose
 * earlier rows are in an earlier batch: a release applied before those rows
 * are recorded would leave them in no set at all. */
typedef struct rec {
    struct rec *next;
    sched_worker_t *w;
    int argc, nkeys;
    char **argv;  /* into arena */
    size_t *lens; /* their lengths */
    char *arena;  /* owned: the arguments, each NUL-terminated */
} rec_t;

static void rec_free(rec_t *rc)
{
    free(rc->arena);
    free(rc->argv);
    free(rc->lens);
    free(rc);
}

static void keep_for_retry(sched_worker_t *w, rec_t *rc, int front)
{
    if (front) {
        rc->next = w->retry;
        w->retry = rc;
        if (!w->retry_tail) w->retry_tail = rc;
    } else {
        rc->next = NULL;
        if (w->retry_tail)
            w->retry_tail->next = rc;
        else
            w->retry = rc;
        w->retry_tail = rc;
    }
}

static void on_recorded(sched_redis_t *r, redisReply *reply, void *priv, int err,
                        const char *errstr)
{
    (void)r;
    rec_t *rc = priv;
    sched_worker_t *w = rc->w;
    w->records--;
    if (err == VL_EREDIS || err == VL_ETIMEOUT) {
        /* Batches sent after this one failed too (one connection, in order)
         * and come back here in order; keep them in that order. */
        keep_for_retry(w, rc, 0);
        return;
    }
    if (err || (reply && reply->type == REDIS_REPLY_ERROR))
        VL_WARN("campaign %s: recording results failed: %s", w->id, err ? errstr : reply->str);
    rec_free(rc);
    /* The last result this worker had is in Redis and nothing else is under
     * way: the campaign may be complete. Ask on the next tick rather than at
     * the next progress interval, which would leave send idle for up to
     * PROGRESS_MS at the end of every run. */
    if (w->o.until_done && !w->records && !w->inflight && !w->npend && !w->retry)
        w->progress_soon = 1;
}

/* Send a batch, or queue it behind the batches waiting for Redis. */
static void rec_send(rec_t *rc, int queued)
{
    sched_worker_t *w = rc->w;
    if ((!w->retry || queued) &&
        sched_redis_eval(w->r, on_recorded, rc, sched_lua_record, rc->nkeys, rc->argc - rc->nkeys,
                         (const char **)rc->argv, rc->lens) == 0) {
        w->records++;
        return;
    }
    keep_for_retry(w, rc, queued);
}

/* Send the kept batches again, oldest first (Redis is connected). */
static void retry_records(sched_worker_t *w)
{
    while (w->retry && sched_redis_connected(w->r)) {
        rec_t *rc = w->retry;
        w->retry = rc->next;
        if (!w->retry) w->retry_tail = NULL;
        if (sched_redis_eval(w->r, on_recorded, rc, sched_lua_record, rc->nkeys,
                             rc->argc - rc->nkeys, (const char **)rc->argv, rc->lens) == 0) {
            w->records++;
        } else {
            keep_for_retry(w, rc, 1);
            break;
        }
    }
}

/* A status as record.lua's list has it: one letter, upper case when a
 * server was tried. */
static char status_letter(const char *status, int attempted)
{
    static const struct {
        const char *name;
        char letter;
    } map[] = {{"delivered", 'd'}, {"bounced", 'b'},   {"failed", 'f'},  {"suppressed", 's'},
               {"rejected", 'r'},  {"cancelled", 'c'}, {"deferred", 'q'}};
    char c = 'f';
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (!strcmp(status, map[i].name)) c = map[i].letter;
    return attempted ? (char)(c - 'a' + 'A') : c;
}

/* Turn the pending results and lease operations into one batch and send it. */
static void flush_records(sched_worker_t *w)
{
    if (!w->npend && !w->nops) return;
    prov_t *provs[REC_BATCH + MAX_LEASE_OPS];
    unsigned np = 0;
#define PIDX(prov, out)                                                                            \
    do {                                                                                           \
        unsigned k_ = 0;                                                                           \
        while (k_ < np && provs[k_] != (prov))                                                     \
            k_++;                                                                                  \
        if (k_ == np) provs[np++] = (prov);                                                        \
        (out) = k_ + 1;                                                                            \
    } while (0)
    unsigned idx[REC_BATCH], ridx[MAX_LEASE_OPS];
    unsigned nrel = 0, nret = 0;
    for (unsigned i = 0; i < w->npend; i++)
        PIDX(w->pend[i].p, idx[i]);
    for (unsigned i = 0; i < w->nops; i++) {
        if (w->ops[i].ret) {
            PIDX(w->ops[i].p, ridx[i]);
            nret++;
        } else {
            nrel++;
        }
    }
#undef PIDX
    /* Results grouped by batch and results hash (a batch spans at most two),
     * in order of first appearance (record.lua). */
#define SAME_GROUP(a, b)                                                                           \
    ((a)->rown / SCHED_RES_ROWS == (b)->rown / SCHED_RES_ROWS && !strcmp((a)->batch, (b)->batch))
    unsigned gof[REC_BATCH], ng = 0, order[REC_BATCH], ndef = 0;
    unsigned gstart[REC_BATCH + 1], gcount[REC_BATCH] = {0};
    for (unsigned i = 0; i < w->npend; i++) {
        unsigned g = 0;
        while (g < ng && !SAME_GROUP(&w->pend[gof[g]], &w->pend[i]))
            g++;
        if (g == ng) gof[ng++] = i;
        gcount[g]++;
        if (w->pend[i].letter == 'q' || w->pend[i].letter == 'Q') ndef++;
    }
    gstart[0] = 0;
    for (unsigned g = 0; g < ng; g++)
        gstart[g + 1] = gstart[g] + gcount[g];
    {
        unsigned fill[REC_BATCH];
        memcpy(fill, gstart, ng * sizeof *fill);
        for (unsigned i = 0; i < w->npend; i++) {
            unsigned g = 0;
            while (!SAME_GROUP(&w->pend[gof[g]], &w->pend[i]))
                g++;
            order[fill[g]++] = i;
        }
    }
    /* The results hashes of the groups' rows: a batch's rows F..L are in
     * res:F/64 and, when it spans two, res:L/64; gkey[g] is the index in
     * KEYS of group g's first. */
    unsigned long chunk[2 * REC_BATCH];
    size_t nchunk = 0;
    unsigned gkey[REC_BATCH];
    for (unsigned g = 0; g < ng; g++) {
        unsigned long f = 0, l = 0;
        sscanf(w->pend[gof[g]].batch, "%lu-%lu", &f, &l);
        size_t k = sched_res_hashes_add(chunk, &nchunk, f, l);
        gkey[g] = 6 + np + (unsigned)k;
    }
    rec_t *rc = calloc(1, sizeof *rc);
    int nkeys = 5 + (int)np + (int)nchunk;
#undef SAME_GROUP
    int argc = nkeys + 4 + 5 * (int)ng + 2 * (int)ndef + (int)nrel + 2 * (int)nret;
    if (rc) rc->argv = calloc((size_t)argc, sizeof *rc->argv);
    if (!rc || !rc->argv) {
        VL_WARN("campaign %s: out of memory recording results; their leases bring the rows back",
                w->id);
        free(rc);
        buf_reset(&w->pres);
        w->npend = 0;
        w->nops = 0;
        return;
    }
    rc->w = w;
    rc->nkeys = nkeys;
    rc->argc = argc;
    /* All arguments in one allocation: a batch has about a thousand. */
    buf_t ar;
    buf_init(&ar, (size_t)64 << 20);
    size_t *off = calloc((size_t)argc, sizeof *off);
    int a = 0, err = !off;
#define ARG(str) (err = err || buf_puts(&ar, (str)) || buf_putc(&ar, '\0'), off[a++] = ar.len)
#define NUM(fmt, v)                                                                                \
    (err = err || buf_put_dec(&ar, (long long)(v)) || buf_putc(&ar, '\0'), off[a++] = ar.len)
    if (!err) {
        ARG(w->k_lease);
        ARG(w->k_retry);
        ARG(w->k_count);
        ARG(w->k_meta);
        ARG(w->k_state);
        for (unsigned k = 0; k < np; k++)
            ARG(provs[k]->key_due);
        for (size_t k = 0; k < nchunk; k++) {
            char key[KEYLEN];
            snprintf(key, sizeof key, SCHED_KEY_RES, w->id, chunk[k]);
            ARG(key);
        }
        NUM("%llu", (unsigned long long)now_ms());
        NUM("%u", ng);
        NUM("%u", nrel);
        NUM("%u", nret);
        for (unsigned g = 0; g < ng; g++) {
            unsigned *o = order + gstart[g];
            /* Rows in ascending order: an unbroken run with none deferred
             * (nearly every group) gets a tally, and record.lua handles it
             * without looking at each row. Results come nearly in order, so
             * the insertion sort has little to do. */
            for (unsigned k = 1; k < gcount[g]; k++)
                for (unsigned m = k; m > 0 && w->pend[o[m - 1]].rown > w->pend[o[m]].rown; m--) {
                    unsigned t = o[m];
                    o[m] = o[m - 1];
                    o[m - 1] = t;
                }
            int run = w->pend[o[gcount[g] - 1]].rown - w->pend[o[0]].rown + 1 == gcount[g];
            unsigned tally[128] = {0};
            for (unsigned k = 0; run && k < gcount[g]; k++) {
                unsigned char c = (unsigned char)w->pend[o[k]].letter;
                run = c != 'q' && c != 'Q';
                tally[c & 127]++;
            }
            ARG(w->pend[o[0]].batch);
            NUM("%u", gkey[g]);
            unsigned long first = strtoul(w->pend[o[0]].batch, NULL, 10);
            for (unsigned k = 0; k < gcount[g]; k++) {
                const pend_t *pd = &w->pend[o[k]];
                /* Rows of a batch are at most SCHED_BATCH_ROWS apart. */
                err = err || buf_putc(&ar, (char)('0' + (pd->rown - first))) ||
                      buf_putc(&ar, pd->letter);
            }
            err = err || buf_putc(&ar, '\0');
            off[a++] = ar.len;
            /* The group's results in one argument, a line each. */
            for (unsigned k = 0; k < gcount[g]; k++) {
                const pend_t *pd = &w->pend[o[k]];
                err = err || buf_puts(&ar, pd->row) || buf_putc(&ar, '\t') ||
                      buf_append(&ar, w->pres.data + pd->res_off, pd->res_len) ||
                      buf_putc(&ar, '\n');
            }
            err = err || buf_putc(&ar, '\0');
            off[a++] = ar.len;
            for (unsigned c = 'A'; run && c <= 'z'; c++)
                if (tally[c]) err = err || buf_putc(&ar, (char)c) || buf_put_dec(&ar, tally[c]);
            err = err || buf_putc(&ar, '\0');
            off[a++] = ar.len;
            for (unsigned k = 0; k < gcount[g]; k++) {
                const pend_t *pd = &w->pend[o[k]];
                if (pd->letter != 'q' && pd->letter != 'Q') continue;
                NUM("%llu", pd->retry_at);
                NUM("%u", idx[o[k]]);
            }
        }
        for (unsigned i = 0; i < w->nops; i++)
            if (!w->ops[i].ret) ARG(w->ops[i].lease);
        for (unsigned i = 0; i < w->nops; i++)
            if (w->ops[i].ret) {
                ARG(w->ops[i].lease);
                NUM("%u", ridx[i]);
            }
    }
#undef NUM
#undef ARG
    buf_reset(&w->pres);
    w->npend = 0;
    w->nops = 0;
    if (err) {
        VL_WARN("campaign %s: out of memory recording results; their leases bring the rows back",
                w->id);
        buf_free(&ar);
        free(off);
        rec_free(rc);
        return;
    }
    rc->arena = buf_take(&ar);
    /* off[i] is the end of argument i, so argument i starts at off[i - 1]. */
    size_t start = 0;
    for (int i = 0; i < argc; i++) {
        size_t end = off[i];
        rc->argv[i] = rc->arena + start;
        off[i] = end - start - 1; /* now the length, without the NUL */
        start = end;
    }
    rc->lens = off;
    rec_send(rc, 0);
}

/* Release a lease whose rows are all recorded, or return it when the worker
 * gave up on some of them. */
static void held_done(sched_worker_t *w, held_t *h)
{
    if (--h->left) return;
    if (w->nops == MAX_LEASE_OPS) flush_records(w);
    lease_op_t *op = &w->ops[w->nops++];
    op->p = h->p;
    op->ret = h->giving_up;
    memcpy(op->lease, h->lease, sizeof op->lease);
    if (h->prev)
        h->prev->next = h->next;
    else
        w->helds = h->next;
    if (h->next) h->next->prev = h->prev;
    free(h);
}

/* Record j's outcome: a final status, or "deferred" with a retry time. The
 * result is composed here (keys.h); record.lua only stores it. */
static void record(sched_worker_t *w, job_t *j, const char *status, int code, const char *enhanced,
                   const char *response, const char *host, int attempted, uint64_t retry_at)
{
    uint64_t now = now_ms();
    sched_result_t res = {.email = j->email,
                          .provider = j->p->cfg->name,
                          .status = status,
                          .attempts = j->attempts + (attempted ? 1 : 0),
                          .code = code,
                          .enhanced = enhanced,
                          .response = response,
                          .host = host,
                          .first_ms = (long long)(j->first_ms ? j->first_ms
                                                  : attempted ? now
                                                              : 0),
                          .last_ms = (long long)(attempted ? now : j->last_ms)};
    size_t at = w->pres.len;
    if (sched_result_encode(&w->pres, &res)) {
        w->pres.len = at; /* drop the partial result */
        VL_WARN("campaign %s: row %s: out of memory recording its result; it will be tried "
                "again",
                w->id, j->row);
        j->h->giving_up = 1;
        held_done(w, j->h);
        j->h = NULL;
        return;
    }
    pend_t *pd = &w->pend[w->npend++];
    pd->p = j->p;
    pd->res_off = at;
    pd->res_len = w->pres.len - at;
    memcpy(pd->row, j->row, sizeof pd->row);
    pd->rown = j->rown;
    memcpy(pd->batch, j->batch, sizeof pd->batch);
    pd->retry_at = retry_at;
    pd->letter = status_letter(status, attempted);
    w->existed = 1;
    if (!strcmp(status, "delivered")) w->delivered++;
    if (w->o.on_result) w->o.on_result(j->p->cfg->name, status, w->o.ud);
    held_done(w, j->h);
    j->h = NULL;
    if (w->npend == REC_BATCH) flush_records(w);
}

/* ---- jobs ------------------------------------------------------------------ */

static job_t *job_get(sched_worker_t *w)
{
    job_t *j = w->free_jobs;
    if (j) {
        w->free_jobs = j->next;
        return j;
    }
    j = calloc(1, sizeof *j);
    if (!j) return NULL;
    j->w = w;
    buf_init(&j->fields, (size_t)16 << 20);
    if (msg_out_new(&j->out, w->o.factory)) {
        free(j);
        return NULL;
    }
    return j;
}

/* j is done with (recorded, or given up): back to the free list. */
static void job_put(sched_worker_t *w, job_t *j)
{
    prov_t *p = j->p;
    if (j->submitted) p->inflight--;
    w->inflight--;
    if (j->h) { /* not recorded: its lease goes back to the due set */
        j->h->giving_up = 1;
        held_done(w, j->h);
        j->h = NULL;
    }
    j->submitted = 0;
    j->next = w->free_jobs;
    w->free_jobs = j;
}

static void job_free(sched_worker_t *w, job_t *j)
{
    prov_t *p = j->p;
    job_put(w, j);
    try_provider(p, now_ms());
    maybe_finish(w);
}

/* ---- deciding ----------------------------------------------------------- */

static void suspend_provider(prov_t *p, uint64_t until, const char *why)
{
    if (until > p->suspended_until_ms) p->suspended_until_ms = until;
    snprintf(p->reason, sizeof p->reason, "%s", why);
    char key[KEYLEN], now_s[24], until_s[24];
    snprintf(key, sizeof key, SCHED_KEY_P_SUSPEND, p->cfg->name);
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now_ms());
    snprintf(until_s, sizeof until_s, "%llu", (unsigned long long)until);
    const char *argv[] = {key, "set", now_s, until_s, why};
    sched_redis_eval(p->w->r, NULL, NULL, rl_lua_suspend, 1, 4, argv, NULL);
}

/* ---- learned limits, shared ---------------------------------------------- */

/* What one worker's controller learns goes to {p:NAME}:learned (learned.lua), and every
 * worker adopts the newest within a second: the workers of a provider, and the next
 * run, share one learned rate and ceiling rather than each finding the limit again.
 * Each worker also says what it achieved, so that a decrease starts from the
 * provider's total rate rather than one worker's share. */
#define LEARNED_SYNC_MS 1000

static void on_learned(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *errstr)
{
    (void)r;
    (void)errstr;
    prov_t *p = priv;
    p->learned_busy = 0;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements != 8) return;
    double v[8];
    for (size_t i = 0; i < 8; i++)
        v[i] = reply->element[i]->str ? strtod(reply->element[i]->str, NULL) : 0;
    uint64_t now = now_ms();
    rl_ctl_peers_achieved(p->ctl, now, v[7]);
    rl_ctl_learned_t l = {.rate_per_s = v[0],
                          .max_connections = (uint32_t)v[1],
                          .msgs_per_conn = (uint32_t)v[2],
                          .rcpts_per_conn = (uint32_t)v[3],
                          .paused_until_ms = (uint64_t)v[4],
                          .changed_ms = (uint64_t)v[5]};
    rl_ctl_adopt(p->ctl, &l);
    apply_limits(p, now);
}

static void learned_tick(prov_t *p, uint64_t now)
{
    if (p->learned_busy || now < p->next_learned_ms) return;
    p->next_learned_ms = now + LEARNED_SYNC_MS;
    if (now - p->ach_t0 >= 1000) {
        p->achieved = (double)(p->accepted - p->ach_n0) * 1000.0 / (double)(now - p->ach_t0);
        p->ach_t0 = now;
        p->ach_n0 = p->accepted;
    }
    rl_ctl_learned_t l;
    int publish = rl_ctl_take_changes(p->ctl, &l);
    char now_s[24], ach[32], vals[6][32];
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now);
    snprintf(ach, sizeof ach, "%.1f", p->achieved);
    const char *argv[3 + 4 + 7];
    int n = 0;
    argv[n++] = p->key_learned;
    argv[n++] = p->key_learned_ms;
    argv[n++] = p->key_achieved;
    argv[n++] = now_s;
    argv[n++] = p->w->wid;
    argv[n++] = ach;
    argv[n++] = publish ? "1" : "0";
    if (publish) {
        snprintf(vals[0], sizeof vals[0], "%.1f", l.rate_per_s);
        snprintf(vals[1], sizeof vals[1], "%u", l.max_connections);
        snprintf(vals[2], sizeof vals[2], "%u", l.msgs_per_conn);
        snprintf(vals[3], sizeof vals[3], "%u", l.rcpts_per_conn);
        snprintf(vals[4], sizeof vals[4], "%llu", (unsigned long long)l.paused_until_ms);
        snprintf(vals[5], sizeof vals[5], "%llu", (unsigned long long)l.changed_ms);
        for (int i = 0; i < 6; i++)
            argv[n++] = vals[i];
        rl_ctl_limits_t now_lim;
        rl_ctl_limits(p->ctl, now, &now_lim);
        argv[n++] = now_lim.why ? now_lim.why : "";
    }
    if (sched_redis_eval(p->w->r, on_learned, p, sched_lua_learned, 3, n - 3, argv, NULL) == 0)
        p->learned_busy = 1;
}

/* Turn a rule's pause or stop into the provider's state; what a reply says about the
 * provider's limits goes to its controller (feed_ctl). */
static void act_on_provider(prov_t *p, const rl_action_t *a, const rl_reply_t *rr)
{
    char why[400];
    snprintf(why, sizeof why, "%d %s %s (rule %s)", rr->code, rr->enhanced, rr->text,
             a->rule_id ? a->rule_id : "?");
    switch (a->cls) {
    case RL_PAUSE:
        suspend_provider(p, (uint64_t)a->pause_until_ms, why);
        break;
    case RL_STOP:
        p->stopped = 1;
        snprintf(p->reason, sizeof p->reason, "%s", why);
        {
            char field[1024];
            snprintf(field, sizeof field, "%s: %s", p->cfg->name, why);
            sched_redis_cmd(p->w->r, NULL, NULL, "HSET %s stop_reason %s", p->w->k_meta, field);
        }
        break;
    default:
        break;
    }
}

/* Tell the controller what one attempt's outcome says about the provider's limits, and
 * do what it and the rule ask of the connection: one the controller suspects of a
 * per-connection cap, or one a rule calls spent (reconnect: 450 MI:CEL; a named
 * per-connection cap), is retired, and its replacement opens. a (borrowed) is the
 * rule's action, or NULL for a message delivered. */
static void feed_ctl(prov_t *p, const job_t *j, const eng_result_t *res, rl_ctl_signal_t sig,
                     const rl_action_t *a, uint64_t now)
{
    rl_ctl_outcome_t o = {.sig = sig,
                          .stage = res->stage == ENG_STAGE_MAIL   ? 0
                                   : res->stage == ENG_STAGE_RCPT ? 1
                                                                  : 2,
                          .conn_id = res->conn_id,
                          .msgs_on_conn = res->conn_msgs,
                          .rcpts_on_conn = res->conn_rcpts,
                          .open_conns = prov_connections(p),
                          .cap = a ? a->cap : RL_CAP_NONE};
    unsigned act = rl_ctl_outcome(p->ctl, now, &o);
    int retire =
        (act & RL_CTL_ACT_CLOSE) ||
        (a && (a->cls == RL_RECONNECT || a->cls == RL_LOWER_PER_CONNECTION || a->close_connection));
    if (retire && res->conn_id) eng_link_retire(p->link, j->domain, res->conn_id);
    /* What an acceptance changes (a raise, a confirmed cap) the next tick applies, within
     * TICK_MS: a message delivered costs the controller's bookkeeping, not a pass over the
     * limits. A refusal is applied at once, before more go out. */
    if (sig != RL_CTL_OK) apply_limits(p, now);
}

static void on_msg_done(eng_msg_t *m, const eng_result_t *res)
{
    job_t *j = m->ud;
    sched_worker_t *w = j->w;
    prov_t *p = j->p;
    uint64_t now = now_ms();
    unsigned attempts = j->attempts + 1;
    if (res->status == ENG_DELIVERED) {
        p->accepted++;
        feed_ctl(p, j, res, RL_CTL_OK, NULL, now);
        record(w, j, "delivered", res->reply.code, res->reply.enhanced, res->reply.text,
               res->remote, 1, 0);
        job_free(w, j);
        return;
    }
    if (res->status == ENG_CANCELLED) {
        /* Never tried (the worker is stopping): back to due at once. */
        record(w, j, "deferred", 0, "", "not tried: the worker stopped", "", 0, now);
        job_free(w, j);
        return;
    }
    const eng_reply_t *er =
        res->status == ENG_REJECTED ? &res->reply : (res->reply.code ? &res->reply : NULL);
    if (!er && (res->err == VL_ENOTSUP || res->err == VL_ETOOBIG)) {
        /* The server cannot take this message at all (SMTPUTF8, SIZE). */
        record(w, j, "failed", 0, "", res->errstr, res->remote, 1, 0);
        job_free(w, j);
        return;
    }
    if (!er) {
        /* No reply: a network or TLS failure, or an unknown outcome. Retry
         * with backoff; the route's own backoff slows the reconnects. */
        char resp[300];
        snprintf(resp, sizeof resp, "%s at %s: %s", eng_status_name(res->status),
                 eng_stage_name(res->stage), res->errstr ? res->errstr : "");
        if (attempts >= w->o.max_attempts) {
            record(w, j, "failed", 0, "", resp, res->remote, 1, 0);
        } else {
            /* A second at first, or the configured base when smaller (--retry-base-ms). */
            uint64_t base = w->o.retry_base_ms < 1000 ? w->o.retry_base_ms : 1000;
            uint64_t delay = rl_backoff(attempts, base, 600000, rnd(NULL));
            record(w, j, "deferred", 0, "", resp, res->remote, 1, now + delay);
        }
        job_free(w, j);
        return;
    }
    rl_reply_t rr = {.code = er->code, .enhanced = er->enhanced, .text = er->text};
    rl_decide_ctx_t ctx = {.now_ms = now,
                           .attempt = attempts,
                           .tz = p->cfg->tz,
                           .rand = rnd,
                           .backoff_base_ms = w->o.retry_base_ms};
    rl_action_t a;
    /* rl_decide fills a even for a reply that is no failure (250 to DATA, 354 to RCPT:
     * VL_EPROTO); the row's response then says the server broke the protocol. */
    const char *response = er->text;
    char proto[400];
    if (rl_decide(p->chain, p->nchain, &rr, &ctx, &a) == VL_EPROTO) {
        snprintf(proto, sizeof proto, "protocol error: the server answered %s with %d%s%s %s (%s)",
                 eng_stage_name(res->stage), er->code, er->enhanced[0] ? " " : "", er->enhanced,
                 er->text, a.why);
        response = proto;
    }
    act_on_provider(p, &a, &rr);
    feed_ctl(p, j, res, rl_ctl_classify(&rr, a.cls), &a, now);
    const char *status = NULL;
    switch (a.cls) {
    case RL_BOUNCE:
        status = "bounced";
        break;
    case RL_FAIL:
        status = "failed";
        break;
    default:
        status = a.final ? "failed" : NULL;
        break;
    }
    if (!status && attempts >= w->o.max_attempts) status = "failed";
    if (status) {
        record(w, j, status, er->code, er->enhanced, response, res->remote, 1, 0);
        if (a.suppress) {
            char lc[sizeof j->email];
            snprintf(lc, sizeof lc, "%s", j->email);
            for (char *q = lc; *q; q++)
                if (*q >= 'A' && *q <= 'Z') *q = (char)(*q - 'A' + 'a');
            sched_redis_cmd(w->r, NULL, NULL, "SADD %s %s", SCHED_KEY_SUPPRESS, lc);
        }
    } else {
        uint64_t at = now + a.delay_ms;
        if (a.cls == RL_PAUSE && a.pause_until_ms > (int64_t)at) at = (uint64_t)a.pause_until_ms;
        record(w, j, "deferred", er->code, er->enhanced, response, res->remote, 1, at);
    }
    job_free(w, j);
}

/* ---- rendering and submitting ------------------------------------------- */

/* Render j's row from its stored fields into j->out, leaving j->why and
 * j->domain. It touches only j and the factory (both read-only here but
 * for j's own buffers), so it runs on a render thread as well as on the
 * loop. */
static void render_job(const msg_factory_t *f, int email_col, job_t *j, time_t now)
{
    size_t nf = j->nf > 0 ? (size_t)j->nf : 0;
    tpl_csv_field_t fv[MAX_FIELDS];
    for (size_t i = 0; i < nf; i++) {
        fv[i].ptr = j->fields.data + j->foff[i];
        fv[i].len = j->flen[i];
    }
    tpl_csv_row_t cr = {0};
    cr.row = j->rown;
    cr.nfields = nf;
    cr.fields = fv;
    tpl_email_info_t info;
    j->why = NULL;
    j->domain[0] = '\0';
    if (j->nf < 0) {
        j->why = "the row stored in Redis is unreadable";
        return;
    }
    if ((size_t)email_col >= nf) {
        j->why = "the row has no email field";
        return;
    }
    cr.email = fv[email_col];
    if (tpl_email_check(cr.email.ptr, cr.email.len, &info) != 0) {
        j->why = info.error ? info.error : "not a valid address";
        return;
    }
    cr.needs_smtputf8 = info.needs_smtputf8;
    cr.idn_domain = info.idn_domain;
    cr.ascii_domain = info.ascii_domain;
    cr.ascii_domain_len = strlen(info.ascii_domain);
    memcpy(j->domain, info.ascii_domain, cr.ascii_domain_len + 1);
    if (msg_render(f, j->out, &cr, now, 0)) {
        const msg_error_t *e = msg_out_error(j->out);
        j->why = e && e->message[0] ? e->message : "render failed";
    }
}

/* Hand j, rendered, to the engine; or record why it cannot go. j counts
 * in p->inflight (submit_backlog). */
static void submit_rendered(sched_worker_t *w, prov_t *p, job_t *j)
{
    if (j->why) {
        record(w, j, "rejected", 0, "", j->why, "", 0, 0);
        job_free(w, j);
        return;
    }
    memset(&j->msg, 0, sizeof j->msg);
    j->rcpts[0] = msg_out_recipient(j->out);
    j->msg.mail_from = msg_out_sender(j->out);
    j->msg.rcpts = j->rcpts;
    j->msg.nrcpts = 1;
    j->msg.iov = msg_out_iov(j->out, &j->msg.iovcnt);
    j->msg.size = msg_out_size(j->out);
    j->msg.flags = ENG_MSG_CRLF | (msg_out_needs_smtputf8(j->out) ? ENG_MSG_SMTPUTF8 : 0) |
                   (msg_out_wire_ready(j->out) ? ENG_MSG_WIRE : 0);
    j->msg.rcpt_status = j->st;
    j->msg.on_done = on_msg_done;
    j->msg.ud = j;
    if (eng_link_submit(p->link, &j->msg, j->domain)) {
        record(w, j, "deferred", 0, "", "not tried: the connection pool is closing", "", 0,
               now_ms());
        job_free(w, j);
    }
}

static void render_run(uv_work_t *req)
{
    /* A thread of libuv's pool: once per thread, keep it from preempting
     * the loop thread when it wakes (prio.h), and name it for top, perf
     * and the tests. */
    static __thread int background;
    if (!background) {
        vl_prio_background();
        pthread_setname_np(pthread_self(), "volley-render");
        background = 1;
    }
    render_work_t *rw = req->data;
    time_t now = time(NULL);
    for (unsigned i = 0; i < rw->n; i++)
        render_job(rw->factory, rw->email_col, rw->jobs[i], now);
}

static void render_after(uv_work_t *req, int status);

/* Start waiting items while fewer than render_par run. */
static void render_dispatch(sched_worker_t *w)
{
    for (render_work_t *rw = w->rq; rw && w->rq_running < w->render_par; rw = rw->next) {
        if (rw->done || rw->req.data) continue;
        rw->req.data = rw;
        if (uv_queue_work(w->loop, &rw->req, render_run, render_after) == 0) {
            w->rq_running++;
        } else {
            render_run(&rw->req); /* cannot happen with a valid loop: render here */
            rw->done = 1;
        }
    }
}

/* Submit the finished items at the head of the queue, in order. On a
 * stopping worker their rows go back with their leases, unsent. */
static void render_drain(sched_worker_t *w)
{
    while (w->rq && w->rq->done) {
        render_work_t *rw = w->rq;
        w->rq = rw->next;
        if (!w->rq) w->rq_tail = NULL;
        for (unsigned i = 0; i < rw->n; i++) {
            job_t *j = rw->jobs[i];
            if (w->stopping || w->paused)
                job_put(w, j);
            else
                submit_rendered(w, j->p, j);
        }
        free(rw);
    }
}

static void render_after(uv_work_t *req, int status)
{
    (void)status; /* never cancelled: items are only queued to run */
    render_work_t *rw = req->data;
    sched_worker_t *w = rw->w;
    rw->done = 1;
    w->rq_running--;
    render_dispatch(w);
    render_drain(w);
    for (size_t i = 0; i < w->nprovs; i++)
        try_provider(&w->provs[i], now_ms());
    maybe_finish(w);
}

/* The first row of p's backlog (not empty), now in flight: it holds one of
 * the tokens granted. */
static job_t *backlog_take(prov_t *p)
{
    job_t *j = p->back;
    p->back = j->next;
    if (!p->back) p->back_tail = NULL;
    p->nback--;
    j->next = NULL;
    p->inflight++;
    j->submitted = 1;
    return j;
}

/* Submit up to n rows of p's backlog (n tokens were granted): they are
 * rendered off the loop in items of RENDER_CHUNK, then submitted in order.
 * They count as in flight from here, so no more tokens are taken for them. */
static void submit_backlog(prov_t *p, unsigned n)
{
    sched_worker_t *w = p->w;
    int taking = p->taking;
    p->taking = 1; /* no second round from a job finished below */
    while (n && p->back) {
        /* A small grant (a provider's rate or burst is small) renders here:
         * a thread saves nothing on a few rows, and the delay of an item
         * would bunch rows granted apart in time (a rate holds by when
         * rows go out). Not while items are pending: rows stay in order. */
        render_work_t *rw = n < RENDER_MIN_ITEM && !w->rq ? NULL : calloc(1, sizeof *rw);
        if (!rw) {
            /* Here on the loop, one row at a time (also when out of memory). */
            job_t *j = backlog_take(p);
            n--;
            render_job(w->o.factory, w->o.email_col, j, time(NULL));
            submit_rendered(w, p, j);
            continue;
        }
        rw->w = w;
        rw->factory = w->o.factory;
        rw->email_col = w->o.email_col;
        while (n && p->back && rw->n < RENDER_CHUNK) {
            rw->jobs[rw->n++] = backlog_take(p);
            n--;
        }
        if (w->rq_tail)
            w->rq_tail->next = rw;
        else
            w->rq = rw;
        w->rq_tail = rw;
    }
    render_dispatch(w);
    render_drain(w); /* only when an item could not be queued and ran here */
    p->taking = taking;
}

/* ---- claiming ----------------------------------------------------------- */

typedef struct claim_ctx {
    prov_t *p;
    job_t *jobs; /* claimed rows, in order, until suppression is known */
    unsigned n;
} claim_ctx_t;

static void on_suppress_checked(sched_redis_t *r, redisReply *reply, void *priv, int err,
                                const char *errstr)
{
    (void)r;
    (void)errstr;
    claim_ctx_t *cc = priv;
    prov_t *p = cc->p;
    sched_worker_t *w = p->w;
    job_t *j = cc->jobs;
    for (size_t i = 0; j; i++) {
        job_t *next = j->next;
        j->next = NULL;
        int suppressed = !err && reply && reply->type == REDIS_REPLY_ARRAY && i < reply->elements &&
                         reply->element[i]->integer == 1;
        if (suppressed) {
            record(w, j, "suppressed", 0, "", "the address is on the suppression list", "", 0, 0);
            job_put(w, j);
        } else {
            if (p->back_tail)
                p->back_tail->next = j;
            else
                p->back = j;
            p->back_tail = j;
            p->nback++;
        }
        j = next;
    }
    free(cc);
    p->claiming = 0;
    if (w->paused) /* paused while this claim was answered */
        drop_backlog(w, 0);
    try_provider(p, now_ms());
    maybe_finish(w);
}

/* A job for the row of line, claimed under h; NULL when out of memory. */
static job_t *claim_row(sched_worker_t *w, prov_t *p, held_t *h, const sched_member_t *m,
                        const sched_line_t *line, const redisReply *res)
{
    job_t *j = job_get(w);
    if (!j) return NULL;
    j->next = NULL;
    j->p = p;
    j->h = h;
    j->submitted = 0;
    /* Without printf: this runs for every row claimed. */
    buf_fmt_dec(j->row, line->row);
    j->rown = line->row;
    size_t bl = buf_fmt_dec(j->batch, m->first);
    j->batch[bl++] = '-';
    buf_fmt_dec(j->batch + bl, m->last);
    j->attempts = 0;
    j->first_ms = j->last_ms = 0;
    j->email[0] = '\0';
    j->nf = sched_fields_decode(line->fields, line->fields_len, &j->fields, j->foff, j->flen,
                                MAX_FIELDS);
    if (j->nf > w->o.email_col) {
        size_t el = j->flen[w->o.email_col];
        if (el >= sizeof j->email) el = sizeof j->email - 1;
        memcpy(j->email, j->fields.data + j->foff[w->o.email_col], el);
        j->email[el] = '\0';
    }
    if (res && res->type == REDIS_REPLY_STRING && res->len) {
        /* A row retried on its own: its attempts so far. An unreadable
         * result (not volley's) counts as none. */
        sched_result_view_t v;
        if (!sched_result_parse(res->str, res->len, &v) && v.attempts >= 0 && v.first_ms >= 0 &&
            v.last_ms >= 0) {
            j->attempts = (unsigned)v.attempts;
            j->first_ms = (uint64_t)v.first_ms;
            j->last_ms = (uint64_t)v.last_ms;
        }
    }
    w->inflight++;
    h->left++;
    return j;
}

/* Turn one claimed member into jobs appended at *tail. */
static void claim_member(sched_worker_t *w, prov_t *p, redisReply **e, job_t ***tail, unsigned *n)
{
    const redisReply *mem = e[0], *blob = e[1], *bits = e[2], *res = e[3];
    held_t *h = calloc(1, sizeof *h);
    sched_member_t m;
    if (!h || mem->type != REDIS_REPLY_STRING || blob->type != REDIS_REPLY_STRING ||
        bits->type != REDIS_REPLY_STRING || sched_member_parse(mem->str, mem->len, &m)) {
        /* Cannot happen with volley's own scripts; the lease brings it back. */
        VL_WARN("campaign %s: provider %s: unreadable claim of %.*s", w->id, p->cfg->name,
                mem->type == REDIS_REPLY_STRING ? (int)mem->len : 1,
                mem->type == REDIS_REPLY_STRING ? mem->str : "?");
        free(h);
        return;
    }
    h->p = p;
    snprintf(h->lease, sizeof h->lease, "%.*s|%s", (int)mem->len, mem->str, p->cfg->name);
    h->next = w->helds;
    if (h->next) h->next->prev = h;
    w->helds = h;
    h->left = 1; /* held until every row below is made a job */
    size_t pos = 0, plen = strlen(p->cfg->name);
    sched_line_t line = {0};
    int got;
    while ((got = sched_blob_next(blob->str, blob->len, &pos, &line)) == 1) {
        int st = sched_row_state(bits->str, bits->len, m.first, line.row);
        if (m.row ? line.row != m.row || st == SCHED_ROW_FINAL
                  : st != SCHED_ROW_WAITING || line.provider_len != plen ||
                        memcmp(line.provider, p->cfg->name, plen))
            continue;
        job_t *j = claim_row(w, p, h, &m, &line, m.row ? res : NULL);
        if (!j) {
            h->giving_up = 1; /* out of memory: back to the due set */
            break;
        }
        **tail = j;
        *tail = &j->next;
        (*n)++;
        if (m.row) break;
    }
    if (got < 0)
        VL_WARN("campaign %s: batch %lu-%lu is malformed after row %lu", w->id, m.first, m.last,
                line.row);
    held_done(w, h);
}

static void on_claimed(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *errstr)
{
    (void)r;
    prov_t *p = priv;
    sched_worker_t *w = p->w;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements == 0) {
        if (err || (reply && reply->type == REDIS_REPLY_ERROR))
            VL_WARN("campaign %s: claim for %s failed: %s", w->id, p->cfg->name,
                    err ? errstr : reply->str);
        p->claiming = 0;
        p->next_claim_ms = now_ms() + 200; /* nothing due: look again shortly */
        return;
    }
    claim_ctx_t *cc = calloc(1, sizeof *cc);
    if (!cc) {
        p->claiming = 0;
        p->next_claim_ms = now_ms() + 500;
        return; /* the leases bring the rows back */
    }
    cc->p = p;
    job_t **tail = &cc->jobs;
    for (size_t i = 0; i + 4 <= reply->elements; i += 4)
        claim_member(w, p, reply->element + i, &tail, &cc->n);
    /* The suppression check, one command for the claim (SMISMEMBER needs
     * Redis 6.2; Debian 12 has 7.0). The list is global, outside the
     * campaign's slot, so it is a plain command, not part of a script. */
    int rc = -1;
    const char **argv = cc->n ? calloc(cc->n + 2, sizeof *argv) : NULL;
    char *lc = cc->n ? malloc((size_t)cc->n * sizeof cc->jobs->email) : NULL;
    if (argv && lc) {
        argv[0] = "SMISMEMBER";
        argv[1] = SCHED_KEY_SUPPRESS;
        size_t k = 0;
        for (job_t *j = cc->jobs; j; j = j->next, k++) {
            char *d = lc + k * sizeof j->email;
            size_t q = 0;
            for (; j->email[q]; q++)
                d[q] = j->email[q] >= 'A' && j->email[q] <= 'Z' ? (char)(j->email[q] - 'A' + 'a')
                                                                : j->email[q];
            d[q] = '\0';
            argv[k + 2] = d;
        }
        rc = sched_redis_cmdargv(w->r, on_suppress_checked, cc, (int)cc->n + 2, argv, NULL);
    }
    free(argv);
    free(lc);
    if (rc) on_suppress_checked(w->r, NULL, cc, rc, "Redis unavailable");
}

static void claim(prov_t *p, unsigned m)
{
    sched_worker_t *w = p->w;
    char now_s[24], m_s[16], lease_s[16];
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now_ms());
    snprintf(m_s, sizeof m_s, "%u", m);
    snprintf(lease_s, sizeof lease_s, "%u", w->o.lease_ms);
    const char *argv[] = {p->key_due, w->k_lease, w->k_batch, w->k_state, w->k_retry,
                          w->k_meta,  now_s,      m_s,        lease_s,    p->cfg->name};
    p->claiming = 1;
    if (sched_redis_eval(w->r, on_claimed, p, sched_lua_claim, 6, 4, argv, NULL)) {
        p->claiming = 0;
        p->next_claim_ms = now_ms() + 500;
    }
}

/* ---- tokens: the provider's shared rate, then its quotas --------------- */

typedef struct take_ctx {
    prov_t *p;
    unsigned n;
} take_ctx_t;

static void take_failed(prov_t *p, take_ctx_t *tc, uint64_t retry_ms)
{
    free(tc);
    p->taking = 0;
    p->next_take_ms = now_ms() + retry_ms;
}

static void on_quota(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *errstr)
{
    (void)r;
    (void)errstr;
    take_ctx_t *tc = priv;
    prov_t *p = tc->p;
    unsigned n = tc->n;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 3) {
        take_failed(p, tc, 500);
        return;
    }
    if (reply->element[0]->integer != 1) {
        /* A quota window is full: wait for its end, shared by all workers. */
        char why[128];
        snprintf(why, sizeof why, "quota %lld of provider %s is used up",
                 reply->element[1]->integer, p->cfg->name);
        suspend_provider(p, (uint64_t)reply->element[2]->integer, why);
        take_failed(p, tc, 0);
        return;
    }
    free(tc);
    p->taking = 0;
    submit_backlog(p, n);
    try_provider(p, now_ms());
}

static void take_quota(prov_t *p, unsigned n)
{
    if (!p->cfg->nquotas) {
        p->taking = 0;
        submit_backlog(p, n);
        return;
    }
    uint64_t now = now_ms();
    char keys[RL_MAX_QUOTAS][KEYLEN], lim[RL_MAX_QUOTAS][24], end[RL_MAX_QUOTAS][24];
    char now_s[24], n_s[16];
    const char *argv[3 * RL_MAX_QUOTAS + 2];
    size_t k = p->cfg->nquotas;
    for (size_t i = 0; i < k; i++) {
        rl_window_t win;
        rl_quota_window(&p->cfg->quotas[i], p->cfg->tz, (int64_t)now, &win);
        snprintf(keys[i], KEYLEN, SCHED_KEY_P_QUOTA, p->cfg->name, (int)i, win.id);
        snprintf(lim[i], 24, "%lld", (long long)p->cfg->quotas[i].limit);
        snprintf(end[i], 24, "%lld", (long long)win.end_ms);
        argv[i] = keys[i];
    }
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now);
    snprintf(n_s, sizeof n_s, "%u", n);
    argv[k] = now_s;
    argv[k + 1] = n_s;
    for (size_t i = 0; i < k; i++) {
        argv[k + 2 + 2 * i] = lim[i];
        argv[k + 3 + 2 * i] = end[i];
    }
    take_ctx_t *tc = malloc(sizeof *tc);
    if (!tc) {
        take_failed(p, NULL, 500);
        return;
    }
    tc->p = p;
    tc->n = n;
    if (sched_redis_eval(p->w->r, on_quota, tc, rl_lua_quota, (int)k, (int)(2 + 2 * k), argv, NULL))
        take_failed(p, tc, 500);
}

static void on_rate(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *errstr)
{
    (void)r;
    (void)errstr;
    take_ctx_t *tc = priv;
    prov_t *p = tc->p;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 2) {
        take_failed(p, tc, 500);
        return;
    }
    long long granted = reply->element[0]->integer;
    if (granted < 1) {
        long long retry = reply->element[1]->integer;
        take_failed(p, tc, (uint64_t)(retry > 0 ? retry : 1));
        return;
    }
    free(tc);
    take_quota(p, (unsigned)granted);
}

/* Ask the provider's shared rate for n tokens, then its quotas, then submit
 * that many rows of the backlog. */
static void take_rate(prov_t *p, unsigned n)
{
    p->taking = 1;
    if (!p->rate_interval_us) {
        take_quota(p, n);
        return;
    }
    /* As many tokens as are available, at most the burst. */
    uint32_t burst = p->rate_burst ? p->rate_burst : 1;
    if (n > burst) n = burst;
    char key[KEYLEN], now_s[24], iv[24], b[16], n_s[16];
    snprintf(key, sizeof key, SCHED_KEY_P_GCRA, p->cfg->name);
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now_ms());
    snprintf(iv, sizeof iv, "%llu", (unsigned long long)p->rate_interval_us);
    snprintf(b, sizeof b, "%u", burst);
    snprintf(n_s, sizeof n_s, "%u", n);
    const char *argv[] = {key, now_s, iv, b, n_s};
    take_ctx_t *tc = malloc(sizeof *tc);
    if (!tc) {
        take_failed(p, NULL, 500);
        return;
    }
    tc->p = p;
    tc->n = n;
    if (sched_redis_eval(p->w->r, on_rate, tc, sched_lua_take, 1, 4, argv, NULL))
        take_failed(p, tc, 500);
}

/* ---- connection slots ------------------------------------------------------ */

static void recount_slots(prov_t *p)
{
    if (!prov_ready(p)) return;
    unsigned held = 0;
    for (unsigned i = 0; i < MAX_SLOTS; i++)
        held += p->slot_ok[i];
    p->held = held;
    apply_limits(p, now_ms());
}

static void on_slot(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *errstr)
{
    slot_ctx_t *sc = priv;
    prov_t *p = sc->p;
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1)
        p->slot_ok[sc->i] = reply->element[0]->integer == 1;
    else if (err)
        p->slot_ok[sc->i] = 0; /* unknown: assume lost rather than exceed the ceiling */
    free(sc);
    recount_slots(p);
}

static void slot_op(prov_t *p, const char *op, unsigned i)
{
    sched_worker_t *w = p->w;
    char holder[128], now_s[24], ceil_s[16], lease_s[16];
    snprintf(holder, sizeof holder, "%s:%u", w->wid, i);
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now_ms());
    snprintf(ceil_s, sizeof ceil_s, "%u", p->cfg->max_connections ? p->cfg->max_connections : 1);
    snprintf(lease_s, sizeof lease_s, "%u", SLOT_LEASE_MS);
    const char *argv[] = {p->key_slots, op, now_s, holder, ceil_s, lease_s};
    slot_ctx_t *sc = malloc(sizeof *sc);
    if (!sc) return;
    sc->p = p;
    sc->i = i;
    if (sched_redis_eval(w->r, on_slot, sc, rl_lua_slots, 1, 5, argv, NULL)) free(sc);
}

/* Hold as many slots as the learnt connection ceiling allows (acquire also
 * renews), give back the ones above it. */
static void slots_tick(prov_t *p, uint64_t now, unsigned want)
{
    if (now < p->next_slot_ms) return;
    p->next_slot_ms = now + SLOT_RENEW_MS;
    if (want > MAX_SLOTS) want = MAX_SLOTS;
    for (unsigned i = 0; i < MAX_SLOTS; i++) {
        if (i < want)
            slot_op(p, "acquire", i);
        else if (p->slot_ok[i]) {
            p->slot_ok[i] = 0;
            slot_op(p, "release", i);
        }
    }
    recount_slots(p);
}

static void release_slots(sched_worker_t *w)
{
    for (size_t k = 0; k < w->nprovs; k++)
        for (unsigned i = 0; i < MAX_SLOTS; i++)
            if (w->provs[k].slot_ok[i]) {
                w->provs[k].slot_ok[i] = 0;
                slot_op(&w->provs[k], "release", i);
            }
}

/* ---- the tick ------------------------------------------------------------ */

/* Keep p busy: claim rows ahead of need, and take tokens for claimed rows
 * while the connections have room. Called every tick, and as soon as a round
 * or a message finishes, so a fast provider is never held to one round per
 * tick. */
static void try_provider(prov_t *p, uint64_t now)
{
    sched_worker_t *w = p->w;
    if (w->stopping || w->paused || w->orphan_check != 2 || p->stopped || !prov_ready(p) ||
        now < p->suspended_until_ms || now < p->lim.paused_until_ms || !sched_redis_connected(w->r))
        return;
    unsigned cap = p->applied_conns * WINDOW_PER_CONN;
    if (!cap) cap = 1;
    /* Claimed rows wait here for tokens. Keep two to three windows of them:
     * with one, the backlog ran dry whenever a claim's reply was late (Redis
     * shares the cores), and the connections idled. */
    if (!p->claiming && now >= p->next_claim_ms && p->nback < 2 * cap) {
        unsigned want = 3 * cap - p->nback;
        unsigned m = (want + SCHED_BATCH_ROWS - 1) / SCHED_BATCH_ROWS;
        claim(p, m < 1 ? 1 : m > MAX_CLAIM ? MAX_CLAIM : m);
    }
    /* Tokens in chunks of at least a quarter of the window: a round trip
     * per finished message would cost more than it gains. */
    if (p->taking || !p->nback || now < p->next_take_ms || p->inflight >= cap ||
        (p->inflight && cap - p->inflight < cap / 4))
        return;
    unsigned n = cap - p->inflight;
    if (n > p->nback) n = p->nback;
    if (n > w->o.batch) n = w->o.batch;
    take_rate(p, n);
}

/* Give members whose lease expired back to their due sets; with all, every
 * lease (see reclaim_leases). reap.lua takes 1000 a call, so a large
 * backlog takes a few ticks. */
static void reap(sched_worker_t *w, int all)
{
    const char **argv = calloc(3 + 2 * w->nprovs, sizeof *argv);
    if (!argv) return;
    char now_s[24], cut_s[24];
    snprintf(now_s, sizeof now_s, "%llu", (unsigned long long)now_ms());
    snprintf(cut_s, sizeof cut_s, "%s", all ? "+inf" : now_s);
    size_t k = 0;
    argv[k++] = w->k_lease;
    for (size_t i = 0; i < w->nprovs; i++)
        argv[k++] = w->provs[i].key_due;
    argv[k++] = now_s;
    argv[k++] = cut_s;
    for (size_t i = 0; i < w->nprovs; i++)
        argv[k++] = w->provs[i].cfg->name;
    sched_redis_eval(w->r, NULL, NULL, sched_lua_reap, (int)(1 + w->nprovs), (int)(2 + w->nprovs),
                     argv, NULL);
    free(argv);
}

/* Extend the leases this worker holds: a batch at a slow provider's rate, or
 * a message on a slow server, may take longer than one lease. Only leases
 * still there are extended (XX): one taken back meanwhile stays with its new
 * holder. */
static void renew_leases(sched_worker_t *w, uint64_t now)
{
    enum { PER_CMD = 256 };
    const char *argv[3 + 2 * PER_CMD];
    char until[24];
    snprintf(until, sizeof until, "%llu", (unsigned long long)(now + w->o.lease_ms));
    held_t *h = w->helds;
    while (h) {
        int n = 0;
        argv[n++] = "ZADD";
        argv[n++] = w->k_lease;
        argv[n++] = "XX";
        for (; h && n < 3 + 2 * PER_CMD; h = h->next) {
            argv[n++] = until;
            argv[n++] = h->lease;
        }
        sched_redis_cmdargv(w->r, NULL, NULL, n, argv, NULL);
    }
}

static unsigned backlog_rows(const sched_worker_t *w)
{
    unsigned n = 0;
    for (size_t i = 0; i < w->nprovs; i++)
        n += w->provs[i].nback;
    return n;
}

/* Empty every provider's backlog of claimed, unsubmitted rows: recorded as
 * cancelled, or (job_put) given back with their leases. */
static void drop_backlog(sched_worker_t *w, int cancelled)
{
    for (size_t i = 0; i < w->nprovs; i++) {
        prov_t *p = &w->provs[i];
        while (p->back) {
            job_t *j = p->back;
            p->back = j->next;
            p->nback--;
            j->next = NULL;
            if (cancelled) record(w, j, "cancelled", 0, "", "the campaign was cancelled", "", 0, 0);
            job_put(w, j);
        }
        p->back_tail = NULL;
    }
}

/* The campaign was cancelled: rows claimed and not yet submitted end as
 * cancelled here (cancel.lua only reaches the rows still due); messages
 * already handed to the connections finish. */
static void cancel_backlog(sched_worker_t *w)
{
    drop_backlog(w, 1);
    maybe_finish(w);
}

/* The campaign was paused: stop at once rather than after the rows claimed
 * ahead (up to three windows a provider, seconds of sending at a slow
 * rate). Rows claimed and not yet submitted go back to the due set with
 * their leases (job_put), as when a worker stops, and no more are claimed
 * or given tokens; messages already handed to the connections finish. On
 * resume, claiming starts again. */
static void pause_or_resume(sched_worker_t *w, int paused)
{
    if (paused == w->paused) return;
    w->paused = paused;
    if (paused) {
        VL_INFO("campaign %s: paused; %u claimed rows go back to the due set", w->id,
                backlog_rows(w));
        drop_backlog(w, 0);
    } else {
        VL_INFO("campaign %s: resumed", w->id);
        uint64_t now = now_ms();
        for (size_t i = 0; i < w->nprovs; i++)
            try_provider(&w->provs[i], now);
    }
}

/* ---- rows for providers the configuration no longer has ------------------ */

/* Rows are routed to a provider by name when they are queued. If the
 * providers file is then edited and that name is gone (renamed, removed),
 * nothing would ever claim or reap them, and a send would wait for ever.
 * Before its first claim the worker asks which of the campaign's providers
 * it does not know still have rows due or leased; if any do, it stops,
 * naming them, and leaves the rows where they are, so that a run with the
 * provider put back sends them. */
#define MAX_ORPHANS 16

typedef struct orphans {
    sched_worker_t *w;
    size_t n;
    char names[MAX_ORPHANS][128];
} orphans_t;

static void orphans_done(sched_worker_t *w)
{
    w->orphan_check = 2;
    uint64_t now = now_ms();
    for (size_t i = 0; i < w->nprovs; i++)
        try_provider(&w->provs[i], now);
}

static void on_orphan_counts(sched_redis_t *r, redisReply *reply, void *priv, int err,
                             const char *errstr)
{
    (void)r;
    (void)errstr;
    orphans_t *o = priv;
    sched_worker_t *w = o->w;
    char list[1024] = "";
    size_t len = 0, found = 0;
    for (size_t i = 0;
         !err && reply && reply->type == REDIS_REPLY_ARRAY && i < o->n && i < reply->elements;
         i++) {
        long long c = reply->element[i]->integer;
        if (c <= 0) continue;
        if (len < sizeof list)
            len += (size_t)snprintf(list + len, sizeof list - len, "%s\"%s\"", found ? ", " : "",
                                    o->names[i]);
        found++;
    }
    free(o);
    if (!found) {
        orphans_done(w);
        return;
    }
    w->rc = VL_ECONFIG;
    snprintf(w->why, sizeof w->why,
             "campaign %s has rows queued for provider%s %s, which the providers file no "
             "longer has (renamed or removed since they were queued); put %s back to send them",
             w->id, found > 1 ? "s" : "", list, found > 1 ? "them" : "it");
    w->orphan_check = 2;
    sched_worker_stop(w);
}

static void on_campaign_providers(sched_redis_t *r, redisReply *reply, void *priv, int err,
                                  const char *errstr)
{
    (void)r;
    (void)errstr;
    sched_worker_t *w = priv;
    orphans_t *o = calloc(1, sizeof *o);
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || !o) {
        free(o);
        orphans_done(w); /* not knowing is no reason not to send */
        return;
    }
    o->w = w;
    for (size_t i = 0; i < reply->elements && o->n < MAX_ORPHANS; i++) {
        const redisReply *e = reply->element[i];
        int known = e->type != REDIS_REPLY_STRING || e->len >= sizeof o->names[0];
        for (size_t k = 0; k < w->nprovs && !known; k++)
            known = !strcmp(w->provs[k].cfg->name, e->str);
        if (!known) snprintf(o->names[o->n++], sizeof o->names[0], "%s", e->str);
    }
    if (!o->n) {
        free(o);
        orphans_done(w);
        return;
    }
    /* Per name: members in its due set, and leases "member|NAME". */
    char keys[MAX_ORPHANS][KEYLEN];
    const char *argv[1 + 2 * MAX_ORPHANS];
    size_t a = 0;
    argv[a++] = w->k_lease;
    for (size_t i = 0; i < o->n; i++) {
        snprintf(keys[i], KEYLEN, SCHED_KEY_DUE, w->id, o->names[i]);
        argv[a++] = keys[i];
    }
    for (size_t i = 0; i < o->n; i++)
        argv[a++] = o->names[i];
    if (sched_redis_eval(w->r, on_orphan_counts, o,
                         "local n, out = #KEYS - 1, {} "
                         "local leased = redis.call('ZRANGE', KEYS[1], 0, -1) "
                         "for i = 1, n do "
                         "  local c, suffix = redis.call('ZCARD', KEYS[i + 1]), '|' .. ARGV[i] "
                         "  for _, m in ipairs(leased) do "
                         "    if m:sub(-#suffix) == suffix then c = c + 1 end "
                         "  end "
                         "  out[i] = c "
                         "end return out",
                         (int)(1 + o->n), (int)o->n, argv, NULL)) {
        free(o);
        orphans_done(w);
    }
}

static void on_progress_reply(sched_redis_t *r, redisReply *reply, void *priv, int err,
                              const char *errstr)
{
    sched_worker_t *w = priv;
    w->progress_busy = 0;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY || reply->elements < 13) return;
    long long v[12];
    for (int i = 0; i < 12; i++)
        v[i] = reply->element[i]->str ? atoll(reply->element[i]->str) : 0;
    const char *state = reply->element[12]->str ? reply->element[12]->str : "running";
    const char *ingested =
        reply->elements > 13 && reply->element[13]->str ? reply->element[13]->str : "0";
    long long waiting = reply->elements > 14 ? reply->element[14]->integer : 0;
    /* A campaign whose meta was there and is gone (a Redis restarted without
     * its data, a FLUSHALL, an eviction) must not read as "0 of 0 rows left":
     * that ended a 2,000-row send as done after 704 rows, exit 0. */
    int meta_exists = reply->elements > 15 ? reply->element[15]->integer != 0 : 1;
    if (meta_exists) {
        w->existed = 1;
    } else if (w->existed && !w->stopping) {
        w->rc = VL_EREDIS;
        snprintf(w->why, sizeof w->why,
                 "campaign %s vanished from Redis mid-run (its key {c:%s}:meta is gone: was "
                 "Redis restarted without its data?); nothing more is sent, and results from "
                 "here on cannot be recorded",
                 w->id, w->id);
        sched_worker_stop(w);
        return;
    }
    sched_progress_t pr = {.total = v[0],
                           .final = v[1],
                           .delivered = v[2],
                           .bounced = v[3],
                           .failed = v[4],
                           .suppressed = v[5],
                           .rejected = v[6],
                           .cancelled = v[7],
                           .deferred = v[8],
                           .attempts = v[9],
                           .inflight = w->inflight,
                           .rate = w->rate,
                           .state = state};
    if (w->o.on_progress) w->o.on_progress(&pr, w->o.ud);
    if (!strcmp(state, "cancelled")) cancel_backlog(w);
    pause_or_resume(w, !strcmp(state, "paused"));
    if (!w->o.until_done || w->stopping) return;
    /* send ingests before its worker starts, so final >= total is the end
     * (with --limit the campaign is deliberately not fully ingested). */
    int all_final = pr.final >= pr.total && (!w->o.require_ingested || !strcmp(ingested, "1"));
    if (all_final || !strcmp(state, "done") || (!strcmp(state, "cancelled") && w->inflight == 0)) {
        sched_worker_stop(w);
        return;
    }
    /* Rows are left, but none for a provider that is still sending: they
     * belong to stopped providers, and a person must act. */
    if (waiting == 0 && w->inflight == 0 && pr.final < pr.total &&
        (!w->o.require_ingested || !strcmp(ingested, "1"))) {
        for (size_t i = 0; i < w->nprovs; i++)
            if (w->provs[i].stopped) {
                w->rc = VL_ECONFIG;
                snprintf(w->why, sizeof w->why, "provider %s stopped: %s", w->provs[i].cfg->name,
                         w->provs[i].reason);
            }
        if (w->rc) sched_worker_stop(w);
    }
}

static void progress(sched_worker_t *w, uint64_t now)
{
    if (w->progress_busy) return;
    if (now - w->rate_t0 >= 2000) {
        w->rate = (double)(w->delivered - w->rate_n0) * 1000.0 / (double)(now - w->rate_t0);
        w->rate_t0 = now;
        w->rate_n0 = w->delivered;
    }
    /* One script gives a consistent snapshot of counts, state, and the rows
     * still waiting for a provider that is sending (leased or due). */
    const char *argv[3 + MAX_PROVS_PROGRESS];
    int nk = 0;
    argv[nk++] = w->k_count;
    argv[nk++] = w->k_meta;
    argv[nk++] = w->k_lease;
    for (size_t i = 0; i < w->nprovs && nk < 3 + MAX_PROVS_PROGRESS; i++)
        if (!w->provs[i].stopped) argv[nk++] = w->provs[i].key_due;
    if (sched_redis_eval(w->r, on_progress_reply, w,
                         "local c = redis.call('HMGET', KEYS[1], 'total', 'final', 'delivered', "
                         "'bounced', 'failed', 'suppressed', 'rejected', 'cancelled', "
                         "'deferred', 'attempts', 'x', 'y') "
                         "local m = redis.call('HMGET', KEYS[2], 'state', 'ingested') "
                         "c[13] = m[1] or 'running' c[14] = m[2] or '0' "
                         "for i = 1, 12 do c[i] = c[i] or '0' end "
                         "local n = 0 for i = 3, #KEYS do n = n + redis.call('ZCARD', KEYS[i]) "
                         "end c[15] = n c[16] = redis.call('EXISTS', KEYS[2]) return c",
                         nk, 0, argv, NULL) == 0)
        w->progress_busy = 1;
}

static void on_tick(uv_timer_t *t)
{
    sched_worker_t *w = t->data;
    uint64_t now = now_ms();
    if (now - w->last_progress >= PROGRESS_MS || (w->progress_soon && !w->progress_busy)) {
        w->last_progress = now;
        w->progress_soon = 0;
        progress(w, now);
    }
    flush_records(w);
    if (w->retry && sched_redis_connected(w->r)) retry_records(w);
    if (w->stopping) {
        maybe_finish(w);
        return;
    }
    if (!sched_redis_connected(w->r)) return;
    if (w->reclaim_pending) {
        /* Before the first claim: commands on one connection run in order. */
        w->reclaim_pending = 0;
        reap(w, 1);
    }
    if (!w->orphan_check) {
        char key[KEYLEN];
        snprintf(key, sizeof key, SCHED_KEY_PROVIDERS, w->id);
        const char *argv[] = {"SMEMBERS", key};
        if (sched_redis_cmdargv(w->r, on_campaign_providers, w, 2, argv, NULL) == 0)
            w->orphan_check = 1;
    }
    if (now - w->last_renew >= w->o.lease_ms / 3) {
        w->last_renew = now;
        renew_leases(w, now);
    }
    if (now - w->last_reap >= REAP_MS) {
        w->last_reap = now;
        reap(w, 0);
    }
    for (size_t i = 0; i < w->nprovs; i++) {
        prov_t *p = &w->provs[i];
        if (p->stopped || !prov_ready(p)) continue;
        learned_tick(p, now);
        apply_limits(p, now); /* quiet time raises what was lowered */
        slots_tick(p, now, p->lim.max_connections);
        try_provider(p, now);
    }
}

/* ---- engine events ------------------------------------------------------- */

static void on_eng_event(eng_pool_t *pool, const eng_event_t *ev, void *ud)
{
    prov_t *p = ud;
    uint64_t now = now_ms();
    if (ev->kind == ENG_EV_READY) {
        rl_route_success(&p->route);
        return;
    }
    if (ev->kind != ENG_EV_SETUP_FAILED) return;
    if (ev->reply.code) {
        rl_reply_t rr = {
            .code = ev->reply.code, .enhanced = ev->reply.enhanced, .text = ev->reply.text};
        rl_decide_ctx_t ctx = {.now_ms = now,
                               .attempt = 1,
                               .tz = p->cfg->tz,
                               .rand = rnd,
                               .backoff_base_ms = p->w->o.retry_base_ms};
        rl_action_t a;
        /* A reply that is no failure (VL_EPROTO) is the server's fault: it counts
         * against the route below, like a connection that fails. */
        if (rl_decide(p->chain, p->nchain, &rr, &ctx, &a) == 0) {
            act_on_provider(p, &a, &rr);
            rl_ctl_outcome_t o = {.sig = rl_ctl_classify(&rr, a.cls),
                                  .conn_id = ev->conn_id,
                                  .open_conns = prov_connections(p),
                                  .cap = a.cap};
            rl_ctl_outcome(p->ctl, now, &o);
            apply_limits(p, now);
            /* A server that answers "too many connections" (421 HL:ICC) is
             * alive: the rules already lowered the ceiling, and counting it
             * as a failing route would suspend a healthy provider. */
            if (a.cls == RL_LOWER_CONCURRENCY || a.cls == RL_PAUSE || a.cls == RL_STOP) return;
        }
    }
    /* Direct delivery: one domain's unreachable MX hosts say nothing about
     * the others; that domain's pool backs off, and its messages are retried. */
    if (p->is_mx) return;
    char reason[300];
    snprintf(reason, sizeof reason, "%s at %s: %s%s%s", vl_err_name(ev->err),
             eng_stage_name(ev->stage), ev->errstr ? ev->errstr : "", ev->reply.code ? " " : "",
             ev->reply.code ? ev->reply.text : "");
    uint64_t until = rl_route_failure(&p->route, now, reason, rnd(NULL));
    if (p->route.suspended) suspend_provider(p, until, p->route.reason);
}

/* ---- life cycle ------------------------------------------------------------ */

static void on_tick_closed(uv_handle_t *h)
{
    sched_worker_t *w = h->data;
    void (*cb)(int, const char *, void *) = w->o.on_finish;
    void *ud = w->o.ud;
    int rc = w->rc;
    char why[1024];
    snprintf(why, sizeof why, "%s", w->why);
    while (w->helds) { /* only when Redis was lost for good: their leases expire */
        held_t *hd = w->helds;
        w->helds = hd->next;
        free(hd);
    }
    buf_free(&w->pres);
    while (w->free_jobs) {
        job_t *j = w->free_jobs;
        w->free_jobs = j->next;
        msg_out_free(j->out);
        buf_free(&j->fields);
        free(j);
    }
    for (size_t i = 0; i < w->nprovs; i++)
        rl_ctl_free(w->provs[i].ctl);
    free(w->provs);
    free(w->id);
    free(w);
    if (cb) cb(rc, why, ud);
}

static void on_pool_closed(void *ud)
{
    sched_worker_t *w = ud;
    if (--w->closing_pools == 0) uv_close((uv_handle_t *)&w->tick, on_tick_closed);
}

/* Every message is recorded: close the pools, then finish. */
static void maybe_finish(sched_worker_t *w)
{
    if (!w->stopping || w->finished) return;
    /* Rows claimed but not submitted go back to the due set now rather than
     * when their lease expires. */
    drop_backlog(w, 0);
    if (w->inflight) return;
    /* A claim under way would hand us rows; a record under way must reach
     * Redis before the caller closes it. */
    for (size_t i = 0; i < w->nprovs; i++)
        if (w->provs[i].claiming) return;
    /* Records still to be made: wait for Redis, but not forever (their
     * leases bring the rows back to another run). */
    flush_records(w);
    if ((w->records || w->retry) && now_ms() - w->stop_ms < 30000) return;
    if (sched_redis_connected(w->r) && sched_redis_pending(w->r)) return;
    while (w->retry) {
        rec_t *rc = w->retry;
        w->retry = rc->next;
        w->retry_tail = NULL;
        VL_WARN("campaign %s: results of %s rows could not be recorded; their rows will be "
                "tried again",
                w->id, rc->argv[rc->nkeys + 1]);
        rec_free(rc);
    }
    w->finished = 1;
    w->closing_pools = (int)w->nprovs + 1;
    for (size_t i = 0; i < w->nprovs; i++) {
        if (w->provs[i].link)
            eng_link_close(w->provs[i].link, 0, on_pool_closed, w);
        else
            w->closing_pools--;
    }
    on_pool_closed(w);
}

size_t sched_worker_providers(const sched_worker_t *w)
{
    return w->nprovs;
}

void sched_worker_provider_stats(sched_worker_t *w, size_t i, sched_prov_stats_t *out)
{
    prov_t *p = &w->provs[i];
    out->provider = p->cfg->name;
    out->inflight = p->inflight;
    out->backlog = p->nback;
    out->connections = prov_connections(p);
    out->max_connections = p->applied_conns ? p->applied_conns : 1;
}

void sched_worker_ingest_ended(sched_worker_t *w)
{
    w->o.require_ingested = 0;
}

void sched_worker_stop(sched_worker_t *w)
{
    if (w->stopping) return;
    w->stopping = 1;
    w->stop_ms = now_ms();
    release_slots(w);
    maybe_finish(w);
}

int sched_worker_start(sched_worker_t **out, uv_loop_t *loop, sched_redis_t *r,
                       const sched_worker_opts_t *o, char *err, size_t errlen)
{
    *out = NULL;
    sched_worker_t *w = calloc(1, sizeof *w);
    if (!w) {
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    w->loop = loop;
    w->r = r;
    w->o = *o;
    w->id = strdup(o->id);
    w->o.id = w->id;
    if (!w->o.batch) w->o.batch = 500;
    if (!w->o.lease_ms) w->o.lease_ms = 120000;
    if (!w->o.max_attempts) w->o.max_attempts = 10;
    if (!w->o.retry_base_ms) w->o.retry_base_ms = 60000;
    /* One core is the loop's; renders may use the others. */
    unsigned cores = uv_available_parallelism();
    w->render_par = cores > 1 ? cores - 1 : 1;
    if (w->render_par > RENDER_PAR_MAX) w->render_par = RENDER_PAR_MAX;
    snprintf(w->k_meta, KEYLEN, SCHED_KEY_META, w->id);
    snprintf(w->k_batch, KEYLEN, SCHED_KEY_BATCH, w->id);
    snprintf(w->k_state, KEYLEN, SCHED_KEY_STATE, w->id);
    snprintf(w->k_retry, KEYLEN, SCHED_KEY_RETRY, w->id);
    snprintf(w->k_count, KEYLEN, SCHED_KEY_COUNT, w->id);
    snprintf(w->k_lease, KEYLEN, SCHED_KEY_LEASE, w->id);
    buf_init(&w->pres, (size_t)64 << 20);
    /* Every provider of the file, plus the built-in default when it is the
     * fallback (it is not one of the file's entries). */
    size_t nlisted = rl_providers_count(o->providers);
    const rl_provider_t *fallback = rl_providers_fallback(o->providers);
    int fallback_listed = 0;
    for (size_t i = 0; i < nlisted; i++)
        if (rl_providers_at(o->providers, i) == fallback) fallback_listed = 1;
    w->nprovs = nlisted + !fallback_listed;
    w->provs = calloc(w->nprovs, sizeof *w->provs);
    int rc = 0;
    for (size_t i = 0; i < w->nprovs && !rc; i++) {
        prov_t *p = &w->provs[i];
        p->w = w;
        p->cfg = i < nlisted ? rl_providers_at(o->providers, i) : fallback;
        p->nchain = rl_provider_rules(p->cfg, p->chain);
        snprintf(p->key_due, KEYLEN, SCHED_KEY_DUE, w->id, p->cfg->name);
        snprintf(p->key_slots, KEYLEN, SCHED_KEY_P_SLOTS, p->cfg->name);
        snprintf(p->key_learned, KEYLEN, SCHED_KEY_P_LEARNED, p->cfg->name);
        snprintf(p->key_learned_ms, KEYLEN, SCHED_KEY_P_LEARNED_MS, p->cfg->name);
        snprintf(p->key_achieved, KEYLEN, SCHED_KEY_P_ACHIEVED, p->cfg->name);
        uint32_t conf[RL_LIMIT_LAST] = {0};
        conf[RL_LIMIT_CONNECTIONS] = p->cfg->max_connections ? p->cfg->max_connections : 1;
        conf[RL_LIMIT_MESSAGES_PER_CONNECTION] = p->cfg->max_messages_per_connection;
        conf[RL_LIMIT_RECIPIENTS_PER_CONNECTION] = p->cfg->max_recipients_per_connection;
        conf[RL_LIMIT_RECIPIENTS_PER_MESSAGE] = p->cfg->max_recipients_per_message;
        const rl_rate_t *cr = &p->cfg->rate;
        rl_ctl_cfg_t cc = {.rate_per_s = cr->interval_us ? 1e6 / (double)cr->interval_us : 0,
                           .max_connections = conf[RL_LIMIT_CONNECTIONS],
                           .msgs_per_conn = conf[RL_LIMIT_MESSAGES_PER_CONNECTION],
                           .rcpts_per_conn = conf[RL_LIMIT_RECIPIENTS_PER_CONNECTION]};
        p->ctl = rl_ctl_new(&cc, now_ms());
        if (!p->ctl) {
            snprintf(err, errlen, "out of memory");
            rc = VL_ENOMEM;
            break;
        }
        p->ach_t0 = now_ms();
        rl_route_init(&p->route, 0, 0, 0);
        eng_route_t er;
        eng_route_init(&er);
        er.host = p->cfg->host;
        er.port = p->cfg->port;
        er.tls = p->cfg->route == RL_ROUTE_SMTPS        ? ENG_TLS_IMPLICIT
                 : p->cfg->tls_policy == RL_TLS_REQUIRE ? ENG_TLS_STARTTLS
                                                        : ENG_TLS_OPPORTUNISTIC;
        er.ca_file = o->ca_file ? o->ca_file : p->cfg->tls_ca_file;
        er.tls_insecure =
            o->tls_insecure || p->cfg->tls_insecure || p->cfg->tls_policy == RL_TLS_MAY;
        er.helo_name = p->cfg->helo;
        er.max_connections = conf[RL_LIMIT_CONNECTIONS];
        er.max_msgs_per_conn = conf[RL_LIMIT_MESSAGES_PER_CONNECTION];
        er.max_rcpts_per_conn = conf[RL_LIMIT_RECIPIENTS_PER_CONNECTION];
        er.on_event = on_eng_event;
        er.ud = p;
        char pw[512] = "";
        if (p->cfg->auth_user) {
            char perr[256];
            if (rl_provider_password(p->cfg, pw, sizeof pw, perr, sizeof perr)) {
                snprintf(err, errlen, "provider %s: %s", p->cfg->name, perr);
                rc = VL_ECONFIG;
                break;
            }
            er.user = p->cfg->auth_user;
            er.password = pw;
        }
        if (p->cfg->route == RL_ROUTE_MX) {
            /* Direct delivery: a pool per recipient domain, made when its MX
             * lookup answers; the provider's ceiling holds over them all. */
            eng_mx_opts_t mo = {.route = er,
                                .port = p->cfg->port,
                                .dns_servers = o->dns_servers,
                                .max_connections = er.max_connections};
            mo.route.host = NULL;
            p->is_mx = 1;
            rc = eng_link_new_mx(&p->link, loop, &mo, err, errlen);
            if (rc && rc != VL_EINVAL) {
                /* No resolver here (say, an unreadable resolv.conf), or the
                 * route's CA file cannot be read: this provider's rows wait
                 * and send ends with the reason; the other providers are not
                 * held up. A bad --dns stays an error. */
                p->stopped = 1;
                snprintf(p->reason, sizeof p->reason,
                         "direct delivery (route \"mx\") is unavailable: %.400s", err);
                rc = 0;
            }
        } else {
            rc = eng_link_new_pool(&p->link, loop, &er, err, errlen);
        }
        memset(pw, 0, sizeof pw);
        /* The configured rate and caps hold from the first claim on, before any tick:
         * without this a campaign's first rows went out unpaced. */
        if (!rc) apply_limits(p, now_ms());
    }
    if (rc) {
        for (size_t i = 0; i < w->nprovs; i++) {
            if (w->provs[i].link) eng_link_close(w->provs[i].link, 1, NULL, NULL);
            rl_ctl_free(w->provs[i].ctl);
        }
        free(w->provs);
        free(w->id);
        free(w);
        return rc;
    }
    w->reclaim_pending = o->reclaim_leases;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    snprintf(w->wid, sizeof w->wid, "%s:%d:%08x", host, (int)getpid(), (unsigned)rand());
    w->last_reap = w->last_renew = now_ms();
    uv_timer_init(loop, &w->tick);
    w->tick.data = w;
    w->rate_t0 = now_ms();
    uv_timer_start(&w->tick, on_tick, 0, TICK_MS);
    *out = w;
    return 0;
}
