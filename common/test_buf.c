/* Unit tests for common/buf and common/err. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"

static void test_append_and_cap(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 8);
    assert_int_equal(buf_puts(&b, "abc"), 0);
    assert_int_equal(buf_printf(&b, "%d", 12345), 0);
    assert_string_equal(b.data, "abc12345");
    assert_int_equal(buf_putc(&b, 'x'), VL_ETOOBIG);
    assert_int_equal(b.len, 8); /* unchanged on failure */
    buf_consume(&b, 3);
    assert_string_equal(b.data, "12345");
    char *p = buf_take(&b);
    assert_string_equal(p, "12345");
    assert_null(b.data);
    free(p);
    buf_free(&b);

    /* The inline paths at each growth step and at the limit: one byte at a
     * time, then runs that end exactly at the cap. */
    buf_init(&b, 300);
    for (int i = 0; i < 300; i++) {
        assert_int_equal(buf_putc(&b, (char)('a' + i % 26)), 0);
        assert_int_equal(b.data[b.len], '\0');
        assert_true(b.cap > b.len);
    }
    assert_int_equal(buf_putc(&b, 'x'), VL_ETOOBIG);
    assert_int_equal(buf_append(&b, "x", 1), VL_ETOOBIG);
    assert_int_equal(buf_reserve(&b, 1), VL_ETOOBIG);
    assert_int_equal(buf_append(&b, "", 0), 0);
    assert_int_equal(b.len, 300);
    for (int i = 0; i < 300; i++)
        assert_int_equal(b.data[i], 'a' + i % 26);
    buf_reset(&b);
    char run[299];
    memset(run, 'r', sizeof run);
    assert_int_equal(buf_append(&b, run, sizeof run), 0);
    assert_int_equal(buf_puts(&b, "z"), 0);
    assert_int_equal(buf_puts(&b, "z"), VL_ETOOBIG);
    assert_int_equal(b.len, 300);
    assert_int_equal(b.data[299], 'z');
    assert_int_equal(b.data[300], '\0');
    buf_free(&b);
}

/* printf into the room there is, growing when it is not enough, never past
 * the cap; decimal without printf. */
static void test_printf_and_dec(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 1000);
    char big[600];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    assert_int_equal(buf_printf(&b, "<%s>", big), 0); /* more than the first room */
    assert_int_equal(b.len, 601);
    assert_int_equal(b.data[0], '<');
    assert_int_equal(b.data[600], '>');
    assert_int_equal(b.data[601], '\0');
    assert_int_equal(buf_printf(&b, "%s", big), VL_ETOOBIG); /* 1200 > 1000 */
    assert_int_equal(b.len, 601);
    assert_int_equal(b.data[601], '\0');
    buf_reset(&b);
    long long v[] = {0, 7, -7, 1234567890123LL, -9223372036854775807LL - 1, 9223372036854775807LL};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char want[32];
        snprintf(want, sizeof want, "%lld", v[i]);
        buf_reset(&b);
        assert_int_equal(buf_put_dec(&b, v[i]), 0);
        assert_string_equal(b.data, want);
    }
    /* Every digit count, odd and even, at its edges (the digits go two at a
     * time), through both writers. */
    for (unsigned long long p = 1; p <= 1000000000000000000ULL; p *= 10)
        for (unsigned long long d = 0; d < 3; d++) {
            unsigned long long u = p - 1 + d;
            char want[32], got[32];
            snprintf(want, sizeof want, "%llu", u);
            assert_int_equal(buf_fmt_dec(got, u), strlen(want));
            assert_string_equal(got, want);
            snprintf(want, sizeof want, "%lld", -(long long)u);
            buf_reset(&b);
            assert_int_equal(buf_put_dec(&b, -(long long)u), 0);
            assert_string_equal(b.data, want);
        }
    buf_free(&b);
    buf_init(&b, 3);
    assert_int_equal(buf_put_dec(&b, 1234), VL_ETOOBIG);
    assert_int_equal(buf_put_dec(&b, 123), 0);
    assert_string_equal(b.data, "123");
    buf_free(&b);
}

static void test_iov(void **state)
{
    (void)state;
    struct iovec iov[2] = {{"he", 2}, {"llo", 3}};
    buf_t b;
    buf_init(&b, 100);
    assert_int_equal(iov_total(iov, 2), 5);
    assert_int_equal(buf_append_iov(&b, iov, 2), 0);
    assert_memory_equal(b.data, "hello", 5);
    buf_free(&b);
}

static void test_err_table(void **state)
{
    (void)state;
    assert_string_equal(vl_err_str(VL_ETIMEOUT), "timed out");
    assert_string_equal(vl_err_name(VL_ETLSVERIFY), "TLSVERIFY");
    assert_string_equal(vl_err_str(12345), "unknown error");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_append_and_cap),
        cmocka_unit_test(test_printf_and_dec),
        cmocka_unit_test(test_iov),
        cmocka_unit_test(test_err_table),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
