/* Unit tests for templates/mime: body encoders, RFC 2047 words, RFC 2231
 * parameters, addresses, header injection. Decoders here are written
 * independently of the encoders so round trips check real bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "templates/mime.h"

/* ---- helpers ---- */

static int b64val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

/* Decode base64, skipping CR/LF; returns the length. */
static size_t b64dec(const char *s, size_t n, unsigned char *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int v = b64val((unsigned char)s[i]);
        if (v < 0) continue;
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    return o;
}

static int hexv(int c)
{
    return c <= '9' ? c - '0' : (c & ~32) - 'A' + 10;
}

/* Decode quoted-printable (soft breaks removed, CRLF kept). */
static size_t qpdec(const char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '=' && i + 2 < n && s[i + 1] == '\r' && s[i + 2] == '\n') {
            i += 2;
        } else if (s[i] == '=' && i + 2 < n) {
            out[o++] = (unsigned char)(hexv(s[i + 1]) * 16 + hexv(s[i + 2]));
            i += 2;
        } else {
            out[o++] = (unsigned char)s[i];
        }
    }
    return o;
}

/* Every line ends in CRLF (except possibly the last) and is at most max long. */
static void assert_lines(const char *s, size_t n, size_t max)
{
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n') {
            assert_true(i > 0 && s[i - 1] == '\r');
            assert_true(i - 1 - start <= max);
            start = i + 1;
        } else if (s[i] == '\r') {
            assert_true(i + 1 < n && s[i + 1] == '\n');
        }
    }
    assert_true(n - start <= max);
}

/* Decode the RFC 2047 words of a header value (after "Name: "), checking
 * that each word's text is valid UTF-8 by itself (no split sequence). */
static size_t words_decode(const char *s, size_t n, unsigned char *out)
{
    size_t o = 0;
    const char *p = s, *end = s + n;
    while (p < end) {
        const char *w = strstr(p, "=?UTF-8?");
        if (!w || w >= end) break;
        char kind = w[8];
        const char *q = w + 10;
        const char *e = strstr(q, "?=");
        assert_non_null(e);
        assert_true(e - w + 2 <= 75); /* RFC 2047: an encoded word is at most 75 characters */
        unsigned char tmp[256];
        size_t tl;
        if (kind == 'B') {
            tl = b64dec(q, (size_t)(e - q), tmp);
        } else {
            tl = 0;
            for (const char *c = q; c < e; c++) {
                if (*c == '_') {
                    tmp[tl++] = ' ';
                } else if (*c == '=') {
                    tmp[tl++] = (unsigned char)(hexv(c[1]) * 16 + hexv(c[2]));
                    c += 2;
                } else {
                    tmp[tl++] = (unsigned char)*c;
                }
            }
        }
        /* No word may end inside a UTF-8 sequence. */
        size_t i = 0;
        while (i < tl) {
            unsigned char c = tmp[i];
            size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            assert_true(i + len <= tl);
            i += len;
        }
        memcpy(out + o, tmp, tl);
        o += tl;
        p = e + 2;
    }
    return o;
}

/* ---- base64 ---- */

static void test_b64_vectors(void **state)
{
    (void)state;
    static const char *const in[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    static const char *const want[] = {
        "", "Zg==\r\n", "Zm8=\r\n", "Zm9v\r\n", "Zm9vYg==\r\n", "Zm9vYmE=\r\n", "Zm9vYmFy\r\n"};
    for (int i = 0; i < 7; i++) {
        buf_t b;
        buf_init(&b, 1000);
        assert_int_equal(mime_b64_encode(&b, in[i], strlen(in[i])), 0);
        assert_int_equal(b.len, strlen(want[i]));
        if (b.len) assert_memory_equal(b.data, want[i], b.len);
        assert_int_equal(mime_b64_encoded_len(strlen(in[i])), b.len);
        buf_free(&b);
    }
}

static void test_b64_lines_exact(void **state)
{
    (void)state;
    for (size_t n = 0; n < 400; n += 7) {
        unsigned char *src = malloc(n + 1), *dec = malloc(n + 8);
        for (size_t i = 0; i < n; i++)
            src[i] = (unsigned char)(i * 131 + n);
        buf_t b;
        buf_init(&b, 1 << 20);
        assert_int_equal(mime_b64_encode(&b, src, n), 0);
        assert_int_equal(b.len, mime_b64_encoded_len(n));
        assert_lines(b.data ? b.data : "", b.len, 76);
        /* All full lines are exactly 76 characters. */
        for (size_t i = 0; i + 78 <= b.len; i += 78)
            assert_memory_equal(b.data + i + 76, "\r\n", 2);
        assert_int_equal(b64dec(b.data ? b.data : "", b.len, dec), n);
        if (n) assert_memory_equal(dec, src, n);
        buf_free(&b);
        free(src);
        free(dec);
    }
}

/* ---- quoted-printable ---- */

static void test_qp_exact(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 1000);
    const char *in = "a=b \nc\td\t\r\nlone\rcr \xc3\xa9";
    assert_int_equal(mime_qp_encode(&b, in, strlen(in)), 0);
    assert_string_equal(b.data, "a=3Db=20\r\nc\td=09\r\nlone=0Dcr =C3=A9");
    buf_free(&b);
}

