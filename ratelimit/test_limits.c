/* Unit tests for ratelimit/gcra and ratelimit/quota: rate parsing, GCRA exactness, time
 * zones (including DST days and the TZif footer rule) and quota windows. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "ratelimit/gcra.h"
#include "ratelimit/quota.h"

static void test_rate_parse(void **state)
{
    (void)state;
    rl_rate_t r;
    char err[200];
    assert_int_equal(rl_rate_parse("100/s", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.interval_us, 10000);
    assert_int_equal(r.burst, 5); /* the default: 5% of the count, at least 1 */
    assert_int_equal(rl_rate_parse("250/s", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 12);
    assert_int_equal(rl_rate_parse("10/s", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 1);
    assert_int_equal(rl_rate_parse("100/min", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 5);
    assert_int_equal(rl_rate_parse("7200/h", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 360);
    assert_int_equal(rl_rate_parse("4294967295/s", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 214748364);
    /* An explicit burst is honoured, above the count too. */
    assert_int_equal(rl_rate_parse("250/s", 250, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 250);
    assert_int_equal(rl_rate_parse("10/s", 40, &r, err, sizeof err), 0);
    assert_int_equal(r.burst, 40);
    assert_int_equal(rl_rate_parse("/min", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.interval_us, 60000000);
    assert_int_equal(r.burst, 1);
    assert_int_equal(rl_rate_parse("/m", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.interval_us, 60000000);
    assert_int_equal(rl_rate_parse("7200/h", 5, &r, err, sizeof err), 0);
    assert_int_equal(r.interval_us, 500000);
    assert_int_equal(r.burst, 5);
    /* 3/s cannot be exact in microseconds: rounded so the rate is never exceeded. */
    assert_int_equal(rl_rate_parse("3/s", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.interval_us, 333334);
    assert_int_equal(rl_rate_parse("2/5m", 0, &r, err, sizeof err), 0);
    assert_int_equal(r.interval_us, 150000000);
    const char *bad[] = {"abc", "0/s", "10/x", "10", "-1/s", "10/0s", "1.5/s"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        err[0] = '\0';
        assert_int_equal(rl_rate_parse(bad[i], 0, &r, err, sizeof err), VL_EINVAL);
        assert_non_null(strstr(err, bad[i])); /* the message quotes the input */
    }
}

static void test_gcra_burst_and_retry(void **state)
{
    (void)state;
    rl_gcra_t g = {0};
    uint64_t ra = 99;
    const uint64_t I = 100000; /* 100 ms: 10/s */
    uint64_t t0 = 1700000000000ULL;
    for (int i = 0; i < 5; i++)
        assert_int_equal(rl_gcra_take(&g, t0, I, 5, 1, &ra), 1);
    assert_int_equal(rl_gcra_available(&g, t0, I, 5), 0);
    assert_int_equal(rl_gcra_take(&g, t0, I, 5, 1, &ra), 0);
    assert_int_equal(ra, 100);
    assert_int_equal(rl_gcra_take(&g, t0 + 99, I, 5, 1, &ra), 0);
    assert_int_equal(ra, 1);
    assert_int_equal(rl_gcra_take(&g, t0 + 100, I, 5, 1, &ra), 1);
    /* Asking for 3 needs 3 free slots: 300 ms from the last grant. */
    assert_int_equal(rl_gcra_take(&g, t0 + 100, I, 5, 3, &ra), 0);
    assert_int_equal(ra, 300);
    assert_int_equal(rl_gcra_take(&g, t0 + 400, I, 5, 3, &ra), 1);
    /* Idle for a long time: the burst is back, never more. */
    assert_int_equal(rl_gcra_available(&g, t0 + 100000, I, 5), 5);
    assert_int_equal(rl_gcra_take(&g, t0 + 100000, I, 5, 6, &ra), VL_EINVAL);
    assert_int_equal(rl_gcra_take(&g, t0 + 100000, I, 5, 0, &ra), VL_EINVAL);
    assert_int_equal(rl_gcra_take(&g, t0 + 100000, 0, 5, 1, &ra), VL_EINVAL);
}

static uint64_t lcg(uint64_t *s)
{
    *s = *s * 6364136223846793005ULL + 1442695040888963407ULL;
    return *s >> 33;
}

/* Greedy clients for 30 simulated seconds: the rate holds and no window of any length
 * ever sees more than floor(W / interval) + burst tokens. */
static void test_gcra_never_exceeds(void **state)
{
    (void)state;
    const uint64_t rates[][2] = {{100000, 1}, {10000, 20}, {333334, 3}, {1000, 50}};
    for (size_t k = 0; k < 4; k++) {
        uint64_t I = rates[k][0];
        uint32_t B = (uint32_t)rates[k][1];
        rl_gcra_t g = {0};
        uint64_t seed = 42 + k, t = 1700000000000ULL, t0 = t;
        size_t cap = 200000, n = 0;
        uint64_t *grants = malloc(cap * sizeof *grants);
        assert_non_null(grants);
        while (t < t0 + 30000) {
            uint32_t want = 1 + (uint32_t)(lcg(&seed) % B);
            uint64_t ra;
            int rc = rl_gcra_take(&g, t, I, B, want, &ra);
            assert_true(rc == 0 || rc == 1);
            if (rc == 1)
                for (uint32_t i = 0; i < want && n < cap; i++)
                    grants[n++] = t;
            t += lcg(&seed) % 3; /* requests far faster than the rate */
        }
        /* Rate: 30 s of tokens plus the burst, within one token of rounding. */
        uint64_t expect = 30000 * 1000 / I + B;
        assert_true(n <= expect);
        assert_true(n + B + 2 >= expect);
        const uint64_t windows[] = {1, 250, 1000, 5000, 30000};
        for (size_t w = 0; w < 5; w++) {
            uint64_t limit = windows[w] * 1000 / I + B;
            size_t j = 0;
            for (size_t i = 0; i < n; i++) {
                while (grants[i] - grants[j] >= windows[w])
                    j++;
                assert_true(i - j + 1 <= limit);
            }
        }
        free(grants);
    }
}

/* What a user reads in "250/s": a greedy sender (asking for as many tokens as the burst
 * allows, as the worker does, the moment it may) gets at most count + burst in any window
 * of one period, count + burst - 1 in any half-open one, with the default burst and with
 * an explicit one; and over ten periods it still gets the whole rate. */
static void test_rate_window_guarantee(void **state)
{
    (void)state;
    const struct {
        const char *rate;
        uint32_t burst;
    } cases[] = {{"250/s", 0},  {"2000/s", 0}, {"10/s", 0},   {"3/s", 0},   {"100/min", 0},
                 {"7200/h", 0}, {"/min", 0},   {"250/s", 50}, {"10/s", 10}, {"500/15m", 0}};
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        rl_rate_t r;
        assert_int_equal(rl_rate_parse(cases[k].rate, cases[k].burst, &r, NULL, 0), 0);
        const uint64_t P = r.per_ms, C = r.count, B = r.burst;
        if (!cases[k].burst) assert_true(B == (C * 5 / 100 > 1 ? C * 5 / 100 : 1));
        rl_gcra_t g = {0};
        uint64_t seed = 7 + k, t0 = 1700000000000ULL, t = t0;
        size_t cap = (size_t)(11 * C + B + 16), n = 0;
        uint64_t *grants = malloc(cap * sizeof *grants);
        assert_non_null(grants);
        while (t < t0 + 10 * P) {
            uint32_t want = 1 + (uint32_t)(lcg(&seed) % B);
            uint64_t ra = 0;
            int rc = rl_gcra_take(&g, t, r.interval_us, (uint32_t)B, want, &ra);
            assert_true(rc == 0 || rc == 1);
            if (rc == 1) {
                assert_true(n + want <= cap);
                for (uint32_t i = 0; i < want; i++)
                    grants[n++] = t;
            } else {
                /* Come back when it would be granted, or a little earlier or later. */
                uint64_t j = lcg(&seed) % 3;
                t += j == 0 && ra > 1 ? ra - 1 : ra + (j == 2 ? lcg(&seed) % 5 : 0);
            }
        }
        /* Slide a one-period window over the grants: [grants[j], grants[i]] spans less
         * than a period (half-open) or at most one (closed). */
        size_t worst_open = 0, worst_closed = 0;
        for (size_t i = 0, jo = 0, jc = 0; i < n; i++) {
            while (grants[i] - grants[jo] >= P)
                jo++;
            while (grants[i] - grants[jc] > P)
                jc++;
            if (i - jo + 1 > worst_open) worst_open = i - jo + 1;
            if (i - jc + 1 > worst_closed) worst_closed = i - jc + 1;
        }
        if (worst_closed > C + B || worst_open > C + B - 1)
            fail_msg("%s burst %u: %zu in a closed window, %zu in a half-open one (count %u)",
                     cases[k].rate, (unsigned)B, worst_closed, worst_open, (unsigned)C);
        /* Nor is the sender held far below the rate (it loses a little by coming back
         * late, and by asking for more tokens than are free). */
        if (n < 10 * C * 95 / 100)
            fail_msg("%s: only %zu in 10 periods of %u", cases[k].rate, n, (unsigned)C);
        free(grants);
    }
}

#define H 3600000LL

static rl_tz_t *load(const char *name)
{
    char err[200];
    rl_tz_t *tz = rl_tz_load(name, err, sizeof err);
    if (!tz) fail_msg("%s", err);
    return tz;
}

static void check_day(const char *zone, int64_t start, int64_t next, double hours)
{
    rl_tz_t *tz = load(zone);
    int64_t s, nx;
    /* Any instant of the day gives the same boundaries. */
    const int64_t probes[] = {start, start + 1, start + (next - start) / 2, next - 1};
    for (size_t i = 0; i < 4; i++) {
        rl_tz_day(tz, probes[i], &s, &nx);
        assert_int_equal(s, start);
        assert_int_equal(nx, next);
    }
    assert_int_equal((double)(next - start) / H, hours);
    rl_tz_day(tz, next, &s, NULL);
    assert_int_equal(s, next);
    rl_tz_free(tz);
}

/* Expected values from Python's zoneinfo (an independent implementation). */
static void test_tz_days(void **state)
{
    (void)state;
    check_day("Asia/Shanghai", 1795363200000LL, 1795449600000LL, 24);
    check_day("America/New_York", 1772946000000LL, 1773028800000LL, 23); /* 2026-03-08 */
    check_day("America/New_York", 1793505600000LL, 1793595600000LL, 25); /* 2026-11-01 */
    check_day("Australia/Sydney", 1775307600000LL, 1775397600000LL, 25); /* 2026-04-05 */
    /* After the file's last transition (2037): the POSIX rule in the footer decides. */
    check_day("America/New_York", 2215054800000LL, 2215137600000LL, 23); /* 2040-03-11 */
    check_day("America/New_York", 2235614400000LL, 2235704400000LL, 25); /* 2040-11-04 */
    check_day("Australia/Sydney", 2233144800000LL, 2233227600000LL, 23); /* 2040-10-07 */
    /* Havana skips midnight (00:00 -> 01:00): the day starts at the jump. */
    check_day("America/Havana", 1772946000000LL, 1773028800000LL, 23); /* 2026-03-08 */

    rl_tz_t *sh = load("Asia/Shanghai");
    assert_int_equal(rl_tz_offset(sh, 1795363200000LL), 8 * 3600);
    int y, m, d;
    rl_tz_date(sh, 1795449600000LL - 1, &y, &m, &d);
    assert_int_equal(y * 10000 + m * 100 + d, 20261123);
    rl_tz_date(sh, 1795449600000LL, &y, &m, &d);
    assert_int_equal(y * 10000 + m * 100 + d, 20261124);
    assert_string_equal(rl_tz_name(sh), "Asia/Shanghai");
    rl_tz_free(sh);

    rl_tz_t *utc = load("UTC");
    int64_t s, nx;
    rl_tz_day(utc, 86400000LL * 3 + 5, &s, &nx);
    assert_int_equal(s, 86400000LL * 3);
    assert_int_equal(nx, 86400000LL * 4);
    rl_tz_free(utc);
    rl_tz_day(NULL, -1, &s, &nx); /* NULL is UTC, and times before 1970 work */
    assert_int_equal(s, -86400000LL);
    assert_int_equal(nx, 0);
}

static void test_tz_errors(void **state)
{
    (void)state;
    char err[200];
    assert_null(rl_tz_load("Nowhere/Land", err, sizeof err));
    assert_non_null(strstr(err, "Nowhere/Land"));
    assert_null(rl_tz_load("../../etc/passwd", err, sizeof err));
    assert_null(rl_tz_load("/etc/passwd", err, sizeof err));
    assert_null(rl_tz_load("", err, sizeof err));
}

static void test_quota_parse(void **state)
{
    (void)state;
    rl_quota_t q;
    char err[200];
    assert_int_equal(rl_quota_parse("500/15m", &q, err, sizeof err), 0);
    assert_int_equal(q.limit, 500);
    assert_int_equal(q.window_s, 900);
    assert_int_equal(rl_quota_parse("10000/d", &q, err, sizeof err), 0);
    assert_int_equal(q.window_s, 86400);
    assert_int_equal(rl_quota_parse("/h", &q, err, sizeof err), 0);
    assert_int_equal(q.limit, 1);
    assert_int_equal(q.window_s, 3600);
    assert_int_equal(rl_quota_parse("5/2d", &q, err, sizeof err), VL_EINVAL);
    assert_non_null(strstr(err, "at most a day"));
    assert_int_equal(rl_quota_parse("5/fortnight", &q, err, sizeof err), VL_EINVAL);
}

static void test_quota_windows(void **state)
{
    (void)state;
    rl_tz_t *sh = load("Asia/Shanghai");
    rl_quota_t day = {10000, 86400}, q15 = {500, 900};
    rl_window_t w;
    int64_t t = 1795363200000LL + 14 * H + 20 * 60000; /* 2026-11-23 14:20 +08:00 */
    rl_quota_window(&day, sh, t, &w);
    assert_string_equal(w.id, "2026-11-23");
    assert_int_equal(w.start_ms, 1795363200000LL);
    assert_int_equal(w.end_ms, 1795449600000LL);
    rl_quota_window(&q15, sh, t, &w);
    assert_string_equal(w.id, "2026-11-23T14:15+08:00");
    assert_int_equal(w.end_ms - w.start_ms, 900000);
    rl_tz_free(sh);

    /* New York, 2026-11-01: 01:30 happens twice; the ids differ by offset. */
    rl_tz_t *ny = load("America/New_York");
    int64_t start = 1793505600000LL;
    rl_quota_window(&q15, ny, start + 90 * 60000, &w); /* 01:30 EDT */
    assert_string_equal(w.id, "2026-11-01T01:30-04:00");
    rl_quota_window(&q15, ny, start + 150 * 60000, &w); /* 01:30 EST */
    assert_string_equal(w.id, "2026-11-01T01:30-05:00");
    rl_quota_window(&day, ny, start + 24 * H + 30 * 60000, &w); /* 23:30 EST */
    assert_string_equal(w.id, "2026-11-01");
    assert_int_equal(w.end_ms - w.start_ms, 25 * H);
    rl_tz_free(ny);
}

static void test_quota_take(void **state)
{
    (void)state;
    rl_tz_t *sh = load("Asia/Shanghai");
    rl_quota_t q[2] = {{2, 900}, {3, 86400}};
    rl_quota_counter_t c[2];
    memset(c, 0, sizeof c);
    int64_t t = 1795363200000LL + 10 * H; /* 10:00 local */
    size_t blocked = 9;
    int64_t until = 0;
    assert_int_equal(rl_quota_take(q, 2, c, sh, t, 2, &blocked, &until), 1);
    assert_int_equal(rl_quota_take(q, 2, c, sh, t + 1000, 1, &blocked, &until), 0);
    assert_int_equal(blocked, 0);
    assert_int_equal(until, t + 900000);
    assert_int_equal(c[1].used, 2); /* nothing counted on refusal */
    assert_int_equal(rl_quota_take(q, 2, c, sh, t + 900000, 1, &blocked, &until), 1);
    assert_int_equal(rl_quota_take(q, 2, c, sh, t + 900001, 1, &blocked, &until), 0);
    assert_int_equal(blocked, 1);
    assert_int_equal(until, 1795449600000LL); /* the next Shanghai midnight */
    /* Give one back, then it fits again. */
    assert_int_equal(rl_quota_take(q, 2, c, sh, t + 900002, -1, NULL, NULL), 1);
    assert_int_equal(rl_quota_take(q, 2, c, sh, t + 900003, 1, NULL, NULL), 1);
    /* The next local day starts from zero. */
    assert_int_equal(rl_quota_take(q, 2, c, sh, 1795449600000LL, 2, NULL, NULL), 1);
    assert_string_equal(c[1].id, "2026-11-24");
    assert_int_equal(rl_quota_take(q, 9, c, sh, t, 1, NULL, NULL), VL_EINVAL);
    rl_tz_free(sh);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rate_parse),
        cmocka_unit_test(test_gcra_burst_and_retry),
        cmocka_unit_test(test_gcra_never_exceeds),
        cmocka_unit_test(test_rate_window_guarantee),
        cmocka_unit_test(test_tz_days),
        cmocka_unit_test(test_tz_errors),
        cmocka_unit_test(test_quota_parse),
        cmocka_unit_test(test_quota_windows),
        cmocka_unit_test(test_quota_take),
    };
    return cmocka_run_group_tests_name("ratelimit_limits", tests, NULL, NULL);
}
