/* mx.c: direct delivery, one pool per recipient domain (see mx.h).
 *
 * A domain's entry (dest_t) moves through three states:
 *
 *   RESOLVING --answer--> READY (a pool for its MX addresses)
 *       |                   |
 *       +--no answer----> FAILED (the answer, kept for a while) --expiry--> RESOLVING
 *
 * Messages for a RESOLVING domain wait in its queue; for a READY one they go
 * to its pool; for a FAILED one they end with DNS's verdict on the next loop
 * turn. Pools share one eng_budget_t, so the provider's connection ceiling
 * holds over all its domains.
 */
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "engine/eng_int.h"
#include "engine/mx.h"

#define TEMPFAIL_KEEP_MS 30000 /* a failed lookup is not repeated for this long */
#define NOMAIL_KEEP_MS 600000  /* NXDOMAIN and null MX are kept longer */
#define IDLE_FORGET_MS 300000  /* an idle domain is forgotten after this */
#define SWEEP_MS 30000
#define MAX_DOMAIN 253

typedef enum dest_state { DEST_RESOLVING, DEST_READY, DEST_FAILED } dest_state_t;

typedef struct dest {
    struct dest *hnext; /* hash chain */
    eng_mx_t *mx;
    dest_state_t state;
    eng_pool_t *pool;         /* READY */
    eng_msg_t *qhead, *qtail; /* RESOLVING: messages waiting for the answer */
    int lookup;               /* a lookup is under way: its callback holds this */
    int forgotten;            /* dropped from the table while a lookup ran */
    eng_reply_t verdict;      /* FAILED: code 0 for a temporary failure, else the
                               * synthesized 5xx; text says why */
    uint64_t until_ms;        /* FAILED: the verdict is kept until then */
    uint64_t idle_since_ms;   /* READY: first sweep that saw the pool empty, or 0 */
    char domain[MAX_DOMAIN + 1];
} dest_t;

struct eng_mx {
    uv_loop_t *loop;
    eng_mx_opts_t o; /* strings point at the copies below */
    char *ca_file, *helo;
    tls_ctx_t *tls_ctx; /* one for every domain's pool; NULL without TLS */
    eng_dns_t *dns;
    eng_budget_t budget;
    dest_t **tab;
    size_t tabsz, ndest;
    unsigned msgs_cap, rcpts_cap;
    eng_msg_t *done_head, *done_tail; /* to complete on the next loop turn */
    uv_timer_t done_timer, sweep_timer;
    int closing;
    unsigned open; /* handles and pools not yet closed, the resolver included */
    void (*on_closed)(void *ud);
    void *closed_ud;
};

static uint64_t now_ms(const eng_mx_t *mx)
{
    return uv_now(mx->loop);
}

/* ---- the domain table -------------------------------------------------- */

static size_t hash(const char *s)
{
    size_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The table's key for domain: lower case, without a final dot, into lc (MAX_DOMAIN + 1
 * bytes). 0, or VL_EINVAL when it is too long. */
static int domain_key(const char *domain, char *lc)
{
    size_t n = strlen(domain);
    if (n > MAX_DOMAIN) return VL_EINVAL;
    for (size_t i = 0; i <= n; i++)
        lc[i] = (char)(domain[i] >= 'A' && domain[i] <= 'Z' ? domain[i] - 'A' + 'a' : domain[i]);
    if (n > 1 && lc[n - 1] == '.') lc[n - 1] = '\0';
    return 0;
}

static dest_t *dest_find(eng_mx_t *mx, const char *domain)
{
    for (dest_t *d = mx->tab[hash(domain) & (mx->tabsz - 1)]; d; d = d->hnext)
        if (!strcmp(d->domain, domain)) return d;
    return NULL;
}

static int grow(eng_mx_t *mx)
{
    size_t nsz = mx->tabsz * 2;
    dest_t **nt = calloc(nsz, sizeof *nt);
    if (!nt) return VL_ENOMEM;
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *d = mx->tab[i], *next; d; d = next) {
            next = d->hnext;
            size_t k = hash(d->domain) & (nsz - 1);
            d->hnext = nt[k];
            nt[k] = d;
        }
    free(mx->tab);
    mx->tab = nt;
    mx->tabsz = nsz;
    return 0;
}

