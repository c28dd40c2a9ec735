/* redis.c: hiredis async on libuv with error reporting, timeouts and reconnects; see redis.h.
 *
 * Ownership in brief. A command is an `op`, handed to hiredis as its privdata; hiredis
 * hands every op back exactly once (with a reply, or with NULL when the context goes
 * away), and that is where the op is freed. The user's callback is made once per op,
 * whichever comes first: the reply, the op's deadline (the op is then marked done and
 * its late reply is dropped), the loss of the connection, or sched_redis_close.
 *
 * Each hiredis context gets a `conn` holding its uv_poll_t; hiredis's cleanup hook
 * detaches the conn and closes the poll handle, whose close callback frees the conn. The
 * client itself is freed only in the close callbacks of its two timers, which libuv runs
 * from the loop and never from inside another callback, so a client closed from inside
 * any of its callbacks stays valid until that callback has returned.
 */
#include "scheduler/redis.h"

#include <ctype.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <hiredis/async.h>
#include <openssl/sha.h>

#include "buf.h"
#include "err.h"
#include "log.h"

#define DEF_CMD_TIMEOUT_MS 5000
#define DEF_CONNECT_TIMEOUT_MS 3000
#define DEF_BACKOFF_BASE_MS 100
#define DEF_BACKOFF_MAX_MS 5000
#define DEF_DEAD_AFTER_MS 30000
#define MAX_SCRIPTS 64
#define WHERE_MAX (sizeof(((sched_redis_url_t *)0)->path) + 16)

enum rstate { ST_DOWN, ST_CONNECTING, ST_UP, ST_CLOSED };

struct op {
    struct op *prev, *next; /* in the client's live list while the user awaits a callback */
    sched_redis_t *r;
    sched_redis_cb cb;
    void *priv;
    uint64_t deadline; /* loop time (ms) at which the op times out */
    int done;          /* the user's callback has been made */
    /* For EVALSHA: what EVAL needs if the server answers NOSCRIPT. */
    const char *script;
    int nkeys, nargs;
    int eval_sent;
    char *cmd; /* the EVALSHA command as sent (RESP), owned */
    size_t cmd_len;
    size_t hdr_len; /* "*N $7 EVALSHA $40 sha": what EVAL replaces; the arguments follow */
    int argc;       /* N */
};

struct conn {
    uv_poll_t poll;
    uv_prepare_t flush;    /* writes the commands queued during a loop iteration */
    redisAsyncContext *ac; /* NULL once hiredis has let go of it */
    sched_redis_t *r;
    int events;
    int poll_ok;  /* the handles were initialised, so they must be closed */
    int open;     /* handles not yet closed */
    int flushing; /* inside on_flush: a request to write now means the socket is full */
};

struct script_sha {
    const char *src;
    char hex[41];
};

struct sched_redis {
    uv_loop_t *loop;
    sched_redis_url_t url;
    sched_redis_opts_t opts;
    enum rstate state;
    redisAsyncContext *ac;    /* the current context, NULL when none */
    uv_timer_t cmd_timer;     /* the oldest live op's deadline */
    uv_timer_t conn_timer;    /* connect timeout, or the reconnect delay when down */
    int conn_timer_reconnect; /* conn_timer is waiting to reconnect (not a timeout) */
    struct op *head, *tail;
    size_t npending;
    size_t inflight;      /* requests hiredis holds (timed-out ones included) */
    uint64_t progress_ms; /* loop time of the last reply, or of the first request after none */
    int attempts;         /* consecutive failed connects, for the backoff */
    int handles_open;
    uint64_t rng;
    char reason[256]; /* why the current connection is being dropped, if we drop it */
    struct script_sha scripts[MAX_SCRIPTS];
    int nscripts;
};

/* ---- URL parsing ------------------------------------------------------------------- */

/* Percent-decode s[0..len) into out (cap bytes with the NUL). -1 on a bad escape, a NUL
 * byte or overflow. */
static int pct_decode(const char *s, size_t len, char *out, size_t cap, int decode)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        int c = (unsigned char)s[i];
        if (decode && c == '%') {
            if (i + 2 >= len) return -1;
            int h = vl_hexval((unsigned char)s[i + 1]), l = vl_hexval((unsigned char)s[i + 2]);
            if (h < 0 || l < 0) return -1;
            c = h * 16 + l;
            i += 2;
        }
        if (c == 0 || o + 1 >= cap) return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return 0;
}

static int parse_uint(const char *s, size_t len, long max, long *out)
{
    if (len == 0 || len > 9) return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v > max) return -1;
    *out = v;
    return 0;
}

