/* campaign.c: a campaign's keys for the commands; see campaign.h. */
#include "scheduler/campaign.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/err.h"
#include "scheduler/keys.h"
#include "scheduler/redis.h"
#include "scheduler/lua.h"
#include "scheduler/result.h"

enum {
    KEY_MAX = 768,      /* a key: a tag, the id (or a provider) and a suffix */
    CANCEL_BATCH = 100, /* due-set members per cancel.lua call */
};

/* ---- helpers --------------------------------------------------------------------------- */

/* Run a command (argv, NUL-terminated strings) and expect a reply of type;
 * NULL after sched_redis_sync_fail() filled err and *rc. */
static redisReply *run_argv(redisContext *c, int type, const char *what, int *rc, char *err,
                            size_t errlen, int argc, const char **argv)
{
    redisReply *r = redisCommandArgv(c, argc, argv, NULL);
    if (!r || r->type != type) {
        *rc = sched_redis_sync_fail(c, r, what, err, errlen);
        return NULL;
    }
    return r;
}

/* HGETALL key (an array of field, value, ...); NULL after an error. */
static redisReply *hgetall(redisContext *c, const char *key, const char *what, int *rc, char *err,
                           size_t errlen)
{
    const char *argv[] = {"HGETALL", key};
    redisReply *r = run_argv(c, REDIS_REPLY_ARRAY, what, rc, err, errlen, 2, argv);
    if (r && r->elements % 2) {
        *rc = sched_redis_sync_fail(c, r, what, err, errlen);
        return NULL;
    }
    return r;
}

/* Whether v is a whole number. */
static int is_whole(const char *v)
{
    char *end;
    strtoll(v, &end, 10);
    return *v && !*end;
}

/* v as a whole number, 0 when it is not one. */
static long long whole(const char *v)
{
    return is_whole(v) ? strtoll(v, NULL, 10) : 0;
}

static char *dup_or_null(const char *s, int *oom)
{
    if (!s) return NULL;
    char *d = strdup(s);
    if (!d) *oom = 1;
    return d;
}

/* ---- meta and counts ------------------------------------------------------------------- */

int sched_campaign_exists(redisContext *c, const char *id, char *err, size_t errlen)
{
    char key[KEY_MAX];
    snprintf(key, sizeof key, SCHED_KEY_META, id);
    const char *argv[] = {"EXISTS", key};
    int rc = 0;
    redisReply *r = run_argv(c, REDIS_REPLY_INTEGER, "EXISTS", &rc, err, errlen, 2, argv);
    if (!r) return rc;
    rc = r->integer > 0;
    freeReplyObject(r);
    return rc;
}

int sched_campaign_info(redisContext *c, const char *id, sched_campaign_info_t *m, char *err,
                        size_t errlen)
{
    char key[KEY_MAX];
    int rc = 0;
    memset(m, 0, sizeof *m);
    m->schema_ok = 1; /* a meta without one is read as this layout (tests write such) */
    snprintf(key, sizeof key, SCHED_KEY_META, id);
    redisReply *r = hgetall(c, key, "HGETALL meta", &rc, err, errlen);
    if (!r) return rc;
    if (r->elements == 0) {
        freeReplyObject(r);
        vl_set_err(err, errlen, "unknown campaign '%s'", id);
        return VL_ENOENT;
    }
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
        if (!k || !v) continue;
        if (!strcmp(k, "total"))
            m->total = whole(v);
        else if (!strcmp(k, "state"))
            snprintf(m->state, sizeof m->state, "%s", v);
        else if (!strcmp(k, "created_ms"))
            m->created_ms = whole(v);
        else if (!strcmp(k, "started_ms"))
            m->started_ms = whole(v);
        else if (!strcmp(k, "finished_ms"))
            m->finished_ms = whole(v);
        else if (!strcmp(k, "ingested"))
            m->ingested = !strcmp(v, "1");
        else if (!strcmp(k, "email_col"))
            m->email_col = (int)whole(v);
        else if (!strcmp(k, "stop_reason"))
            snprintf(m->stop_reason, sizeof m->stop_reason, "%s", v);
        else if (!strcmp(k, "schema"))
            m->schema_ok = !strcmp(v, SCHED_SCHEMA);
    }
    freeReplyObject(r);
    return 0;
}