static dest_t *dest_add(eng_mx_t *mx, const char *domain)
{
    if (mx->ndest >= mx->tabsz && grow(mx)) return NULL;
    dest_t *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->mx = mx;
    snprintf(d->domain, sizeof d->domain, "%s", domain);
    size_t k = hash(domain) & (mx->tabsz - 1);
    d->hnext = mx->tab[k];
    mx->tab[k] = d;
    mx->ndest++;
    return d;
}

static void dest_unlink(eng_mx_t *mx, dest_t *d)
{
    for (dest_t **pp = &mx->tab[hash(d->domain) & (mx->tabsz - 1)]; *pp; pp = &(*pp)->hnext)
        if (*pp == d) {
            *pp = d->hnext;
            mx->ndest--;
            return;
        }
}

/* ---- completing messages without a pool --------------------------------- */

/* The verdict travels in the message's engine-private fail_reply: code -1
 * cancelled, 0 a temporary DNS failure (text says why), else the reply. */
static void complete(eng_msg_t *m)
{
    eng_result_t res = {.remote = "", .queued_us = eng__now_us() - m->t_submit};
    if (m->fail_reply.code < 0) {
        res.status = ENG_CANCELLED;
        res.err = VL_ECANCELED;
        res.errstr = vl_err_str(VL_ECANCELED);
    } else if (m->fail_reply.code == 0) {
        res.status = ENG_FAILED;
        res.stage = ENG_STAGE_RESOLVE;
        res.err = VL_EDNS;
        res.errstr = m->fail_reply.text;
    } else {
        res.status = ENG_REJECTED;
        res.stage = ENG_STAGE_RESOLVE;
        res.reply = m->fail_reply;
    }
    m->on_done(m, &res);
}

static void on_done_timer(uv_timer_t *t)
{
    eng_mx_t *mx = t->data;
    /* Detach the list first: a callback may submit again. */
    eng_msg_t *m = mx->done_head;
    mx->done_head = mx->done_tail = NULL;
    while (m) {
        eng_msg_t *next = m->next;
        m->next = NULL;
        complete(m);
        m = next;
    }
}

static void defer_done(eng_mx_t *mx, eng_msg_t *m, const eng_reply_t *verdict)
{
    m->fail_reply = *verdict;
    m->next = NULL;
    if (mx->done_tail)
        mx->done_tail->next = m;
    else
        mx->done_head = m;
    mx->done_tail = m;
    uv_timer_start(&mx->done_timer, on_done_timer, 0, 0);
}

/* ---- budget: room for waiting domains ----------------------------------- */

static int starving(const dest_t *d)
{
    return d->state == DEST_READY && eng_pool_queued(d->pool) && !eng_pool_connections(d->pool);
}

/* A connection closed somewhere: let domains with queued work open one. */
static void on_release(eng_budget_t *b)
{
    eng_mx_t *mx = b->ud;
    if (mx->closing) return;
    for (size_t i = 0; i < mx->tabsz && b->used < b->max; i++)
        for (dest_t *d = mx->tab[i]; d && b->used < b->max; d = d->hnext)
            if (d->state == DEST_READY && eng_pool_queued(d->pool)) eng__pool_kick(d->pool);
}

/* Does a domain other than pool's wait for room? */
static int wanted(eng_budget_t *b, const eng_pool_t *pool)
{
    eng_mx_t *mx = b->ud;
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *d = mx->tab[i]; d; d = d->hnext)
            if (d->pool != pool && starving(d)) return 1;
    return 0;
}

/* d has work and no connection while the budget is spent: ask the idle
 * connections of other domains to QUIT (on_release then lets d open one). */
static void make_room(eng_mx_t *mx, dest_t *d)
{
    if (mx->budget.used < mx->budget.max || !starving(d)) return;
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *o = mx->tab[i]; o; o = o->hnext)
            if (o != d && o->state == DEST_READY) eng_pool_close_idle(o->pool);
}

/* ---- lookups ------------------------------------------------------------ */

