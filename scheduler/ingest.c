#include "scheduler/ingest.h"

#include <ctype.h>
#include <stdarg.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "scheduler/keys.h"
#include "scheduler/lua.h"
#include "scheduler/result.h"

int sched_parse_time(const char *s, size_t len, int64_t *ms)
{
    char buf[64];
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (!len || len >= sizeof buf) return -1;
    memcpy(buf, s, len);
    buf[len] = '\0';
    size_t i = 0;
    while (i < len && isdigit((unsigned char)buf[i]))
        i++;
    if (i == len) { /* seconds since the epoch */
        *ms = strtoll(buf, NULL, 10) * 1000;
        return 0;
    }
    int y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
    if (sscanf(buf, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10) return -1;
    const char *p = buf + 10;
    double frac = 0;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        int m = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &h, &mi, &m) != 2 || m != 5) return -1;
        p += 1 + m;
        if (*p == ':') {
            if (sscanf(p + 1, "%2d%n", &sec, &m) != 1 || m != 2) return -1;
            p += 1 + m;
            if (*p == '.') {
                char *e;
                frac = strtod(p, &e);
                p = e;
            }
        }
    }
    long off = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if (*p == '+' || *p == '-') {
        int oh, om, m = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &m) != 2 || m != 5) return -1;
        off = (oh * 60L + om) * 60L * (*p == '-' ? -1 : 1);
        p += 1 + m;
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60) return -1;
    struct tm tm = {.tm_year = y - 1900,
                    .tm_mon = mo - 1,
                    .tm_mday = d,
                    .tm_hour = h,
                    .tm_min = mi,
                    .tm_sec = sec};
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - off) * 1000 + (int64_t)(frac * 1000);
    return 0;
}

/* Rows are grouped into batches (keys.h): up to SCHED_BATCH_ROWS consecutive
 * rows with one due time. CALL_BATCHES batches go to Redis in one ingest.lua
 * call. */
#define CALL_BATCHES 8
#define MAX_CALL_PROVIDERS 64

typedef struct part {
    int pidx;        /* 1-based among the call's providers */
    unsigned long n; /* its rows in the batch */
} part_t;

typedef struct ibatch {
    unsigned long first, last;
    int64_t due;
    int has_due;    /* a good row set the due time */
    unsigned nrows; /* good and rejected */
    buf_t blob;
    part_t parts[MAX_CALL_PROVIDERS];
    size_t nparts;
    buf_t rej; /* rejected rows: "row\0json\0" pairs */
    size_t nrej;
} ibatch_t;

typedef struct call {
    const char *pnames[MAX_CALL_PROVIDERS];
    size_t nprov;
    ibatch_t b[CALL_BATCHES];
    size_t nb; /* closed batches; b[nb] is the open one */
} call_t;

static void call_reset(call_t *c)
{
    for (size_t i = 0; i < CALL_BATCHES; i++) {
        ibatch_t *b = &c->b[i];
        buf_reset(&b->blob);
        buf_reset(&b->rej);
        b->nrows = 0;
        b->nparts = 0;
        b->nrej = 0;
        b->has_due = 0;
    }
    c->nb = 0;
    c->nprov = 0;
}

static int provider_index(call_t *c, const char *name)
{
    for (size_t i = 0; i < c->nprov; i++)
        if (!strcmp(c->pnames[i], name)) return (int)i + 1;
    if (c->nprov == MAX_CALL_PROVIDERS) return -1;
    c->pnames[c->nprov++] = name;
    return (int)c->nprov;
}

