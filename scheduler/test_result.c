/* test_result.c: the pure parts of the scheduler's storage format (result.h):
 * results, batch blobs, due-set members and row state bits. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "scheduler/keys.h"
#include "scheduler/result.h"

/* Every byte value, invalid UTF-8 and quotes survive as valid JSON that
 * jansson reads back (invalid bytes as U+FFFD). */
static void json_string_escapes(void **state)
{
    (void)state;
    char in[300];
    size_t n = 0;
    for (int c = 1; c < 0x80; c++)
        in[n++] = (char)c;
    memcpy(in + n, "\xE4\xBD\xA0\xFF\xC3(", 6); /* valid CJK, invalid byte, bad sequence */
    n += 6;
    buf_t b;
    buf_init(&b, 4096);
    assert_int_equal(sched_json_string(&b, in, n), 0);
    json_error_t e;
    json_t *v = json_loadb(b.data, b.len, JSON_DECODE_ANY, &e);
    assert_non_null(v);
    const char *s = json_string_value(v);
    assert_memory_equal(s, in, 0x7F);
    assert_string_equal(s + 0x7F, "\xE4\xBD\xA0\xEF\xBF\xBD\xEF\xBF\xBD(");
    json_decref(v);
    buf_free(&b);
}

static void text_equal(sched_text_t t, const char *want)
{
    buf_t b;
    buf_init(&b, 4096);
    assert_int_equal(sched_text_unescape(&b, t), 0);
    assert_int_equal(b.len, strlen(want));
    assert_memory_equal(b.len ? b.data : "", want, b.len);
    buf_free(&b);
}

static void result_round_trip(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 4096);
    sched_result_t r = {.email = "a\tb@c.d",
                        .provider = "netease",
                        .status = "deferred",
                        .attempts = 2,
                        .code = 451,
                        .enhanced = "4.7.1",
                        .response = "MI:SFQ \\slow\\\r\n\tnext \xFF line",
                        .host = NULL,
                        .first_ms = 1795256130123LL,
                        .last_ms = 1795256130999LL};
    assert_int_equal(sched_result_encode(&b, &r), 0);
    /* One line; record.lua and cancel replace the status as the text up to
     * the first tab. */
    assert_null(memchr(b.data, '\n', b.len));
    assert_null(memchr(b.data, '\r', b.len));
    assert_memory_equal(b.data, "deferred\t2\t451\t4.7.1\t", 21);
    sched_result_view_t v;
    assert_int_equal(sched_result_parse(b.data, b.len, &v), 0);
    text_equal(v.status, "deferred");
    text_equal(v.email, "a\tb@c.d");
    text_equal(v.provider, "netease");
    text_equal(v.enhanced, "4.7.1");
    text_equal(v.host, "");
    /* Invalid UTF-8 is stored as U+FFFD. */
    text_equal(v.response, "MI:SFQ \\slow\\\r\n\tnext \xEF\xBF\xBD line");
    assert_int_equal(v.attempts, 2);
    assert_int_equal(v.code, 451);
    assert_int_equal(v.first_ms, 1795256130123LL);
    assert_int_equal(v.last_ms, 1795256130999LL);

    /* A result with no reply (a row rejected at ingest) has empty columns. */
    buf_reset(&b);
    sched_result_t rej = {.status = "rejected", .response = "no address"};
    assert_int_equal(sched_result_encode(&b, &rej), 0);
    assert_int_equal(sched_result_parse(b.data, b.len, &v), 0);
    text_equal(v.email, "");
    text_equal(v.response, "no address");
    assert_int_equal(v.first_ms, 0);

    /* What is not a result is refused, never read past its end. */
    const char *bad[] = {"",
                         "delivered\t1\t250\t2.0.0\t1\t2\th\tp\te",       /* nine columns */
                         "delivered\t1\t250\t2.0.0\t1\t2\th\tp\te\tr\tx", /* eleven */
                         "\t1\t250\t2.0.0\t1\t2\th\tp\te\tr",             /* no status */
                         "delivered\tx\t250\t2.0.0\t1\t2\th\tp\te\tr",    /* attempts */
                         "delivered\t1\t\t2.0.0\t1\t2\th\tp\te\tr",       /* code */
                         "delivered\t1\t250\t2.0.0\t1\t99999999999999999999\th\tp\te\tr",
                         "{\"email\":\"a@b.c\",\"status\":\"delivered\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sched_result_parse(bad[i], strlen(bad[i]), &v), -1);
    /* A backslash at the very end stands for itself. */
    text_equal((sched_text_t){"x\\", 2}, "x\\");
    buf_free(&b);
}

static void blob_lines(void **state)
{
    (void)state;
    const char blob[] = "7\tnetease\t[\"a@163.com\",\"x\\ty\"]\n9\trest\t[]\n";
    size_t pos = 0;
    sched_line_t l;
    assert_int_equal(sched_blob_next(blob, strlen(blob), &pos, &l), 1);
    assert_int_equal(l.row, 7);
    assert_int_equal(l.provider_len, 7);
    assert_memory_equal(l.provider, "netease", 7);
    assert_int_equal(l.fields_len, strlen("[\"a@163.com\",\"x\\ty\"]"));
    assert_int_equal(sched_blob_next(blob, strlen(blob), &pos, &l), 1);
    assert_int_equal(l.row, 9);
    assert_int_equal(sched_blob_next(blob, strlen(blob), &pos, &l), 0);
    /* Truncated or garbled lines are errors, never reads past the end. */
    const char *bad[] = {"7\tnetease\t[]", "x\tp\t[]\n", "7netease\t[]\n", "7\tnetease[]\n"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        pos = 0;
        assert_int_equal(sched_blob_next(bad[i], strlen(bad[i]), &pos, &l), -1);
    }
}

