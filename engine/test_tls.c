/* Unit tests for engine/tls: a client and a server wired back to back in
 * memory, with certificates made for the test by tests/support/gen-certs.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/buf.h"
#include "common/err.h"
#include "engine/tls.h"

static char tt_dir[256];
static char tt_ca[300], tt_other_ca[300], tt_cert[300], tt_key[300];

static int tt_setup(void **state)
{
    (void)state;
    snprintf(tt_dir, sizeof tt_dir, "/tmp/volley-tls-XXXXXX");
    if (!mkdtemp(tt_dir)) return -1;
    const char *src = getenv("SRCDIR");
    char cmd[1024];
    snprintf(cmd, sizeof cmd, "sh '%s/tests/support/gen-certs.sh' '%s'", src ? src : ".", tt_dir);
    if (system(cmd) != 0) return -1;
    snprintf(tt_ca, sizeof tt_ca, "%s/ca.pem", tt_dir);
    snprintf(tt_other_ca, sizeof tt_other_ca, "%s/other-ca.pem", tt_dir);
    snprintf(tt_cert, sizeof tt_cert, "%s/server.pem", tt_dir);
    snprintf(tt_key, sizeof tt_key, "%s/server.key", tt_dir);
    return 0;
}

static int tt_teardown(void **state)
{
    (void)state;
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tt_dir);
    return system(cmd) == 0 ? 0 : -1;
}

/* Move all pending ciphertext from one end to the other. Returns bytes moved. */
static size_t tt_move(tls_conn_t *from, tls_conn_t *to)
{
    buf_t b;
    buf_init(&b, 1 << 20);
    ssize_t n = tls_conn_take_out(from, &b);
    assert_true(n >= 0);
    if (n > 0) assert_int_equal(tls_conn_feed(to, b.data, b.len), 0);
    buf_free(&b);
    return (size_t)n;
}

/* Run both handshakes to completion or failure. The client's and server's
 * final results are stored; returns the client's. */
static int tt_handshake(tls_conn_t *cli, tls_conn_t *srv, int *srv_rc)
{
    int crc = 0, src = 0;
    for (int round = 0; round < 20; round++) {
        if (crc == 0) crc = tls_conn_handshake(cli);
        tt_move(cli, srv);
        if (src == 0) src = tls_conn_handshake(srv);
        tt_move(srv, cli);
        if (crc != 0 && src != 0) break;
        if (crc < 0 || src < 0) {
            /* Let the other end see the alert once more, then stop. */
            if (crc == 0) crc = tls_conn_handshake(cli);
            if (src == 0) src = tls_conn_handshake(srv);
            break;
        }
    }
    if (srv_rc) *srv_rc = src;
    return crc;
}

struct tt_pair {
    tls_ctx_t *cctx, *sctx;
    tls_conn_t *cli, *srv;
};

static void tt_pair_open(struct tt_pair *p, const char *ca, int insecure, const char *host)
{
    char err[256];
    assert_int_equal(tls_ctx_client_new(&p->cctx, ca, insecure, err, sizeof err), 0);
    assert_int_equal(tls_ctx_server_new(&p->sctx, tt_cert, tt_key, err, sizeof err), 0);
    p->cli = tls_conn_new(p->cctx, host);
    p->srv = tls_conn_new(p->sctx, NULL);
    assert_non_null(p->cli);
    assert_non_null(p->srv);
}

static void tt_pair_close(struct tt_pair *p)
{
    tls_conn_free(p->cli);
    tls_conn_free(p->srv);
    tls_ctx_free(p->cctx);
    tls_ctx_free(p->sctx);
}

static void test_handshake_verified(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "localhost");
    assert_int_equal(tls_conn_handshake_done(p.cli), 0);
    int src;
    assert_int_equal(tt_handshake(p.cli, p.srv, &src), 1);
    assert_int_equal(src, 1);
    assert_int_equal(tls_conn_handshake_done(p.cli), 1);
    assert_true(strncmp(tls_conn_version(p.cli), "TLSv1.", 6) == 0);
    assert_true(strcmp(tls_conn_version(p.cli), "TLSv1.1") > 0); /* 1.2 or later */
    assert_string_not_equal(tls_conn_cipher(p.cli), "(NONE)");
    tt_pair_close(&p);
}

/* One client context shared by two owners (the MX router's pools): it
 * outlives its first owner, and connections made from it by either verify
 * their own host (the name is per connection, not per context). Under ASan a
 * missing or extra free shows. */
static void test_shared_ctx(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "localhost");
    tls_ctx_t *second = tls_ctx_ref(p.cctx);
    assert_ptr_equal(second, p.cctx);
    tls_ctx_free(p.cctx); /* the first owner is gone */
    int src;
    assert_int_equal(tt_handshake(p.cli, p.srv, &src), 1);
    tls_conn_free(p.cli);
    tls_conn_free(p.srv);
    /* A new connection from the shared context, for a name the certificate
     * does not carry, fails its check. */
    p.cli = tls_conn_new(second, "other.example");
    p.srv = tls_conn_new(p.sctx, NULL);
    assert_non_null(p.cli);
    assert_int_equal(tt_handshake(p.cli, p.srv, &src), VL_ETLSVERIFY);
    p.cctx = second;
    tt_pair_close(&p); /* the last owner frees it */
}

static void test_handshake_ip_literal(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "127.0.0.1");
    assert_int_equal(tt_handshake(p.cli, p.srv, NULL), 1);
    tt_pair_close(&p);

    tt_pair_open(&p, tt_ca, 0, "127.0.0.2");
    assert_int_equal(tt_handshake(p.cli, p.srv, NULL), VL_ETLSVERIFY);
    assert_non_null(strstr(tls_conn_errstr(p.cli), "mismatch"));
    tt_pair_close(&p);
}

