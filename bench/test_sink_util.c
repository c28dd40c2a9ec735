/* Unit tests for volley-sink's pure parsing helpers (bench/sink_util.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bench/sink.h"
#include "common/err.h"

/* Copy s to the very end of a page followed by an unreadable page, so that
 * reading one byte past it crashes (picohttpparser's trick). */
static char *edge_copy(const char *s, size_t n)
{
    static char *region;
    long pg = sysconf(_SC_PAGESIZE);
    if (!region) {
        region =
            mmap(NULL, (size_t)pg * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        assert_true(region != MAP_FAILED);
        assert_int_equal(mprotect(region + pg, (size_t)pg, PROT_NONE), 0);
    }
    assert_true(n <= (size_t)pg);
    char *p = region + pg - n;
    memcpy(p, s, n);
    return p;
}

static void test_b64(void **state)
{
    (void)state;
    unsigned char out[64];
    const char *in = "AGFsaWNlAHMzY3JldA==";
    ssize_t n = sink__b64_decode(edge_copy(in, strlen(in)), strlen(in), out, sizeof out);
    assert_int_equal(n, 13);
    assert_memory_equal(out, "\0alice\0s3cret", 13);
    /* Unpadded input is accepted, as some clients send it. */
    n = sink__b64_decode("AGFsaWNlAHMzY3JldA", 18, out, sizeof out);
    assert_int_equal(n, 13);
    assert_int_equal(sink__b64_decode("", 0, out, sizeof out), 0);
    assert_int_equal(sink__b64_decode("dXNlcg==", 8, out, sizeof out), 4);
    assert_memory_equal(out, "user", 4);
    /* Bad characters, a lone sextet, misplaced padding, overflow. */
    assert_int_equal(sink__b64_decode("dX*lcg==", 8, out, sizeof out), -1);
    assert_int_equal(sink__b64_decode("dXNlc", 5, out, sizeof out), -1);
    assert_int_equal(sink__b64_decode("dX=lcg==", 8, out, sizeof out), -1);
    assert_int_equal(sink__b64_decode("dXNlcg==", 8, out, 3), -1);
    /* Non-zero trailing bits: not a canonical encoding. */
    assert_int_equal(sink__b64_decode("dXNlch==", 8, out, sizeof out), -1);
}

static void test_path(void **state)
{
    (void)state;
    const char *a;
    size_t al, end;
    const char *s = "<a@example.com> SIZE=10";
    assert_int_equal(sink__parse_path(edge_copy(s, strlen(s)), strlen(s), &a, &al, &end), 0);
    assert_int_equal(al, 13);
    assert_memory_equal(a, "a@example.com", 13);
    assert_int_equal(end, 15);

    s = " <>";
    assert_int_equal(sink__parse_path(edge_copy(s, 3), 3, &a, &al, &end), 0);
    assert_int_equal(al, 0);
    assert_int_equal(end, 3);

    s = "<\"odd>name\"@example.com>";
    assert_int_equal(sink__parse_path(s, strlen(s), &a, &al, &end), 0);
    assert_int_equal(al, strlen("\"odd>name\"@example.com"));

    s = "<@relay.example,@other.example:b@example.com>";
    assert_int_equal(sink__parse_path(s, strlen(s), &a, &al, &end), 0);
    assert_int_equal(al, 13);
    assert_memory_equal(a, "b@example.com", 13);

    s = "bare@example.com BODY=8BITMIME";
    assert_int_equal(sink__parse_path(s, strlen(s), &a, &al, &end), 0);
    assert_int_equal(al, 16);

    /* Unterminated paths read no further than their end. */
    s = "<a@example.com";
    assert_int_equal(sink__parse_path(edge_copy(s, strlen(s)), strlen(s), &a, &al, &end), -1);
    s = "<\"a\\";
    assert_int_equal(sink__parse_path(edge_copy(s, strlen(s)), strlen(s), &a, &al, &end), -1);
    assert_int_equal(sink__parse_path(edge_copy("   ", 3), 3, &a, &al, &end), -1);
}

static void test_msgid(void **state)
{
    (void)state;
    const char *id;
    size_t n;
    const char *v = " <x.1@host.example>\r\n";
    assert_int_equal(sink__msgid(v, strlen(v), &id, &n), 0);
    assert_int_equal(n, 18);
    assert_memory_equal(id, "<x.1@host.example>", 18);
    v = "  no-brackets@host ";
    assert_int_equal(sink__msgid(v, strlen(v), &id, &n), 0);
    assert_int_equal(n, 16);
    assert_int_equal(sink__msgid(edge_copy(" \t ", 3), 3, &id, &n), -1);
    v = "<unterminated";
    assert_int_equal(sink__msgid(edge_copy(v, strlen(v)), strlen(v), &id, &n), 0);
    assert_int_equal(n, strlen(v));
}

static void test_json_str(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 1024);
    const char *s = "a\"b\\c\n\x01 \xc3\xa9 \xe2\x82\xac";
    assert_int_equal(sink__json_str(&b, s, strlen(s)), 0);
    assert_string_equal(b.data, "\"a\\\"b\\\\c\\u000a\\u0001 \xc3\xa9 \xe2\x82\xac\"");
    buf_reset(&b);
    /* Invalid UTF-8: a lone continuation byte, an overlong form, a cut
     * sequence at the end. */
    const char bad[] = "x\x80y\xc0\xafz\xe2\x82";
    assert_int_equal(sink__json_str(&b, edge_copy(bad, sizeof bad - 1), sizeof bad - 1), 0);
    assert_string_equal(b.data, "\"x\\ufffdy\\ufffd\\ufffdz\\ufffd\\ufffd\"");
    buf_free(&b);
    buf_init(&b, 4);
    assert_int_equal(sink__json_str(&b, "abcdef", 6), VL_ETOOBIG);
    buf_free(&b);
}

