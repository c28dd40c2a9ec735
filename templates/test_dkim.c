/* Unit tests for templates/dkim: relaxed canonicalisation (RFC 6376 3.4.5's
 * examples), streamed body hashing, key loading, and signatures checked with
 * OpenSSL's verify over the signed data rebuilt from the message. (The
 * integration test verifies the same messages with dkimpy, an independent
 * implementation.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/evp.h>
#include <openssl/pem.h>

#include "common/err.h"
#include "templates/dkim.h"

static void test_canon_rfc_example(void **state)
{
    (void)state;
    /* RFC 6376 3.4.5: "A: X" and "B : Y<TAB><CRLF><TAB>Z  " become
     * "a:X" and "b:Y Z". */
    buf_t b;
    buf_init(&b, 1000);
    assert_int_equal(dkim_canon_header(&b, "A: X", 4), 0);
    const char *f2 = "B : Y\t\r\n\tZ  ";
    assert_int_equal(dkim_canon_header(&b, f2, strlen(f2)), 0);
    assert_string_equal(b.data, "a:X\r\nb:Y Z\r\n");
    /* Body: " C \r\nD \t E\r\n\r\n\r\n" becomes " C\r\nD E\r\n". */
    buf_reset(&b);
    const char *body = " C \r\nD \t E\r\n\r\n\r\n";
    assert_int_equal(dkim_canon_body(&b, body, strlen(body)), 0);
    assert_string_equal(b.data, " C\r\nD E\r\n");
    buf_free(&b);
}

static void test_canon_body_edges(void **state)
{
    (void)state;
    buf_t b;
    buf_init(&b, 1000);
    assert_int_equal(dkim_canon_body(&b, "", 0), 0);
    assert_int_equal(b.len, 0); /* an empty body stays empty (relaxed) */
    assert_int_equal(dkim_canon_body(&b, "\r\n\r\n", 4), 0);
    assert_int_equal(b.len, 0);
    assert_int_equal(dkim_canon_body(&b, "abc", 3), 0); /* a CRLF is added */
    assert_string_equal(b.data, "abc\r\n");
    buf_reset(&b);
    assert_int_equal(dkim_canon_body(&b, "a  \r\n \r\nb\t", 10), 0);
    assert_string_equal(b.data, "a\r\n\r\nb\r\n");
    buf_free(&b);
}

/* The hash of a body fed in pieces, split at every position (between CR and
 * LF too), equals the hash of the whole. */
static void test_body_hash_streamed(void **state)
{
    (void)state;
    const char *body = "Line one  \r\n\tindented\t\r\n\r\nx y  z\r\n\r\n\r\n";
    size_t n = strlen(body);
    uint8_t whole[DKIM_HASH_LEN], part[DKIM_HASH_LEN];
    struct iovec one = {(void *)body, n};
    assert_int_equal(dkim_body_hash_once(&one, 1, whole), 0);
    /* And it is the SHA-256 of the canonical form. */
    buf_t b;
    buf_init(&b, 1000);
    assert_int_equal(dkim_canon_body(&b, body, n), 0);
    uint8_t ref[32];
    unsigned int rl;
    EVP_Digest(b.data, b.len, ref, &rl, EVP_sha256(), NULL);
    assert_memory_equal(ref, whole, 32);
    buf_free(&b);
    for (size_t cut = 0; cut <= n; cut++) {
        for (size_t cut2 = cut; cut2 <= n; cut2 += 3) {
            struct iovec three[3] = {{(void *)body, cut},
                                     {(void *)(body + cut), cut2 - cut},
                                     {(void *)(body + cut2), n - cut2}};
            assert_int_equal(dkim_body_hash_once(three, 3, part), 0);
            assert_memory_equal(part, whole, DKIM_HASH_LEN);
        }
    }
}

static char *make_pem(const char *type)
{
    EVP_PKEY *pk = !strcmp(type, "RSA") ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024)
                                        : EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    assert_non_null(pk);
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(bio, pk, NULL, NULL, 0, NULL, NULL);
    char *p;
    long len = BIO_get_mem_data(bio, &p);
    char *out = malloc((size_t)len + 1);
    memcpy(out, p, (size_t)len);
    out[len] = '\0';
    BIO_free(bio);
    EVP_PKEY_free(pk);
    return out;
}