static void test_wrong_host(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "mail.example.com");
    int src;
    assert_int_equal(tt_handshake(p.cli, p.srv, &src), VL_ETLSVERIFY);
    assert_non_null(strstr(tls_conn_errstr(p.cli), "hostname mismatch"));
    /* The client's alert reaches the server, which fails too. */
    assert_int_equal(src, VL_ETLS);
    assert_string_not_equal(tls_conn_errstr(p.srv), "no error");
    tt_pair_close(&p);
}

static void test_unknown_ca(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_other_ca, 0, "localhost");
    assert_int_equal(tt_handshake(p.cli, p.srv, NULL), VL_ETLSVERIFY);
    assert_non_null(strstr(tls_conn_errstr(p.cli), "unable to get local issuer certificate"));
    tt_pair_close(&p);
}

static void test_insecure(void **state)
{
    (void)state;
    struct tt_pair p;
    /* Trusting the wrong CA and naming the wrong host: only insecure passes. */
    tt_pair_open(&p, tt_other_ca, 1, "mail.example.com");
    assert_int_equal(tt_handshake(p.cli, p.srv, NULL), 1);
    tt_pair_close(&p);
}

static void test_bad_files(void **state)
{
    (void)state;
    tls_ctx_t *ctx = (tls_ctx_t *)1;
    char err[256] = "";
    assert_int_equal(tls_ctx_client_new(&ctx, "/nonexistent/ca.pem", 0, err, sizeof err),
                     VL_ECONFIG);
    assert_null(ctx);
    assert_non_null(strstr(err, "/nonexistent/ca.pem"));
    err[0] = '\0';
    assert_int_equal(tls_ctx_server_new(&ctx, tt_cert, tt_ca, err, sizeof err), VL_ECONFIG);
    assert_null(ctx);
    assert_true(strlen(err) > 0);
}

static void test_app_data_and_close(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "localhost");
    assert_int_equal(tt_handshake(p.cli, p.srv, NULL), 1);

    char in[70000];
    assert_int_equal(tls_conn_read(p.srv, in, sizeof in), 0); /* nothing yet */

    assert_int_equal(tls_conn_write(p.cli, "EHLO client\r\n", 13), 0);
    assert_true(tt_move(p.cli, p.srv) > 13);
    ssize_t n = tls_conn_read(p.srv, in, sizeof in);
    assert_int_equal(n, 13);
    assert_memory_equal(in, "EHLO client\r\n", 13);

    /* A large write (several records) the other way, read back in pieces. */
    static char big[65536];
    for (size_t i = 0; i < sizeof big; i++)
        big[i] = (char)('a' + i % 26);
    assert_int_equal(tls_conn_write(p.srv, big, sizeof big), 0);
    assert_true(tls_conn_pending_out(p.srv) > sizeof big);
    tt_move(p.srv, p.cli);
    assert_int_equal(tls_conn_pending_out(p.srv), 0);
    size_t got = 0;
    while (got < sizeof big) {
        n = tls_conn_read(p.cli, in + got, 1000);
        assert_true(n > 0);
        got += (size_t)n;
    }
    assert_memory_equal(in, big, sizeof big);
    assert_int_equal(tls_conn_read(p.cli, in, sizeof in), 0);
    tt_move(p.cli, p.srv); /* whatever the client owes (nothing, or a ticket ack) */

    /* close_notify from the server: the client reads a clean close. */
    tls_conn_shutdown(p.srv);
    assert_true(tt_move(p.srv, p.cli) > 0);
    assert_int_equal(tls_conn_read(p.cli, in, sizeof in), VL_ECONNRESET);
    assert_non_null(strstr(tls_conn_errstr(p.cli), "close_notify"));
    tt_pair_close(&p);
}

static void test_eof_without_close_notify(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "localhost");
    assert_int_equal(tt_handshake(p.cli, p.srv, NULL), 1);
    assert_int_equal(tls_conn_write(p.srv, "221 bye\r\n", 9), 0);
    tt_move(p.srv, p.cli);
    tls_conn_feed_eof(p.cli);
    char in[64];
    /* Buffered data first, then the EOF as a close, not an error. */
    assert_int_equal(tls_conn_read(p.cli, in, sizeof in), 9);
    assert_int_equal(tls_conn_read(p.cli, in, sizeof in), VL_ECONNRESET);
    tt_pair_close(&p);
}

static void test_garbage_input(void **state)
{
    (void)state;
    struct tt_pair p;
    tt_pair_open(&p, tt_ca, 0, "localhost");
    assert_int_equal(tls_conn_handshake(p.cli), 0);
    const char junk[] = "220 mail.example.com ESMTP not TLS at all\r\n";
    assert_int_equal(tls_conn_feed(p.cli, junk, sizeof junk - 1), 0);
    assert_int_equal(tls_conn_handshake(p.cli), VL_ETLS);
    assert_string_not_equal(tls_conn_errstr(p.cli), "no error");
    tt_pair_close(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_verified), cmocka_unit_test(test_handshake_ip_literal),
        cmocka_unit_test(test_wrong_host),         cmocka_unit_test(test_unknown_ca),
        cmocka_unit_test(test_insecure),           cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_app_data_and_close), cmocka_unit_test(test_eof_without_close_notify),
        cmocka_unit_test(test_garbage_input),      cmocka_unit_test(test_shared_ctx),
    };
    return cmocka_run_group_tests_name("tls", tests, tt_setup, tt_teardown);
}