/* The query string: only db=N is understood. */
static int parse_query(const char *q, sched_redis_url_t *u, char *err, size_t n)
{
    while (*q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        long v;
        if (len > 3 && strncmp(q, "db=", 3) == 0) {
            if (parse_uint(q + 3, len - 3, 1000000, &v) < 0) {
                vl_set_err(err, n, "bad database number in the Redis URL's query");
                return VL_EINVAL;
            }
            u->db = (int)v;
        } else if (len > 0) {
            vl_set_err(err, n, "unknown parameter in the Redis URL's query (only db=N)");
            return VL_EINVAL;
        }
        q += len + (amp ? 1 : 0);
    }
    return 0;
}

/* "user:pass" or "pass" (no colon: a password alone, for AUTH pass). */
static int parse_userinfo(const char *a, size_t len, sched_redis_url_t *u, char *err, size_t n)
{
    const char *colon = memchr(a, ':', len);
    int bad;
    if (colon)
        bad = pct_decode(a, (size_t)(colon - a), u->user, sizeof u->user, 1) < 0 ||
              pct_decode(colon + 1, len - (size_t)(colon - a) - 1, u->pass, sizeof u->pass, 1) < 0;
    else
        bad = pct_decode(a, len, u->pass, sizeof u->pass, 1) < 0;
    if (bad) {
        vl_set_err(err, n, "bad or too long user name or password in the Redis URL");
        return VL_EINVAL;
    }
    return 0;
}

int sched_redis_url_parse(const char *url, sched_redis_url_t *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || !*url) {
        vl_set_err(err, errlen, "empty Redis URL");
        return VL_EINVAL;
    }
    if (url[0] == '/') {
        out->is_unix = 1;
        if (pct_decode(url, strlen(url), out->path, sizeof out->path, 0) < 0) {
            vl_set_err(err, errlen, "Redis socket path too long");
            return VL_EINVAL;
        }
        out->port = 0;
        return 0;
    }
    if (strncmp(url, "unix://", 7) == 0) {
        const char *p = url + 7;
        /* unix://[user:pass@]/path: user info ends at the last '@' before the path. */
        const char *slash = strchr(p, '/');
        if (slash && slash > p) {
            const char *at = NULL;
            for (const char *s = p; s < slash; s++)
                if (*s == '@') at = s;
            if (at && at + 1 == slash) {
                if (parse_userinfo(p, (size_t)(at - p), out, err, errlen) < 0) return VL_EINVAL;
                p = slash;
            }
        }
        const char *q = strchr(p, '?');
        size_t len = q ? (size_t)(q - p) : strlen(p);
        out->is_unix = 1;
        out->port = 0;
        if (len == 0 || p[0] != '/') {
            vl_set_err(err, errlen, "a unix:// Redis URL needs an absolute path (unix:///path)");
            return VL_EINVAL;
        }
        if (pct_decode(p, len, out->path, sizeof out->path, 1) < 0) {
            vl_set_err(err, errlen, "bad or too long socket path in the Redis URL");
            return VL_EINVAL;
        }
        return q ? parse_query(q + 1, out, err, errlen) : 0;
    }
    if (strncmp(url, "rediss://", 9) == 0) {
        vl_set_err(err, errlen, "rediss:// (TLS) is not supported; use a unix socket or a tunnel");
        return VL_EINVAL;
    }
    if (strncmp(url, "redis://", 8) != 0) {
        vl_set_err(err, errlen, "a Redis URL starts with redis://, unix:// or /");
        return VL_EINVAL;
    }
    const char *a = url + 8;
    size_t alen = strcspn(a, "/?");
    const char *rest = a + alen;
    /* The last '@' ends the user info, so a password may contain an unescaped '@'. */
    const char *at = NULL;
    for (const char *s = a; s < a + alen; s++)
        if (*s == '@') at = s;
    const char *h = a;
    if (at) {
        if (parse_userinfo(a, (size_t)(at - a), out, err, errlen) < 0) return VL_EINVAL;
        h = at + 1;
    }
    const char *hend = a + alen;
    const char *port = NULL;
    size_t hlen;
    if (*h == '[') {
        const char *rb = memchr(h, ']', (size_t)(hend - h));
        if (!rb) {
            vl_set_err(err, errlen, "unterminated [IPv6] host in the Redis URL");
            return VL_EINVAL;
        }
        hlen = (size_t)(rb - h - 1);
        if (pct_decode(h + 1, hlen, out->host, sizeof out->host, 0) < 0) hlen = 0;
        if (rb + 1 < hend) {
            if (rb[1] != ':') {
                vl_set_err(err, errlen, "junk after the [IPv6] host in the Redis URL");
                return VL_EINVAL;
            }
            port = rb + 2;
        }
    } else {
        const char *colon = memchr(h, ':', (size_t)(hend - h));
        hlen = (size_t)((colon ? colon : hend) - h);
        if (colon) port = colon + 1;
        if (hlen > 0 && pct_decode(h, hlen, out->host, sizeof out->host, 1) < 0) hlen = 0;
    }
    if (hlen == 0 || out->host[0] == '\0') {
        vl_set_err(err, errlen, "missing or bad host in the Redis URL");
        return VL_EINVAL;
    }
    if (port) {
        long v;
        if (parse_uint(port, (size_t)(hend - port), 65535, &v) < 0 || v == 0) {
            vl_set_err(err, errlen, "bad port in the Redis URL");
            return VL_EINVAL;
        }
        out->port = (int)v;
    }
    if (*rest == '/') {
        const char *d = rest + 1;
        size_t dlen = strcspn(d, "?");
        if (dlen > 0) {
            long v;
            if (parse_uint(d, dlen, 1000000, &v) < 0) {
                vl_set_err(err, errlen, "bad database number in the Redis URL (redis://host/N)");
                return VL_EINVAL;
            }
            out->db = (int)v;
        }
        rest = d + dlen;
    }
    if (*rest == '?') return parse_query(rest + 1, out, err, errlen);
    return 0;
}

