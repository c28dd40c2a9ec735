/* Unit tests for the SMTP reply reader: every split of the input gives the
 * same replies, malformed input is an error, and nothing reads past the
 * bytes it was given (input sits against an unreadable page). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "common/err.h"
#include "engine/reply.h"

/* Copy s to the end of a page followed by a PROT_NONE page. */
static char *guarded(const char *s, size_t len, void **map, size_t *maplen)
{
    size_t pg = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (len + pg - 1) / pg + 1;
    *maplen = (pages + 1) * pg;
    char *m = mmap(NULL, *maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    assert_true(m != MAP_FAILED);
    assert_int_equal(mprotect(m + pages * pg, pg, PROT_NONE), 0);
    char *p = m + pages * pg - len;
    memcpy(p, s, len);
    *map = m;
    return p;
}

static const char transcript[] =
    "220 mx.example.com ESMTP ready\r\n"
    "250-mx.example.com\r\n"
    "250-PIPELINING\r\n"
    "250-SIZE 10240000\r\n"
    "250 ENHANCEDSTATUSCODES\r\n"
    "250 2.1.0 Ok\r\n"
    "550-5.1.1 The email account that you tried to reach does not exist.\r\n"
    "550-5.1.1 Please try double-checking the recipient's email\r\n"
    "550 5.1.1 address for typos.\r\n"
    "421 4.4.5 HL:ICC too many connections\n" /* bare LF tolerated */
    "354\r\n";

struct expect {
    int code;
    const char *enh;
    const char *text;
    int lines;
};

static const struct expect expected[] = {
    {220, "", "mx.example.com ESMTP ready", 1},
    {250, "", "mx.example.com\nPIPELINING\nSIZE 10240000\nENHANCEDSTATUSCODES", 4},
    {250, "2.1.0", "Ok", 1},
    {550, "5.1.1",
     "The email account that you tried to reach does not exist.\nPlease try double-checking the "
     "recipient's email\naddress for typos.",
     3},
    {421, "4.4.5", "HL:ICC too many connections", 1},
    {354, "", "", 1},
};

/* Feed the transcript in pieces given by cut points; check every reply. */
static void run_split(const char *data, size_t len, const size_t *cuts, size_t ncuts)
{
    smtp_reader_t *r = smtp_reader_new();
    assert_non_null(r);
    size_t at = 0, got = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : len;
        assert_int_equal(smtp_reader_feed(r, data + at, to - at), 0);
        at = to;
        smtp_reply_t rep;
        int rc;
        while ((rc = smtp_reader_next(r, &rep)) == 1) {
            assert_true(got < sizeof expected / sizeof expected[0]);
            const struct expect *e = &expected[got++];
            assert_int_equal(rep.code, e->code);
            assert_string_equal(rep.enhanced, e->enh);
            assert_string_equal(rep.text, e->text);
            assert_int_equal(rep.text_len, strlen(e->text));
            assert_int_equal(rep.lines, e->lines);
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(got, sizeof expected / sizeof expected[0]);
    assert_int_equal(smtp_reader_pending(r), 0);
    smtp_reader_free(r);
}

static void test_whole(void **state)
{
    (void)state;
    void *map;
    size_t maplen, len = strlen(transcript);
    char *p = guarded(transcript, len, &map, &maplen);
    run_split(p, len, NULL, 0);
    munmap(map, maplen);
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    size_t len = strlen(transcript);
    size_t *cuts = malloc(len * sizeof *cuts);
    for (size_t i = 0; i < len - 1; i++)
        cuts[i] = i + 1;
    void *map;
    size_t maplen;
    char *p = guarded(transcript, len, &map, &maplen);
    run_split(p, len, cuts, len - 1);
    munmap(map, maplen);
    free(cuts);
}

static void test_random_splits(void **state)
{
    (void)state;
    size_t len = strlen(transcript);
    srand(12345);
    for (int round = 0; round < 2000; round++) {
        size_t cuts[8], n = (size_t)(rand() % 8);
        for (size_t i = 0; i < n; i++)
            cuts[i] = 1 + (size_t)rand() % (len - 1);
        /* sort */
        for (size_t i = 1; i < n; i++)
            for (size_t j = i; j > 0 && cuts[j - 1] > cuts[j]; j--) {
                size_t t = cuts[j];
                cuts[j] = cuts[j - 1];
                cuts[j - 1] = t;
            }
        run_split(transcript, len, cuts, n);
    }
}

static void expect_error(const char *input, const char *why)
{
    smtp_reader_t *r = smtp_reader_new();
    smtp_reply_t rep;
    assert_int_equal(smtp_reader_feed(r, input, strlen(input)), 0);
    int rc;
    while ((rc = smtp_reader_next(r, &rep)) == 1)
        ;
    assert_int_equal(rc, VL_EPROTO);
    assert_non_null(strstr(smtp_reader_errstr(r), why));
    /* A broken reader stays broken. */
    assert_int_equal(smtp_reader_next(r, &rep), VL_EPROTO);
    smtp_reader_free(r);
}

static void test_malformed(void **state)
{
    (void)state;
    expect_error("hello\r\n", "three-digit");
    expect_error("25\r\n", "three-digit");
    expect_error("250x ok\r\n", "space or hyphen");
    expect_error("199 low\r\n", "out of range");
    expect_error("250-first\r\n251 second\r\n", "changes its code");
    expect_error("220 ok\r\nxyz\r\n", "three-digit");
}

static void test_overlong(void **state)
{
    (void)state;
    size_t n = SMTP_REPLY_MAX_LINE + 10;
    char *line = malloc(n + 3);
    memcpy(line, "250 ", 4);
    memset(line + 4, 'a', n - 4);
    line[n] = '\0';
    /* Without an end of line: detected as soon as the limit is passed. */
    expect_error(line, "too long");
    strcpy(line + n, "\r\n");
    expect_error(line, "too long");
    free(line);

    /* A multiline reply over the total limit. */
    smtp_reader_t *r = smtp_reader_new();
    char l[1000];
    memset(l, 'b', sizeof l);
    memcpy(l, "250-", 4);
    memcpy(l + sizeof l - 2, "\r\n", 2);
    int rc = 0;
    smtp_reply_t rep;
    for (int i = 0; i < 200 && rc == 0; i++) {
        if (smtp_reader_feed(r, l, sizeof l) != 0) {
            rc = VL_ETOOBIG;
            break;
        }
        rc = smtp_reader_next(r, &rep);
    }
    assert_true(rc == VL_EPROTO || rc == VL_ETOOBIG);
    smtp_reader_free(r);
}

static void test_enhanced(void **state)
{
    (void)state;
    char out[16];
    assert_int_equal(smtp_parse_enhanced("4.4.5 HL:ICC", 12, out), 5);
    assert_string_equal(out, "4.4.5");
    assert_int_equal(smtp_parse_enhanced("5.7.650 blocked", 15, out), 7);
    assert_string_equal(out, "5.7.650");
    assert_int_equal(smtp_parse_enhanced("2.0.0", 5, out), 5);
    assert_int_equal(smtp_parse_enhanced("3.0.0 x", 7, out), 0);
    assert_int_equal(smtp_parse_enhanced("4.4 x", 5, out), 0);
    assert_int_equal(smtp_parse_enhanced("4.4.5x", 6, out), 0);
    assert_int_equal(smtp_parse_enhanced("Ok", 2, out), 0);

    /* An enhanced code of the wrong class stays in the text. */
    smtp_reader_t *r = smtp_reader_new();
    smtp_reply_t rep;
    const char *in = "550 2.0.0 odd\r\n";
    assert_int_equal(smtp_reader_feed(r, in, strlen(in)), 0);
    assert_int_equal(smtp_reader_next(r, &rep), 1);
    assert_string_equal(rep.enhanced, "");
    assert_string_equal(rep.text, "2.0.0 odd");
    smtp_reader_free(r);
}

static void test_reset(void **state)
{
    (void)state;
    smtp_reader_t *r = smtp_reader_new();
    smtp_reply_t rep;
    const char *in = "220 go ahead\r\n250 injected\r\n";
    assert_int_equal(smtp_reader_feed(r, in, strlen(in)), 0);
    assert_int_equal(smtp_reader_next(r, &rep), 1);
    assert_true(smtp_reader_pending(r) > 0);
    smtp_reader_reset(r);
    assert_int_equal(smtp_reader_pending(r), 0);
    assert_int_equal(smtp_reader_next(r, &rep), 0);
    smtp_reader_free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_whole),         cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_random_splits), cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_overlong),      cmocka_unit_test(test_enhanced),
        cmocka_unit_test(test_reset),
    };
    return cmocka_run_group_tests_name("reply", tests, NULL, NULL);
}