int sched_campaign_counts(redisContext *c, const char *id, sched_counts_t *out, char *err,
                          size_t errlen)
{
    char key[KEY_MAX];
    int rc = 0;
    memset(out, 0, sizeof *out);
    snprintf(key, sizeof key, SCHED_KEY_COUNT, id);
    redisReply *r = hgetall(c, key, "HGETALL count", &rc, err, errlen);
    if (!r) return rc;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
        if (!k || !v) continue;
        sched_status_t st = sched_status_parse(k, strlen(k));
        if ((int)st < SCHED_NFINAL)
            out->n[st] = whole(v);
        else if (!strcmp(k, "final"))
            out->final = whole(v);
        else if (!strcmp(k, "attempts"))
            out->attempts = whole(v);
        else if (!strcmp(k, "deferred"))
            out->deferred = whole(v);
    }
    freeReplyObject(r);
    return 0;
}

/* Rows still to be sent in due or lease set `set`, all and those with a
 * score <= upto (pending.lua). provider: the due set's, "" for the lease
 * set. */
static int count_rows(redisContext *c, const char *id, const char *set, const char *provider,
                      long long upto, long long *n_upto, long long *n_all, char *err, size_t errlen)
{
    char k_state[KEY_MAX], k_batch[KEY_MAX], lim[24];
    snprintf(k_state, sizeof k_state, SCHED_KEY_STATE, id);
    snprintf(k_batch, sizeof k_batch, SCHED_KEY_BATCH, id);
    snprintf(lim, sizeof lim, "%lld", upto);
    const char *argv[] = {"EVAL", sched_lua_pending, "3", set, k_state, k_batch, lim, provider};
    int rc = 0;
    redisReply *r = run_argv(c, REDIS_REPLY_ARRAY, "count rows", &rc, err, errlen, 8, argv);
    if (!r) return rc;
    if (r->elements != 2) return sched_redis_sync_fail(c, r, "count rows", err, errlen);
    if (n_upto) *n_upto = r->element[0]->integer;
    if (n_all) *n_all = r->element[1]->integer;
    freeReplyObject(r);
    return 0;
}

int sched_campaign_leased(redisContext *c, const char *id, long long *out, char *err, size_t errlen)
{
    char key[KEY_MAX];
    snprintf(key, sizeof key, SCHED_KEY_LEASE, id);
    *out = 0;
    return count_rows(c, id, key, "", 0, NULL, out, err, errlen);
}

/* ---- status ---------------------------------------------------------------------------- */

/* Fill p (its name set) from the provider's due set and shared keys. */
static int provider_status(redisContext *c, const char *id, long long now,
                           sched_provider_status_t *p, char *err, size_t errlen)
{
    char key[KEY_MAX];
    long long all = 0, due = 0;
    int rc, oom = 0;
    snprintf(key, sizeof key, SCHED_KEY_DUE, id, p->name);
    if ((rc = count_rows(c, id, key, p->name, now, &due, &all, err, errlen))) return rc;
    p->due_now = due;
    p->later = all - due;

    snprintf(key, sizeof key, SCHED_KEY_P_SUSPEND, p->name);
    redisReply *r = hgetall(c, key, "HGETALL suspend", &rc, err, errlen);
    if (!r) return rc;
    long long until = 0;
    const char *why = NULL;
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
        if (!k || !v) continue;
        if (!strcmp(k, "until")) until = whole(v);
        /* A reason that is a whole number was never one a worker wrote. */
        if (!strcmp(k, "reason") && !is_whole(v)) why = v;
    }
    if (until > now) {
        p->suspended_until_ms = until;
        p->suspend_reason = dup_or_null(why, &oom);
    }
    freeReplyObject(r);

    snprintf(key, sizeof key, SCHED_KEY_P_LEARNED, p->name);
    if (!(r = hgetall(c, key, "HGETALL learned", &rc, err, errlen))) return rc;
    if (r->elements && !(p->learned = calloc(r->elements / 2, sizeof *p->learned))) oom = 1;
    for (size_t i = 0; !oom && i + 1 < r->elements; i += 2) {
        const char *k = r->element[i]->str, *v = r->element[i + 1]->str;
        if (!k || !v) continue;
        sched_learned_t *l = &p->learned[p->nlearned++];
        l->name = dup_or_null(k, &oom);
        l->value = dup_or_null(v, &oom);
    }
    freeReplyObject(r);
    if (oom) {
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    return 0;
}