static void test_key_errors(void **state)
{
    (void)state;
    dkim_key_t *k;
    char err[300];
    assert_int_equal(dkim_key_load(&k, "example.com", "s", "/nonexistent/key.pem", err, sizeof err),
                     VL_ENOENT);
    assert_non_null(strstr(err, "/nonexistent/key.pem"));
    assert_int_equal(dkim_key_from_pem(&k, "example.com", "s", "garbage", 7, err, sizeof err),
                     VL_ECONFIG);
    char *pem = make_pem("ED25519");
    assert_int_equal(dkim_key_from_pem(&k, "exa mple.com", "s", pem, strlen(pem), err, sizeof err),
                     VL_ECONFIG);
    assert_int_equal(
        dkim_key_from_pem(&k, "example.com", "s;x=1", pem, strlen(pem), err, sizeof err),
        VL_ECONFIG);
    assert_int_equal(dkim_key_from_pem(&k, "example.com", "s", pem, strlen(pem), err, sizeof err),
                     0);
    assert_int_equal(dkim_key_alg(k), DKIM_ED25519_SHA256);
    dkim_key_free(k);
    free(pem);
}

/* Find field `name` (case-insensitive) in a header block; its text without
 * the final CRLF. */
static const char *find_field(const char *h, const char *name, size_t *len)
{
    size_t nl = strlen(name);
    const char *p = h;
    while (*p) {
        const char *e = p;
        for (;;) {
            e = strstr(e, "\r\n");
            if (!e || (e[2] != ' ' && e[2] != '\t')) break;
            e += 2;
        }
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            *len = (size_t)(e - p);
            return p;
        }
        p = e + 2;
    }
    return NULL;
}

/* Verify the first DKIM-Signature of msg (header fields only) with the key
 * in pem: rebuild the signed data from h= and the field with b= emptied. */
static int verify(const char *sigs, const char *hdr, const char *pem, const uint8_t *bh)
{
    size_t sl;
    const char *sig = find_field(sigs, "DKIM-Signature", &sl);
    assert_non_null(sig);
    char *s = strndup(sig, sl);
    /* bh= must be the body hash given. */
    char bhb64[64];
    EVP_EncodeBlock((unsigned char *)bhb64, bh, 32);
    assert_non_null(strstr(s, bhb64));
    /* h= list. */
    char hl[400] = "";
    const char *h = strstr(s, " h=");
    size_t k = 0;
    for (h += 3; *h != ';'; h++)
        if (*h != ' ' && *h != '\r' && *h != '\n') hl[k++] = *h;
    hl[k] = '\0';
    buf_t data;
    buf_init(&data, 1 << 20);
    int seen_from = 0;
    for (char *tok = strtok(hl, ":"); tok; tok = strtok(NULL, ":")) {
        size_t fl;
        const char *f = find_field(hdr, tok, &fl);
        if (!strcasecmp(tok, "from") && seen_from++)
            continue; /* the oversigned From names no further instance */
        assert_non_null(f);
        assert_int_equal(dkim_canon_header(&data, f, fl), 0);
    }
    /* The signature field with an empty b=. */
    char *b = strstr(s, " b=");
    assert_non_null(b);
    b[3] = '\0';
    assert_int_equal(dkim_canon_header(&data, s, strlen(s)), 0);
    data.len -= 2;
    /* The signature value. */
    const char *bv = strstr(sig, " b=") + 3;
    unsigned char raw[600];
    char clean[900];
    size_t cl = 0;
    for (; bv < sig + sl; bv++)
        if (*bv != ' ' && *bv != '\r' && *bv != '\n' && *bv != '\t') clean[cl++] = *bv;
    clean[cl] = '\0';
    int rawlen = EVP_DecodeBlock(raw, (unsigned char *)clean, (int)cl);
    while (cl > 0 && clean[--cl] == '=')
        rawlen--;
    BIO *bio = BIO_new_mem_buf(pem, -1);
    EVP_PKEY *pk = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
    BIO_free(bio);
    uint8_t digest[32];
    unsigned int dl;
    EVP_Digest(data.data, data.len, digest, &dl, EVP_sha256(), NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok;
    if (EVP_PKEY_get_id(pk) == EVP_PKEY_ED25519) {
        EVP_DigestVerifyInit(ctx, NULL, NULL, NULL, pk);
        ok = EVP_DigestVerify(ctx, raw, (size_t)rawlen, digest, 32);
    } else {
        EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, pk);
        ok = EVP_DigestVerify(ctx, raw, (size_t)rawlen, (unsigned char *)data.data, data.len);
    }
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(pk);
    buf_free(&data);
    free(s);
    return ok == 1;
}

