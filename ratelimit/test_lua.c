/* The Redis twins of the C arithmetic, run on a private redis-server: gcra.lua and
 * quota.lua must give the same answers as rl_gcra_take and rl_quota_take on the same
 * inputs; slots.lua and suspend.lua are checked against their documented behaviour. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/hiredis.h>

#include "ratelimit/gcra.h"
#include "ratelimit/lua.h"
#include "ratelimit/quota.h"
#include "redisfix.h"

typedef struct fx {
    redisfix_t rf;
    redisContext *c;
    uint64_t now; /* simulated clock: starts at the real time so key expiries lie ahead */
} fx_t;

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    if (!f || redisfix_start(&f->rf) != 0) return -1;
    f->c = redisConnectUnix(f->rf.sock);
    if (!f->c || f->c->err) return -1;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    f->now = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    if (f->c) redisFree(f->c);
    redisfix_stop(&f->rf);
    free(f);
    return 0;
}

/* EVAL script with keys and args (NULL-terminated lists); the reply is the caller's. */
static redisReply *eval(redisContext *c, const char *script, const char *const *keys,
                        const char *const *args)
{
    const char *argv[32];
    size_t n = 0, nk = 0;
    char nkeys[24];
    argv[n++] = "EVAL";
    argv[n++] = script;
    while (keys[nk])
        nk++;
    snprintf(nkeys, sizeof nkeys, "%zu", nk);
    argv[n++] = nkeys;
    for (size_t i = 0; keys[i]; i++)
        argv[n++] = keys[i];
    for (size_t i = 0; args[i]; i++)
        argv[n++] = args[i];
    redisReply *r = redisCommandArgv(c, (int)n, argv, NULL);
    assert_non_null(r);
    if (r->type == REDIS_REPLY_ERROR) fail_msg("redis: %s", r->str);
    assert_int_equal(r->type, REDIS_REPLY_ARRAY);
    return r;
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

static void test_gcra_twin(void **state)
{
    fx_t *f = *state;
    const uint64_t cases[][2] = {{100000, 1}, {10000, 20}, {333334, 3}, {60000000, 2}};
    for (size_t k = 0; k < 4; k++) {
        uint64_t I = cases[k][0];
        uint32_t B = (uint32_t)cases[k][1];
        char key[32], now[24], iv[24], burst[16], n[16];
        snprintf(key, sizeof key, "{t}:gcra:%zu", k);
        rl_gcra_t g = {0};
        uint64_t seed = 7 + k, t = f->now, granted = 0;
        for (int step = 0; step < 400; step++) {
            uint32_t want = 1 + (uint32_t)(lcg(&seed) % B);
            uint64_t ra_c = 0;
            int c_ok = rl_gcra_take(&g, t, I, B, want, &ra_c);
            snprintf(now, sizeof now, "%llu", (unsigned long long)t);
            snprintf(iv, sizeof iv, "%llu", (unsigned long long)I);
            snprintf(burst, sizeof burst, "%u", B);
            snprintf(n, sizeof n, "%u", want);
            const char *keys[] = {key, NULL};
            const char *args[] = {now, iv, burst, n, NULL};
            redisReply *r = eval(f->c, rl_lua_gcra, keys, args);
            assert_int_equal(r->elements, 2);
            if (r->element[0]->integer != c_ok || (uint64_t)r->element[1]->integer != ra_c)
                fail_msg("case %zu step %d: C %d/%llu, Lua %lld/%lld", k, step, c_ok,
                         (unsigned long long)ra_c, r->element[0]->integer, r->element[1]->integer);
            granted += (uint64_t)c_ok;
            freeReplyObject(r);
            /* Sometimes jump to exactly the retry time, sometimes wander. */
            t += (step % 3 == 0 && ra_c) ? ra_c : lcg(&seed) % (I / 500 + 3);
        }
        assert_true(granted > 10); /* the comparison covered both answers */
    }
}

static void test_quota_twin(void **state)
{
    fx_t *f = *state;
    rl_tz_t *tz = rl_tz_load("Asia/Shanghai", NULL, 0);
    assert_non_null(tz);
    rl_quota_t q[3] = {{5, 900}, {12, 3600}, {40, 86400}};
    rl_quota_counter_t ctr[3];
    memset(ctr, 0, sizeof ctr);
    uint64_t seed = 99, t = f->now;
    int blocks = 0, grants = 0;
    char last_key[64] = "";
    long long last_end = 0;
    for (int step = 0; step < 300; step++) {
        int64_t n = step % 17 == 16 ? -1 : 1 + (int64_t)(lcg(&seed) % 3);
        size_t blocked = 0;
        int64_t until = 0;
        int c_ok = rl_quota_take(q, 3, ctr, tz, (int64_t)t, n, &blocked, &until);
        char keys_s[3][64], lim[3][24], end[3][24], now[24], ns[24];
        const char *keys[4], *args[9];
        snprintf(now, sizeof now, "%llu", (unsigned long long)t);
        snprintf(ns, sizeof ns, "%lld", (long long)n);
        args[0] = now;
        args[1] = ns;
        for (int i = 0; i < 3; i++) {
            rl_window_t w;
            rl_quota_window(&q[i], tz, (int64_t)t, &w);
            snprintf(keys_s[i], sizeof keys_s[i], "{t}:quota:%d:%s", i, w.id);
            snprintf(lim[i], sizeof lim[i], "%llu", (unsigned long long)q[i].limit);
            snprintf(end[i], sizeof end[i], "%lld", (long long)w.end_ms);
            keys[i] = keys_s[i];
            args[2 + 2 * i] = lim[i];
            args[3 + 2 * i] = end[i];
        }
        keys[3] = NULL;
        args[8] = NULL;
        redisReply *r = eval(f->c, rl_lua_quota, keys, args);
        assert_int_equal(r->elements, 3);
        assert_int_equal(r->element[0]->integer, c_ok);
        if (!c_ok) {
            assert_int_equal(r->element[1]->integer, (long long)blocked + 1);
            assert_int_equal(r->element[2]->integer, until);
            blocks++;
        } else {
            grants++;
            if (n > 0) {
                snprintf(last_key, sizeof last_key, "%s", keys_s[2]);
                last_end = atoll(end[2]);
            }
        }
        freeReplyObject(r);
        /* The counters agree key by key. */
        for (int i = 0; i < 3; i++) {
            redisReply *g = redisCommand(f->c, "GET %s", keys_s[i]);
            long long v = g->type == REDIS_REPLY_STRING ? atoll(g->str) : 0;
            assert_int_equal(v, (long long)ctr[i].used);
            freeReplyObject(g);
        }
        t += lcg(&seed) % 400000; /* up to ~6.7 min: crosses 15m, hour and day windows */
    }
    assert_true(blocks > 20 && grants > 20);
    /* A counter expires an hour after its window ends. */
    redisReply *r = redisCommand(f->c, "PEXPIRETIME %s", last_key);
    assert_int_equal(r->type, REDIS_REPLY_INTEGER);
    assert_int_equal(r->integer, last_end + 3600000);
    freeReplyObject(r);
    rl_tz_free(tz);
}

static long long slots(fx_t *f, const char *op, uint64_t now, const char *holder, int ceiling,
                       long long *count)
{
    char ns[24], cs[16];
    snprintf(ns, sizeof ns, "%llu", (unsigned long long)now);
    snprintf(cs, sizeof cs, "%d", ceiling);
    const char *keys[] = {"{t}:slots", NULL};
    const char *args[] = {op, ns, holder, cs, "30000", NULL};
    redisReply *r = eval(f->c, rl_lua_slots, keys, args);
    long long ok = r->element[0]->integer;
    *count = r->element[1]->integer;
    freeReplyObject(r);
    return ok;
}

static void test_slots(void **state)
{
    fx_t *f = *state;
    uint64_t t = f->now;
    long long n;
    assert_int_equal(slots(f, "acquire", t, "w1:a", 2, &n), 1);
    assert_int_equal(slots(f, "acquire", t, "w2:b", 2, &n), 1);
    assert_int_equal(n, 2);
    assert_int_equal(slots(f, "acquire", t, "w3:c", 2, &n), 0);     /* ceiling reached */
    assert_int_equal(slots(f, "acquire", t + 1, "w1:a", 2, &n), 1); /* re-acquire = renew */
    assert_int_equal(slots(f, "release", t + 2, "w2:b", 2, &n), 1);
    assert_int_equal(n, 1);
    assert_int_equal(slots(f, "acquire", t + 3, "w3:c", 2, &n), 1);
    /* w1 keeps renewing; w3 dies. After its lease its slot comes back. */
    assert_int_equal(slots(f, "renew", t + 20000, "w1:a", 2, &n), 1);
    assert_int_equal(slots(f, "count", t + 30003, "", 2, &n), 1);
    assert_int_equal(n, 1);
    assert_int_equal(slots(f, "renew", t + 30004, "w3:c", 2, &n), 0); /* lost it */
    assert_int_equal(slots(f, "acquire", t + 30005, "w4:d", 2, &n), 1);
    assert_int_equal(n, 2);
    /* A lower ceiling (AIMD) blocks newcomers without evicting holders. */
    assert_int_equal(slots(f, "acquire", t + 30006, "w5:e", 1, &n), 0);
    assert_int_equal(n, 2);
}

static void test_suspend(void **state)
{
    fx_t *f = *state;
    uint64_t t = f->now;
    char now[24], until[24], later[24], earlier[24], after[24];
    snprintf(now, sizeof now, "%llu", (unsigned long long)t);
    snprintf(until, sizeof until, "%llu", (unsigned long long)(t + 900000));
    snprintf(later, sizeof later, "%llu", (unsigned long long)(t + 1800000));
    snprintf(earlier, sizeof earlier, "%llu", (unsigned long long)(t + 60000));
    snprintf(after, sizeof after, "%llu", (unsigned long long)(t + 1800000));
    const char *keys[] = {"{t}:susp:sender:me@163.com", NULL};
    const char *get[] = {"get", now, NULL};
    redisReply *r = eval(f->c, rl_lua_suspend, keys, get);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    const char *set1[] = {"set", now, until, "451 MI:SFQ", NULL};
    r = eval(f->c, rl_lua_suspend, keys, set1);
    assert_int_equal(r->element[0]->integer, (long long)(t + 900000));
    assert_string_equal(r->element[1]->str, "451 MI:SFQ");
    freeReplyObject(r);
    /* An earlier time never shortens the pause; a later one extends it. */
    const char *set2[] = {"set", now, earlier, "other", NULL};
    r = eval(f->c, rl_lua_suspend, keys, set2);
    assert_int_equal(r->element[0]->integer, (long long)(t + 900000));
    assert_string_equal(r->element[1]->str, "451 MI:SFQ");
    freeReplyObject(r);
    const char *set3[] = {"set", now, later, "550 RP:TRC", NULL};
    r = eval(f->c, rl_lua_suspend, keys, set3);
    assert_int_equal(r->element[0]->integer, (long long)(t + 1800000));
    freeReplyObject(r);
    const char *get_after[] = {"get", after, NULL};
    r = eval(f->c, rl_lua_suspend, keys, get_after);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
    const char *clear[] = {"clear", now, NULL};
    r = eval(f->c, rl_lua_suspend, keys, clear);
    freeReplyObject(r);
    r = eval(f->c, rl_lua_suspend, keys, get);
    assert_int_equal(r->element[0]->integer, 0);
    freeReplyObject(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gcra_twin),
        cmocka_unit_test(test_quota_twin),
        cmocka_unit_test(test_slots),
        cmocka_unit_test(test_suspend),
    };
    return cmocka_run_group_tests_name("ratelimit_lua", tests, setup, teardown);
}