static int flush(redisContext *rc_, const char *id, call_t *c, const char *sha,
                 sched_ingest_stats_t *st, char *err, size_t errlen)
{
    size_t nb = c->nb; /* the closed batches, and the open one if it has rows */
    if (nb < CALL_BATCHES && c->b[nb].nrows) nb++;
    if (!nb) return 0;
    /* The results hashes of the call's rows (rows rejected, or cancelled on
     * arrival): its batches are consecutive, so k0..k1. */
    unsigned long k0 = c->b[0].first / SCHED_RES_ROWS, k1 = c->b[nb - 1].last / SCHED_RES_ROWS;
    size_t nkeys = 6 + c->nprov + (size_t)(k1 - k0 + 1);
    char(*keys)[300] = calloc(nkeys, sizeof *keys);
    if (!keys) {
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    snprintf(keys[0], sizeof keys[0], SCHED_KEY_META, id);
    snprintf(keys[1], sizeof keys[1], SCHED_KEY_BATCH, id);
    snprintf(keys[2], sizeof keys[2], SCHED_KEY_COUNT, id);
    snprintf(keys[3], sizeof keys[3], SCHED_KEY_PROVIDERS, id);
    snprintf(keys[4], sizeof keys[4], SCHED_KEY_STATE, id);
    snprintf(keys[5], sizeof keys[5], SCHED_KEY_BATCHES, id);
    for (size_t i = 0; i < c->nprov; i++)
        snprintf(keys[6 + i], sizeof keys[6 + i], SCHED_KEY_DUE, id, c->pnames[i]);
    for (unsigned long k = k0; k <= k1; k++)
        snprintf(keys[6 + c->nprov + (k - k0)], sizeof keys[0], SCHED_KEY_RES, id, k);
    /* Count the arguments, then point them at the batches' memory. */
    size_t argc = 3 + nkeys + 3 + c->nprov;
    for (size_t k = 0; k < nb; k++)
        argc += 5 + 2 * c->b[k].nparts + 2 * c->b[k].nrej;
    const char **argv = calloc(argc, sizeof *argv);
    size_t *lens = calloc(argc, sizeof *lens);
    char(*nums)[24] = calloc(4 + nb * (4 + 2 * MAX_CALL_PROVIDERS), sizeof *nums);
    if (!argv || !lens || !nums) {
        free(keys);
        free(argv);
        free(lens);
        free(nums);
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    size_t n = 0, u = 0;
#define ARG(p, l) (argv[n] = (p), lens[n++] = (l))
#define NUM(fmt, v) (snprintf(nums[u], sizeof nums[u], fmt, v), ARG(nums[u], strlen(nums[u])), u++)
    ARG("EVALSHA", 7);
    ARG(sha, strlen(sha));
    NUM("%zu", nkeys);
    for (size_t i = 0; i < nkeys; i++)
        ARG(keys[i], strlen(keys[i]));
    NUM("%zu", nb);
    NUM("%zu", c->nprov);
    NUM("%lu", k0);
    for (size_t i = 0; i < c->nprov; i++)
        ARG(c->pnames[i], strlen(c->pnames[i]));
    for (size_t k = 0; k < nb; k++) {
        ibatch_t *b = &c->b[k];
        snprintf(nums[u], sizeof nums[u], "%lu-%lu", b->first, b->last);
        ARG(nums[u], strlen(nums[u]));
        u++;
        NUM("%lld", (long long)b->due);
        ARG(b->blob.data ? b->blob.data : "", b->blob.len);
        NUM("%zu", b->nparts);
        for (size_t i = 0; i < b->nparts; i++) {
            NUM("%d", b->parts[i].pidx);
            NUM("%lu", b->parts[i].n);
        }
        NUM("%zu", b->nrej);
        const char *q = b->rej.data;
        for (size_t i = 0; i < 2 * b->nrej; i++) {
            size_t l = strlen(q);
            ARG(q, l);
            q += l + 1;
        }
    }
#undef NUM
#undef ARG
    redisReply *r = redisCommandArgv(rc_, (int)n, argv, lens);
    if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
        freeReplyObject(r);
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = sched_lua_ingest;
        lens[1] = strlen(sched_lua_ingest);
        r = redisCommandArgv(rc_, (int)n, argv, lens);
    }
    int rc = 0;
    if (!r) {
        snprintf(err, errlen, "Redis: %s", rc_->errstr);
        rc = VL_EREDIS;
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "Redis: ingest: %s", r->str);
        rc = VL_EREDIS;
    } else if (r->type == REDIS_REPLY_INTEGER) {
        st->added += (unsigned long)r->integer;
    }
    freeReplyObject(r);
    free(keys);
    free(argv);
    free(lens);
    free(nums);
    call_reset(c);
    return rc;
}

/* Close the open batch; flush the call when it is full. */
static int close_batch(redisContext *rc_, const sched_ingest_opts_t *o, call_t *c, const char *sha,
                       sched_ingest_stats_t *st, char *err, size_t errlen)
{
    if (!c->b[c->nb].nrows) return 0;
    if (++c->nb == CALL_BATCHES) return flush(rc_, o->id, c, sha, st, err, errlen);
    return 0;
}

