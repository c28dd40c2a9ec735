/* tls.c: OpenSSL over memory BIOs (see tls.h).
 *
 * Each connection owns an SSL object with two memory BIOs: `rbio` holds
 * ciphertext received from the peer (filled by tls_conn_feed), `wbio` collects
 * ciphertext OpenSSL wants to send (drained by tls_conn_take_out). OpenSSL
 * never sees a socket, so the same code serves the libuv engine, volley-sink
 * and the in-memory unit tests.
 *
 * Every entry point clears the thread's OpenSSL error queue before calling
 * into OpenSSL and drains it afterwards, so a stale error from one connection
 * can never be blamed on another.
 */
#include "engine/tls.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "common/err.h"

struct tls_ctx {
    SSL_CTX *ssl_ctx;
    int client;
    int insecure;
    unsigned refs; /* owners (one loop thread: no atomics) */
};

struct tls_conn {
    SSL *ssl;
    BIO *rbio; /* owned by ssl after SSL_set_bio */
    BIO *wbio; /* owned by ssl after SSL_set_bio */
    tls_ctx_t *ctx;
    char err[256];
};

/* Write the oldest queued OpenSSL error (usually the root cause) into dst,
 * prefixed by what, and empty the queue. Falls back to fallback when the queue
 * is empty. */
static void tls_errq_describe(char *dst, size_t len, const char *what, const char *fallback)
{
    unsigned long e = ERR_get_error();
    char reason[200];
    if (e) {
        const char *r = ERR_reason_error_string(e);
        if (r)
            snprintf(reason, sizeof reason, "%s", r);
        else
            ERR_error_string_n(e, reason, sizeof reason);
    } else {
        snprintf(reason, sizeof reason, "%s", fallback);
    }
    ERR_clear_error();
    if (what && *what)
        snprintf(dst, len, "%s: %s", what, reason);
    else
        snprintf(dst, len, "%s", reason);
}

