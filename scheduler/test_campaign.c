/* test_campaign.c: scheduler/campaign.h and suppress.h against a real redis-server
 * (redisfix): counts and status, pause, resume and cancel, the results reader and the
 * result decoder. Campaigns are written key by key in the layout of keys.h, as ingest and
 * the worker leave them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "redisfix.h"
#include "scheduler/campaign.h"
#include "scheduler/keys.h"
#include "scheduler/redis.h"
#include "scheduler/result.h"
#include "scheduler/suppress.h"

#define NOW 1700000000000LL

typedef struct fx {
    redisfix_t f;
    redisContext *c;
} fx_t;

static int setup(void **state)
{
    fx_t *x = calloc(1, sizeof *x);
    if (!x || redisfix_start(&x->f) < 0) {
        free(x);
        return -1;
    }
    char err[256];
    x->c = sched_redis_connect_sync(x->f.sock, 5000, err, sizeof err);
    if (!x->c) {
        fprintf(stderr, "connect: %s\n", err);
        redisfix_stop(&x->f);
        free(x);
        return -1;
    }
    *state = x;
    return 0;
}

static int teardown(void **state)
{
    fx_t *x = *state;
    redisFree(x->c);
    redisfix_stop(&x->f);
    free(x);
    return 0;
}

/* Run a command (printf-like) and expect no error reply. */
static void cmd(redisContext *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = redisvCommand(c, fmt, ap);
    va_end(ap);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("%s: %s", fmt, r->str);
    freeReplyObject(r);
}

static char *hget(redisContext *c, const char *key, const char *field)
{
    redisReply *r = redisCommand(c, "HGET %s %s", key, field);
    assert_non_null(r);
    char *v = r->type == REDIS_REPLY_STRING ? strdup(r->str) : NULL;
    freeReplyObject(r);
    return v;
}

/* A key of campaign id in dst (an array), from keys.h's format. */
#define key(dst, n, fmt, id) snprintf(dst, n, fmt, id)

/* A stored result of status st for addr at provider prov. */
static void result(buf_t *b, const char *st, const char *addr, const char *prov, long long code,
                   const char *resp)
{
    sched_result_t r = {.email = addr,
                        .provider = prov,
                        .status = st,
                        .attempts = code ? 1 : 0,
                        .code = code,
                        .enhanced = code ? "2.0.0" : "",
                        .response = resp,
                        .host = code ? "mx.example" : "",
                        .first_ms = code ? NOW - 5000 : 0,
                        .last_ms = code ? NOW - 4000 : 0};
    buf_reset(b);
    assert_int_equal(sched_result_encode(b, &r), 0);
}

/* Campaign id: rows 1..5. Batch 1-4 holds rows 1, 2 (provider gmail) and 3, 4
 * (yahoo); row 5 was rejected at ingest. Row 1 was delivered (a group field), the
 * others wait: gmail's part "1-4/2" is due now (given back after a stop, so it still
 * names row 1), yahoo's later. gmail is suspended and has a learned limit. */
static void make_campaign(redisContext *c, const char *id)
{
    char k[256], k2[256];
    buf_t b;
    buf_init(&b, 1 << 16);
    key(k, sizeof k, SCHED_KEY_META, id);
    cmd(c,
        "HSET %s id %s schema %s state running email_col 1 ingested 1 total 5 created_ms %lld "
        "started_ms %lld",
        k, id, SCHED_SCHEMA, NOW - 10000, NOW - 9000);
    key(k, sizeof k, SCHED_KEY_BATCH, id);
    cmd(c, "HSET %s 1-4 %s", k,
        "1\tgmail\t[\"Ann\",\"a@gmail.com\"]\n2\tgmail\t[\"Bob\",\"b@gmail.com\"]\n"
        "3\tyahoo\t[\"Cy\",\"c@yahoo.com\"]\n4\tyahoo\t[\"Di\",\"d\\u00e9@yahoo.com\"]\n");
    key(k, sizeof k, SCHED_KEY_BATCHES, id);
    cmd(c, "ZADD %s 1 1-4", k);
    key(k, sizeof k, SCHED_KEY_STATE, id);
    cmd(c, "BITFIELD %s SET u2 #1 2 SET u2 #5 2", k);
    snprintf(k, sizeof k, SCHED_KEY_RES, id, 0UL);
    result(&b, "delivered", "a@gmail.com", "gmail", 250, "ok\tqueued");
    cmd(c, "HSET %s g1 1\t%s\n", k, b.data);
    result(&b, "rejected", "bad", "", 0, "not an address");
    cmd(c, "HSET %s 5 %s", k, b.data);
    key(k, sizeof k, SCHED_KEY_COUNT, id);
    cmd(c, "HSET %s total 5 delivered 1 rejected 1 final 2 attempts 1 deferred 0", k);
    key(k, sizeof k, SCHED_KEY_PROVIDERS, id);
    cmd(c, "SADD %s gmail yahoo", k);
    snprintf(k, sizeof k, SCHED_KEY_DUE, id, "gmail");
    cmd(c, "ZADD %s %lld 1-4/2", k, NOW - 1);
    snprintf(k, sizeof k, SCHED_KEY_DUE, id, "yahoo");
    cmd(c, "ZADD %s %lld 1-4/2", k, NOW + 3600000);
    snprintf(k2, sizeof k2, SCHED_KEY_P_SUSPEND, "gmail");
    cmd(c, "HSET %s until %lld reason %s", k2, NOW + 60000, "421 try later");
    snprintf(k2, sizeof k2, SCHED_KEY_P_LEARNED, "gmail");
    cmd(c, "HSET %s connections 3", k2);
    buf_free(&b);
}