/* Add one row to the open batch (a new one when the row cannot join it). */
static int add_row(redisContext *rc_, const sched_ingest_opts_t *o, call_t *c, const char *sha,
                   sched_ingest_stats_t *st, const tpl_csv_row_t *row, const char *why, int64_t due,
                   const char *pname, char *err, size_t errlen)
{
    ibatch_t *b = &c->b[c->nb];
    int rc = 0;
    int pidx = 0;
    if (!why[0]) {
        if (b->nrows && b->has_due && b->due != due)
            rc = close_batch(rc_, o, c, sha, st, err, errlen);
        if (!rc && (pidx = provider_index(c, pname)) < 0) {
            /* Too many providers in one call: send what is there first. */
            if (!(rc = close_batch(rc_, o, c, sha, st, err, errlen)) && c->nb)
                rc = flush(rc_, o->id, c, sha, st, err, errlen);
            pidx = provider_index(c, pname);
        }
        if (rc) return rc;
        b = &c->b[c->nb];
    }
    if (!b->nrows) b->first = row->row;
    b->last = row->row;
    b->nrows++;
    if (why[0]) {
        sched_result_t res = {.status = "rejected", .response = why};
        char email[512];
        snprintf(email, sizeof email, "%.*s", (int)row->email.len,
                 row->email.ptr ? row->email.ptr : "");
        res.email = email;
        if ((rc = buf_printf(&b->rej, "%lu", row->row)) || (rc = buf_putc(&b->rej, '\0')) ||
            (rc = sched_result_encode(&b->rej, &res)) || (rc = buf_putc(&b->rej, '\0')))
            goto oom;
        b->nrej++;
    } else {
        b->due = due;
        b->has_due = 1;
        size_t i = 0;
        while (i < b->nparts && b->parts[i].pidx != pidx)
            i++;
        if (i == b->nparts) b->parts[b->nparts++] = (part_t){pidx, 0};
        b->parts[i].n++;
        if ((rc = buf_put_dec(&b->blob, (long long)row->row)) || (rc = buf_putc(&b->blob, '\t')) ||
            (rc = buf_puts(&b->blob, pname)) || (rc = buf_puts(&b->blob, "\t[")))
            goto oom;
        for (size_t f = 0; f < row->nfields && !rc; f++) {
            if (f && (rc = buf_putc(&b->blob, ','))) break;
            rc = sched_json_string(&b->blob, row->fields[f].ptr, row->fields[f].len);
        }
        if (rc || (rc = buf_puts(&b->blob, "]\n"))) goto oom;
    }
    if (b->nrows == SCHED_BATCH_ROWS) return close_batch(rc_, o, c, sha, st, err, errlen);
    return 0;
oom:
    snprintf(err, errlen, rc == VL_ETOOBIG ? "a row is too large" : "out of memory");
    return rc;
}

static int simple(redisContext *c, char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    if (!r || r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "Redis: %s", r ? r->str : c->errstr);
        freeReplyObject(r);
        return VL_EREDIS;
    }
    freeReplyObject(r);
    return 0;
}

/* A campaign without its meta but with other keys of its own: the meta was lost (a Redis
 * restarted without part of its data, an eviction, a hand-made DEL) and what is left
 * cannot be trusted. Ingesting again would send rows that were sent. Nonzero, with err
 * naming the keys, when any is there (or Redis fails: then err says so). */
