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

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64),
        cmocka_unit_test(test_path),
        cmocka_unit_test(test_msgid),
        cmocka_unit_test(test_json_str),
        cmocka_unit_test(test_numbers_and_prefix),
    };
    return cmocka_run_group_tests_name("sink_util", tests, NULL, NULL);
}