int sched_campaign_status(redisContext *c, const char *id, long long now_ms,
                          sched_campaign_status_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    int rc = sched_campaign_info(c, id, &out->info, err, errlen);
    if (!rc) rc = sched_campaign_counts(c, id, &out->counts, err, errlen);
    if (!rc) rc = sched_campaign_leased(c, id, &out->leased, err, errlen);
    if (rc) return rc;
    char key[KEY_MAX];
    snprintf(key, sizeof key, SCHED_KEY_PROVIDERS, id);
    const char *argv[] = {"SMEMBERS", key};
    redisReply *provs =
        run_argv(c, REDIS_REPLY_ARRAY, "SMEMBERS providers", &rc, err, errlen, 2, argv);
    if (!provs) return rc;
    if (provs->elements && !(out->providers = calloc(provs->elements, sizeof *out->providers))) {
        freeReplyObject(provs);
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    for (size_t i = 0; i < provs->elements && !rc; i++) {
        if (!provs->element[i]->str) continue;
        sched_provider_status_t *p = &out->providers[out->nproviders++];
        if (!(p->name = strdup(provs->element[i]->str))) {
            vl_set_err(err, errlen, "out of memory");
            rc = VL_ENOMEM;
            break;
        }
        rc = provider_status(c, id, now_ms, p, err, errlen);
        out->pending += p->due_now + p->later;
        out->due_now += p->due_now;
    }
    freeReplyObject(provs);
    return rc;
}

void sched_campaign_status_free(sched_campaign_status_t *s)
{
    for (size_t i = 0; i < s->nproviders; i++) {
        sched_provider_status_t *p = &s->providers[i];
        for (size_t k = 0; k < p->nlearned; k++) {
            free(p->learned[k].name);
            free(p->learned[k].value);
        }
        free(p->learned);
        free(p->name);
        free(p->suspend_reason);
    }
    free(s->providers);
    memset(s, 0, sizeof *s);
}

/* ---- pause, resume, cancel --------------------------------------------------------------- */

const char *sched_campaign_state_name(sched_campaign_state_t s)
{
    switch (s) {
    case SCHED_CAMPAIGN_RUNNING:
        return "running";
    case SCHED_CAMPAIGN_PAUSED:
        return "paused";
    case SCHED_CAMPAIGN_CANCELLED:
        return "cancelled";
    }
    return "running";
}

/* set_state.lua, then the rule of what may change: a done campaign never,
 * a cancelled one only to cancelled (which finishes what is left). */
static int set_state(redisContext *c, const char *id, sched_campaign_state_t want, char *was,
                     size_t waslen, char *err, size_t errlen)
{
    char key[KEY_MAX], prev[32];
    snprintf(key, sizeof key, SCHED_KEY_META, id);
    const char *argv[] = {"EVAL", sched_lua_set_state, "1", key, sched_campaign_state_name(want)};
    int rc = 0;
    redisReply *r = run_argv(c, REDIS_REPLY_STRING, "set state", &rc, err, errlen, 5, argv);
    if (!r) return rc;
    snprintf(prev, sizeof prev, "%s", r->str);
    freeReplyObject(r);
    if (waslen) snprintf(was, waslen, "%s", prev);
    if (!strcmp(prev, "done") || (!strcmp(prev, "cancelled") && want != SCHED_CAMPAIGN_CANCELLED)) {
        vl_set_err(err, errlen, "campaign %s is %s; its state cannot change any more", id, prev);
        return VL_ESTATE;
    }
    return 0;
}

int sched_campaign_set_state(redisContext *c, const char *id, sched_campaign_state_t want,
                             char *was, size_t waslen, char *err, size_t errlen)
{
    if (want == SCHED_CAMPAIGN_CANCELLED) {
        vl_set_err(err, errlen, "cancel a campaign with sched_campaign_cancel");
        return VL_EINVAL;
    }
    return set_state(c, id, want, was, waslen, err, errlen);
}

/* Cancel the first CANCEL_BATCH members of the due set fixed[3] of provider
 * prov with cancel.lua: adds the rows cancelled to *cancelled and sets
 * *left to the members left. fixed: meta, retry, count, due, batch, state. */
static int cancel_some(redisContext *c, const char *id, const char *const fixed[6],
                       const char *prov, long long now, long long *cancelled, long long *left,
                       char *err, size_t errlen)
{
    char end[24];
    snprintf(end, sizeof end, "%d", CANCEL_BATCH - 1);
    const char *zargv[] = {"ZRANGE", fixed[3], "0", end};
    int rc = 0;
    redisReply *z = run_argv(c, REDIS_REPLY_ARRAY, "ZRANGE due", &rc, err, errlen, 4, zargv);
    if (!z) return rc;
    /* A member's batch F-L spans at most two results hashes. */
    enum { MAXA = 3 + 6 + 2 * CANCEL_BATCH + 3 + 2 * CANCEL_BATCH };
    char keys[2 * CANCEL_BATCH][KEY_MAX / 2];
    char nums[CANCEL_BATCH][24];
    unsigned long kof[2 * CANCEL_BATCH];
    const char *argv[MAXA];
    size_t nk = 0, nu = 0, nm = 0;
    const char *margv[2 * CANCEL_BATCH];
    for (size_t i = 0; i < z->elements && i < CANCEL_BATCH; i++) {
        const char *m = z->element[i]->str;
        unsigned long f = 0, l = 0;
        if (!m) continue;
        if (sscanf(m, "%lu-%lu", &f, &l) != 2) {
            /* Not a member volley wrote: the script only removes it. */
            margv[2 * nm] = m;
            margv[2 * nm + 1] = "0";
            nm++;
            continue;
        }
        size_t k = sched_res_hashes_add(kof, &nk, f, l);
        snprintf(nums[nu], sizeof nums[nu], "%zu", 7 + k);
        margv[2 * nm] = m;
        margv[2 * nm + 1] = nums[nu++];
        nm++;
    }
    char nkeys_s[24], now_s[24], nm_s[24];
    snprintf(nkeys_s, sizeof nkeys_s, "%zu", 6 + nk);
    snprintf(now_s, sizeof now_s, "%lld", now);
    snprintf(nm_s, sizeof nm_s, "%zu", nm);
    size_t n = 0;
    argv[n++] = "EVAL";
    argv[n++] = sched_lua_cancel;
    argv[n++] = nkeys_s;
    for (size_t i = 0; i < 6; i++)
        argv[n++] = fixed[i];
    for (size_t k = 0; k < nk; k++) {
        snprintf(keys[k], sizeof keys[k], SCHED_KEY_RES, id, kof[k]);
        argv[n++] = keys[k];
    }
    argv[n++] = now_s;
    argv[n++] = prov;
    argv[n++] = nm_s;
    for (size_t i = 0; i < 2 * nm; i++)
        argv[n++] = margv[i];
    redisReply *r = run_argv(c, REDIS_REPLY_ARRAY, "cancel rows", &rc, err, errlen, (int)n, argv);
    freeReplyObject(z);
    if (!r) return rc;
    if (r->elements != 2) return sched_redis_sync_fail(c, r, "cancel rows", err, errlen);
    *cancelled += r->element[0]->integer;
    *left = r->element[1]->integer;
    freeReplyObject(r);
    return 0;
}

int sched_campaign_cancel(redisContext *c, const char *id, long long now_ms, long long *cancelled,
                          long long *leased, char *was, size_t waslen, char *err, size_t errlen)
{
    long long n = 0, held = 0;
    if (cancelled) *cancelled = 0;
    if (leased) *leased = 0;
    int rc = set_state(c, id, SCHED_CAMPAIGN_CANCELLED, was, waslen, err, errlen);
    if (rc) return rc;

    /* Drain every provider's due set, CANCEL_BATCH members a call. */
    char meta[KEY_MAX], retry[KEY_MAX], count[KEY_MAX], due[KEY_MAX], batch[KEY_MAX],
        state[KEY_MAX];
    snprintf(meta, sizeof meta, SCHED_KEY_META, id);
    snprintf(retry, sizeof retry, SCHED_KEY_RETRY, id);
    snprintf(batch, sizeof batch, SCHED_KEY_BATCH, id);
    snprintf(state, sizeof state, SCHED_KEY_STATE, id);
    snprintf(count, sizeof count, SCHED_KEY_COUNT, id);
    snprintf(due, sizeof due, SCHED_KEY_PROVIDERS, id);
    const char *argv[] = {"SMEMBERS", due};
    redisReply *provs =
        run_argv(c, REDIS_REPLY_ARRAY, "SMEMBERS providers", &rc, err, errlen, 2, argv);
    if (!provs) return rc;
    const char *const fixed[6] = {meta, retry, count, due, batch, state};
    for (size_t i = 0; i < provs->elements && !rc; i++) {
        if (!provs->element[i]->str) continue;
        snprintf(due, sizeof due, SCHED_KEY_DUE, id, provs->element[i]->str);
        long long left = 1;
        while (left > 0 && !rc)
            rc = cancel_some(c, id, fixed, provs->element[i]->str, now_ms, &n, &left, err, errlen);
    }
    freeReplyObject(provs);
    if (cancelled) *cancelled = n;
    if (!rc) rc = sched_campaign_leased(c, id, &held, err, errlen);
    if (leased) *leased = held;
    return rc;
}

/* ---- results --------------------------------------------------------------------------- */

void sched_row_init(sched_row_t *r)
{
    memset(r, 0, sizeof *r);
    buf_init(&r->email, SCHED_ROW_TEXT_MAX);
    buf_init(&r->provider, SCHED_ROW_TEXT_MAX);
    buf_init(&r->enhanced, SCHED_ROW_TEXT_MAX);
    buf_init(&r->response, SCHED_ROW_TEXT_MAX);
    buf_init(&r->host, SCHED_ROW_TEXT_MAX);
}

void sched_row_free(sched_row_t *r)
{
    buf_free(&r->email);
    buf_free(&r->provider);
    buf_free(&r->enhanced);
    buf_free(&r->response);
    buf_free(&r->host);
}

/* Empty r but for its row number, keeping its memory. */
static void row_clear(sched_row_t *r, sched_status_t st)
{
    r->status = st;
    buf_reset(&r->email);
    buf_reset(&r->provider);
    buf_reset(&r->enhanced);
    buf_reset(&r->response);
    buf_reset(&r->host);
    r->attempts = r->code = r->first_ms = r->last_ms = 0;
}

/* One text column into b: a column longer than b's cap keeps what fits. */
static int take_text(buf_t *b, sched_text_t t)
{
    int rc = sched_text_unescape(b, t);
    return rc == VL_ENOMEM ? rc : 0;
}

int sched_row_decode(sched_row_t *r, const char *s, size_t len)
{
    sched_result_view_t v;
    row_clear(r, SCHED_ST_UNKNOWN);
    if (sched_result_parse(s, len, &v)) return VL_EPARSE;
    r->status = sched_status_parse(v.status.p, v.status.len);
    r->attempts = v.attempts;
    r->code = v.code;
    r->first_ms = v.first_ms;
    r->last_ms = v.last_ms;
    int rc = take_text(&r->email, v.email);
    if (!rc) rc = take_text(&r->provider, v.provider);
    if (!rc) rc = take_text(&r->enhanced, v.enhanced);
    if (!rc) rc = take_text(&r->response, v.response);
    if (!rc) rc = take_text(&r->host, v.host);
    return rc;
}

/* Results hashes asked for ahead: Redis answers the next ones while this
 * one's rows are written (with one ahead, the report of 1,000,000 rows took
 * 2.1 s of which volley used 1.0 s). 32 of 64 rows: about 2,000 rows ahead. */
enum { DEPTH = 32, HROWS = (int)SCHED_RES_ROWS };

struct sched_results {
    redisContext *c; /* borrowed */
    char *id;        /* owned */
    int email_col;
    unsigned long long total;
    unsigned long long next; /* the first results hash not yet asked for */
    unsigned long long k;    /* the results hash being read */
    redisReply *held[DEPTH]; /* owned: replies read, not yet processed, oldest first */
    int nheld, outstanding;  /* outstanding: replies still on the connection */
    redisReply *cur;         /* owned: hash k's reply, NULL between hashes */
    unsigned long long from; /* hash k's first row */
    size_t n, i;             /* hash k's rows, the next of them */
    int missing;             /* hash k has rows not tried yet */
    const char *res[HROWS];  /* into cur: each row's result, NULL for none */
    size_t len[HROWS];
    /* Rows not tried yet have no result: their address and provider are in
     * their batch. Rows come in order, so one batch is kept at a time. */
    unsigned long bfirst, blast; /* the batch held */
    redisReply *blob;            /* owned, or NULL */
    sched_row_t row;
};

/* The rows of results hash k up to total: from *from, n of them. */
static size_t hash_rows(unsigned long long k, unsigned long long total, unsigned long long *from)
{
    unsigned long long lo = k * HROWS, hi = lo + HROWS - 1;
    *from = lo ? lo : 1;
    return (size_t)((hi < total ? hi : total) - *from + 1);
}

/* Ask for results hashes until DEPTH are asked for and unprocessed. */
static int fill(sched_results_t *it)
{
    while (it->nheld + it->outstanding < DEPTH && it->total && it->next <= it->total / HROWS) {
        char key[KEY_MAX];
        snprintf(key, sizeof key, SCHED_KEY_RES, it->id, (unsigned long)it->next);
        const char *argv[2] = {"HGETALL", key};
        if (redisAppendCommandArgv(it->c, 2, argv, NULL) != REDIS_OK) return -1;
        it->next++;
        it->outstanding++;
    }
    return 0;
}

/* Read every outstanding reply into held, so that other commands may be
 * sent on the connection (their replies come after these). */
static int drain(sched_results_t *it)
{
    while (it->outstanding) {
        void *v = NULL;
        if (redisGetReply(it->c, &v) != REDIS_OK) return -1;
        it->held[it->nheld++] = v;
        it->outstanding--;
    }
    return 0;
}

/* The oldest unprocessed reply (the caller frees it), or NULL on a
 * connection error. */
static redisReply *next_reply(sched_results_t *it)
{
    if (it->nheld) {
        redisReply *r = it->held[0];
        memmove(it->held, it->held + 1, (size_t)--it->nheld * sizeof *it->held);
        return r;
    }
    void *v = NULL;
    if (!it->outstanding || redisGetReply(it->c, &v) != REDIS_OK) return NULL;
    it->outstanding--;
    return v;
}

/* Where each row of the current hash has its result: a field of its own
 * ("R") or a line of a group's field ("gR", lines "row<TAB>result<LF>";
 * keys.h). A row named twice keeps its own field: only a row that was never
 * in a group gets one. 0, or -1 when the reply is not a hash's. */
static int find_results(sched_results_t *it)
{
    const redisReply *rep = it->cur;
    memset(it->res, 0, sizeof it->res);
    if (rep->type != REDIS_REPLY_ARRAY || rep->elements % 2) return -1;
    for (int pass = 0; pass < 2; pass++)
        for (size_t i = 0; i + 1 < rep->elements; i += 2) {
            const redisReply *k = rep->element[i], *v = rep->element[i + 1];
            if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING || !k->len)
                return -1;
            int group = k->str[0] == 'g';
            if (group != (pass == 0)) continue;
            if (!group) {
                unsigned long long row = strtoull(k->str, NULL, 10);
                if (row >= it->from && row - it->from < it->n) {
                    it->res[row - it->from] = v->str;
                    it->len[row - it->from] = v->len;
                }
                continue;
            }
            const char *p = v->str, *end = v->str + v->len;
            while (p < end) {
                const char *nl = memchr(p, '\n', (size_t)(end - p));
                const char *tab = memchr(p, '\t', (size_t)((nl ? nl : end) - p));
                if (!nl || !tab) return -1;
                unsigned long long row = strtoull(p, NULL, 10);
                if (row >= it->from && row - it->from < it->n) {
                    it->res[row - it->from] = tab + 1;
                    it->len[row - it->from] = (size_t)(nl - tab - 1);
                }
                p = nl + 1;
            }
        }
    return 0;
}