static int rc_leftover(redisContext *c, const char *id, char *err, size_t errlen)
{
    static const char *const fmts[] = {SCHED_KEY_COUNT, SCHED_KEY_STATE, SCHED_KEY_BATCHES,
                                       SCHED_KEY_LEASE, SCHED_KEY_RETRY};
    enum { N = sizeof fmts / sizeof fmts[0] };
    char keys[N][300];
    const char *argv[1 + N];
    argv[0] = "EXISTS";
    for (size_t i = 0; i < N; i++) {
        snprintf(keys[i], sizeof keys[i], fmts[i], id);
        argv[1 + i] = keys[i];
    }
    redisReply *r = redisCommandArgv(c, 1 + N, argv, NULL);
    if (!r || r->type != REDIS_REPLY_INTEGER) {
        snprintf(err, errlen, "Redis: EXISTS: %s",
                 r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        freeReplyObject(r);
        return -1;
    }
    long long n = r->integer;
    freeReplyObject(r);
    if (n == 0) return 0;
    snprintf(err, errlen,
             "campaign %s has keys in Redis ({c:%s}:count, :state...) but not its meta "
             "({c:%s}:meta): the Redis lost part of it, and sending it again could send rows "
             "twice; remove its keys {c:%s}:* to start over",
             id, id, id, id);
    return -1;
}

int sched_ingest(redisContext *c, const sched_ingest_opts_t *o, sched_ingest_stats_t *st, char *err,
                 size_t errlen)
{
    memset(st, 0, sizeof *st);
    char meta[300];
    snprintf(meta, sizeof meta, SCHED_KEY_META, o->id);
    redisReply *r = redisCommand(c, "HMGET %s ingested created_ms schema rows_in", meta);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 4) {
        snprintf(err, errlen, "Redis: %s", r && r->type == REDIS_REPLY_ERROR ? r->str : c->errstr);
        freeReplyObject(r);
        return VL_EREDIS;
    }
    int done = r->element[0]->str && !strcmp(r->element[0]->str, "1");
    /* Rows up to rows_in are in Redis already (ingest.lua). An earlier ingest
     * may have cut its batches elsewhere (send --limit N, then send): its
     * rows are skipped by number, never added again under another batch. */
    unsigned long rows_in = r->element[3]->str ? strtoul(r->element[3]->str, NULL, 10) : 0;
    /* A campaign begun by a volley that stored rows one by one (before
     * batches) cannot be resumed by this one: say so rather than misread it. */
    if (r->element[1]->str && !(r->element[2]->str && !strcmp(r->element[2]->str, SCHED_SCHEMA))) {
        snprintf(err, errlen,
                 "campaign %s was started by an older volley whose Redis layout this one "
                 "cannot read; finish it with that version, or remove its state (the "
                 "campaign's state directory, or its keys {c:%s}:*) to start over",
                 o->id, o->id);
        freeReplyObject(r);
        return VL_ESTATE;
    }
    int fresh = !r->element[1]->str;
    freeReplyObject(r);
    if (done) {
        st->skipped = 1;
        return 0;
    }
    if (fresh && rc_leftover(c, o->id, err, errlen)) return VL_ESTATE;
    json_t *cols = json_array();
    for (size_t i = 0; i < o->ncolumns; i++)
        json_array_append_new(cols, json_string(o->columns[i]));
    char *cols_json = json_dumps(cols, JSON_COMPACT);
    json_decref(cols);
    char now[32], email_col[16];
    snprintf(now, sizeof now, "%lld", (long long)o->now_ms);
    snprintf(email_col, sizeof email_col, "%d", o->email_col);
    int rc = simple(c, err, errlen, "HSET %s id %s path %s columns %s email_col %s schema %s", meta,
                    o->id, o->path, cols_json ? cols_json : "[]", email_col, SCHED_SCHEMA);
    free(cols_json);
    if (!rc) rc = simple(c, err, errlen, "HSETNX %s state running", meta);
    if (!rc) rc = simple(c, err, errlen, "HSETNX %s created_ms %s", meta, now);
    if (!rc) rc = simple(c, err, errlen, "SADD %s %s", SCHED_KEY_CAMPAIGNS, o->id);
    if (rc) return rc;
    r = redisCommand(c, "SCRIPT LOAD %s", sched_lua_ingest);
    if (!r || r->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "Redis: SCRIPT LOAD: %s", r ? r->str : c->errstr);
        freeReplyObject(r);
        return VL_EREDIS;
    }
    char sha[48];
    snprintf(sha, sizeof sha, "%s", r->str);
    freeReplyObject(r);

    call_t *call = calloc(1, sizeof *call);
    if (!call) {
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    for (size_t i = 0; i < CALL_BATCHES; i++) {
        buf_init(&call->b[i].blob, (size_t)64 << 20);
        buf_init(&call->b[i].rej, (size_t)64 << 20);
    }
    tpl_csv_row_t *row;
    int more;
    while (!rc && (more = o->next(o->ud, &row)) == 1) {
        st->rows++;
        if (row->row <= rows_in) continue;
        char why[512] = "";
        if (row->nerrors) tpl_csv_format_error(&row->errors[0], why, sizeof why);
        int64_t due = o->start_at_ms;
        if (!why[0] && o->send_at_col >= 0 && (size_t)o->send_at_col < row->nfields &&
            row->fields[o->send_at_col].len &&
            sched_parse_time(row->fields[o->send_at_col].ptr, row->fields[o->send_at_col].len,
                             &due))
            snprintf(why, sizeof why, "%s:%lu: column send_at: '%.*s' is not a time", o->path,
                     row->line, (int)row->fields[o->send_at_col].len,
                     row->fields[o->send_at_col].ptr);
        const char *pname = "";
        if (!why[0]) {
            char dom[256];
            size_t dl =
                row->ascii_domain_len < sizeof dom - 1 ? row->ascii_domain_len : sizeof dom - 1;
            memcpy(dom, row->ascii_domain, dl);
            dom[dl] = '\0';
            pname = rl_providers_match(o->providers, dom)->name;
        }
        if (why[0]) {
            st->rejected++;
            if (o->on_reject) o->on_reject(o->ud, row, why);
        }
        rc = add_row(c, o, call, sha, st, row, why, due, pname, err, errlen);
    }
    if (!rc && more < 0) {
        snprintf(err, errlen, "reading the recipients failed");
        rc = VL_EPARSE;
    }
    if (!rc) rc = flush(c, o->id, call, sha, st, err, errlen);
    for (size_t i = 0; i < CALL_BATCHES; i++) {
        buf_free(&call->b[i].blob);
        buf_free(&call->b[i].rej);
    }
    free(call);
    if (!rc && !o->partial) rc = simple(c, err, errlen, "HSET %s ingested 1", meta);
    return rc;
}