/* ---- helpers ------------------------------------------------------------------------- */

static const char *password(const sched_redis_url_t *u)
{
    if (u->pass[0]) return u->pass;
    const char *env = getenv("VOLLEY_REDIS_PASSWORD");
    return env && *env ? env : NULL;
}

static void url_describe(const sched_redis_url_t *u, char *buf, size_t n)
{
    if (u->is_unix)
        snprintf(buf, n, "unix:%s", u->path);
    else
        snprintf(buf, n, "%s:%d", u->host, u->port);
}

static uint64_t rng_next(sched_redis_t *r)
{
    /* xorshift64*: jitter needs no more than this. */
    r->rng ^= r->rng >> 12;
    r->rng ^= r->rng << 25;
    r->rng ^= r->rng >> 27;
    return r->rng * 2685821657736338717ULL;
}

static void notify_state(sched_redis_t *r, int connected, const char *reason)
{
    if (r->opts.on_state && r->state != ST_CLOSED)
        r->opts.on_state(r, connected, reason, r->opts.ud);
}

/* ---- ops ----------------------------------------------------------------------------- */

static void op_unlink(sched_redis_t *r, struct op *op)
{
    if (op->prev)
        op->prev->next = op->next;
    else
        r->head = op->next;
    if (op->next)
        op->next->prev = op->prev;
    else
        r->tail = op->prev;
    op->prev = op->next = NULL;
    r->npending--;
}

/* Make the user's one callback for op and leave op to hiredis, which still owns it. */
static void op_finish(struct op *op, redisReply *reply, int err, const char *errstr)
{
    sched_redis_t *r = op->r;
    if (op->done) return;
    op->done = 1;
    op_unlink(r, op);
    if (op->cb) op->cb(r, reply, op->priv, err, errstr);
}

static void op_free(struct op *op)
{
    free(op->cmd);
    free(op);
}

/* One RESP bulk string. Commands are formatted here rather than by hiredis's
 * redisFormatCommandArgv, whose sdscatfmt per argument cost more than the
 * rest of a record call's client side (a record carries about a thousand). */
static int resp_bulk(buf_t *b, const char *s, size_t n)
{
    int rc = buf_putc(b, '$');
    if (!rc) rc = buf_put_dec(b, (long long)n);
    if (!rc) rc = buf_append(b, "\r\n", 2);
    if (!rc) rc = buf_append(b, s, n);
    return rc ? rc : buf_append(b, "\r\n", 2);
}

static int resp_head(buf_t *b, int argc, const char *verb, const char *body)
{
    int rc = buf_putc(b, '*');
    if (!rc) rc = buf_put_dec(b, argc);
    if (!rc) rc = buf_append(b, "\r\n", 2);
    if (!rc) rc = resp_bulk(b, verb, strlen(verb));
    return rc ? rc : resp_bulk(b, body, strlen(body));
}

static void fail_all(sched_redis_t *r, int err, const char *errstr)
{
    /* Re-read the head each time: a callback may close the client or issue commands. */
    while (r->head)
        op_finish(r->head, NULL, err, errstr);
}

static void on_cmd_timer(uv_timer_t *t);

/* The timer serves two deadlines: the oldest live op's, and the watchdog's, which fires
 * when the server has sent nothing for dead_after_ms although requests await replies. */
static void cmd_timer_arm(sched_redis_t *r)
{
    if (r->state == ST_CLOSED) return;
    uint64_t at = UINT64_MAX;
    if (r->head) at = r->head->deadline;
    if (r->inflight > 0 && r->progress_ms + (uint64_t)r->opts.dead_after_ms < at)
        at = r->progress_ms + (uint64_t)r->opts.dead_after_ms;
    if (at == UINT64_MAX) return;
    uint64_t now = uv_now(r->loop);
    uv_timer_start(&r->cmd_timer, on_cmd_timer, at > now ? at - now : 0, 0);
}

