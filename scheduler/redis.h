/* redis.h: hiredis async on a libuv loop, with error reporting, timeouts and reconnects.
 *
 * Debian's hiredis 0.14 ships a libuv adapter that drops socket errors (a failed connect
 * can hang with no callback) and has no command timeouts. This module is volley's own
 * adapter and a small client on top of it:
 *
 * - every accepted command gets exactly one callback: its reply (an error reply is a
 *   reply, err 0), VL_ETIMEOUT when its own timer fires first (hiredis's late reply is then
 *   dropped), VL_EREDIS when the connection is lost, VL_ECANCELED on sched_redis_close;
 * - a connection on which requests await replies and nothing at all has come back for
 *   dead_after_ms (a hung server, a network path gone without a reset) is dropped, so it
 *   does not linger half-dead: the reconnect logic takes over;
 * - a command issued while disconnected is refused at once (VL_EREDIS, no callback), so
 *   nothing piles up in memory while Redis is away; the caller retries later;
 * - after a lost connection or a failed connect it reconnects with exponential backoff and
 *   jitter, sends AUTH and SELECT, and only then reports itself connected;
 * - scripts run by EVALSHA (SHA1 computed once per script source), falling back to EVAL on
 *   NOSCRIPT, since a restarted Redis has forgotten its script cache.
 *
 * Consecutive commands are pipelined by hiredis. Everything runs on the loop's thread.
 */
#ifndef VL_SCHED_REDIS_H
#define VL_SCHED_REDIS_H

#include <stddef.h>

#include <hiredis/hiredis.h>
#include <uv.h>

typedef struct sched_redis sched_redis_t;

/* A parsed Redis URL. Strings are NUL-terminated and percent-decoded. */
typedef struct sched_redis_url {
    int is_unix;    /* 1: path is a unix socket; 0: host:port */
    char host[256]; /* TCP host name or address ("" for unix) */
    int port;       /* TCP port (6379 when the URL has none) */
    char path[512]; /* unix socket path ("" for TCP) */
    char user[128]; /* ACL user name ("" for none: AUTH pass) */
    char pass[256]; /* password ("" for none); never log it */
    int db;         /* database number for SELECT (0 when absent) */
} sched_redis_url_t;

/* Parse `redis://[[user:]pass@]host[:port][/db][?db=N]`, `unix://[[user:]pass@]/path[?db=N]`
 * or a plain path starting with '/' into *out. User info without a colon is a password
 * alone (AUTH pass). user, pass, host and the unix:// path are percent-decoded; host may be
 * a bracketed IPv6 address. rediss:// (TLS) is refused. Pure: no I/O, no environment.
 * Returns 0, or VL_EINVAL with a message in err (errlen bytes, may be 0) that never
 * contains the password. */
int sched_redis_url_parse(const char *url, sched_redis_url_t *out, char *err, size_t errlen);

/* Called on each state change: connected = 1 once connected, authenticated and SELECTed;
 * connected = 0 when the connection is lost, and also after each failed connect attempt
 * (so a caller can give up after a while), with a reason (borrowed, valid during the
 * call; never contains the password). sched_redis_close may be called from here. */
typedef void (*sched_redis_state_cb)(sched_redis_t *r, int connected, const char *reason, void *ud);

typedef struct sched_redis_opts {
    int cmd_timeout_ms;            /* per command; 0 = 5000 */
    int connect_timeout_ms;        /* connect + AUTH + SELECT; 0 = 3000 */
    int backoff_base_ms;           /* first reconnect delay; 0 = 100 */
    int backoff_max_ms;            /* reconnect delay cap; 0 = 5000 */
    int dead_after_ms;             /* drop the connection when requests await replies
                                    * and none came for this long; 0 = 30000; never
                                    * below cmd_timeout_ms */
    sched_redis_state_cb on_state; /* may be NULL */
    void *ud;                      /* passed to on_state (borrowed) */
} sched_redis_opts_t;