static void test_info_and_counts(void **state)
{
    fx_t *x = *state;
    char err[256];
    make_campaign(x->c, "ic");
    assert_int_equal(sched_campaign_exists(x->c, "ic", err, sizeof err), 1);
    assert_int_equal(sched_campaign_exists(x->c, "nope", err, sizeof err), 0);

    sched_campaign_info_t m;
    assert_int_equal(sched_campaign_info(x->c, "ic", &m, err, sizeof err), 0);
    assert_string_equal(m.state, "running");
    assert_int_equal(m.total, 5);
    assert_int_equal(m.ingested, 1);
    assert_int_equal(m.email_col, 1);
    assert_int_equal(m.created_ms, NOW - 10000);
    assert_int_equal(m.finished_ms, 0);
    assert_int_equal(m.schema_ok, 1);
    assert_string_equal(m.stop_reason, "");
    assert_int_equal(sched_campaign_info(x->c, "nope", &m, err, sizeof err), VL_ENOENT);
    assert_non_null(strstr(err, "unknown campaign 'nope'"));

    sched_counts_t n;
    assert_int_equal(sched_campaign_counts(x->c, "ic", &n, err, sizeof err), 0);
    assert_int_equal(n.n[SCHED_ST_DELIVERED], 1);
    assert_int_equal(n.n[SCHED_ST_REJECTED], 1);
    assert_int_equal(n.n[SCHED_ST_CANCELLED], 0);
    assert_int_equal(n.final, 2);
    assert_int_equal(n.attempts, 1);
    assert_int_equal(sched_campaign_counts(x->c, "nope", &n, err, sizeof err), 0);
    assert_int_equal(n.final, 0);

    /* A wrong key type is an error reply, not a crash or zeros. */
    cmd(x->c, "SET {c:wrong}:count x");
    assert_int_equal(sched_campaign_counts(x->c, "wrong", &n, err, sizeof err), VL_EREDIS);
    assert_non_null(strstr(err, "Redis: HGETALL count: WRONGTYPE"));
}

static void test_status(void **state)
{
    fx_t *x = *state;
    char err[256];
    make_campaign(x->c, "st");
    /* gmail's part leased to a worker as well: only row 2 of it is still to send. */
    cmd(x->c, "ZADD {c:st}:lease %lld 1-4/2|gmail", NOW + 30000);
    sched_campaign_status_t s;
    assert_int_equal(sched_campaign_status(x->c, "st", NOW, &s, err, sizeof err), 0);
    assert_string_equal(s.info.state, "running");
    assert_int_equal(s.counts.final, 2);
    assert_int_equal(s.pending, 3); /* row 2 (gmail, row 1 is final), rows 3 and 4 */
    assert_int_equal(s.due_now, 1);
    assert_int_equal(s.leased, 1);
    assert_int_equal(s.nproviders, 2);
    for (size_t i = 0; i < s.nproviders; i++) {
        const sched_provider_status_t *p = &s.providers[i];
        if (!strcmp(p->name, "gmail")) {
            assert_int_equal(p->due_now, 1);
            assert_int_equal(p->later, 0);
            assert_int_equal(p->suspended_until_ms, NOW + 60000);
            assert_string_equal(p->suspend_reason, "421 try later");
            assert_int_equal(p->nlearned, 1);
            assert_string_equal(p->learned[0].name, "connections");
            assert_string_equal(p->learned[0].value, "3");
        } else {
            assert_string_equal(p->name, "yahoo");
            assert_int_equal(p->due_now, 0);
            assert_int_equal(p->later, 2);
            assert_int_equal(p->suspended_until_ms, 0);
            assert_null(p->suspend_reason);
            assert_int_equal(p->nlearned, 0);
        }
    }
    sched_campaign_status_free(&s);
    assert_int_equal(s.nproviders, 0);

    /* A suspension that has run out is not shown. */
    assert_int_equal(sched_campaign_status(x->c, "st", NOW + 120000, &s, err, sizeof err), 0);
    for (size_t i = 0; i < s.nproviders; i++)
        assert_int_equal(s.providers[i].suspended_until_ms, 0);
    assert_int_equal(s.due_now, 1); /* yahoo's part is due in an hour */
    sched_campaign_status_free(&s);

    assert_int_equal(sched_campaign_status(x->c, "nope", NOW, &s, err, sizeof err), VL_ENOENT);
    sched_campaign_status_free(&s);
}