static void drop(sched_redis_t *r, const char *reason);

static void on_cmd_timer(uv_timer_t *t)
{
    sched_redis_t *r = t->data;
    uint64_t now = uv_now(r->loop);
    while (r->head && r->head->deadline <= now && r->state != ST_CLOSED)
        op_finish(r->head, NULL, VL_ETIMEOUT, "Redis command timed out");
    if (r->state == ST_UP && r->inflight > 0 &&
        now - r->progress_ms >= (uint64_t)r->opts.dead_after_ms) {
        /* A server that answers nothing at all (hung, or a network path gone without a
         * reset) would otherwise keep a dead connection forever. */
        char why[96];
        snprintf(why, sizeof why, "no reply for %d ms", r->opts.dead_after_ms);
        drop(r, why);
    }
    cmd_timer_arm(r);
}

/* After sending: re-arm only when the timer would fire after the new op's deadline (it
 * may be waiting for the watchdog), so a stream of commands costs no timer updates. */
static void start_cmd_timer(sched_redis_t *r)
{
    if (!uv_is_active((uv_handle_t *)&r->cmd_timer) ||
        uv_timer_get_due_in(&r->cmd_timer) > (uint64_t)r->opts.cmd_timeout_ms)
        cmd_timer_arm(r);
}

/* hiredis's callback for every op. */
static void on_op_reply(redisAsyncContext *ac, void *rep, void *privdata)
{
    struct op *op = privdata;
    sched_redis_t *r = op->r;
    redisReply *reply = rep;
    r->inflight--;
    if (reply) r->progress_ms = uv_now(r->loop);
    if (!reply) {
        /* hiredis fails its pending callbacks only when the context is going away (it has
         * set DISCONNECTING or FREEING, so can_send refuses new commands meanwhile). */
        if (!op->done) {
            if (r->state == ST_CLOSED)
                op_finish(op, NULL, VL_ECANCELED, "Redis client closed");
            else
                op_finish(op, NULL, VL_EREDIS, "Redis connection lost");
        }
        op_free(op);
        return;
    }
    if (op->done) {
        /* The op timed out earlier: its late reply has no one to go to. */
        op_free(op);
        return;
    }
    if (op->script && !op->eval_sent && reply->type == REDIS_REPLY_ERROR && reply->str &&
        strncmp(reply->str, "NOSCRIPT", 8) == 0) {
        /* The same arguments behind an EVAL header. */
        buf_t b;
        buf_init(&b, (size_t)1 << 31);
        int rc = REDIS_ERR;
        if (!resp_head(&b, op->argc, "EVAL", op->script) &&
            !buf_append(&b, op->cmd + op->hdr_len, op->cmd_len - op->hdr_len)) {
            op->eval_sent = 1;
            rc = redisAsyncFormattedCommand(ac, on_op_reply, op, b.data, b.len);
            if (rc == REDIS_OK) r->inflight++;
        }
        buf_free(&b);
        if (rc == REDIS_OK) return; /* hiredis owns op again until the EVAL's reply */
        op_finish(op, NULL, VL_EREDIS, "could not send EVAL after NOSCRIPT");
        op_free(op);
        return;
    }
    op_finish(op, reply, 0, NULL);
    op_free(op);
}

static struct op *op_new(sched_redis_t *r, sched_redis_cb cb, void *priv)
{
    struct op *op = calloc(1, sizeof *op);
    if (!op) return NULL;
    op->r = r;
    op->cb = cb;
    op->priv = priv;
    op->deadline = uv_now(r->loop) + (uint64_t)r->opts.cmd_timeout_ms;
    return op;
}

/* Put a sent op on the live list (in sending order, hence in deadline order). */
static void op_track(sched_redis_t *r, struct op *op)
{
    op->prev = r->tail;
    if (r->tail)
        r->tail->next = op;
    else
        r->head = op;
    r->tail = op;
    r->npending++;
    if (r->inflight++ == 0) r->progress_ms = uv_now(r->loop);
    start_cmd_timer(r);
}

