/* engine.h: volley's SMTP client core, on a caller's libuv loop.
 *
 * The engine knows nothing of Redis, CSV or templates: it takes messages as an
 * envelope plus an iovec array and hands back, for every message, exactly one
 * result: what the server answered, or what went wrong on the way.
 *
 * A pool is one route (host, port, TLS mode, credentials) with its own
 * connections. Submitted messages wait in the pool's queue; connections take
 * them one transaction at a time, pipelining (RFC 2920) the next transaction's
 * envelope behind the previous message's content, or using BDAT (RFC 3030)
 * when the server offers CHUNKING.
 *
 *     eng_route_t r;  eng_route_init(&r);  r.host = "127.0.0.1"; r.port = 2525;
 *     eng_pool_t *p;  eng_pool_new(&p, loop, &r, err, sizeof err);
 *     eng_pool_submit(p, &msg);          // msg.on_done(&msg, &result) later
 *     uv_run(loop, UV_RUN_DEFAULT);
 *     eng_pool_close(p, NULL, NULL);     // QUIT, cancel what is queued
 *
 * Everything runs on the loop's thread; nothing in here blocks (name lookups
 * go through uv_getaddrinfo).
 */
#ifndef VL_ENGINE_H
#define VL_ENGINE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <uv.h>

#include "common/hist.h"
#include "engine/dns.h"

typedef struct eng_pool eng_pool_t;
typedef struct eng_msg eng_msg_t;

/* The stages of a connection and a transaction, in protocol order. A result
 * names the stage at which the message's fate was decided. */
#define ENG_STAGE_MAP(X)                                                                           \
    X(NONE, "none")                                                                                \
    X(RESOLVE, "resolve")                                                                          \
    X(CONNECT, "connect")                                                                          \
    X(TLS, "tls")                                                                                  \
    X(GREETING, "greeting")                                                                        \
    X(EHLO, "ehlo")                                                                                \
    X(STARTTLS, "starttls")                                                                        \
    X(AUTH, "auth")                                                                                \
    X(MAIL, "mail")                                                                                \
    X(RCPT, "rcpt")                                                                                \
    X(DATA, "data")                                                                                \
    X(BODY, "body")                                                                                \
    X(RSET, "rset")                                                                                \
    X(QUIT, "quit")

typedef enum eng_stage {
#define ENG_STAGE_ENUM(name, str) ENG_STAGE_##name,
    ENG_STAGE_MAP(ENG_STAGE_ENUM)
#undef ENG_STAGE_ENUM
        ENG_STAGE_LAST
} eng_stage_t;

/* "mail", "rcpt", ... */
const char *eng_stage_name(eng_stage_t s);

/* What happened to a message. */
typedef enum eng_status {
    ENG_DELIVERED, /* the server accepted the content (2xx after the final dot or
                    * BDAT LAST) for the recipients marked accepted */
    ENG_REJECTED,  /* the server answered no: `reply` says how (4xx or 5xx) */
    ENG_FAILED,    /* no verdict: network, TLS, protocol error or timeout before
                    * the content was complete. Not delivered; safe to retry */
    ENG_UNKNOWN,   /* the content was sent in full but the final reply never
                    * came (dropped connection, timeout). It may or may not have
                    * been delivered: never count it as delivered */
    ENG_CANCELLED, /* the pool was closed before the message was tried */
} eng_status_t;

const char *eng_status_name(eng_status_t s);

/* One SMTP reply, copied so that it outlives the connection. Text longer than
 * the array is truncated (reports need the gist, not the whole banner). */
typedef struct eng_reply {
    int code;          /* 0 when no reply was involved */
    char enhanced[16]; /* RFC 3463 code or "" */
    char text[248];    /* NUL-terminated, lines joined by '\n' */
} eng_reply_t;

/* The server's answer to one RCPT TO. */
typedef struct eng_rcpt_status {
    eng_reply_t reply;
    int accepted; /* 2xx */
} eng_rcpt_status_t;

/* A message's outcome, handed to on_done. Borrowed: valid during the callback. */
typedef struct eng_result {
    eng_status_t status;
    eng_stage_t stage;   /* where it was decided */
    int err;             /* VL_E* for FAILED/UNKNOWN, 0 when a reply decided */
    const char *errstr;  /* a readable account of err (TLS reasons included) */
    eng_reply_t reply;   /* the deciding reply (code 0 if none) */
    unsigned naccepted;  /* recipients accepted (see msg->rcpt_status) */
    const char *remote;  /* "ip:port" of the server, or "" */
    unsigned conn_id;    /* which connection of the pool carried it */
    unsigned conn_msgs;  /* messages that connection had started before this one, and */
    unsigned conn_rcpts; /* their recipients: where a per-connection cap would bite */
    uint64_t queued_us;  /* submit -> transaction start */
    uint64_t txn_us;     /* transaction start -> final reply */
} eng_result_t;

