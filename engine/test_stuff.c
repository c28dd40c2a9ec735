/* Unit tests for dot-stuffing and CRLF normalisation: the zero-copy segment
 * lists must equal a plain byte-by-byte reference on random input split into
 * random iovecs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "engine/stuff.h"

/* The reference: RFC 5321 §4.5.2 transparency on a flat buffer. */
static size_t reference(const char *in, size_t n, int dot, char *out)
{
    size_t o = 0;
    int line_start = 1;
    for (size_t i = 0; i < n; i++) {
        char c = in[i];
        if (c == '\r') {
            out[o++] = '\r';
            out[o++] = '\n';
            if (i + 1 < n && in[i + 1] == '\n') i++;
            line_start = 1;
            continue;
        }
        if (c == '\n') {
            out[o++] = '\r';
            out[o++] = '\n';
            line_start = 1;
            continue;
        }
        if (line_start && c == '.' && dot) out[o++] = '.';
        out[o++] = c;
        line_start = 0;
    }
    if (!line_start) {
        out[o++] = '\r';
        out[o++] = '\n';
    }
    return o;
}

static size_t flatten(const eng__iovv_t *a, char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < a->n; i++) {
        memcpy(out + o, a->v[i].iov_base, a->v[i].iov_len);
        o += a->v[i].iov_len;
    }
    return o;
}

static void check(const char *in, size_t n, const struct iovec *iov, size_t niov, int clean,
                  int dot)
{
    char *want = malloc(2 * n + 4), *got = malloc(2 * n + 4);
    size_t wl = reference(in, n, dot, want);
    eng__iovv_t a;
    eng__iovv_init(&a);
    long tl = eng__stuff(&a, iov, niov, clean, dot);
    assert_true(tl >= 0);
    size_t gl = flatten(&a, got);
    assert_int_equal(gl, (size_t)tl);
    assert_int_equal(gl, wl);
    assert_memory_equal(got, want, wl);
    eng__iovv_free(&a);
    free(want);
    free(got);
}

static void test_examples(void **state)
{
    (void)state;
    const char *cases[] = {"",   "a",  ".",        "..\r\n",        "a\r\n.b\r\n", ".x\n.y\r.z",
                           "\r", "\n", "a\r\r\nb", "end with cr\r", ".\r\n.\r\n"};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = strlen(cases[i]);
        struct iovec iov = {(void *)cases[i], n};
        check(cases[i], n, &iov, 1, 0, 1);
        check(cases[i], n, &iov, 1, 0, 0);
    }
}

static void test_random(void **state)
{
    (void)state;
    static const char alphabet[] = "ab.\r\n.";
    srand(777);
    for (int round = 0; round < 5000; round++) {
        size_t n = (size_t)rand() % 64;
        char *buf = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            buf[i] = alphabet[rand() % 6];
        /* Random split into up to 6 iovecs, some empty. */
        struct iovec iov[6];
        size_t niov = 1 + (size_t)rand() % 6, at = 0;
        for (size_t i = 0; i < niov; i++) {
            size_t l = i == niov - 1 ? n - at : (size_t)rand() % (n - at + 1);
            iov[i].iov_base = buf + at;
            iov[i].iov_len = l;
            at += l;
        }
        int dot = rand() % 2;
        check(buf, n, iov, niov, 0, dot);
        free(buf);
    }
}

static void test_clean_path(void **state)
{
    (void)state;
    /* CRLF-only input: the fast path must agree with the reference. */
    srand(99);
    for (int round = 0; round < 3000; round++) {
        char buf[256];
        size_t n = 0;
        int lines = rand() % 8;
        for (int l = 0; l < lines; l++) {
            int len = rand() % 6;
            for (int i = 0; i < len; i++)
                buf[n++] = "x.y"[rand() % 3];
            buf[n++] = '\r';
            buf[n++] = '\n';
        }
        if (rand() % 3 == 0) buf[n++] = '.'; /* no final CRLF */
        struct iovec iov[3];
        size_t a = n ? (size_t)rand() % (n + 1) : 0,
               b = a + (n - a ? (size_t)rand() % (n - a + 1) : 0);
        iov[0] = (struct iovec){buf, a};
        iov[1] = (struct iovec){buf + a, b - a};
        iov[2] = (struct iovec){buf + b, n - b};
        check(buf, n, iov, 3, 1, 1);
        check(buf, n, iov, 3, 1, 0);
    }
}

static void test_many_segments(void **state)
{
    (void)state;
    /* More than the inline slots: the array must grow. */
    char buf[400];
    for (int i = 0; i < 100; i++)
        memcpy(buf + 4 * i, ".a\r\n", 4);
    struct iovec iov = {buf, sizeof buf};
    check(buf, sizeof buf, &iov, 1, 1, 1);
    check(buf, sizeof buf, &iov, 1, 0, 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_examples),
        cmocka_unit_test(test_random),
        cmocka_unit_test(test_clean_path),
        cmocka_unit_test(test_many_segments),
    };
    return cmocka_run_group_tests_name("stuff", tests, NULL, NULL);
}
