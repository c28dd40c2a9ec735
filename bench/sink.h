/* sink.h: internals shared by the files of volley-sink (bench/sink*.c).
 *
 * volley-sink is a fast SMTP server that accepts and counts mail without
 * storing it, with options that make it behave like a strict provider
 * (NetEase's reply texts) so volley's reactions can be tested and measured.
 * sink.c owns the process (options, listener, statistics, exit), sink_smtp.c
 * one connection (I/O, TLS, the SMTP state machine), sink_util.c the pure
 * parsing helpers and the rate, quota and duplicate arithmetic (unit-tested
 * in test_sink_util.c).
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
/* The tail of NetEase's refusal texts. */
#define SINK_NETEASE_INFO                                                                          \
    ".For more information, please visit https://feedback.qiye.163.com/bounce/"

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
    unsigned max_conn, max_msgs_per_conn, max_rcpts_per_conn;
    uint64_t rate_n, rate_per_ms;   /* --rate-limit (or --max-rate N = N/s); 0: off */
    uint64_t quota_n, quota_per_ms; /* --quota; 0: off */
    int defer_all;                  /* --defer-all / --defer-all-for */
    uint64_t defer_ms;              /* 0 with defer_all: for ever */
    /* The refusal replies ("CODE TEXT", no line ending); defaults in sink.c. */
    const char *max_conn_reply, *max_msgs_reply, *rate_reply, *quota_reply, *defer_reply;
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
    uint64_t rej_quota, rej_defer_all;
    uint64_t dup_message_ids, dup_rows; /* accepted again (with --log only) */
};

/* A sliding-window limit: at most n admissions in any window of per_ms
 * milliseconds, kept as a ring of the times of the last n admissions. */
struct sink_window {
    uint64_t *ring; /* owned; n entries */
    uint64_t n, per_ms;
    uint64_t head, filled;
};

/* A fixed-window quota: at most n admissions in each window [start + k *
 * per_ms, start + (k + 1) * per_ms). */
struct sink_quota {
    uint64_t n, per_ms, start_ms;
    uint64_t window, used; /* the current window's index and admissions */
};

/* A set of byte strings (open addressing, copies owned by the set). */
struct sink_strset {
    struct sink_str {
        char *s; /* owned; NULL for an empty slot */
        size_t n;
        uint64_t hash;
    } * slots;
    size_t cap, len;
};

struct sink_conn;

struct sink_server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    uv_signal_t sigterm, sigint, sigusr1;
    uv_timer_t max_timer, grace_timer;
    struct sink_cfg cfg;
    struct sink_stats st;
    tls_ctx_t *tls; /* NULL without --tls-cert */
    FILE *log;
    int log_dirty;
    buf_t line; /* scratch for one log line */
    uint64_t rng;
    uint64_t next_conn_id;
    unsigned conns_now;                      /* open connections */
    unsigned conns_admitted;                 /* open connections that got a 220 */
    struct sink_window rate;                 /* --rate-limit / --max-rate */
    struct sink_quota quota;                 /* --quota */
    struct sink_strset seen_mids, seen_rows; /* with --log: for the duplicate counts */
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
/* sink.c: milliseconds since the sink started. */
uint64_t sink__now_ms(struct sink_server *srv);

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

/* "N/PERIOD": N from 1 to 100000000, PERIOD [M]UNIT with unit ms, s, sec, m,
 * min, h, hour, d or day ("800/s", "50/100ms", "100/5s", "/min" = 1/min), as
 * the providers file's rates plus ms. 0 or -1. */
int sink__parse_per(const char *s, uint64_t *count, uint64_t *per_ms);

/* A duration NUMBER[UNIT] (unit ms, s, m, min, h; none means seconds; a
 * fraction is allowed: "1.5s"), into milliseconds, at least 1. 0 or -1. */
int sink__parse_duration(const char *s, uint64_t *ms);

/* A refusal reply "CODE TEXT": a 4xx or 5xx code, then a space and printable
 * text (no CR or LF). Its code, or -1. */
int sink__parse_reply(const char *s);

/* Sliding window: allocate for n admissions per per_ms. 0 or -1 (memory). */
int sink__window_init(struct sink_window *w, uint64_t n, uint64_t per_ms);
void sink__window_free(struct sink_window *w);
/* Would an admission at now_ms keep the limit? (Does not record it.) Times
 * must not go backwards. */
int sink__window_ok(const struct sink_window *w, uint64_t now_ms);
/* Record an admission at now_ms (after sink__window_ok said yes). */
void sink__window_add(struct sink_window *w, uint64_t now_ms);

/* Fixed window: set up n admissions per per_ms, the windows counted from
 * start_ms. */
void sink__quota_init(struct sink_quota *q, uint64_t n, uint64_t per_ms, uint64_t start_ms);
/* Would an admission at now_ms fit in its window? Rolls the window over. */
int sink__quota_ok(struct sink_quota *q, uint64_t now_ms);
/* Record an admission at now_ms (after sink__quota_ok said yes). */
void sink__quota_add(struct sink_quota *q, uint64_t now_ms);

/* Add a copy of s[0..n) to the set: 1 when it was new, 0 when already
 * there, -1 when out of memory. */
int sink__strset_add(struct sink_strset *set, const char *s, size_t n);
void sink__strset_free(struct sink_strset *set);

/* s[0..n) without leading and trailing white space: sets *b and *bn. */
void sink__trim(const char *s, size_t n, const char **b, size_t *bn);

#endif