typedef void (*eng_done_cb)(eng_msg_t *msg, const eng_result_t *res);

/* Message flags. */
#define ENG_MSG_SMTPUTF8                                                                           \
    0x1u                  /* needs SMTPUTF8 (UTF-8 addresses); fails with                          \
                           * VL_ENOTSUP if the server lacks it */
#define ENG_MSG_8BIT 0x2u /* content has 8-bit bytes: BODY=8BITMIME */
#define ENG_MSG_CRLF                                                                               \
    0x4u /* content's line ends are all CRLF already: the                                          \
          * engine skips normalisation (still dot-stuffs) */
#define ENG_MSG_WIRE                                                                               \
    0x8u /* content is in wire form already: CRLF line                                             \
          * ends, a final CRLF, no line that starts with                                           \
          * '.'. The engine sends it without reading it                                            \
          * (the producer checked, on its own thread,                                              \
          * while the bytes were in its cache). */

/* A message. The caller allocates it and fills the first block; everything it
 * points to is borrowed and must stay valid and unchanged until on_done.
 * The engine owns the message between eng_pool_submit() and on_done, and
 * calls on_done exactly once. */
struct eng_msg {
    const char *mail_from;    /* envelope sender, without <> ("" = null sender) */
    const char *const *rcpts; /* envelope recipients, without <> */
    size_t nrcpts;            /* >= 1 */
    const struct iovec *iov;  /* the RFC 5322 message; any line ends */
    size_t iovcnt;
    size_t size;                    /* the iovecs' total length, or 0: the engine adds them up */
    unsigned flags;                 /* ENG_MSG_* */
    eng_rcpt_status_t *rcpt_status; /* caller's array of nrcpts, filled by the engine */
    eng_done_cb on_done;
    void *ud; /* the caller's */

    /* Engine-private from here on. */
    eng_msg_t *next;
    uint64_t t_submit, t_start;
    eng_reply_t fail_reply; /* MAIL or first RCPT failure */
    eng_stage_t fail_stage;
    unsigned naccepted, nreplied;
    int content_sent;
    int active;                 /* started on a connection and not yet completed */
    unsigned conn_msgs_before;  /* messages / recipients the connection had started */
    unsigned conn_rcpts_before; /* before this one (eng_result_t) */
};

/* Connection-level events, for the owner's rules (a 421 at greeting is how a
 * provider says "too many connections"; see ratelimit/). */
typedef enum eng_event_kind {
    ENG_EV_READY,        /* a connection finished its set-up */
    ENG_EV_SETUP_FAILED, /* a connection failed before carrying any message */
    ENG_EV_CLOSED,       /* a connection closed (after QUIT, an error or a 421) */
} eng_event_kind_t;

typedef struct eng_event {
    eng_event_kind_t kind;
    unsigned conn_id;
    eng_stage_t stage;  /* SETUP_FAILED / CLOSED: where */
    int err;            /* VL_E* or 0 */
    const char *errstr; /* borrowed */
    eng_reply_t reply;  /* the reply that caused it, code 0 if none */
    unsigned messages;  /* CLOSED: transactions this connection completed */
} eng_event_t;

/* Per-stage timeouts in milliseconds (0: the default). The defaults are RFC 5321
 * §4.5.3.2's: greeting 5 min, MAIL 5 min, RCPT 5 min, DATA initiation 2 min, data
 * block 3 min, DATA termination 10 min; connect 30 s; EHLO, STARTTLS, AUTH and
 * RSET 5 min; QUIT 10 s; an idle connection is closed after 30 s. */
typedef struct eng_timeouts {
    uint32_t connect, greeting, ehlo, starttls, auth, mail, rcpt, data_init, data_block, data_term,
        rset, quit, idle;
} eng_timeouts_t;

typedef enum eng_tls_mode {
    ENG_TLS_OPPORTUNISTIC, /* smtp://: STARTTLS when offered, verified as always */
    ENG_TLS_NONE,          /* never TLS (loopback benchmarks) */
    ENG_TLS_STARTTLS,      /* STARTTLS required: fail if not offered */
    ENG_TLS_IMPLICIT,      /* smtps:// (RFC 8314): TLS from the first byte */
} eng_tls_mode_t;

/* A connection ceiling shared by several pools: direct delivery keeps one pool
 * per recipient domain under its provider's one ceiling. The owner sets max
 * (and may lower it at any time: pools then open nothing until used drops);
 * pools count their open connections in used. on_release (optional) runs
 * after a pool's connection is gone, so the owner can let a pool that waits
 * for room open one. wanted (optional) is asked when a connection of pool
 * runs out of work while the budget is spent: non-zero means another pool
 * waits for room, and the connection QUITs now rather than idle. */
typedef struct eng_budget {
    unsigned max, used;
    void (*on_release)(struct eng_budget *b);
    int (*wanted)(struct eng_budget *b, const eng_pool_t *pool);
    void *ud; /* the owner's */
} eng_budget_t;