static void members(void **state)
{
    (void)state;
    sched_member_t m;
    assert_int_equal(sched_member_parse("1-64/40", 7, &m), 0);
    assert_int_equal(m.first, 1);
    assert_int_equal(m.last, 64);
    assert_int_equal(m.row, 0);
    assert_int_equal(m.rows, 40);
    assert_int_equal(sched_member_parse("65-128:100", 10, &m), 0);
    assert_int_equal(m.row, 100);
    assert_int_equal(m.rows, 1);
    const char *bad[] = {"", "1-64", "64-1/3", "1-64:65", "1-64/3x", "1-64|3", "-1-2/3", "1-2/"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_int_equal(sched_member_parse(bad[i], strlen(bad[i]), &m), -1);
}

/* The bits GETRANGE returns for rows first..: u2 #row is bits 2*row and
 * 2*row+1, most significant first, as Redis's BITFIELD numbers them. */
static void row_states(void **state)
{
    (void)state;
    /* Rows 4..7 live in byte 1 (bits 8..15): row 4 = 2, row 5 = 0, row 6 = 1, row 7 = 3. */
    const char bits[] = {(char)0x87};
    assert_int_equal(sched_row_state(bits, 1, 4, 4), SCHED_ROW_FINAL);
    assert_int_equal(sched_row_state(bits, 1, 4, 5), SCHED_ROW_WAITING);
    assert_int_equal(sched_row_state(bits, 1, 4, 6), SCHED_ROW_ALONE);
    assert_int_equal(sched_row_state(bits, 1, 4, 7), 3);
    assert_int_equal(sched_row_state(bits, 1, 4, 8), SCHED_ROW_WAITING); /* past the end */
    /* A batch starting mid-byte (row 5): the bytes still start at row 4's. */
    assert_int_equal(sched_row_state(bits, 1, 5, 6), SCHED_ROW_ALONE);
}

/* What ingest encodes, the worker decodes: every byte value, NULs and
 * multibyte text included; and JSON it did not write (\\u escapes, surrogate
 * pairs, a lone surrogate) is still read. Malformed arrays are errors. */
static void fields_round_trip(void **state)
{
    (void)state;
    const char *f[] = {"a@b.c", "", "x\"y\\z\r\n\t", "\xE4\xBD\xA0\xE5\xA5\xBD", "nul\0in"};
    size_t fl[] = {5, 0, 8, 6, 6};
    buf_t enc, dec;
    buf_init(&enc, 4096);
    buf_init(&dec, 4096);
    assert_int_equal(buf_putc(&enc, '['), 0);
    for (size_t i = 0; i < 5; i++) {
        if (i) assert_int_equal(buf_putc(&enc, ','), 0);
        assert_int_equal(sched_json_string(&enc, f[i], fl[i]), 0);
    }
    assert_int_equal(buf_putc(&enc, ']'), 0);
    size_t offs[8], lens[8];
    assert_int_equal(sched_fields_decode(enc.data, enc.len, &dec, offs, lens, 8), 5);
    for (size_t i = 0; i < 5; i++) {
        assert_int_equal(lens[i], fl[i]);
        assert_memory_equal(dec.data + offs[i], f[i], fl[i]);
        assert_int_equal(dec.data[offs[i] + lens[i]], '\0');
    }
    /* Only max fields are kept. */
    assert_int_equal(sched_fields_decode(enc.data, enc.len, &dec, offs, lens, 2), 2);
    const char *other = "[\"\\u00e9\\ud83d\\ude00\\ud800x\\/\"]";
    assert_int_equal(sched_fields_decode(other, strlen(other), &dec, offs, lens, 8), 1);
    assert_string_equal(dec.data, "\xC3\xA9\xF0\x9F\x98\x80\xEF\xBF\xBDx/");
    assert_int_equal(sched_fields_decode("[]", 2, &dec, offs, lens, 8), 0);
    const char *bad[] = {"",         "[",         "[\"a\"",      "[\"a\",]", "[a]",
                         "[\"a\"x]", "[\"\\q\"]", "[\"\\u12\"]", "{\"a\"}"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        assert_true(sched_fields_decode(bad[i], strlen(bad[i]), &dec, offs, lens, 8) < 0);
    buf_free(&enc);
    buf_free(&dec);
}

/* A batch's results hashes are listed once per call, in the order a script
 * reads them (the second right after the first when a batch spans two). */
static void res_hashes(void **state)
{
    (void)state;
    unsigned long ks[8];
    size_t n = 0;
    assert_int_equal(sched_res_hashes_add(ks, &n, 1, 64), 0); /* rows 1..63 and 64 */
    assert_int_equal(n, 2);
    assert_int_equal(ks[0], 0);
    assert_int_equal(ks[1], 1);
    assert_int_equal(sched_res_hashes_add(ks, &n, 2, 63), 0);
    assert_int_equal(sched_res_hashes_add(ks, &n, 64, 127), 1);
    assert_int_equal(n, 2);
    assert_int_equal(sched_res_hashes_add(ks, &n, 100, 140), 2); /* 1 then 2: not at 1 */
    assert_int_equal(n, 4);
    assert_int_equal(ks[2], 1);
    assert_int_equal(ks[3], 2);
    assert_int_equal(sched_res_hashes_add(ks, &n, 130, 130), 3);
    assert_int_equal(sched_res_hashes_add(ks, &n, 9, 3), 0); /* a bad id reads as row f */
    assert_int_equal(n, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(json_string_escapes), cmocka_unit_test(result_round_trip),
        cmocka_unit_test(blob_lines),          cmocka_unit_test(members),
        cmocka_unit_test(row_states),          cmocka_unit_test(fields_round_trip),
        cmocka_unit_test(res_hashes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