/* Hold the batch of row (if it was ingested) in it->blob. */
static int find_batch(sched_results_t *it, unsigned long row, char *err, size_t errlen)
{
    if (it->blob && row >= it->bfirst && row <= it->blast) return 0;
    char key[KEY_MAX], max[24], range[64];
    snprintf(key, sizeof key, SCHED_KEY_BATCHES, it->id);
    snprintf(max, sizeof max, "%lu", row);
    const char *zargv[] = {"ZREVRANGEBYSCORE", key, max, "-inf", "LIMIT", "0", "1"};
    int rc = 0;
    redisReply *z =
        run_argv(it->c, REDIS_REPLY_ARRAY, "ZREVRANGEBYSCORE batches", &rc, err, errlen, 7, zargv);
    if (!z) return rc;
    unsigned long f = 0, l = 0;
    int found = z->elements == 1 && z->element[0]->str &&
                sscanf(z->element[0]->str, "%lu-%lu", &f, &l) == 2 && l >= row;
    freeReplyObject(z);
    if (!found) return 0; /* not ingested (yet) */
    snprintf(key, sizeof key, SCHED_KEY_BATCH, it->id);
    snprintf(range, sizeof range, "%lu-%lu", f, l);
    const char *bargv[] = {"HGET", key, range};
    redisReply *b = redisCommandArgv(it->c, 3, bargv, NULL);
    if (!b || (b->type != REDIS_REPLY_STRING && b->type != REDIS_REPLY_NIL))
        return sched_redis_sync_fail(it->c, b, "HGET batch", err, errlen);
    if (it->blob) freeReplyObject(it->blob);
    it->blob = b;
    it->bfirst = f;
    it->blast = l;
    return 0;
}