static void test_qp_lines_roundtrip(void **state)
{
    (void)state;
    /* Long lines of mixed ASCII, '=' and UTF-8, with spaces at soft-break
     * points and at the ends of lines. */
    buf_t src;
    buf_init(&src, 1 << 20);
    for (int i = 0; i < 300; i++) {
        assert_int_equal(buf_puts(&src, i % 7 == 0 ? "中文=x " : "word "), 0);
        if (i % 50 == 49) assert_int_equal(buf_puts(&src, "  \r\n"), 0);
    }
    buf_t b;
    buf_init(&b, 1 << 20);
    assert_int_equal(mime_qp_encode(&b, src.data, src.len), 0);
    assert_lines(b.data, b.len, 76);
    for (size_t i = 0; i < b.len; i++)
        assert_true((unsigned char)b.data[i] < 128);
    /* No line ends in whitespace. */
    for (size_t i = 1; i < b.len; i++)
        if (b.data[i] == '\r') assert_true(b.data[i - 1] != ' ' && b.data[i - 1] != '\t');
    unsigned char *dec = malloc(src.len + 1);
    size_t dl = qpdec(b.data, b.len, dec);
    assert_int_equal(dl, src.len);
    assert_memory_equal(dec, src.data, src.len);
    free(dec);
    buf_free(&b);
    buf_free(&src);
}

/* The byte-by-byte rules of mime_text_cte, written plainly, to check its
 * word-at-a-time paths against. */
static enum mime_cte ref_cte(const unsigned char *s, size_t n, bool *clean)
{
    size_t line_start = 0, maxline = 0, enc = 0;
    bool bad7 = false, bare = false, boundary = n >= 4 && !memcmp(s, "--=_", 4);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\n' || (c == '\r' && i + 1 < n && s[i + 1] == '\n')) {
            if (c == '\n' && (i == 0 || s[i - 1] != '\r')) bare = true;
            size_t end = c == '\r' ? i : (i > 0 && s[i - 1] == '\r' ? i - 1 : i);
            if (end >= line_start && end - line_start > maxline) maxline = end - line_start;
            if (c == '\r') i++;
            line_start = i + 1;
            if (line_start + 4 <= n && !memcmp(s + line_start, "--=_", 4)) boundary = true;
        } else if (c == '\r') {
            bare = true;
            enc++;
        } else if (c == '=') {
            enc++;
        } else if ((c < 0x20 && c != '\t') || c >= 0x7f) {
            enc++;
            bad7 = true;
        }
    }
    if (n - line_start > maxline) maxline = n - line_start;
    bool ok7 = !bad7 && maxline <= MIME_HARD_LINE_MAX && !boundary;
    *clean = ok7 && !bare;
    if (ok7) return MIME_CTE_7BIT;
    if (n + 2 * enc <= (n + 2) / 3 * 4) return MIME_CTE_QP;
    return MIME_CTE_BASE64;
}

/* Random texts from an alphabet of the bytes that matter, lines long and
 * short: mime_text_cte agrees with the plain rules on every one. */
