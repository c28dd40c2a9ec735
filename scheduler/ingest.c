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

#define BATCH 500
#define MAX_BATCH_PROVIDERS 64

int sched_parse_time(const char *s, size_t len, int64_t *ms)
{
    char buf[64];
    while (len && isspace((unsigned char)*s))
        s++, len--;
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (!len || len >= sizeof buf)
        return -1;
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
    if (sscanf(buf, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3 || n != 10)
        return -1;
    const char *p = buf + 10;
    double frac = 0;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        int m = 0;
        if (sscanf(p + 1, "%2d:%2d%n", &h, &mi, &m) != 2 || m != 5)
            return -1;
        p += 1 + m;
        if (*p == ':') {
            if (sscanf(p + 1, "%2d%n", &sec, &m) != 1 || m != 2)
                return -1;
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
        if (sscanf(p + 1, "%2d:%2d%n", &oh, &om, &m) != 2 || m != 5)
            return -1;
        off = (oh * 60L + om) * 60L * (*p == '-' ? -1 : 1);
        p += 1 + m;
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d,
                    .tm_hour = h, .tm_min = mi, .tm_sec = sec};
    time_t t = timegm(&tm);
    *ms = ((int64_t)t - off) * 1000 + (int64_t)(frac * 1000);
    return 0;
}

/* One batch of arguments for ingest.lua, kept as owned strings. */
typedef struct batch {
    char *argv[8 + MAX_BATCH_PROVIDERS * 2 + BATCH * 7];
    size_t argvlen[8 + MAX_BATCH_PROVIDERS * 2 + BATCH * 7];
    const char *pnames[MAX_BATCH_PROVIDERS];
    size_t nprov;
    char *rowargs[BATCH * 7];
    size_t rowlens[BATCH * 7];
    size_t nrows;
} batch_t;

static void batch_clear(batch_t *b)
{
    for (size_t i = 0; i < b->nrows * 7; i++)
        free(b->rowargs[i]);
    b->nrows = 0;
    b->nprov = 0;
}

static int provider_index(batch_t *b, const char *name)
{
    for (size_t i = 0; i < b->nprov; i++)
        if (!strcmp(b->pnames[i], name))
            return (int)i + 1;
    if (b->nprov == MAX_BATCH_PROVIDERS)
        return -1;
    b->pnames[b->nprov++] = name;
    return (int)b->nprov;
}

static char *dupn(const char *s, size_t n)
{
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

static int flush(redisContext *c, const char *id, batch_t *b, const char *sha,
                 sched_ingest_stats_t *st, char *err, size_t errlen)
{
    if (!b->nrows)
        return 0;
    char keys[5 + MAX_BATCH_PROVIDERS][300];
    snprintf(keys[0], sizeof keys[0], SCHED_KEY_META, id);
    snprintf(keys[1], sizeof keys[1], SCHED_KEY_ROW, id);
    snprintf(keys[2], sizeof keys[2], SCHED_KEY_RES, id);
    snprintf(keys[3], sizeof keys[3], SCHED_KEY_COUNT, id);
    snprintf(keys[4], sizeof keys[4], SCHED_KEY_PROVIDERS, id);
    for (size_t i = 0; i < b->nprov; i++)
        snprintf(keys[5 + i], sizeof keys[5 + i], SCHED_KEY_DUE, id, b->pnames[i]);
    size_t nkeys = 5 + b->nprov, n = 0;
    char nk[16], nr[16];
    snprintf(nk, sizeof nk, "%zu", nkeys);
    snprintf(nr, sizeof nr, "%zu", b->nrows);
    const char **argv = (const char **)b->argv;
    size_t *lens = b->argvlen;
    argv[n] = "EVALSHA", lens[n++] = 7;
    argv[n] = sha, lens[n++] = strlen(sha);
    argv[n] = nk, lens[n++] = strlen(nk);
    for (size_t i = 0; i < nkeys; i++)
        argv[n] = keys[i], lens[n++] = strlen(keys[i]);
    argv[n] = nr, lens[n++] = strlen(nr);
    for (size_t i = 0; i < b->nprov; i++)
        argv[n] = b->pnames[i], lens[n++] = strlen(b->pnames[i]);
    for (size_t i = 0; i < b->nrows * 7; i++)
        argv[n] = b->rowargs[i], lens[n++] = b->rowlens[i];
    redisReply *r = redisCommandArgv(c, (int)n, argv, lens);
    if (r && r->type == REDIS_REPLY_ERROR && !strncmp(r->str, "NOSCRIPT", 8)) {
        freeReplyObject(r);
        argv[0] = "EVAL";
        lens[0] = 4;
        argv[1] = sched_lua_ingest;
        lens[1] = strlen(sched_lua_ingest);
        r = redisCommandArgv(c, (int)n, argv, lens);
    }
    int rc = 0;
    if (!r) {
        snprintf(err, errlen, "Redis: %s", c->errstr);
        rc = VL_EREDIS;
    } else if (r->type == REDIS_REPLY_ERROR) {
        snprintf(err, errlen, "Redis: ingest: %s", r->str);
        rc = VL_EREDIS;
    } else if (r->type == REDIS_REPLY_INTEGER) {
        st->added += (unsigned long)r->integer;
    }
    freeReplyObject(r);
    batch_clear(b);
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

int sched_ingest(redisContext *c, const sched_ingest_opts_t *o, sched_ingest_stats_t *st,
                 char *err, size_t errlen)
{
    memset(st, 0, sizeof *st);
    char meta[300];
    snprintf(meta, sizeof meta, SCHED_KEY_META, o->id);
    redisReply *r = redisCommand(c, "HGET %s ingested", meta);
    if (!r) {
        snprintf(err, errlen, "Redis: %s", c->errstr);
        return VL_EREDIS;
    }
    int done = r->type == REDIS_REPLY_STRING && !strcmp(r->str, "1");
    freeReplyObject(r);
    if (done) {
        st->skipped = 1;
        return 0;
    }
    json_t *cols = json_array();
    for (size_t i = 0; i < o->ncolumns; i++)
        json_array_append_new(cols, json_string(o->columns[i]));
    char *cols_json = json_dumps(cols, JSON_COMPACT);
    json_decref(cols);
    char now[32], email_col[16];
    snprintf(now, sizeof now, "%lld", (long long)o->now_ms);
    snprintf(email_col, sizeof email_col, "%d", o->email_col);
    int rc = simple(c, err, errlen, "HSET %s id %s path %s columns %s email_col %s", meta, o->id,
                    o->path, cols_json ? cols_json : "[]", email_col);
    free(cols_json);
    if (!rc)
        rc = simple(c, err, errlen, "HSETNX %s state running", meta);
    if (!rc)
        rc = simple(c, err, errlen, "HSETNX %s created_ms %s", meta, now);
    if (!rc)
        rc = simple(c, err, errlen, "SADD %s %s", SCHED_KEY_CAMPAIGNS, o->id);
    if (rc)
        return rc;
    r = redisCommand(c, "SCRIPT LOAD %s", sched_lua_ingest);
    if (!r || r->type != REDIS_REPLY_STRING) {
        snprintf(err, errlen, "Redis: SCRIPT LOAD: %s", r ? r->str : c->errstr);
        freeReplyObject(r);
        return VL_EREDIS;
    }
    char sha[48];
    snprintf(sha, sizeof sha, "%s", r->str);
    freeReplyObject(r);

    batch_t *b = calloc(1, sizeof *b);
    if (!b) {
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    tpl_csv_row_t *row;
    int more;
    while (!rc && (more = o->next(o->ud, &row)) == 1) {
        st->rows++;
        char why[512] = "";
        if (row->nerrors)
            tpl_csv_format_error(&row->errors[0], why, sizeof why);
        int64_t due = o->start_at_ms;
        if (!why[0] && o->send_at_col >= 0 && (size_t)o->send_at_col < row->nfields &&
            row->fields[o->send_at_col].len &&
            sched_parse_time(row->fields[o->send_at_col].ptr, row->fields[o->send_at_col].len,
                             &due))
            snprintf(why, sizeof why, "%s:%lu: column send_at: '%.*s' is not a time",
                     o->path, row->line, (int)row->fields[o->send_at_col].len,
                     row->fields[o->send_at_col].ptr);
        const char *pname = "";
        int pidx = 0;
        if (!why[0]) {
            char dom[256];
            size_t dl = row->ascii_domain_len < sizeof dom - 1 ? row->ascii_domain_len
                                                              : sizeof dom - 1;
            memcpy(dom, row->ascii_domain, dl);
            dom[dl] = '\0';
            pname = rl_providers_match(o->providers, dom)->name;
            pidx = provider_index(b, pname);
            if (pidx < 0) { /* too many providers in one batch: flush first */
                rc = flush(c, o->id, b, sha, st, err, errlen);
                pidx = provider_index(b, pname);
            }
        }
        if (why[0]) {
            st->rejected++;
            if (o->on_reject)
                o->on_reject(o->ud, row, why);
        }
        json_t *fields = json_array();
        if (!why[0])
            for (size_t i = 0; i < row->nfields; i++)
                json_array_append_new(fields,
                                      json_stringn(row->fields[i].ptr, row->fields[i].len));
        char *fj = json_dumps(fields, JSON_COMPACT);
        json_decref(fields);
        char tmp[3][32];
        snprintf(tmp[0], sizeof tmp[0], "%lu", row->row);
        snprintf(tmp[1], sizeof tmp[1], "%d", pidx);
        snprintf(tmp[2], sizeof tmp[2], "%lld", (long long)due);
        size_t k = b->nrows * 7;
        const char *vals[7] = {tmp[0], tmp[1], tmp[2], fj ? fj : "[]", NULL,
                               why[0] ? "rejected" : "pending", why};
        size_t lens[7];
        for (int i = 0; i < 7; i++)
            lens[i] = vals[i] ? strlen(vals[i]) : 0;
        for (int i = 0; i < 7; i++) {
            if (i == 4) {
                b->rowargs[k + 4] = dupn(row->email.ptr ? row->email.ptr : "", row->email.len);
                b->rowlens[k + 4] = row->email.len;
            } else {
                b->rowargs[k + i] = dupn(vals[i], lens[i]);
                b->rowlens[k + i] = lens[i];
            }
        }
        free(fj);
        b->nrows++;
        if (b->nrows == BATCH)
            rc = flush(c, o->id, b, sha, st, err, errlen);
    }
    if (!rc && more < 0) {
        snprintf(err, errlen, "reading the recipients failed");
        rc = VL_EPARSE;
    }
    if (!rc)
        rc = flush(c, o->id, b, sha, st, err, errlen);
    batch_clear(b);
    free(b);
    if (!rc && !o->partial)
        rc = simple(c, err, errlen, "HSET %s ingested 1", meta);
    return rc;
}
