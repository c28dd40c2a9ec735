/* sink.h: internals shared by the files of volley-sink (bench/sink*.c).
 *
 * volley-sink is a fast SMTP server that accepts and counts mail without
 * storing it, with options that make it behave like a strict provider
 * (NetEase's reply texts) so volley's reactions can be tested and measured.
 * sink.c owns the process (options, listener, statistics, exit), sink_smtp.c
 * one connection (I/O, TLS, the SMTP state machine), sink_util.c the pure
 * parsing helpers (unit-tested in test_sink_util.c).
 */
#ifndef VL_SINK_H
#define VL_SINK_H

#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>
#include <uv.h>

#include "common/buf.h"
#include "engine/tls.h"

/* Command lines longer than this are refused with 500 (RFC 5321 allows 512;
 * AUTH responses and long parameters need more). */
#define SINK_MAX_LINE 4096
/* Per-connection plaintext input buffer. */
#define SINK_IN_CAP (32 * 1024)
/* The default (and advertised) maximum message size without --size-limit. */
#define SINK_DEFAULT_SIZE_LIMIT ((uint64_t)100 * 1024 * 1024)
/* Recipients accepted in one transaction before 452 (RFC 5321 asks for 100). */
#define SINK_MAX_RCPTS_PER_MSG 1000

struct sink_cfg {
    char listen_host[256];
    int listen_port;
    const char *hostname;
    int pipelining, chunking, eightbit, smtputf8;
    uint64_t size_limit;
    const char *tls_cert, *tls_key;
    int implicit_tls, require_tls;
    const char *auth_user;
    char *auth_pass; /* owned; never printed */
    const char *log_path, *stats_path;
    uint64_t exit_after;
    double max_seconds;
    unsigned max_conn, max_msgs_per_conn, max_rcpts_per_conn, max_rate;
    int has_reject_rcpt;
    regex_t reject_rcpt;
    double random_4xx, drop_mid_data;
    unsigned delay_ms;
    uint64_t seed;
};

/* What the sink counted, written as JSON at exit. */
struct sink_stats {
    uint64_t connections, messages, recipients, bytes, max_concurrent;
    uint64_t rej_max_conn, rej_msgs_per_conn, rej_rcpts_per_conn, rej_rate, rej_rcpt_pattern;
    uint64_t rej_random, drops, rej_size, rej_auth, rej_auth_required, rej_tls_required;
    uint64_t tls_handshakes, tls_failures, syntax_errors;
};

struct sink_conn;

struct sink_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint;
    uv_timer_t max_timer, grace_timer;
    struct sink_cfg cfg;
    struct sink_stats st;
    tls_ctx_t *tls; /* NULL without --tls-cert */
    FILE *log;
    int log_dirty;
    buf_t line; /* scratch for one log line */
    uint64_t rng;
    uint64_t next_conn_id;
    unsigned conns_now;      /* open connections */
    unsigned conns_admitted; /* open connections that got a 220 */
    uint64_t *rate_ring;     /* --max-rate: times (ms) of the last max_rate MAILs */
    unsigned rate_head;
    int stopping, stopped;
    int trace; /* VOLLEY_SINK_TRACE set: state changes on stderr */
    uint64_t start_ns;
    struct sink_conn *conns; /* doubly linked list of open connections */
    char scratch[64 * 1024]; /* ciphertext reads of TLS connections */
};

/* sink_smtp.c: take a pending connection from the listener. */
void sink__conn_accept(struct sink_server *srv);
/* sink_smtp.c: close a connection now (idempotent). */
void sink__conn_close(struct sink_conn *c);

/* sink.c: a uniform random number in [0, 1) from the seeded generator. */
double sink__rand(struct sink_server *srv);
/* sink.c: one more message accepted; starts the exit for --exit-after-messages. */
void sink__message_accepted(struct sink_server *srv);
/* sink.c: a connection went away; finishes a graceful stop when it was the last. */
void sink__conn_gone(struct sink_server *srv);
/* sink.c: may another MAIL pass --max-rate now? Records it when it may. */
int sink__rate_allow(struct sink_server *srv);

/* sink_util.c: pure helpers (no I/O, no globals). */

/* Decode base64 (RFC 4648, padding optional, no whitespace) into out (cap
 * bytes). Returns the decoded length or -1 on bad input or overflow. */
ssize_t sink__b64_decode(const char *in, size_t n, unsigned char *out, size_t cap);

/* Parse a reverse- or forward-path at s (after "FROM:" / "TO:"): optional
 * spaces, then <addr> (quotes and backslashes honoured, a source route
 * dropped) or a bare address. On success *addr and *alen point into s and *end is
 * the offset just past the path. 0 or -1. */
int sink__parse_path(const char *s, size_t n, const char **addr, size_t *alen, size_t *end);

/* The message identifier in a Message-ID header value: from the first '<' to
 * the next '>' inclusive, else the trimmed value. 0 or -1 when empty. */
int sink__msgid(const char *s, size_t n, const char **id, size_t *idlen);

/* Append s as a JSON string literal (quoted, escaped; invalid UTF-8 becomes
 * U+FFFD). 0 or a VL_E* code from buf. */
int sink__json_str(buf_t *b, const char *s, size_t n);

/* Parse a decimal unsigned number filling all of s[0..n). 0 or -1. */
int sink__parse_u64(const char *s, size_t n, uint64_t *out);

/* Case-insensitive: does s[0..n) start with the NUL-terminated prefix? */
int sink__prefix(const char *s, size_t n, const char *prefix);

#endif