static tls_ctx_t *tls_ctx_alloc(const SSL_METHOD *method, int client)
{
    tls_ctx_t *ctx = calloc(1, sizeof *ctx);
    if (!ctx) return NULL;
    ctx->ssl_ctx = SSL_CTX_new(method);
    if (!ctx->ssl_ctx) {
        free(ctx);
        return NULL;
    }
    ctx->client = client;
    ctx->refs = 1;
    /* TLS 1.0 and 1.1 are deprecated (RFC 8996); no mail server worth sending
     * to needs them. */
    SSL_CTX_set_min_proto_version(ctx->ssl_ctx, TLS1_2_VERSION);
    /* Memory BIOs accept any amount, so writes always complete; releasing
     * idle buffers keeps a thousand idle connections cheap. */
    SSL_CTX_set_mode(ctx->ssl_ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_options(ctx->ssl_ctx, SSL_OP_NO_RENEGOTIATION);
    return ctx;
}

int tls_ctx_client_new(tls_ctx_t **out, const char *ca_file, int insecure, char *errbuf,
                       size_t errlen)
{
    *out = NULL;
    ERR_clear_error();
    tls_ctx_t *ctx = tls_ctx_alloc(TLS_client_method(), 1);
    if (!ctx) {
        tls_errq_describe(errbuf, errlen, "TLS client context", "out of memory");
        return VL_ENOMEM;
    }
    ctx->insecure = insecure ? 1 : 0;
    if (ctx->insecure) {
        SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_CTX_set_verify(ctx->ssl_ctx, SSL_VERIFY_PEER, NULL);
        int ok = ca_file ? SSL_CTX_load_verify_locations(ctx->ssl_ctx, ca_file, NULL)
                         : SSL_CTX_set_default_verify_paths(ctx->ssl_ctx);
        if (ok != 1) {
            char what[300];
            snprintf(what, sizeof what, "CA file %s", ca_file ? ca_file : "(system store)");
            tls_errq_describe(errbuf, errlen, what, "cannot load");
            tls_ctx_free(ctx);
            return VL_ECONFIG;
        }
    }
    ERR_clear_error();
    *out = ctx;
    return 0;
}

int tls_ctx_server_new(tls_ctx_t **out, const char *cert_file, const char *key_file, char *errbuf,
                       size_t errlen)
{
    *out = NULL;
    ERR_clear_error();
    tls_ctx_t *ctx = tls_ctx_alloc(TLS_server_method(), 0);
    if (!ctx) {
        tls_errq_describe(errbuf, errlen, "TLS server context", "out of memory");
        return VL_ENOMEM;
    }
    char what[300];
    if (SSL_CTX_use_certificate_chain_file(ctx->ssl_ctx, cert_file) != 1) {
        snprintf(what, sizeof what, "certificate %s", cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx->ssl_ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        snprintf(what, sizeof what, "key %s", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx->ssl_ctx) != 1) {
        snprintf(what, sizeof what, "key %s", key_file);
        goto fail;
    }
    ERR_clear_error();
    *out = ctx;
    return 0;
fail:
    tls_errq_describe(errbuf, errlen, what, "cannot load");
    tls_ctx_free(ctx);
    return VL_ECONFIG;
}

tls_ctx_t *tls_ctx_ref(tls_ctx_t *ctx)
{
    ctx->refs++;
    return ctx;
}

void tls_ctx_free(tls_ctx_t *ctx)
{
    if (!ctx || --ctx->refs) return;
    SSL_CTX_free(ctx->ssl_ctx);
    free(ctx);
}

/* Point the client at host: SNI and host name check for a name, an IP address
 * check (and no SNI, which RFC 6066 forbids for literals) for an address.
 * host may be bracketed ("[::1]"). 0 or -1. */
static int tls_conn_set_host(tls_conn_t *c, const char *host)
{
    char lit[INET6_ADDRSTRLEN + 2];
    size_t n = strlen(host);
    const char *h = host;
    if (n >= 2 && host[0] == '[' && host[n - 1] == ']' && n - 2 < sizeof lit) {
        memcpy(lit, host + 1, n - 2);
        lit[n - 2] = '\0';
        h = lit;
    }
    unsigned char addr[sizeof(struct in6_addr)];
    int is_ip = inet_pton(AF_INET, h, addr) == 1 || inet_pton(AF_INET6, h, addr) == 1;
    if (is_ip) {
        if (c->ctx->insecure) return 0;
        X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
        return X509_VERIFY_PARAM_set1_ip_asc(param, h) == 1 ? 0 : -1;
    }
    if (SSL_set_tlsext_host_name(c->ssl, h) != 1) return -1;
    if (c->ctx->insecure) return 0;
    /* Wildcards only as the whole left-most label, as RFC 6125 recommends. */
    SSL_set_hostflags(c->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    return SSL_set1_host(c->ssl, h) == 1 ? 0 : -1;
}

tls_conn_t *tls_conn_new(tls_ctx_t *ctx, const char *host)
{
    ERR_clear_error();
    tls_conn_t *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->ctx = ctx;
    c->ssl = SSL_new(ctx->ssl_ctx);
    c->rbio = BIO_new(BIO_s_mem());
    c->wbio = BIO_new(BIO_s_mem());
    if (!c->ssl || !c->rbio || !c->wbio) {
        BIO_free(c->rbio);
        BIO_free(c->wbio);
        SSL_free(c->ssl);
        free(c);
        ERR_clear_error();
        return NULL;
    }
    /* An empty read BIO means "wait for more", not end of file; the peer's
     * real EOF is signalled by tls_conn_feed_eof(). */
    BIO_set_mem_eof_return(c->rbio, -1);
    SSL_set_bio(c->ssl, c->rbio, c->wbio);
    if (ctx->client) {
        SSL_set_connect_state(c->ssl);
        if (host && *host && tls_conn_set_host(c, host) != 0) {
            tls_conn_free(c);
            ERR_clear_error();
            return NULL;
        }
    } else {
        SSL_set_accept_state(c->ssl);
    }
    snprintf(c->err, sizeof c->err, "no error");
    return c;
}

void tls_conn_free(tls_conn_t *c)
{
    if (!c) return;
    SSL_free(c->ssl); /* frees both BIOs */
    free(c);
    ERR_clear_error();
}

int tls_conn_feed(tls_conn_t *c, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        int chunk = len > INT_MAX ? INT_MAX : (int)len;
        int n = BIO_write(c->rbio, p, chunk);
        if (n <= 0) {
            ERR_clear_error();
            snprintf(c->err, sizeof c->err, "out of memory buffering TLS input");
            return VL_ENOMEM;
        }
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

void tls_conn_feed_eof(tls_conn_t *c)
{
    /* From now on an empty read BIO reports end of file, which OpenSSL 3 turns
     * into SSL_R_UNEXPECTED_EOF_WHILE_READING unless close_notify came first. */
    BIO_set_mem_eof_return(c->rbio, 0);
}

/* Is the queued error OpenSSL 3's "peer closed without close_notify"? */
static int tls_errq_is_unexpected_eof(void)
{
    unsigned long e = ERR_peek_error();
    return e && ERR_GET_LIB(e) == ERR_LIB_SSL &&
           ERR_GET_REASON(e) == SSL_R_UNEXPECTED_EOF_WHILE_READING;
}

int tls_conn_handshake(tls_conn_t *c)
{
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) return 1;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        ERR_clear_error();
        return 0;
    }
    if (c->ctx->client && !c->ctx->insecure) {
        long v = SSL_get_verify_result(c->ssl);
        if (v != X509_V_OK) {
            snprintf(c->err, sizeof c->err, "certificate verification failed: %s",
                     X509_verify_cert_error_string(v));
            ERR_clear_error();
            return VL_ETLSVERIFY;
        }
    }
    if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL || tls_errq_is_unexpected_eof()) {
        snprintf(c->err, sizeof c->err, "TLS handshake: connection closed by peer");
        ERR_clear_error();
        return VL_ETLS;
    }
    tls_errq_describe(c->err, sizeof c->err, "TLS handshake", "failed");
    return VL_ETLS;
}

ssize_t tls_conn_read(tls_conn_t *c, void *buf, size_t len)
{
    if (len == 0) return 0;
    ERR_clear_error();
    int want = len > INT_MAX ? INT_MAX : (int)len;
    int n = SSL_read(c->ssl, buf, want);
    if (n > 0) return n;
    int e = SSL_get_error(c->ssl, n);
    switch (e) {
    case SSL_ERROR_WANT_READ:
    case SSL_ERROR_WANT_WRITE: /* e.g. a key update to answer: take_out sends it */
        ERR_clear_error();
        return 0;
    case SSL_ERROR_ZERO_RETURN:
        snprintf(c->err, sizeof c->err, "TLS: peer sent close_notify");
        ERR_clear_error();
        return VL_ECONNRESET;
    case SSL_ERROR_SYSCALL:
        snprintf(c->err, sizeof c->err, "TLS: connection closed by peer");
        ERR_clear_error();
        return VL_ECONNRESET;
    default:
        if (tls_errq_is_unexpected_eof()) {
            snprintf(c->err, sizeof c->err, "TLS: peer closed without close_notify");
            ERR_clear_error();
            return VL_ECONNRESET;
        }
        tls_errq_describe(c->err, sizeof c->err, "TLS read", "failed");
        return VL_ETLS;
    }
}

int tls_conn_write(tls_conn_t *c, const void *data, size_t len)
{
    const char *p = data;
    ERR_clear_error();
    while (len > 0) {
        size_t done = 0;
        if (SSL_write_ex(c->ssl, p, len, &done) != 1) {
            int e = SSL_get_error(c->ssl, 0);
            if (e == SSL_ERROR_WANT_READ) {
                /* Only possible before the handshake completed. */
                snprintf(c->err, sizeof c->err, "TLS write before the handshake completed");
                ERR_clear_error();
                return VL_ETLS;
            }
            tls_errq_describe(c->err, sizeof c->err, "TLS write", "failed");
            return VL_ETLS;
        }
        p += done;
        len -= done;
    }
    return 0;
}

void tls_conn_shutdown(tls_conn_t *c)
{
    ERR_clear_error();
    /* The result says whether the peer's close_notify came too; we only queue
     * ours (take_out sends it) and never wait for the answer. */
    (void)SSL_shutdown(c->ssl);
    ERR_clear_error();
}

ssize_t tls_conn_take_out(tls_conn_t *c, buf_t *dst)
{
    size_t pending = BIO_ctrl_pending(c->wbio);
    if (pending == 0) return 0;
    int rc = buf_reserve(dst, pending);
    if (rc) {
        snprintf(c->err, sizeof c->err, "TLS output does not fit its buffer");
        return rc;
    }
    size_t total = 0;
    while (total < pending) {
        size_t chunk = pending - total;
        int n =
            BIO_read(c->wbio, dst->data + dst->len + total, chunk > INT_MAX ? INT_MAX : (int)chunk);
        if (n <= 0) break;
        total += (size_t)n;
    }
    dst->len += total;
    dst->data[dst->len] = '\0';
    return (ssize_t)total;
}

size_t tls_conn_pending_out(const tls_conn_t *c)
{
    return BIO_ctrl_pending(c->wbio);
}

int tls_conn_handshake_done(const tls_conn_t *c)
{
    return SSL_is_init_finished(c->ssl);
}

const char *tls_conn_errstr(const tls_conn_t *c)
{
    return c->err;
}

const char *tls_conn_version(const tls_conn_t *c)
{
    return SSL_get_version(c->ssl);
}

const char *tls_conn_cipher(const tls_conn_t *c)
{
    const char *s = SSL_get_cipher_name(c->ssl);
    return s ? s : "(none)";
}