static void test_numbers_and_prefix(void **state)
{
    (void)state;
    uint64_t v;
    assert_int_equal(sink__parse_u64("12345", 5, &v), 0);
    assert_int_equal(v, 12345);
    assert_int_equal(sink__parse_u64("", 0, &v), -1);
    assert_int_equal(sink__parse_u64("12a", 3, &v), -1);
    assert_int_equal(sink__parse_u64("-1", 2, &v), -1);
    assert_int_equal(sink__parse_u64("99999999999999999999", 20, &v), -1);
    assert_true(sink__prefix("mail from:<x>", 13, "MAIL FROM:"));
    assert_false(sink__prefix("MAIL", 4, "MAIL FROM:"));
    assert_false(sink__prefix(edge_copy("MAI", 3), 3, "MAIL"));
}

static void test_parse_per_duration_reply(void **state)
{
    (void)state;
    uint64_t n, per;
    assert_int_equal(sink__parse_per("800/s", &n, &per), 0);
    assert_true(n == 800 && per == 1000);
    assert_int_equal(sink__parse_per("50/100ms", &n, &per), 0);
    assert_true(n == 50 && per == 100);
    assert_int_equal(sink__parse_per("100/5s", &n, &per), 0);
    assert_true(n == 100 && per == 5000);
    assert_int_equal(sink__parse_per("500/15m", &n, &per), 0);
    assert_true(n == 500 && per == 900000);
    assert_int_equal(sink__parse_per("/min", &n, &per), 0);
    assert_true(n == 1 && per == 60000);
    assert_int_equal(sink__parse_per("10000/d", &n, &per), 0);
    assert_true(per == 86400000);
    assert_int_equal(sink__parse_per("800", &n, &per), -1);
    assert_int_equal(sink__parse_per("0/s", &n, &per), -1);
    assert_int_equal(sink__parse_per("5/", &n, &per), -1);
    assert_int_equal(sink__parse_per("5/0s", &n, &per), -1);
    assert_int_equal(sink__parse_per("5/fortnight", &n, &per), -1);
    assert_int_equal(sink__parse_per("x/s", &n, &per), -1);
    assert_int_equal(sink__parse_per("200000000/s", &n, &per), -1);

    uint64_t ms;
    assert_int_equal(sink__parse_duration("30s", &ms), 0);
    assert_int_equal(ms, 30000);
    assert_int_equal(sink__parse_duration("1.5", &ms), 0);
    assert_int_equal(ms, 1500);
    assert_int_equal(sink__parse_duration("500ms", &ms), 0);
    assert_int_equal(ms, 500);
    assert_int_equal(sink__parse_duration("1h", &ms), 0);
    assert_int_equal(ms, 3600000);
    assert_int_equal(sink__parse_duration("2min", &ms), 0);
    assert_int_equal(ms, 120000);
    assert_int_equal(sink__parse_duration("", &ms), -1);
    assert_int_equal(sink__parse_duration("-1s", &ms), -1);
    assert_int_equal(sink__parse_duration("5 s", &ms), -1);
    assert_int_equal(sink__parse_duration("5y", &ms), -1);

    assert_int_equal(sink__parse_reply("451 4.7.1 Rate limited, try again later"), 451);
    assert_int_equal(sink__parse_reply("421 HL:IFC x"), 421);
    assert_int_equal(sink__parse_reply("550 no"), 550);
    assert_int_equal(sink__parse_reply("250 ok"), -1);
    assert_int_equal(sink__parse_reply("451"), -1);
    assert_int_equal(sink__parse_reply("451 "), -1);
    assert_int_equal(sink__parse_reply("451-multi"), -1);
    assert_int_equal(sink__parse_reply("45x text"), -1);
    assert_int_equal(sink__parse_reply("451 a\r\n250 injected"), -1);
}

/* At most n admissions in every window [t, t + per) of the admitted times. */
static void assert_window_holds(const uint64_t *times, size_t k, uint64_t n, uint64_t per)
{
    for (size_t i = 0; i < k; i++) {
        uint64_t in = 0;
        for (size_t j = i; j < k && times[j] < times[i] + per; j++)
            in++;
        assert_true(in <= n);
    }
}