static void test_text_cte_random(void **state)
{
    (void)state;
    static const unsigned char alpha[] = {'a', 'b', ' ',  '.',  '\r', '\n', '=', '\t',
                                          '-', '_', 0x7f, 0x80, 0xe4, 0x01, 'z', 'Q'};
    unsigned char buf[2100];
    uint64_t seed = 12345;
    for (int round = 0; round < 20000; round++) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        size_t n = (size_t)(seed >> 33) % (round % 10 == 0 ? sizeof buf : 40);
        /* Mostly plain letters, so that the fast path is taken often. */
        int rare = (int)((seed >> 20) % 64) + 1;
        for (size_t i = 0; i < n; i++) {
            seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
            unsigned r = (unsigned)(seed >> 40);
            buf[i] = r % (unsigned)rare == 0 ? alpha[(r >> 8) % sizeof alpha]
                                             : (unsigned char)('a' + r % 26);
        }
        if (round % 7 == 0 && n >= 6) memcpy(buf + n / 2, "\r\n--=_", 6);
        bool c1 = false, c2 = false;
        enum mime_cte want = ref_cte(buf, n, &c2);
        enum mime_cte got = mime_text_cte(buf, n, &c1);
        if (got != want || c1 != c2)
            fail_msg("round %d (n %zu): got %d clean %d, want %d clean %d", round, n, got, c1, want,
                     c2);
    }
}

static void test_text_cte(void **state)
{
    (void)state;
    bool clean;
    assert_int_equal(mime_text_cte("hello\r\nworld\r\n", 14, &clean), MIME_CTE_7BIT);
    assert_true(clean);
    assert_int_equal(mime_text_cte("hello\nworld", 11, &clean), MIME_CTE_7BIT);
    assert_false(clean); /* a bare LF must become CRLF */
    assert_int_equal(mime_text_cte("x\r\n--=_vl_abc\r\n", 15, &clean), MIME_CTE_QP);
    assert_int_equal(mime_text_cte("caf\xc3\xa9 au lait", 14, NULL), MIME_CTE_QP);
    const char *zh = "\xe4\xbd\xa0\xe5\xa5\xbd\xe4\xb8\x96\xe7\x95\x8c";
    assert_int_equal(mime_text_cte(zh, strlen(zh), NULL), MIME_CTE_BASE64);
    char *longline = malloc(1200);
    memset(longline, 'a', 1200);
    assert_int_equal(mime_text_cte(longline, 1200, NULL), MIME_CTE_QP);
    assert_int_equal(mime_text_cte(longline, 998, NULL), MIME_CTE_7BIT);
    free(longline);
    buf_t b;
    buf_init(&b, 100);
    assert_int_equal(mime_7bit_encode(&b, "a\nb\rc\r\n", 7), 0);
    assert_string_equal(b.data, "a\r\nb\r\nc\r\n");
    /* Base64 text goes in canonical CRLF form. */
    buf_reset(&b);
    assert_int_equal(mime_body_encode(&b, MIME_CTE_BASE64, "a\nb", 3), 0);
    unsigned char dec[16];
    assert_int_equal(b64dec(b.data, b.len, dec), 4);
    assert_memory_equal(dec, "a\r\nb", 4);
    buf_free(&b);
}

/* ---- header fields ---- */

static void test_2047_folding(void **state)
{
    (void)state;
    /* Long Chinese (B), accented Latin (Q), mixed with 4-byte emoji. */
    const char *vals[] = {
        "你好，世界！这是一个很长的主题，用来测试折叠是否会拆开多字节字符，一二三四五六七八九十",
        "Caf\xc3\xa9 cr\xc3\xa8me br\xc3\xbbl\xc3\xa9"
        "e for the whole team, with a rather long "
        "subject line",
        "\xf0\x9f\x8e\x89 Party \xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89"
        "\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89\xf0\x9f\x8e\x89 time",
    };
    for (int k = 0; k < 3; k++) {
        buf_t b;
        buf_init(&b, 10000);
        assert_int_equal(mime_header_text(&b, "Subject", vals[k], strlen(vals[k])), 0);
        assert_lines(b.data, b.len, 76);
        assert_memory_equal(b.data, "Subject: =?UTF-8?", 17);
        assert_non_null(strstr(b.data, "\r\n ")); /* folded */
        for (size_t i = 0; i < b.len; i++)
            assert_true((unsigned char)b.data[i] < 128);
        unsigned char dec[1000];
        size_t dl = words_decode(b.data + 9, b.len - 9, dec);
        assert_int_equal(dl, strlen(vals[k]));
        assert_memory_equal(dec, vals[k], dl);
        buf_free(&b);
    }
}