static int can_send(const sched_redis_t *r)
{
    return r->state == ST_UP && r->ac && !(r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

int sched_redis_cmdargv(sched_redis_t *r, sched_redis_cb cb, void *privdata, int argc,
                        const char **argv, const size_t *argvlen)
{
    if (argc <= 0 || !argv) return VL_EINVAL;
    if (!can_send(r)) return VL_EREDIS;
    struct op *op = op_new(r, cb, privdata);
    if (!op) return VL_ENOMEM;
    if (redisAsyncCommandArgv(r->ac, on_op_reply, op, argc, argv, argvlen) != REDIS_OK) {
        op_free(op);
        return VL_EREDIS;
    }
    op_track(r, op);
    return 0;
}

int sched_redis_cmd(sched_redis_t *r, sched_redis_cb cb, void *privdata, const char *fmt, ...)
{
    if (!fmt) return VL_EINVAL;
    if (!can_send(r)) return VL_EREDIS;
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int len = redisvFormatCommand(&cmd, fmt, ap);
    va_end(ap);
    /* hiredis 0.14 answers -1 both for a bad format and for a failed allocation; the
     * first is the likely one (a programming error), so say so. */
    if (len < 0) return VL_EINVAL;
    struct op *op = op_new(r, cb, privdata);
    if (!op) {
        free(cmd);
        return VL_ENOMEM;
    }
    int rc = redisAsyncFormattedCommand(r->ac, on_op_reply, op, cmd, (size_t)len);
    free(cmd);
    if (rc != REDIS_OK) {
        op_free(op);
        return VL_EREDIS;
    }
    op_track(r, op);
    return 0;
}

static const char *script_sha(sched_redis_t *r, const char *script)
{
    for (int i = 0; i < r->nscripts; i++)
        if (r->scripts[i].src == script) return r->scripts[i].hex;
    /* Past the cache's size (more scripts than volley has) compute it each time. */
    struct script_sha *s =
        r->nscripts < MAX_SCRIPTS ? &r->scripts[r->nscripts++] : &r->scripts[MAX_SCRIPTS - 1];
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)script, strlen(script), md);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->hex + 2 * i, 3, "%02x", md[i]);
    s->src = script;
    return s->hex;
}

int sched_redis_eval(sched_redis_t *r, sched_redis_cb cb, void *privdata, const char *script,
                     int nkeys, int nargs, const char **argv, const size_t *argvlen)
{
    if (!script || nkeys < 0 || nargs < 0 || (nkeys + nargs > 0 && !argv)) return VL_EINVAL;
    if (!can_send(r)) return VL_EREDIS;
    int n = nkeys + nargs;
    struct op *op = op_new(r, cb, privdata);
    if (!op) return VL_ENOMEM;
    op->script = script;
    op->nkeys = nkeys;
    op->nargs = nargs;
    op->argc = n + 3;
    /* The command is kept: EVAL may have to resend its arguments after NOSCRIPT. */
    buf_t b;
    buf_init(&b, (size_t)1 << 31);
    char nk[24];
    size_t nkl = buf_fmt_dec(nk, (unsigned long long)nkeys);
    int err = resp_head(&b, n + 3, "EVALSHA", script_sha(r, script));
    op->hdr_len = b.len;
    if (!err) err = resp_bulk(&b, nk, nkl);
    for (int i = 0; i < n && !err; i++)
        err = resp_bulk(&b, argv[i], argvlen ? argvlen[i] : strlen(argv[i]));
    if (err) {
        buf_free(&b);
        op_free(op);
        return err;
    }
    op->cmd_len = b.len;
    op->cmd = buf_take(&b);
    if (redisAsyncFormattedCommand(r->ac, on_op_reply, op, op->cmd, op->cmd_len) != REDIS_OK) {
        op_free(op);
        return VL_EREDIS;
    }
    op_track(r, op);
    return 0;
}

/* ---- the libuv adapter ------------------------------------------------------------------ */

static void on_conn_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->open == 0) free(c);
}

static void drop(sched_redis_t *r, const char *reason);

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct conn *c = h->data;
    if (!c->ac) return;
    if (status < 0) {
        /* libuv reports POLLERR as an error status and stops polling; Debian's adapter
         * returned here and the connection hung. A read makes hiredis find the socket's
         * error and fail everything properly. */
        redisAsyncHandleRead(c->ac);
        if (c->ac) {
            char why[128];
            snprintf(why, sizeof why, "socket poll error: %s", uv_strerror(status));
            drop(c->r, why);
        }
        return;
    }
    if (events & UV_READABLE) redisAsyncHandleRead(c->ac);
    if (c->ac && (events & UV_WRITABLE)) redisAsyncHandleWrite(c->ac);
}

static void conn_update(struct conn *c)
{
    if (!c->poll_ok) return;
    if (c->events)
        uv_poll_start(&c->poll, c->events, on_poll);
    else
        uv_poll_stop(&c->poll);
}

static void ev_add_read(void *p)
{
    struct conn *c = p;
    c->events |= UV_READABLE;
    conn_update(c);
}

static void ev_del_read(void *p)
{
    struct conn *c = p;
    c->events &= ~UV_READABLE;
    conn_update(c);
}