static void test_pause_resume(void **state)
{
    fx_t *x = *state;
    char err[256], was[32];
    make_campaign(x->c, "pr");
    assert_int_equal(sched_campaign_set_state(x->c, "pr", SCHED_CAMPAIGN_PAUSED, was, sizeof was,
                                              err, sizeof err),
                     0);
    assert_string_equal(was, "running");
    char *st = hget(x->c, "{c:pr}:meta", "state");
    assert_string_equal(st, "paused");
    free(st);
    assert_int_equal(sched_campaign_set_state(x->c, "pr", SCHED_CAMPAIGN_PAUSED, was, sizeof was,
                                              err, sizeof err),
                     0);
    assert_string_equal(was, "paused");
    assert_int_equal(sched_campaign_set_state(x->c, "pr", SCHED_CAMPAIGN_RUNNING, was, sizeof was,
                                              err, sizeof err),
                     0);
    assert_string_equal(was, "paused");
    st = hget(x->c, "{c:pr}:meta", "state");
    assert_string_equal(st, "running");
    free(st);

    /* A campaign that is done stays done. */
    cmd(x->c, "HSET {c:pr}:meta state done");
    assert_int_equal(sched_campaign_set_state(x->c, "pr", SCHED_CAMPAIGN_PAUSED, was, sizeof was,
                                              err, sizeof err),
                     VL_ESTATE);
    assert_string_equal(was, "done");
    assert_non_null(strstr(err, "campaign pr is done; its state cannot change any more"));
    st = hget(x->c, "{c:pr}:meta", "state");
    assert_string_equal(st, "done");
    free(st);
    long long n = -1;
    assert_int_equal(
        sched_campaign_cancel(x->c, "pr", NOW, &n, NULL, was, sizeof was, err, sizeof err),
        VL_ESTATE);
    assert_int_equal(n, 0);
}