static void test_header_ascii(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 10000);
    assert_int_equal(mime_header_text(&b, "Subject", "Hello world", 11), 0);
    assert_string_equal(b.data, "Subject: Hello world\r\n");
    buf_reset(&b);
    /* A long ASCII value folds at spaces and unfolds to the same text. */
    char v[400];
    size_t n = 0;
    for (int i = 0; i < 60; i++)
        n += (size_t)snprintf(v + n, sizeof v - n, "w%d ", i);
    v[--n] = '\0';
    assert_int_equal(mime_header_text(&b, "X-Long", v, n), 0);
    assert_lines(b.data, b.len, 78);
    char unf[500];
    size_t u = 0;
    for (size_t i = 8; i + 2 < b.len; i++)
        if (b.data[i] != '\r' && b.data[i] != '\n') unf[u++] = b.data[i];
    unf[u] = '\0';
    assert_string_equal(unf, v);
    /* "=?" in plain text would be decoded by readers: it is encoded. */
    buf_reset(&b);
    assert_int_equal(mime_header_text(&b, "Subject", "a =?x?= b", 9), 0);
    unsigned char dec[64];
    assert_int_equal(words_decode(b.data + 9, b.len - 9, dec), 9);
    assert_memory_equal(dec, "a =?x?= b", 9);
    buf_free(&b);
}

static void test_header_injection(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 10000);
    assert_int_equal(buf_puts(&b, "X: y\r\n"), 0);
    const char *evil[] = {"Hi\r\nBcc: victim@example.net", "Hi\nBcc: v@x", "Hi\rX: y"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(mime_header_text(&b, "Subject", evil[i], strlen(evil[i])), VL_EINVAL);
        assert_int_equal(b.len, 6); /* nothing written */
        mime_addr_t a = {evil[i], strlen(evil[i]), "a@b.example", 11};
        assert_int_equal(mime_header_addr(&b, "To", &a), VL_EINVAL);
        assert_int_equal(b.len, 6);
        size_t col = 0;
        assert_int_equal(mime_param(&b, &col, "filename", evil[i], strlen(evil[i])), VL_EINVAL);
    }
    assert_true(mime_has_crlf("a\nb", 3));
    assert_false(mime_has_crlf("a b", 3));
    assert_true(mime_valid_field_name("X-Tag", 5));
    assert_false(mime_valid_field_name("X Tag", 5));
    assert_false(mime_valid_field_name("X:Tag", 5));
    buf_free(&b);
}

static void test_addresses(void **state)
{
    (void)state;
    mime_addr_t a;
    assert_int_equal(mime_addr_parse(" Ann Lee <ann@example.com> ", 27, &a), 0);
    assert_int_equal(a.name_len, 7);
    assert_memory_equal(a.name, "Ann Lee", 7);
    assert_int_equal(a.addr_len, 15);
    assert_memory_equal(a.addr, "ann@example.com", 15);
    const char *q = "\"Lee, Ann <x>\" <ann@example.com>";
    assert_int_equal(mime_addr_parse(q, strlen(q), &a), 0);
    assert_memory_equal(a.name, "Lee, Ann <x>", a.name_len);
    assert_int_equal(mime_addr_parse("ann@example.com", 15, &a), 0);
    assert_int_equal(a.name_len, 0);
    assert_int_equal(mime_addr_parse("Ann <ann@example.com", 20, &a), VL_EPARSE);
    assert_int_equal(mime_addr_parse("   ", 3, &a), VL_EPARSE);

    buf_t b;
    buf_init(&b, 10000);
    mime_addr_t x = {"Lee, Ann \"A\"", 12, "ann@example.com", 15};
    assert_int_equal(mime_header_addr(&b, "To", &x), 0);
    assert_string_equal(b.data, "To: \"Lee, Ann \\\"A\\\"\" <ann@example.com>\r\n");
    buf_reset(&b);
    mime_addr_t z = {"张伟", strlen("张伟"), "wei@example.com", 15};
    assert_int_equal(mime_header_addr(&b, "From", &z), 0);
    unsigned char dec[64];
    size_t dl = words_decode(b.data, b.len, dec);
    assert_int_equal(dl, strlen("张伟"));
    assert_memory_equal(dec, "张伟", dl);
    assert_non_null(strstr(b.data, " <wei@example.com>\r\n"));
    buf_free(&b);
}