/* Commands queued on a connected socket are written once per loop iteration,
 * just before the loop waits: a write request per command batch costs no epoll_ctl
 * pair and no extra wakeup, as waiting for writability did (two epoll_ctl calls
 * for every batch). Only a write that fills the socket waits for writability. */
static void on_flush(uv_prepare_t *h)
{
    struct conn *c = h->data;
    uv_prepare_stop(h);
    if (!c->ac) return;
    c->flushing = 1;
    redisAsyncHandleWrite(c->ac); /* may free the context: c lives until its handles close */
    c->flushing = 0;
}

static void ev_add_write(void *p)
{
    struct conn *c = p;
    if (c->poll_ok && !c->flushing && c->ac && (c->ac->c.flags & REDIS_CONNECTED)) {
        uv_prepare_start(&c->flush, on_flush);
        return;
    }
    /* Connecting (hiredis learns the outcome from writability) or the socket is full. */
    c->events |= UV_WRITABLE;
    conn_update(c);
}

static void ev_del_write(void *p)
{
    struct conn *c = p;
    if (c->poll_ok) uv_prepare_stop(&c->flush);
    c->events &= ~UV_WRITABLE;
    conn_update(c);
}

static void schedule_reconnect(sched_redis_t *r);

/* hiredis's cleanup hook: the context is being freed (after its pending callbacks have
 * been failed). This is the one place a connection is known to be gone. */
static void ev_cleanup(void *p)
{
    struct conn *c = p;
    redisAsyncContext *ac = c->ac;
    if (!ac) return; /* hiredis may call cleanup more than once */
    c->ac = NULL;
    sched_redis_t *r = c->r;
    if (c->poll_ok) {
        c->open = 2;
        uv_close((uv_handle_t *)&c->poll, on_conn_closed);
        uv_close((uv_handle_t *)&c->flush, on_conn_closed);
    } else {
        free(c);
    }
    if (r->ac != ac) return;
    r->ac = NULL;
    char why[300];
    const char *what = r->reason[0]            ? r->reason
                       : ac->err && ac->errstr ? ac->errstr
                                               : "server closed the connection";
    int was_up = r->state == ST_UP;
    snprintf(why, sizeof why, "%s%s", was_up ? "connection lost: " : "connect failed: ", what);
    r->reason[0] = '\0';
    if (r->state == ST_CLOSED) return;
    r->state = ST_DOWN;
    uv_timer_stop(&r->conn_timer);
    fail_all(r, VL_EREDIS, "Redis connection lost");
    if (r->state == ST_CLOSED) return;
    char where[WHERE_MAX];
    url_describe(&r->url, where, sizeof where);
    if (was_up)
        VL_WARN("redis %s: %s", where, why);
    else
        VL_DEBUG("redis %s: %s", where, why);
    schedule_reconnect(r);
    notify_state(r, 0, why);
}

/* Drop the current connection (the cleanup hook then reports it and reconnects). Inside
 * a hiredis callback hiredis defers the free until the callback returns. */
static void drop(sched_redis_t *r, const char *reason)
{
    redisAsyncContext *ac = r->ac;
    if (!ac || (ac->c.flags & REDIS_FREEING)) return;
    if (reason && !r->reason[0]) snprintf(r->reason, sizeof r->reason, "%s", reason);
    redisAsyncFree(ac);
}

/* ---- connecting ------------------------------------------------------------------------- */

static void on_handshake(redisAsyncContext *ac, void *rep, void *privdata)
{
    sched_redis_t *r = ac->data;
    redisReply *reply = rep;
    const char *what = privdata;
    if (!reply || r->ac != ac || r->state != ST_CONNECTING) return;
    if (reply->type == REDIS_REPLY_ERROR) {
        char why[256];
        /* The server's message never contains the password. */
        snprintf(why, sizeof why, "%s: %s", what, reply->str ? reply->str : "error");
        drop(r, why);
        return;
    }
    if (strcmp(what, "PING") != 0) return;
    r->state = ST_UP;
    r->attempts = 0;
    uv_timer_stop(&r->conn_timer);
    char where[WHERE_MAX];
    url_describe(&r->url, where, sizeof where);
    VL_INFO("redis %s: connected", where);
    notify_state(r, 1, "connected");
}

static void connect_failed_now(sched_redis_t *r, const char *why)
{
    char where[WHERE_MAX], msg[400];
    url_describe(&r->url, where, sizeof where);
    snprintf(msg, sizeof msg, "connect failed: %s", why);
    VL_DEBUG("redis %s: %s", where, msg);
    r->state = ST_DOWN;
    schedule_reconnect(r);
    notify_state(r, 0, msg);
}

static void on_conn_timer(uv_timer_t *t);