/* A route and its pool's behaviour. Strings are copied by eng_pool_new; the
 * password is wiped from memory when the pool is freed. */
typedef struct eng_route {
    const char *host; /* name or IP literal; with targets, only a label for
                       * messages (the recipient domain) */
    uint16_t port;
    /* Direct delivery: connect to these addresses (copied) instead of
     * resolving host, each connection trying them in order from the last one
     * that answered; a target's name is the TLS name (SNI, certificate). */
    const eng_target_t *targets;
    size_t ntargets;
    eng_budget_t *budget; /* borrowed, NULL for none; must outlive the pool */
    eng_tls_mode_t tls;
    const char *ca_file;         /* NULL: the system store */
    int tls_insecure;            /* skip certificate checks: tests only */
    const char *user;            /* NULL: no AUTH */
    const char *password;        /* never logged, never traced */
    int allow_plain_auth;        /* allow AUTH without TLS (loopback tests only) */
    const char *helo_name;       /* NULL: this machine's host name */
    unsigned max_connections;    /* ceiling; 0 = 1 */
    unsigned max_msgs_per_conn;  /* 0 = unlimited */
    unsigned max_rcpts_per_conn; /* 0 = unlimited */
    int no_pipelining;           /* lock-step even if PIPELINING is offered */
    int no_chunking;             /* DATA even if CHUNKING is offered */
    unsigned max_setup_failures; /* consecutive failed rounds of set-ups
                                  * (connections started together count
                                  * once) with no live connection before
                                  * queued messages fail (0 = 3) */
    eng_timeouts_t timeouts;
    /* Connection events (optional). */
    void (*on_event)(eng_pool_t *pool, const eng_event_t *ev, void *ud);
    /* Protocol trace (optional): dir is '>' for what volley sent, '<' for what
     * it received; one call per line, without CRLF; message content is not
     * traced and AUTH secrets are replaced by "***". */
    void (*trace)(void *ud, unsigned conn_id, char dir, const char *line, size_t len);
    void *ud;
} eng_route_t;

/* Fill r with defaults (opportunistic TLS, one connection, RFC timeouts). */
void eng_route_init(eng_route_t *r);

/* Latency per SMTP verb (microseconds from the write of the command to its
 * reply) and per transaction (MAIL written to final reply). */
typedef struct eng_stats {
    hist_t verb[ENG_STAGE_LAST];
    hist_t txn;
    uint64_t connections, setup_failures;
    uint64_t bytes_out; /* message bytes, after dot-stuffing */
} eng_stats_t;

/* A pool for route r on loop (borrowed; must outlive the pool). On error
 * returns a VL_E* code and writes why into errbuf (e.g. an unreadable CA file). */
int eng_pool_new(eng_pool_t **out, uv_loop_t *loop, const eng_route_t *r, char *errbuf,
                 size_t errlen);

/* Queue m (see struct eng_msg for ownership). 0, or VL_EINVAL for a message with
 * no recipients (on_done is not called then), or VL_ESTATE after close. */
int eng_pool_submit(eng_pool_t *p, eng_msg_t *m);

/* Change the connection ceiling while running. Connections above a lowered
 * ceiling finish their transaction and QUIT. */
void eng_pool_set_max_connections(eng_pool_t *p, unsigned n);

/* Change the per-connection caps (0 = unlimited); applies from the next
 * transaction of each connection. */
void eng_pool_set_caps(eng_pool_t *p, unsigned msgs_per_conn, unsigned rcpts_per_conn);

/* Retire connection conn_id (eng_result_t.conn_id): it takes no new message and QUITs
 * once the transactions under way on it end, and a fresh connection may open in its
 * place at once. For a reply that says this connection is spent (450 MI:CEL, a
 * per-connection cap met). 0, or VL_ENOENT when no open connection has that id. */
int eng_pool_retire(eng_pool_t *p, unsigned conn_id);

/* QUIT the connections that are set up and idle now, rather than after the
 * idle timeout: their budget is wanted by another pool. */
void eng_pool_close_idle(eng_pool_t *p);

/* Messages queued and not yet started; connections open (any state). */
size_t eng_pool_queued(const eng_pool_t *p);
unsigned eng_pool_connections(const eng_pool_t *p);
/* Messages submitted and not yet done (queued + in flight). */
size_t eng_pool_pending(const eng_pool_t *p);

/* Statistics since the pool was made. Borrowed; valid while the pool lives. */
const eng_stats_t *eng_pool_stats(const eng_pool_t *p);

/* Close the pool: queued messages end CANCELLED, idle connections QUIT,
 * connections in a transaction finish it first (pass `now` to cut them off:
 * their messages end FAILED or UNKNOWN). on_closed (optional) runs once every
 * handle is closed; the pool is then freed. */
void eng_pool_close(eng_pool_t *p, int now, void (*on_closed)(void *ud), void *ud);

#endif
