/* tls.h: OpenSSL over memory BIOs, for both ends of an SMTP connection.
 *
 * The engine (client) and volley-sink (server) own their sockets through
 * libuv; OpenSSL never touches a file descriptor. Ciphertext read from the
 * network is fed in with tls_conn_feed(); ciphertext to send is taken out with
 * tls_conn_take_out() after every handshake step, write or shutdown. This keeps
 * TLS I/O-free and testable without sockets (a client and a server can be
 * wired back to back in memory).
 *
 * Safe by default: a client context verifies the certificate chain against the
 * system store (or a given CA file) and the host name, needs TLS 1.2 or later,
 * and sends SNI. Only an explicit `insecure` flag turns verification off.
 */
#ifndef VL_TLS_H
#define VL_TLS_H

#include <stddef.h>
#include <sys/types.h>

#include "common/buf.h"

typedef struct tls_ctx tls_ctx_t;   /* shared by many connections; wraps SSL_CTX */
typedef struct tls_conn tls_conn_t; /* one connection; wraps SSL + two memory BIOs */

/* A client context. ca_file: PEM file of trusted CAs (borrowed, read now), or
 * NULL for the system store. insecure: skip chain and host name checks (tests
 * against self-signed servers only). On failure returns a VL_E* code and writes
 * a message into errbuf. */
int tls_ctx_client_new(tls_ctx_t **out, const char *ca_file, int insecure, char *errbuf,
                       size_t errlen);

/* A server context from PEM certificate (chain) and key files (borrowed, read
 * now). */
int tls_ctx_server_new(tls_ctx_t **out, const char *cert_file, const char *key_file, char *errbuf,
                       size_t errlen);

/* Another owner of ctx: each tls_ctx_ref() needs its own tls_ctx_free().
 * The MX router's per-domain pools share one client context: each context
 * parses the whole CA store (about 235M instructions and several hundred KB
 * for Debian's bundle), once per context. Returns ctx. */
tls_ctx_t *tls_ctx_ref(tls_ctx_t *ctx);
/* Drop one owner; the last frees the context. NULL is ignored. */
void tls_ctx_free(tls_ctx_t *ctx);

/* A connection on ctx (borrowed; must outlive the connection). For a client,
 * host (copied) is sent as SNI and checked against the certificate; for a
 * server pass NULL. NULL on allocation failure. */
tls_conn_t *tls_conn_new(tls_ctx_t *ctx, const char *host);
void tls_conn_free(tls_conn_t *c);

/* Hand ciphertext received from the peer to OpenSSL. 0 or VL_ENOMEM. */
int tls_conn_feed(tls_conn_t *c, const void *data, size_t len);

/* Advance the handshake. 1: complete; 0: needs more input (take_out first,
 * then wait for data); VL_ETLSVERIFY: the peer's certificate was refused
 * (tls_conn_errstr says why: unknown CA, host name mismatch, expired ...);
 * VL_ETLS: any other failure. */
int tls_conn_handshake(tls_conn_t *c);

/* Decrypted bytes into buf. Returns n > 0; 0 when more input is needed;
 * VL_ECONNRESET when the peer sent close_notify, or closed without one (OpenSSL
 * 3's "unexpected EOF", which callers treat as a clean close after QUIT);
 * VL_ETLS on error. */
ssize_t tls_conn_read(tls_conn_t *c, void *buf, size_t len);

/* Encrypt len bytes (copied). 0 or VL_ETLS / VL_ENOMEM. */
int tls_conn_write(tls_conn_t *c, const void *data, size_t len);

/* Queue a close_notify alert. */
void tls_conn_shutdown(tls_conn_t *c);

/* Append all pending ciphertext to dst (which the caller owns). Returns the
 * number of bytes appended (0: nothing to send) or a VL_E* code. */
ssize_t tls_conn_take_out(tls_conn_t *c, buf_t *dst);

/* A description of the last failure, including the verification result.
 * Borrowed; valid until the next call on c. Never NULL. */
const char *tls_conn_errstr(const tls_conn_t *c);

/* The negotiated protocol ("TLSv1.3") and cipher, for traces and reports. */
const char *tls_conn_version(const tls_conn_t *c);
const char *tls_conn_cipher(const tls_conn_t *c);

/* The peer closed its end of the socket (read EOF). Later reads report
 * VL_ECONNRESET once the buffered input is used up, as tls_conn_read says. */
void tls_conn_feed_eof(tls_conn_t *c);

/* Bytes of ciphertext waiting for tls_conn_take_out(). */
size_t tls_conn_pending_out(const tls_conn_t *c);

/* 1 once the handshake has completed, else 0. */
int tls_conn_handshake_done(const tls_conn_t *c);

#endif