/* A command's completion. reply (borrowed, freed by the module after the callback) is
 * NULL when err != 0. err: 0 (reply may be REDIS_REPLY_ERROR: an error reply is a
 * reply), VL_ETIMEOUT, VL_EREDIS (connection lost) or VL_ECANCELED (sched_redis_close).
 * errstr (borrowed, valid during the call) describes err, NULL when err is 0. The
 * callback may issue new commands and may call sched_redis_close. */
typedef void (*sched_redis_cb)(sched_redis_t *r, redisReply *reply, void *privdata, int err,
                               const char *errstr);

/* Create a client on loop (borrowed, must outlive the client) for url (copied) and start
 * connecting. The password comes from the URL, else from env VOLLEY_REDIS_PASSWORD.
 * opts (copied) may be NULL for the defaults. Returns 0 and *out (caller frees with
 * sched_redis_close), or VL_EINVAL (bad URL) / VL_ENOMEM with a message in err. A server
 * that is down is not an error here: on_state reports it and reconnects follow. Sets
 * SIGPIPE to SIG_IGN if it is still at its default (hiredis writes with write(2), and a
 * server gone mid-write must fail the commands, not kill the process). */
int sched_redis_new(sched_redis_t **out, uv_loop_t *loop, const char *url,
                    const sched_redis_opts_t *opts, char *err, size_t errlen);

/* 1 when connected (AUTH and SELECT done) and commands are accepted, else 0. */
int sched_redis_connected(const sched_redis_t *r);

/* The loop the client runs on (borrowed). */
uv_loop_t *sched_redis_loop(const sched_redis_t *r);

/* Commands waiting for a reply. */
size_t sched_redis_pending(const sched_redis_t *r);

/* Send a command in hiredis's printf-like format (%s, %b with pointer and size_t length,
 * %d ...). cb may be NULL (reply ignored); privdata is borrowed and handed back. Returns 0
 * when the command is sent (exactly one callback follows, never from inside this call),
 * or VL_EREDIS when disconnected, VL_EINVAL for a bad format (hiredis 0.14 also
 * reports a failed allocation while formatting that way), VL_ENOMEM: then no callback
 * is ever made. */
int sched_redis_cmd(sched_redis_t *r, sched_redis_cb cb, void *privdata, const char *fmt, ...);

/* As sched_redis_cmd with an argument vector (borrowed, copied before return). argvlen
 * may be NULL when every argument is a NUL-terminated string. */
int sched_redis_cmdargv(sched_redis_t *r, sched_redis_cb cb, void *privdata, int argc,
                        const char **argv, const size_t *argvlen);

/* Run a Lua script: EVALSHA with its SHA1, then EVAL if the server answers NOSCRIPT; the
 * callback sees only the final outcome. script must be static (its SHA1 is cached by
 * pointer for the life of the process). argv holds nkeys keys then nargs arguments
 * (borrowed, copied before return); argvlen may be NULL. Returns as sched_redis_cmd. */
int sched_redis_eval(sched_redis_t *r, sched_redis_cb cb, void *privdata, const char *script,
                     int nkeys, int nargs, const char **argv, const size_t *argvlen);

/* Fail every pending command with VL_ECANCELED, stop reconnecting, disconnect, and free r
 * once libuv has closed its handles (run the loop to let that happen). Safe to call from
 * inside a command or state callback: the free is deferred until that callback returns.
 * NULL allowed. No callback of any kind is made for r after this returns, except the
 * VL_ECANCELED ones it makes itself. */
void sched_redis_close(sched_redis_t *r);

/* A blocking connection for short CLI commands: connect (timeout_ms for the connect and
 * for each command), AUTH (URL password, else VOLLEY_REDIS_PASSWORD) and SELECT. Returns
 * the context (caller frees with redisFree) or NULL with a message in err. */
redisContext *sched_redis_connect_sync(const char *url, int timeout_ms, char *err, size_t errlen);

/* A failed synchronous command what on c: fills err (never with a password) and frees r
 * (may be NULL). VL_ENETWORK when there was no reply (the connection failed), VL_EREDIS
 * for an error reply or one of the wrong shape. */
int sched_redis_sync_fail(redisContext *c, redisReply *r, const char *what, char *err,
                          size_t errlen);

#endif