/* Fill a pending row's address and provider from its batch, if it has one. */
static int pending_row(sched_results_t *it, sched_row_t *r, char *err, size_t errlen)
{
    int rc = find_batch(it, r->row, err, errlen);
    if (rc || !it->blob || it->blob->type != REDIS_REPLY_STRING || r->row < it->bfirst ||
        r->row > it->blast)
        return rc;
    size_t pos = 0;
    sched_line_t line;
    while (sched_blob_next(it->blob->str, it->blob->len, &pos, &line) == 1) {
        if (line.row != r->row) continue;
        /* Any JSON array, not only ingest's (sched_fields_decode): a row is
         * read here once per report, off the hot path. */
        json_t *f = json_loadb(line.fields, line.fields_len, 0, NULL);
        json_t *e = json_array_get(f, (size_t)it->email_col);
        if ((json_is_string(e) &&
             buf_append(&r->email, json_string_value(e), json_string_length(e)) == VL_ENOMEM) ||
            buf_append(&r->provider, line.provider, line.provider_len) == VL_ENOMEM)
            rc = VL_ENOMEM;
        json_decref(f);
        break;
    }
    return rc;
}

int sched_results_open(sched_results_t **out, redisContext *c, const char *id,
                       sched_campaign_info_t *info, char *err, size_t errlen)
{
    sched_campaign_info_t m;
    *out = NULL;
    int rc = sched_campaign_info(c, id, &m, err, errlen);
    if (rc) return rc;
    if (!m.schema_ok) {
        /* Its results are where this volley does not look: every row would
         * read as pending. */
        vl_set_err(err, errlen,
                   "campaign '%s' was started by an older volley whose Redis layout this one "
                   "cannot read; report it with that version",
                   id);
        return VL_ESTATE;
    }
    if (info) *info = m;
    sched_results_t *it = calloc(1, sizeof *it);
    if (it) it->id = strdup(id);
    if (!it || !it->id) {
        sched_results_close(it);
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    it->c = c;
    it->email_col = m.email_col < 0 ? 0 : m.email_col;
    it->total = m.total > 0 ? (unsigned long long)m.total : 0;
    sched_row_init(&it->row);
    if (fill(it)) {
        sched_results_close(it);
        return sched_redis_sync_fail(c, NULL, "HGETALL res", err, errlen);
    }
    *out = it;
    return 0;
}

int sched_results_next(sched_results_t *it, const sched_row_t **row, char *err, size_t errlen)
{
    int rc;
    while (!it->cur || it->i >= it->n) {
        if (it->cur) {
            freeReplyObject(it->cur);
            it->cur = NULL;
            if (it->missing && fill(it))
                return sched_redis_sync_fail(it->c, NULL, "HGETALL res", err, errlen);
            it->k++;
        }
        if (!it->total || it->k > it->total / HROWS) return 0;
        it->n = hash_rows(it->k, it->total, &it->from);
        it->i = 0;
        it->cur = next_reply(it);
        if (!it->cur || find_results(it)) {
            redisReply *r = it->cur;
            it->cur = NULL;
            return sched_redis_sync_fail(it->c, r, "HGETALL res", err, errlen);
        }
        it->missing = 0;
        for (size_t i = 0; i < it->n && !it->missing; i++)
            it->missing = !it->res[i];
        /* A row not tried yet needs its batch, read on this connection: the
         * replies on it go first. Otherwise keep DEPTH asked for. */
        if (it->missing ? drain(it) : fill(it))
            return sched_redis_sync_fail(it->c, NULL, "HGETALL res", err, errlen);
    }
    sched_row_t *r = &it->row;
    size_t i = it->i++;
    r->row = (unsigned long)(it->from + i);
    if (it->res[i]) {
        rc = sched_row_decode(r, it->res[i], it->len[i]);
        if (rc == VL_EPARSE) {
            row_clear(r, SCHED_ST_UNKNOWN);
            rc = buf_puts(&r->response, "(unreadable result in Redis)");
        }
    } else {
        row_clear(r, SCHED_ST_PENDING);
        rc = pending_row(it, r, err, errlen);
    }
    if (rc == VL_ENOMEM) vl_set_err(err, errlen, "out of memory");
    if (rc) return rc;
    *row = r;
    return 1;
}

void sched_results_close(sched_results_t *it)
{
    if (!it) return;
    /* Replies asked for and never read: read them so the connection is in
     * step again, unless it failed. */
    while (it->outstanding && !it->c->err) {
        void *v = NULL;
        if (redisGetReply(it->c, &v) != REDIS_OK) break;
        freeReplyObject(v);
        it->outstanding--;
    }
    while (it->nheld)
        freeReplyObject(it->held[--it->nheld]);
    if (it->cur) freeReplyObject(it->cur);
    if (it->blob) freeReplyObject(it->blob);
    sched_row_free(&it->row);
    free(it->id);
    free(it);
}

/* ---- the worker's list of campaigns ----------------------------------------------------- */

typedef struct scan {
    sched_campaign_want_cb want;
    sched_campaign_seen_cb seen;
    void *ud; /* borrowed */
} scan_t;

typedef struct scan_one {
    scan_t s;
    char id[]; /* owned, with the struct */
} scan_one_t;

static void on_meta(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *es)
{
    (void)r;
    (void)es;
    scan_one_t *one = priv;
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 3) {
        const char *state = reply->element[0]->str, *path = reply->element[1]->str;
        const char *schema = reply->element[2]->str;
        one->s.seen(one->id, state ? state : "", path ? path : "",
                    schema && !strcmp(schema, SCHED_SCHEMA), one->s.ud);
    }
    free(one);
}

static void on_list(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *es)
{
    (void)es;
    scan_t *s = priv;
    for (size_t i = 0; !err && reply && reply->type == REDIS_REPLY_ARRAY && i < reply->elements;
         i++) {
        const char *id = reply->element[i]->str;
        if (!id || (s->want && !s->want(id, s->ud))) continue;
        size_t n = strlen(id);
        scan_one_t *one = malloc(sizeof *one + n + 1);
        if (!one) continue;
        one->s = *s;
        memcpy(one->id, id, n + 1);
        char key[KEY_MAX];
        snprintf(key, sizeof key, SCHED_KEY_META, id);
        if (sched_redis_cmd(r, on_meta, one, "HMGET %s state path schema", key)) free(one);
    }
    free(s);
}

int sched_campaigns_scan(sched_redis_t *r, sched_campaign_want_cb want, sched_campaign_seen_cb seen,
                         void *ud)
{
    scan_t *s = malloc(sizeof *s);
    if (!s) return VL_ENOMEM;
    *s = (scan_t){want, seen, ud};
    int rc = sched_redis_cmd(r, on_list, s, "SMEMBERS %s", SCHED_KEY_CAMPAIGNS);
    if (rc) free(s);
    return rc;
}