static void maybe_freed(eng_mx_t *mx);

static void on_pool_closed(void *ud)
{
    eng_mx_t *mx = ud;
    mx->open--;
    maybe_freed(mx);
}

static void fail_dest(dest_t *d, const eng_reply_t *verdict, uint64_t keep_ms)
{
    eng_mx_t *mx = d->mx;
    d->state = DEST_FAILED;
    d->verdict = *verdict;
    d->until_ms = now_ms(mx) + keep_ms;
    while (d->qhead) {
        eng_msg_t *m = d->qhead;
        d->qhead = m->next;
        defer_done(mx, m, verdict);
    }
    d->qtail = NULL;
}

static void on_mx(void *ud, eng_dns_status_t st, const eng_target_t *t, size_t n, const char *why)
{
    dest_t *d = ud;
    eng_mx_t *mx = d->mx;
    d->lookup = 0;
    if (st == ENG_DNS_CANCELLED || mx->closing || d->forgotten) {
        /* Closing cancelled the waiting messages already. */
        if (d->forgotten) free(d);
        return;
    }
    eng_reply_t v = {0};
    switch (st) {
    case ENG_DNS_OK: {
        eng_route_t r = mx->o.route;
        r.host = d->domain;
        r.port = mx->o.port;
        r.targets = t;
        r.ntargets = n;
        r.budget = &mx->budget;
        r.max_connections = mx->budget.max;
        r.max_msgs_per_conn = mx->msgs_cap;
        r.max_rcpts_per_conn = mx->rcpts_cap;
        char err[256];
        if (eng__pool_new_tls(&d->pool, mx->loop, &r, mx->tls_ctx, err, sizeof err) == 0) {
            mx->open++;
            d->state = DEST_READY;
            d->idle_since_ms = 0;
            while (d->qhead) {
                eng_msg_t *m = d->qhead;
                d->qhead = m->next;
                m->next = NULL;
                eng_pool_submit(d->pool, m); /* cannot fail: open, checked */
            }
            d->qtail = NULL;
            make_room(mx, d);
            return;
        }
        snprintf(v.text, sizeof v.text, "%.120s: %.120s", d->domain, err);
        fail_dest(d, &v, TEMPFAIL_KEEP_MS);
        return;
    }
    case ENG_DNS_NOTFOUND:
    case ENG_DNS_NULLMX:
        /* RFC 3463 5.1.2 bad destination system; RFC 7505 §4.2 556 5.1.10. */
        v.code = st == ENG_DNS_NULLMX ? 556 : 550;
        snprintf(v.enhanced, sizeof v.enhanced, "%s", st == ENG_DNS_NULLMX ? "5.1.10" : "5.1.2");
        snprintf(v.text, sizeof v.text, "%s", why);
        fail_dest(d, &v, NOMAIL_KEEP_MS);
        return;
    default:
        snprintf(v.text, sizeof v.text, "%s", why);
        fail_dest(d, &v, TEMPFAIL_KEEP_MS);
        return;
    }
}

static void start_lookup(eng_mx_t *mx, dest_t *d)
{
    d->state = DEST_RESOLVING;
    d->lookup = 1;
    int rc = eng_dns_mx(mx->dns, d->domain, mx->o.port, on_mx, d);
    if (rc) {
        d->lookup = 0;
        eng_reply_t v = {0};
        snprintf(v.text, sizeof v.text, "MX lookup for %.150s: %s", d->domain, vl_err_str(rc));
        fail_dest(d, &v, TEMPFAIL_KEEP_MS);
    }
}

/* Forget d: its pool closes (gracefully), its memory goes now or, with a
 * lookup under way, when the lookup's callback runs. */
static void dest_forget(eng_mx_t *mx, dest_t *d, int now)
{
    dest_unlink(mx, d);
    if (d->pool) eng_pool_close(d->pool, now, on_pool_closed, mx);
    d->pool = NULL;
    if (d->lookup)
        d->forgotten = 1;
    else
        free(d);
}