static void test_sliding_window(void **state)
{
    (void)state;
    struct sink_window w;
    assert_int_equal(sink__window_init(&w, 3, 1000), 0);
    /* Three at once pass, the fourth not, until the first is a window old. */
    uint64_t t = 5000;
    for (int i = 0; i < 3; i++) {
        assert_true(sink__window_ok(&w, t));
        sink__window_add(&w, t);
    }
    assert_false(sink__window_ok(&w, t));
    assert_false(sink__window_ok(&w, t + 999));
    assert_true(sink__window_ok(&w, t + 1000));
    /* Refused attempts are not recorded: asking again and again does not
     * push the window on. */
    for (int i = 0; i < 100; i++)
        assert_false(sink__window_ok(&w, t + 500));
    /* All three left together: three more fit at t + 1 s. */
    for (int i = 0; i < 3; i++) {
        assert_true(sink__window_ok(&w, t + 1000));
        sink__window_add(&w, t + 1000);
    }
    assert_false(sink__window_ok(&w, t + 1000));
    sink__window_free(&w);

    /* Sliding, not fixed: 10 per 100 ms offered one attempt a millisecond
     * for two seconds; every 100 ms window holds at most 10, and the limit
     * is used fully (10 per 100 ms on average). */
    assert_int_equal(sink__window_init(&w, 10, 100), 0);
    uint64_t times[4000];
    size_t k = 0;
    for (uint64_t now = 0; now < 2000; now++) {
        for (int burst = 0; burst < 2; burst++) {
            if (sink__window_ok(&w, now)) {
                sink__window_add(&w, now);
                times[k++] = now;
            }
        }
    }
    assert_int_equal(k, 200);
    assert_window_holds(times, k, 10, 100);
    sink__window_free(&w);

    /* A burst straddling a fixed-window boundary is still limited: 5 per
     * second, 5 admitted at 0.9 s, none until 1.9 s. */
    assert_int_equal(sink__window_init(&w, 5, 1000), 0);
    for (int i = 0; i < 5; i++) {
        assert_true(sink__window_ok(&w, 900));
        sink__window_add(&w, 900);
    }
    assert_false(sink__window_ok(&w, 1100));
    assert_false(sink__window_ok(&w, 1899));
    assert_true(sink__window_ok(&w, 1900));
    sink__window_free(&w);
}

static void test_fixed_quota(void **state)
{
    (void)state;
    struct sink_quota q;
    sink__quota_init(&q, 3, 5000, 0);
    for (int i = 0; i < 3; i++) {
        assert_true(sink__quota_ok(&q, 100));
        sink__quota_add(&q, 100 + (uint64_t)i);
    }
    /* Refused until the window rolls over, however long the wait within it. */
    assert_false(sink__quota_ok(&q, 200));
    assert_false(sink__quota_ok(&q, 4999));
    /* A fixed window: the next one starts whole at 5 s, not 5 s after the
     * first admission. */
    assert_true(sink__quota_ok(&q, 5000));
    for (int i = 0; i < 3; i++)
        sink__quota_add(&q, 5000);
    assert_false(sink__quota_ok(&q, 9999));
    /* Skipping windows: the count starts afresh. */
    assert_true(sink__quota_ok(&q, 31000));
    sink__quota_add(&q, 31000);
    assert_int_equal(q.used, 1);
    /* Windows counted from start_ms. */
    sink__quota_init(&q, 1, 1000, 300);
    sink__quota_add(&q, 1299);
    assert_false(sink__quota_ok(&q, 1299));
    assert_true(sink__quota_ok(&q, 1300));
}

static void test_strset_trim(void **state)
{
    (void)state;
    struct sink_strset set = {0};
    char key[32];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof key, "<%d@example.com>", i);
        assert_int_equal(sink__strset_add(&set, key, (size_t)n), 1);
    }
    assert_int_equal(set.len, 5000);
    for (int i = 0; i < 5000; i += 7) {
        int n = snprintf(key, sizeof key, "<%d@example.com>", i);
        assert_int_equal(sink__strset_add(&set, key, (size_t)n), 0);
    }
    /* Prefixes are different keys; the empty string is one. */
    assert_int_equal(sink__strset_add(&set, "<1@example.com", 14), 1);
    assert_int_equal(sink__strset_add(&set, "", 0), 1);
    assert_int_equal(sink__strset_add(&set, "", 0), 0);
    sink__strset_free(&set);

    const char *b;
    size_t bn;
    sink__trim(" c1/42 \r", 8, &b, &bn);
    assert_int_equal(bn, 5);
    assert_memory_equal(b, "c1/42", 5);
    sink__trim("   ", 3, &b, &bn);
    assert_int_equal(bn, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_msgid),
        cmocka_unit_test(test_json_str),
        cmocka_unit_test(test_numbers_and_prefix),
        cmocka_unit_test(test_parse_per_duration_reply),
        cmocka_unit_test(test_sliding_window),
        cmocka_unit_test(test_fixed_quota),
        cmocka_unit_test(test_strset_trim),
    };
    return cmocka_run_group_tests_name("sink_util", tests, NULL, NULL);
}