static void test_cancel(void **state)
{
    fx_t *x = *state;
    char err[256], was[32];
    make_campaign(x->c, "cx");
    /* Row 4 was deferred once: it waits on its own, with its result so far. */
    cmd(x->c, "ZREM {c:cx}:due:yahoo 1-4/2");
    cmd(x->c, "ZADD {c:cx}:due:yahoo %lld 1-4/1 %lld 1-4:4", NOW, NOW + 1000);
    cmd(x->c, "BITFIELD {c:cx}:state SET u2 #4 1");
    buf_t b;
    buf_init(&b, 4096);
    result(&b, "deferred", "dé@yahoo.com", "yahoo", 451, "greylisted");
    cmd(x->c, "HSET {c:cx}:retry 4 %s", b.data);

    long long cancelled = -1, leased = -1;
    assert_int_equal(sched_campaign_cancel(x->c, "cx", NOW, &cancelled, &leased, was, sizeof was,
                                           err, sizeof err),
                     0);
    assert_string_equal(was, "running");
    assert_int_equal(cancelled, 3);
    assert_int_equal(leased, 0);
    sched_counts_t n;
    assert_int_equal(sched_campaign_counts(x->c, "cx", &n, err, sizeof err), 0);
    assert_int_equal(n.n[SCHED_ST_CANCELLED], 3);
    assert_int_equal(n.final, 5);
    char *v = hget(x->c, "{c:cx}:meta", "state");
    assert_string_equal(v, "cancelled");
    free(v);
    v = hget(x->c, "{c:cx}:meta", "finished_ms");
    assert_non_null(v);
    assert_int_equal(atoll(v), NOW);
    free(v);
    v = hget(x->c, "{c:cx}:retry", "4");
    assert_null(v);

    /* The rows read back cancelled: a new result for rows 2 and 3, row 4's kept. */
    sched_row_t r;
    sched_row_init(&r);
    v = hget(x->c, "{c:cx}:res:0", "3");
    assert_non_null(v);
    assert_int_equal(sched_row_decode(&r, v, strlen(v)), 0);
    assert_int_equal(r.status, SCHED_ST_CANCELLED);
    assert_string_equal(r.email.data, "c@yahoo.com");
    assert_string_equal(r.provider.data, "yahoo");
    assert_int_equal(r.attempts, 0);
    free(v);
    v = hget(x->c, "{c:cx}:res:0", "4");
    assert_non_null(v);
    assert_int_equal(sched_row_decode(&r, v, strlen(v)), 0);
    assert_int_equal(r.status, SCHED_ST_CANCELLED);
    assert_int_equal(r.code, 451);
    assert_string_equal(r.response.data, "greylisted");
    free(v);
    sched_row_free(&r);

    /* Cancelled stays cancelled; cancelling again finds nothing left. */
    assert_int_equal(sched_campaign_set_state(x->c, "cx", SCHED_CAMPAIGN_RUNNING, was, sizeof was,
                                              err, sizeof err),
                     VL_ESTATE);
    assert_string_equal(was, "cancelled");
    assert_int_equal(sched_campaign_cancel(x->c, "cx", NOW + 5, &cancelled, &leased, was,
                                           sizeof was, err, sizeof err),
                     0);
    assert_int_equal(cancelled, 0);
    v = hget(x->c, "{c:cx}:meta", "finished_ms");
    assert_int_equal(atoll(v), NOW); /* not moved */
    free(v);
    buf_free(&b);
}

/* Read every row of campaign id; returns how many, the last kept in rows[]. */
static size_t read_all(redisContext *c, const char *id, sched_row_t *rows, size_t max)
{
    char err[256];
    sched_results_t *it;
    sched_campaign_info_t m;
    assert_int_equal(sched_results_open(&it, c, id, &m, err, sizeof err), 0);
    const sched_row_t *r;
    size_t n = 0;
    int rc;
    while ((rc = sched_results_next(it, &r, err, sizeof err)) == 1) {
        assert_int_equal(r->row, n + 1);
        if (n < max) {
            sched_row_t *d = &rows[n];
            d->row = r->row;
            d->status = r->status;
            d->attempts = r->attempts;
            d->code = r->code;
            d->first_ms = r->first_ms;
            d->last_ms = r->last_ms;
            buf_reset(&d->email);
            buf_reset(&d->provider);
            buf_reset(&d->response);
            assert_int_equal(
                buf_append(&d->email, r->email.data ? r->email.data : "", r->email.len), 0);
            assert_int_equal(
                buf_append(&d->provider, r->provider.data ? r->provider.data : "", r->provider.len),
                0);
            assert_int_equal(
                buf_append(&d->response, r->response.data ? r->response.data : "", r->response.len),
                0);
        }
        n++;
    }
    assert_int_equal(rc, 0);
    assert_int_equal(sched_results_next(it, &r, err, sizeof err), 0);
    sched_results_close(it);
    return n;
}