/* Forget domains idle for a while, and verdicts that have expired. */
static void on_sweep(uv_timer_t *t)
{
    eng_mx_t *mx = t->data;
    uint64_t now = now_ms(mx);
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *d = mx->tab[i], *next; d; d = next) {
            next = d->hnext;
            if (d->state == DEST_FAILED && now >= d->until_ms) {
                dest_forget(mx, d, 0);
            } else if (d->state == DEST_READY) {
                if (eng_pool_pending(d->pool) || eng_pool_connections(d->pool))
                    d->idle_since_ms = 0;
                else if (!d->idle_since_ms)
                    d->idle_since_ms = now;
                else if (now - d->idle_since_ms >= IDLE_FORGET_MS)
                    dest_forget(mx, d, 0);
            }
        }
}

/* ---- the public face ----------------------------------------------------- */

int eng_mx_new(eng_mx_t **out, uv_loop_t *loop, const eng_mx_opts_t *o, char *err, size_t errlen)
{
    *out = NULL;
    eng_mx_t *mx = calloc(1, sizeof *mx);
    if (!mx) {
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    mx->loop = loop;
    mx->o = *o;
    mx->o.dns_servers = NULL; /* used only below */
    if (!mx->o.port) mx->o.port = 25;
    mx->ca_file = o->route.ca_file ? strdup(o->route.ca_file) : NULL;
    mx->helo = o->route.helo_name ? strdup(o->route.helo_name) : NULL;
    mx->o.route.ca_file = mx->ca_file;
    mx->o.route.helo_name = mx->helo;
    mx->o.route.host = NULL;
    mx->o.route.targets = NULL;
    mx->o.route.ntargets = 0;
    mx->o.route.budget = NULL;
    mx->budget.max = o->max_connections ? o->max_connections : 1;
    mx->budget.on_release = on_release;
    mx->budget.wanted = wanted;
    mx->budget.ud = mx;
    mx->msgs_cap = o->route.max_msgs_per_conn;
    mx->rcpts_cap = o->route.max_rcpts_per_conn;
    mx->tabsz = 64;
    mx->tab = calloc(mx->tabsz, sizeof *mx->tab);
    if (!mx->tab || (o->route.ca_file && !mx->ca_file) || (o->route.helo_name && !mx->helo)) {
        free(mx->tab);
        free(mx->ca_file);
        free(mx->helo);
        free(mx);
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    /* One TLS context for all domains, made now: a bad CA file is an error
     * at start, not at the first domain, and the CA store is parsed once. */
    int rc = o->route.tls == ENG_TLS_NONE ? 0
                                          : tls_ctx_client_new(&mx->tls_ctx, mx->ca_file,
                                                               o->route.tls_insecure, err, errlen);
    if (!rc) rc = eng_dns_new(&mx->dns, loop, o->dns_servers, o->dns_timeout_ms, err, errlen);
    if (rc) {
        tls_ctx_free(mx->tls_ctx);
        free(mx->tab);
        free(mx->ca_file);
        free(mx->helo);
        free(mx);
        return rc;
    }
    uv_timer_init(loop, &mx->done_timer);
    uv_timer_init(loop, &mx->sweep_timer);
    mx->done_timer.data = mx->sweep_timer.data = mx;
    uv_timer_start(&mx->sweep_timer, on_sweep, SWEEP_MS, SWEEP_MS);
    uv_unref((uv_handle_t *)&mx->sweep_timer); /* it alone must not keep a loop alive */
    mx->open = 3;                              /* the two timers and the resolver */
    *out = mx;
    return 0;
}

int eng_mx_submit(eng_mx_t *mx, eng_msg_t *m, const char *domain)
{
    if (mx->closing) return VL_ESTATE;
    if (!m->nrcpts || !m->rcpts || !m->rcpt_status || !m->on_done || !m->mail_from || !domain ||
        !*domain)
        return VL_EINVAL;
    char lc[MAX_DOMAIN + 1];
    if (domain_key(domain, lc)) return VL_EINVAL;
    dest_t *d = dest_find(mx, lc);
    if (!d) {
        d = dest_add(mx, lc);
        if (!d) return VL_ENOMEM;
        d->state = DEST_FAILED; /* expired at once: looked up below */
    }
    m->next = NULL;
    m->t_submit = eng__now_us();
    if (d->state == DEST_FAILED && now_ms(mx) >= d->until_ms && !d->lookup) {
        d->state = DEST_RESOLVING;
        d->qhead = d->qtail = m;
        start_lookup(mx, d);
        return 0;
    }
    switch (d->state) {
    case DEST_READY: {
        int rc = eng_pool_submit(d->pool, m);
        if (!rc) make_room(mx, d);
        return rc;
    }
    case DEST_RESOLVING:
        if (d->qtail)
            d->qtail->next = m;
        else
            d->qhead = m;
        d->qtail = m;
        return 0;
    case DEST_FAILED:
        defer_done(mx, m, &d->verdict);
        return 0;
    }
    return VL_ESTATE;
}

int eng_mx_retire(eng_mx_t *mx, const char *domain, unsigned conn_id)
{
    char lc[MAX_DOMAIN + 1];
    if (domain_key(domain, lc)) return VL_EINVAL;
    dest_t *d = dest_find(mx, lc);
    if (!d || d->state != DEST_READY) return VL_ENOENT;
    return eng_pool_retire(d->pool, conn_id);
}

void eng_mx_set_max_connections(eng_mx_t *mx, unsigned n)
{
    if (!n) n = 1;
    if (n == mx->budget.max) return;
    int lower = n < mx->budget.max;
    mx->budget.max = n;
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *d = mx->tab[i]; d; d = d->hnext)
            if (d->state == DEST_READY) {
                eng_pool_set_max_connections(d->pool, n);
                /* Over the new ceiling in total: idle connections go now,
                 * busy ones when their per-connection cap ends them. */
                if (lower && mx->budget.used > n) eng_pool_close_idle(d->pool);
            }
}

void eng_mx_set_caps(eng_mx_t *mx, unsigned msgs_per_conn, unsigned rcpts_per_conn)
{
    mx->msgs_cap = msgs_per_conn;
    mx->rcpts_cap = rcpts_per_conn;
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *d = mx->tab[i]; d; d = d->hnext)
            if (d->state == DEST_READY) eng_pool_set_caps(d->pool, msgs_per_conn, rcpts_per_conn);
}

