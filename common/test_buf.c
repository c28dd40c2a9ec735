/* Unit tests for common/buf and common/err. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

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
        cmocka_unit_test(test_iov),
        cmocka_unit_test(test_err_table),
    };
    return cmocka_run_group_tests_name("buf", tests, NULL, NULL);
}