static void test_results(void **state)
{
    fx_t *x = *state;
    char err[256];
    make_campaign(x->c, "rs");
    /* Row 2 also has a field of its own: it wins over a group's line. */
    cmd(x->c, "HSET {c:rs}:res:0 g2 %s", "2\tdelivered\t1\t250\t\t0\t0\t\tgmail\tOLD\tstale\n");
    buf_t b;
    buf_init(&b, 4096);
    result(&b, "bounced", "b@gmail.com", "gmail", 550, "no such user");
    cmd(x->c, "HSET {c:rs}:res:0 2 %s", b.data);
    buf_free(&b);

    sched_row_t rows[8];
    for (int i = 0; i < 8; i++)
        sched_row_init(&rows[i]);
    assert_int_equal(read_all(x->c, "rs", rows, 8), 5);
    assert_int_equal(rows[0].status, SCHED_ST_DELIVERED);
    assert_string_equal(rows[0].email.data, "a@gmail.com");
    assert_string_equal(rows[0].response.data, "ok\tqueued");
    assert_int_equal(rows[0].code, 250);
    assert_int_equal(rows[0].first_ms, NOW - 5000);
    assert_int_equal(rows[1].status, SCHED_ST_BOUNCED);
    assert_int_equal(rows[1].code, 550);
    /* Rows not tried yet: pending, with address and provider from their batch. */
    assert_int_equal(rows[2].status, SCHED_ST_PENDING);
    assert_string_equal(rows[2].email.data, "c@yahoo.com");
    assert_string_equal(rows[2].provider.data, "yahoo");
    assert_int_equal(rows[3].status, SCHED_ST_PENDING);
    assert_string_equal(rows[3].email.data, "d\xc3\xa9@yahoo.com");
    assert_int_equal(rows[3].attempts, 0);
    assert_int_equal(rows[4].status, SCHED_ST_REJECTED);
    assert_string_equal(rows[4].response.data, "not an address");

    /* A result that cannot be read is a row saying so, not the end of the report. */
    cmd(x->c, "HSET {c:rs}:res:0 3 garbage");
    assert_int_equal(read_all(x->c, "rs", rows, 8), 5);
    assert_int_equal(rows[2].status, SCHED_ST_UNKNOWN);
    assert_string_equal(rows[2].response.data, "(unreadable result in Redis)");
    assert_int_equal(rows[3].status, SCHED_ST_PENDING);

    /* Other layouts are refused, unknown campaigns too. */
    sched_results_t *it = NULL;
    cmd(x->c, "HSET {c:rs}:meta schema 3");
    assert_int_equal(sched_results_open(&it, x->c, "rs", NULL, err, sizeof err), VL_ESTATE);
    assert_null(it);
    assert_non_null(strstr(err, "older volley"));
    assert_int_equal(sched_results_open(&it, x->c, "nope", NULL, err, sizeof err), VL_ENOENT);
    for (int i = 0; i < 8; i++)
        sched_row_free(&rows[i]);
}

/* Many results hashes, most rows pending and without a batch (not ingested yet): rows
 * come in order across hashes read ahead, and closing early leaves the connection
 * usable. */
static void test_results_many(void **state)
{
    fx_t *x = *state;
    char err[256];
    enum { TOTAL = 5000 };
    cmd(x->c, "HSET {c:big}:meta schema %s state running email_col 0 ingested 0 total %d",
        SCHED_SCHEMA, TOTAL);
    buf_t b;
    buf_init(&b, 4096);
    for (unsigned long row = 7; row <= TOTAL; row += 97) {
        result(&b, row % 2 ? "failed" : "delivered", "x@y.z", "p", row % 2 ? 554 : 250, "r");
        cmd(x->c, "HSET {c:big}:res:%lu %lu %s", row / SCHED_RES_ROWS, row, b.data);
    }
    buf_free(&b);
    sched_results_t *it;
    assert_int_equal(sched_results_open(&it, x->c, "big", NULL, err, sizeof err), 0);
    const sched_row_t *r;
    unsigned long n = 0, tried = 0;
    while (sched_results_next(it, &r, err, sizeof err) == 1) {
        n++;
        assert_int_equal(r->row, n);
        if (n >= 7 && (n - 7) % 97 == 0) {
            tried++;
            assert_int_equal(r->status, n % 2 ? SCHED_ST_FAILED : SCHED_ST_DELIVERED);
        } else {
            assert_int_equal(r->status, SCHED_ST_PENDING);
            assert_int_equal(r->email.len, 0);
        }
    }
    assert_int_equal(n, TOTAL);
    assert_int_equal(tried, (TOTAL - 7) / 97 + 1);
    sched_results_close(it);

    /* Closed after a few rows with hashes still asked for. */
    assert_int_equal(sched_results_open(&it, x->c, "big", NULL, err, sizeof err), 0);
    for (int i = 0; i < 3; i++)
        assert_int_equal(sched_results_next(it, &r, err, sizeof err), 1);
    sched_results_close(it);
    redisReply *p = redisCommand(x->c, "PING");
    assert_non_null(p);
    assert_string_equal(p->str, "PONG");
    freeReplyObject(p);
}