unsigned eng_mx_connections(const eng_mx_t *mx)
{
    return mx->budget.used;
}

size_t eng_mx_domains(const eng_mx_t *mx)
{
    return mx->ndest;
}

static void maybe_freed(eng_mx_t *mx)
{
    if (!mx->closing || mx->open) return;
    void (*cb)(void *) = mx->on_closed;
    void *ud = mx->closed_ud;
    tls_ctx_free(mx->tls_ctx);
    free(mx->tab);
    free(mx->ca_file);
    free(mx->helo);
    free(mx);
    if (cb) cb(ud);
}

static void on_handle_closed(uv_handle_t *h)
{
    on_pool_closed(h->data);
}

void eng_mx_close(eng_mx_t *mx, int now, void (*on_closed)(void *ud), void *ud)
{
    if (mx->closing) return;
    mx->closing = 1;
    mx->on_closed = on_closed;
    mx->closed_ud = ud;
    /* Messages waiting for a lookup or for a verdict's turn are cancelled. */
    eng_reply_t cancelled = {.code = -1};
    for (size_t i = 0; i < mx->tabsz; i++)
        for (dest_t *d = mx->tab[i]; d; d = d->hnext)
            while (d->qhead) {
                eng_msg_t *m = d->qhead;
                d->qhead = m->next;
                m->fail_reply = cancelled;
                complete(m);
            }
    while (mx->done_head) {
        eng_msg_t *m = mx->done_head;
        mx->done_head = m->next;
        m->fail_reply.code = -1;
        complete(m);
    }
    mx->done_tail = NULL;
    eng_dns_close(mx->dns, on_pool_closed, mx);
    for (size_t i = 0; i < mx->tabsz; i++)
        while (mx->tab[i])
            dest_forget(mx, mx->tab[i], now);
    uv_close((uv_handle_t *)&mx->done_timer, on_handle_closed);
    uv_close((uv_handle_t *)&mx->sweep_timer, on_handle_closed);
}