static const char hdr[] = "From: Ann <ann@example.com>\r\n"
                          "To: bob@example.net\r\n"
                          "Subject: a  folded\r\n\tsubject \r\n"
                          "Date: Tue, 14 Jan 2025 08:00:00 +0000\r\n"
                          "Message-ID: <1@example.com>\r\n"
                          "MIME-Version: 1.0\r\n"
                          "Content-Type: text/plain; charset=UTF-8\r\n"
                          "X-Not-Signed: whatever\r\n";

static void sign_and_check(const char *type)
{
    char *pem = make_pem(type);
    dkim_key_t *k;
    char err[200];
    assert_int_equal(dkim_key_from_pem(&k, "example.com", "sel", pem, strlen(pem), err, sizeof err),
                     0);
    dkim_signer_t *s;
    assert_int_equal(dkim_signer_new(&s, &k, 1), 0);
    struct iovec body = {"Hello\r\n", 7};
    uint8_t bh[32];
    assert_int_equal(dkim_body_hash(s, &body, 1, bh), 0);
    buf_t out;
    buf_init(&out, 10000);
    /* The same signer signs many messages: its contexts are reused. */
    for (int i = 0; i < 3; i++) {
        buf_reset(&out);
        assert_int_equal(dkim_sign(s, &out, hdr, strlen(hdr), bh, 1736841600), 0);
        assert_true(verify(out.data, hdr, pem, bh));
    }
    assert_non_null(strstr(out.data, "h=from:from:to:subject:date:message-id:mime-version:"));
    assert_null(strstr(out.data, "x-not-signed"));
    assert_null(strstr(out.data, "list-unsubscribe"));
    /* A changed Subject no longer verifies. */
    char *tampered = strdup(hdr);
    memcpy(strstr(tampered, "folded"), "FOLDED", 6);
    assert_false(verify(out.data, tampered, pem, bh));
    free(tampered);
    /* No From: refused. */
    assert_int_equal(dkim_sign(s, &out, "To: a@b.example\r\n", 17, bh, 1), VL_EINVAL);
    buf_free(&out);
    dkim_signer_free(s);
    dkim_key_free(k);
    free(pem);
}

static void test_sign_rsa(void **state)
{
    (void)state;
    sign_and_check("RSA");
}

static void test_sign_ed25519(void **state)
{
    (void)state;
    sign_and_check("ED25519");
}

static void test_two_keys(void **state)
{
    (void)state;
    char *p1 = make_pem("RSA"), *p2 = make_pem("ED25519");
    dkim_key_t *k[2];
    assert_int_equal(dkim_key_from_pem(&k[0], "example.com", "r", p1, strlen(p1), NULL, 0), 0);
    assert_int_equal(dkim_key_from_pem(&k[1], "example.com", "e", p2, strlen(p2), NULL, 0), 0);
    dkim_signer_t *s;
    assert_int_equal(dkim_signer_new(&s, k, 2), 0);
    uint8_t bh[32] = {0};
    buf_t out;
    buf_init(&out, 10000);
    assert_int_equal(dkim_sign(s, &out, hdr, strlen(hdr), bh, 1), 0);
    const char *second = strstr(out.data + 1, "DKIM-Signature:");
    assert_non_null(second);
    assert_non_null(strstr(out.data, "a=rsa-sha256"));
    assert_non_null(strstr(second, "a=ed25519-sha256"));
    assert_true(verify(out.data, hdr, p1, bh));
    assert_true(verify(second, hdr, p2, bh));
    /* Lines of the signature fields stay short. */
    size_t start = 0;
    for (size_t i = 0; i < out.len; i++)
        if (out.data[i] == '\n') {
            assert_true(i - start <= 78);
            start = i + 1;
        }
    buf_free(&out);
    dkim_signer_free(s);
    dkim_key_free(k[0]);
    dkim_key_free(k[1]);
    free(p1);
    free(p2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canon_rfc_example),  cmocka_unit_test(test_canon_body_edges),
        cmocka_unit_test(test_body_hash_streamed), cmocka_unit_test(test_key_errors),
        cmocka_unit_test(test_sign_rsa),           cmocka_unit_test(test_sign_ed25519),
        cmocka_unit_test(test_two_keys),
    };
    return cmocka_run_group_tests_name("dkim", tests, NULL, NULL);
}