static void test_decode(void **state)
{
    (void)state;
    sched_row_t r;
    sched_row_init(&r);
    buf_t b;
    buf_init(&b, 1 << 16);
    sched_result_t in = {.email = "a\\b@x",
                         .provider = "prov",
                         .status = "deferred",
                         .attempts = 3,
                         .code = 451,
                         .enhanced = "4.7.1",
                         .response = "line1\r\nline2\ttab",
                         .host = "mx1",
                         .first_ms = 10,
                         .last_ms = 20};
    assert_int_equal(sched_result_encode(&b, &in), 0);
    r.row = 9;
    assert_int_equal(sched_row_decode(&r, b.data, b.len), 0);
    assert_int_equal(r.row, 9);
    assert_int_equal(r.status, SCHED_ST_DEFERRED);
    assert_int_equal(r.attempts, 3);
    assert_int_equal(r.code, 451);
    assert_int_equal(r.first_ms, 10);
    assert_int_equal(r.last_ms, 20);
    assert_string_equal(r.email.data, "a\\b@x");
    assert_string_equal(r.provider.data, "prov");
    assert_string_equal(r.enhanced.data, "4.7.1");
    assert_string_equal(r.response.data, "line1\r\nline2\ttab");
    assert_string_equal(r.host.data, "mx1");

    /* Every status name maps to its enum and back. */
    for (int s = 0; s < SCHED_ST_UNKNOWN; s++) {
        const char *name = sched_status_name((sched_status_t)s);
        assert_int_equal(sched_status_parse(name, strlen(name)), s);
    }
    assert_string_equal(sched_status_name(SCHED_ST_UNKNOWN), "unknown");
    assert_string_equal(sched_status_name((sched_status_t)99), "unknown");
    assert_int_equal(sched_status_parse("deliver", 7), SCHED_ST_UNKNOWN);

    /* A status this volley does not know. */
    const char odd[] = "teleported\t1\t250\t\t1\t2\t\tp\te\tr";
    assert_int_equal(sched_row_decode(&r, odd, strlen(odd)), 0);
    assert_int_equal(r.status, SCHED_ST_UNKNOWN);
    assert_string_equal(r.email.data, "e");

    /* Not a result: too few columns, a bad number; r is left empty. */
    const char *bad[] = {"delivered\t1\t250", "delivered\tx\t250\t\t1\t2\t\tp\te\tr", ""};
    for (size_t i = 0; i < 3; i++) {
        assert_int_equal(sched_row_decode(&r, bad[i], strlen(bad[i])), VL_EPARSE);
        assert_int_equal(r.status, SCHED_ST_UNKNOWN);
        assert_int_equal(r.email.len, 0);
        assert_int_equal(r.code, 0);
    }

    /* A response past SCHED_ROW_TEXT_MAX is not an error, and not kept whole. */
    char *big = malloc(SCHED_ROW_TEXT_MAX * 2 + 1);
    memset(big, 'x', SCHED_ROW_TEXT_MAX * 2);
    big[SCHED_ROW_TEXT_MAX * 2] = '\0';
    in.response = big;
    buf_reset(&b);
    assert_int_equal(sched_result_encode(&b, &in), 0);
    assert_int_equal(sched_row_decode(&r, b.data, b.len), 0);
    assert_true(r.response.len <= SCHED_ROW_TEXT_MAX);
    assert_string_equal(r.host.data, "mx1");
    free(big);
    buf_free(&b);
    sched_row_free(&r);
}

static int collect(const char *addr, void *ud)
{
    int *n = ud;
    (*n)++;
    return strcmp(addr, "stop@x.y") ? 0 : 7;
}

static void test_suppress(void **state)
{
    fx_t *x = *state;
    char err[256];
    const char *a[] = {"One@Example.COM", "two@example.com", "one@example.com"};
    long long added = -1;
    assert_int_equal(sched_suppress_add(x->c, a, 3, &added, err, sizeof err), 0);
    assert_int_equal(added, 2);
    assert_int_equal(sched_suppress_has(x->c, "ONE@example.com", err, sizeof err), 1);
    assert_int_equal(sched_suppress_has(x->c, "three@example.com", err, sizeof err), 0);
    int n = 0;
    assert_int_equal(sched_suppress_list(x->c, collect, &n, err, sizeof err), 0);
    assert_int_equal(n, 2);
    const char *s[] = {"stop@x.y"};
    assert_int_equal(sched_suppress_add(x->c, s, 1, &added, err, sizeof err), 0);
    n = 0;
    assert_int_equal(sched_suppress_list(x->c, collect, &n, err, sizeof err), 7);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info_and_counts), cmocka_unit_test(test_status),
        cmocka_unit_test(test_pause_resume),    cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_results),         cmocka_unit_test(test_results_many),
        cmocka_unit_test(test_decode),          cmocka_unit_test(test_suppress),
    };
    return cmocka_run_group_tests_name("sched_campaign", tests, setup, teardown);
}