static void start_connect(sched_redis_t *r)
{
    redisAsyncContext *ac = r->url.is_unix ? redisAsyncConnectUnix(r->url.path)
                                           : redisAsyncConnect(r->url.host, r->url.port);
    if (!ac) {
        connect_failed_now(r, "out of memory");
        return;
    }
    if (ac->err) {
        char why[256];
        snprintf(why, sizeof why, "%s", ac->errstr);
        redisAsyncFree(ac);
        connect_failed_now(r, why);
        return;
    }
    struct conn *c = calloc(1, sizeof *c);
    if (!c || uv_poll_init(r->loop, &c->poll, ac->c.fd) != 0) {
        free(c);
        redisAsyncFree(ac);
        connect_failed_now(r, "cannot watch the socket");
        return;
    }
    uv_prepare_init(r->loop, &c->flush); /* cannot fail */
    c->poll_ok = 1;
    c->poll.data = c;
    c->flush.data = c;
    c->ac = ac;
    c->r = r;
    ac->data = r;
    ac->ev.data = c;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    r->ac = ac;
    r->state = ST_CONNECTING;
    r->reason[0] = '\0';
    r->conn_timer_reconnect = 0;
    uv_timer_start(&r->conn_timer, on_conn_timer, (uint64_t)r->opts.connect_timeout_ms, 0);
    /* hiredis queues these until the socket is writable; PING last, so its answer means
     * the server is ready (a server loading its AOF answers -LOADING instead). */
    const char *pass = password(&r->url);
    int rc = REDIS_OK;
    if (pass && r->url.user[0])
        rc = redisAsyncCommand(ac, on_handshake, "AUTH", "AUTH %s %s", r->url.user, pass);
    else if (pass)
        rc = redisAsyncCommand(ac, on_handshake, "AUTH", "AUTH %s", pass);
    if (rc == REDIS_OK && r->url.db)
        rc = redisAsyncCommand(ac, on_handshake, "SELECT", "SELECT %d", r->url.db);
    if (rc == REDIS_OK) rc = redisAsyncCommand(ac, on_handshake, "PING", "PING");
    if (rc != REDIS_OK) drop(r, "could not queue the handshake");
}

static void on_conn_timer(uv_timer_t *t)
{
    sched_redis_t *r = t->data;
    if (r->state == ST_CLOSED) return;
    if (r->conn_timer_reconnect) {
        r->conn_timer_reconnect = 0;
        start_connect(r);
    } else if (r->state == ST_CONNECTING) {
        char why[64];
        snprintf(why, sizeof why, "timed out after %d ms", r->opts.connect_timeout_ms);
        drop(r, why);
    }
}

static void schedule_reconnect(sched_redis_t *r)
{
    if (r->state == ST_CLOSED) return;
    int base = r->opts.backoff_base_ms, max = r->opts.backoff_max_ms;
    uint64_t d = (uint64_t)base;
    for (int i = 0; i < r->attempts && d < (uint64_t)max; i++)
        d *= 2;
    if (d > (uint64_t)max) d = (uint64_t)max;
    /* Full jitter over the upper half, so many workers do not reconnect in step. */
    d = d / 2 + rng_next(r) % (d / 2 + 1);
    if (r->attempts < 30) r->attempts++;
    r->conn_timer_reconnect = 1;
    uv_timer_start(&r->conn_timer, on_conn_timer, d, 0);
}

/* ---- life cycle ------------------------------------------------------------------------- */

int sched_redis_new(sched_redis_t **out, uv_loop_t *loop, const char *url,
                    const sched_redis_opts_t *opts, char *err, size_t errlen)
{
    *out = NULL;
    sched_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        vl_set_err(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    int rc = sched_redis_url_parse(url, &r->url, err, errlen);
    if (rc < 0) {
        free(r);
        return rc;
    }
    if (opts) r->opts = *opts;
    if (r->opts.cmd_timeout_ms <= 0) r->opts.cmd_timeout_ms = DEF_CMD_TIMEOUT_MS;
    if (r->opts.connect_timeout_ms <= 0) r->opts.connect_timeout_ms = DEF_CONNECT_TIMEOUT_MS;
    if (r->opts.backoff_base_ms <= 0) r->opts.backoff_base_ms = DEF_BACKOFF_BASE_MS;
    if (r->opts.backoff_max_ms <= 0) r->opts.backoff_max_ms = DEF_BACKOFF_MAX_MS;
    if (r->opts.dead_after_ms <= 0) r->opts.dead_after_ms = DEF_DEAD_AFTER_MS;
    if (r->opts.dead_after_ms < r->opts.cmd_timeout_ms)
        r->opts.dead_after_ms = r->opts.cmd_timeout_ms;
    if (r->opts.backoff_max_ms < r->opts.backoff_base_ms)
        r->opts.backoff_max_ms = r->opts.backoff_base_ms;
    /* hiredis 0.14 writes with write(2): a server gone mid-write would raise SIGPIPE and
     * kill volley instead of failing the commands. Ignore it unless someone handles it. */
    struct sigaction sa;
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) signal(SIGPIPE, SIG_IGN);
    r->loop = loop;
    r->state = ST_DOWN;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    r->rng =
        (uint64_t)tv.tv_usec * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(uintptr_t)r ^ uv_hrtime() ^ 1;
    uv_timer_init(loop, &r->cmd_timer);
    uv_timer_init(loop, &r->conn_timer);
    r->cmd_timer.data = r->conn_timer.data = r;
    r->handles_open = 2;
    /* Connect from the loop, so that no callback runs inside this function. */
    r->conn_timer_reconnect = 1;
    uv_timer_start(&r->conn_timer, on_conn_timer, 0, 0);
    *out = r;
    return 0;
}