static void test_2231_params(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 10000);
    size_t col = 20;
    assert_int_equal(mime_param(&b, &col, "filename", "report.pdf", 10), 0);
    assert_string_equal(b.data, ";\r\n filename=report.pdf");
    buf_reset(&b);
    assert_int_equal(mime_param(&b, &col, "filename", "my report.pdf", 13), 0);
    assert_string_equal(b.data, ";\r\n filename=\"my report.pdf\"");
    buf_reset(&b);
    const char *zh = "二〇二五年春季会员活动说明与报名须知（请仔细阅读）.pdf";
    assert_int_equal(mime_param(&b, &col, "filename", zh, strlen(zh)), 0);
    assert_lines(b.data, b.len, 76);
    assert_non_null(strstr(b.data, "filename*0*=UTF-8''"));
    assert_non_null(strstr(b.data, "filename*1*="));
    /* Reassemble the sections and percent-decode: the name comes back, and
     * no section ends inside a UTF-8 sequence. */
    unsigned char dec[400];
    size_t dl = 0;
    const char *p = b.data;
    while ((p = strstr(p, "filename*"))) {
        const char *v = strchr(p, '=') + 1;
        if (!strncmp(v, "UTF-8''", 7)) v += 7;
        size_t start = dl;
        while (*v && *v != ';' && *v != '\r') {
            if (*v == '%') {
                dec[dl++] = (unsigned char)(hexv(v[1]) * 16 + hexv(v[2]));
                v += 3;
            } else {
                dec[dl++] = (unsigned char)*v++;
            }
        }
        for (size_t i = start; i < dl;) {
            unsigned char c = dec[i];
            size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
            assert_true(i + len <= dl);
            i += len;
        }
        p = v;
    }
    assert_int_equal(dl, strlen(zh));
    assert_memory_equal(dec, zh, dl);
    /* The RFC 2047 form for the name= parameter. */
    buf_reset(&b);
    assert_int_equal(mime_param_2047(&b, &col, "name", zh, strlen(zh)), 0);
    assert_memory_equal(b.data, ";\r\n name=\"=?UTF-8?", 18);
    dl = words_decode(b.data, b.len, dec);
    assert_int_equal(dl, strlen(zh));
    assert_memory_equal(dec, zh, dl);
    buf_free(&b);
}

static void test_file_part_and_date(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 10000);
    assert_int_equal(mime_file_part(&b, "image/png", "inline", "logo.png", "logo", "\x89PNG", 4),
                     0);
    assert_non_null(strstr(b.data, "Content-Type: image/png;\r\n name=logo.png\r\n"));
    assert_non_null(strstr(b.data, "Content-Transfer-Encoding: base64\r\n"));
    assert_non_null(strstr(b.data, "Content-Disposition: inline;\r\n filename=logo.png\r\n"));
    assert_non_null(strstr(b.data, "Content-ID: <logo>\r\n\r\niVBORw==\r\n"));
    buf_reset(&b);
    assert_int_equal(mime_file_part(&b, "text/plain", "attachment", "a\r\nb", NULL, "x", 1),
                     VL_EINVAL);
    buf_free(&b);
    char d[MIME_DATE_MAX];
    assert_int_equal(mime_date(d, 1736841600), 31);
    assert_string_equal(d, "Tue, 14 Jan 2025 08:00:00 +0000");
    char bd[MIME_BOUNDARY_MAX];
    uint8_t seed[12] = {0xde, 0xad, 0xbe, 0xef};
    mime_boundary(bd, seed, 2);
    assert_string_equal(bd, "=_vl_deadbeef0000000000000000_2");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64_vectors),      cmocka_unit_test(test_b64_lines_exact),
        cmocka_unit_test(test_qp_exact),         cmocka_unit_test(test_qp_lines_roundtrip),
        cmocka_unit_test(test_text_cte),         cmocka_unit_test(test_text_cte_random),
        cmocka_unit_test(test_2047_folding),     cmocka_unit_test(test_header_ascii),
        cmocka_unit_test(test_header_injection), cmocka_unit_test(test_addresses),
        cmocka_unit_test(test_2231_params),      cmocka_unit_test(test_file_part_and_date),
    };
    return cmocka_run_group_tests_name("mime", tests, NULL, NULL);
}