int sched_redis_connected(const sched_redis_t *r)
{
    return r && can_send(r);
}

uv_loop_t *sched_redis_loop(const sched_redis_t *r)
{
    return r->loop;
}

size_t sched_redis_pending(const sched_redis_t *r)
{
    return r->npending;
}

static void on_timer_closed(uv_handle_t *h)
{
    sched_redis_t *r = h->data;
    if (--r->handles_open == 0) {
        /* Wipe the password from memory before freeing. */
        memset(&r->url, 0, sizeof r->url);
        free(r);
    }
}

void sched_redis_close(sched_redis_t *r)
{
    if (!r || r->state == ST_CLOSED) return;
    r->state = ST_CLOSED;
    uv_timer_stop(&r->conn_timer);
    uv_timer_stop(&r->cmd_timer);
    fail_all(r, VL_ECANCELED, "Redis client closed");
    /* The ops still inside hiredis are done; freeing the context frees them quietly. */
    if (r->ac && !(r->ac->c.flags & REDIS_FREEING)) redisAsyncFree(r->ac);
    uv_close((uv_handle_t *)&r->cmd_timer, on_timer_closed);
    uv_close((uv_handle_t *)&r->conn_timer, on_timer_closed);
}

/* ---- the blocking helper ---------------------------------------------------------------- */

redisContext *sched_redis_connect_sync(const char *url, int timeout_ms, char *err, size_t errlen)
{
    sched_redis_url_t u;
    if (sched_redis_url_parse(url, &u, err, errlen) < 0) return NULL;
    if (timeout_ms <= 0) timeout_ms = DEF_CONNECT_TIMEOUT_MS;
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    redisContext *c = u.is_unix ? redisConnectUnixWithTimeout(u.path, tv)
                                : redisConnectWithTimeout(u.host, u.port, tv);
    char where[WHERE_MAX];
    url_describe(&u, where, sizeof where);
    if (!c) {
        vl_set_err(err, errlen, "redis %s: out of memory", where);
        goto fail;
    }
    if (c->err) {
        vl_set_err(err, errlen, "redis %s: %s", where, c->errstr);
        goto fail;
    }
    redisSetTimeout(c, tv);
    const char *pass = password(&u);
    const char *what[3] = {"AUTH", "SELECT", "PING"};
    for (int step = 0; step < 3; step++) {
        redisReply *rep = NULL;
        if (step == 0 && pass && u.user[0])
            rep = redisCommand(c, "AUTH %s %s", u.user, pass);
        else if (step == 0 && pass)
            rep = redisCommand(c, "AUTH %s", pass);
        else if (step == 1 && u.db)
            rep = redisCommand(c, "SELECT %d", u.db);
        else if (step == 2)
            rep = redisCommand(c, "PING");
        else
            continue;
        if (!rep) {
            vl_set_err(err, errlen, "redis %s: %s: %s", where, what[step],
                       c->errstr[0] ? c->errstr : "no reply");
            goto fail;
        }
        if (rep->type == REDIS_REPLY_ERROR) {
            vl_set_err(err, errlen, "redis %s: %s: %s", where, what[step], rep->str);
            freeReplyObject(rep);
            goto fail;
        }
        freeReplyObject(rep);
    }
    memset(&u, 0, sizeof u);
    return c;
fail:
    memset(&u, 0, sizeof u);
    if (c) redisFree(c);
    return NULL;
}

int sched_redis_sync_fail(redisContext *c, redisReply *r, const char *what, char *err,
                          size_t errlen)
{
    int rc;
    if (!r || c->err) {
        vl_set_err(err, errlen, "Redis: %s: %s", what, c->err ? c->errstr : "no reply");
        rc = VL_ENETWORK;
    } else {
        vl_set_err(err, errlen, "Redis: %s: %.*s", what, (int)r->len, r->str ? r->str : "");
        rc = VL_EREDIS;
    }
    if (r) freeReplyObject(r);
    return rc;
}
