/* session.c: one SMTP connection as an explicit state machine.
 *
 * In the manner of curl's smtp.c: an enum of states with a names[] table, one
 * set_state() through which every change goes, and one switch handing each
 * complete reply to on_<state>_reply(). Set-up (greeting, EHLO, STARTTLS,
 * AUTH) is lock-step. Transactions go through a FIFO of expected replies,
 * like hiredis's callback list: RFC 2920 says pipelined replies are matched
 * by counting, never by code or text. With PIPELINING a flush writes every
 * queued command up to DATA; without it, one command per round trip.
 *
 * Transport is a table of two functions (plain, TLS): STARTTLS swaps it.
 */
#include <arpa/inet.h>
#include <stddef.h>
#include <netdb.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/err.h"
#include "common/log.h"
#include "engine/eng_int.h"
#include "engine/reply.h"
#include "engine/stuff.h"

#define READ_BUF_SIZE 16384
#define CMD_TEXT_MAX (64u << 20)

typedef enum sess_state {
    SESS_STOP,
    SESS_RESOLVE,
    SESS_CONNECT,
    SESS_TLS_HANDSHAKE,
    SESS_GREETING,
    SESS_EHLO,
    SESS_HELO,
    SESS_STARTTLS,
    SESS_AUTH_PLAIN,
    SESS_AUTH_LOGIN,      /* sent AUTH LOGIN, waiting for the user prompt */
    SESS_AUTH_LOGIN_USER, /* sent the user, waiting for the password prompt */
    SESS_AUTH_LOGIN_PASS, /* sent the password, waiting for 235 */
    SESS_READY,           /* set up, idle */
    SESS_TXN,             /* replies expected (see the FIFO) */
    SESS_QUIT,
    SESS_CLOSING,
    SESS_LAST
} sess_state_t;

static const char *const state_names[SESS_LAST] = {
    "STOP",  "RESOLVE",  "CONNECT",    "TLS_HANDSHAKE", "GREETING",        "EHLO",
    "HELO",  "STARTTLS", "AUTH_PLAIN", "AUTH_LOGIN",    "AUTH_LOGIN_USER", "AUTH_LOGIN_PASS",
    "READY", "TXN",      "QUIT",       "CLOSING",
};

/* Extensions from the EHLO reply. */
enum {
    CAP_PIPELINING = 1u << 0,
    CAP_SIZE = 1u << 1,
    CAP_8BITMIME = 1u << 2,
    CAP_SMTPUTF8 = 1u << 3,
    CAP_CHUNKING = 1u << 4,
    CAP_STARTTLS = 1u << 5,
    CAP_AUTH = 1u << 6,
    CAP_ENHANCED = 1u << 7,
    CAP_AUTH_PLAIN = 1u << 8,
    CAP_AUTH_LOGIN = 1u << 9,
};

/* What an entry of the FIFO of expected replies is waiting for. */
typedef enum cmd_kind {
    CMD_RSET,
    CMD_MAIL,
    CMD_RCPT,
    CMD_DATA,
    CMD_BODY,       /* content + final dot of the message */
    CMD_BODY_EMPTY, /* a bare "." after a 354 that no recipient earned */
    CMD_BDAT,       /* BDAT n LAST + content */
} cmd_kind_t;

static const eng_stage_t cmd_stage[] = {ENG_STAGE_RSET, ENG_STAGE_MAIL, ENG_STAGE_RCPT,
                                        ENG_STAGE_DATA, ENG_STAGE_BODY, ENG_STAGE_BODY,
                                        ENG_STAGE_BODY};

/* How errors name the command a reply answers. */
static const char *const cmd_verb[] = {
    "RSET", "MAIL", "RCPT", "DATA", "the message content", "the message content", "BDAT"};

typedef struct cmd {
    cmd_kind_t kind;
    unsigned idx;    /* recipient index for CMD_RCPT */
    eng_msg_t *msg;  /* NULL for RSET and BODY_EMPTY */
    uint64_t t_sent; /* when written; 0 = not yet */
    size_t text_off; /* during a flush: where its command text is */
    size_t text_len;
} cmd_t;

/* A write in flight: owns the command text its buffers point into. */
typedef struct wreq {
    uv_write_t req;
    eng__sess_t *s;
    char *text;
} wreq_t;

typedef struct transport {
    int (*write)(eng__sess_t *s, const struct iovec *iov, size_t n, char *owned_text);
    void (*on_data)(eng__sess_t *s, const char *data, size_t len);
} transport_t;

struct eng__sess {
    eng_pool_t *pool;
    eng__sess_t *prev, *next;
    unsigned id;
    sess_state_t state;

    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_getaddrinfo_t gai;
    uv_connect_t creq;
    int handles; /* open libuv handles; freed when this drops to 0 */
    int tcp_open;
    int gai_pending;
    struct addrinfo *ai_list, *ai_cur;
    size_t tgt, tgt_tries;                   /* with pool targets: the one tried, how many so far */
    char remote[256 + INET6_ADDRSTRLEN + 8]; /* [name]ip:port */

    const transport_t *tp;
    tls_conn_t *tls;
    int after_starttls;
    smtp_reader_t *rd;
    char *rbuf;

    unsigned caps;
    uint64_t size_limit;

    cmd_t *fifo; /* ring of expected replies */
    unsigned fhead, flen, fcap;
    unsigned fsent; /* entries at the head already written */

    eng_msg_t *txn;       /* message whose envelope is in flight */
    unsigned msgs, rcpts; /* carried on this connection */
    int need_rset;
    int quit_wanted;
    int quitting;    /* counted in pool->nquitting */
    int in_setup;    /* counted in pool->nsetup */
    uint64_t t_wait; /* set-up: when the current command was written */

    buf_t text;      /* command text of the flush being built */
    eng__iovv_t out; /* its segments */
    eng__iovv_t scratch;

    eng_stage_t fail_stage;
    int fail_err;
    eng_reply_t fail_reply;
    char errstr[256];
};

static void sess_abort(eng__sess_t *s, eng_stage_t stage, int err, const char *why,
                       const smtp_reply_t *reply);
static void sess_next_txn(eng__sess_t *s);
static void sess_flush(eng__sess_t *s);
static void sess_quit(eng__sess_t *s);
static void process_replies(eng__sess_t *s);
static void tls_pump(eng__sess_t *s);

uint64_t eng__now_us(void)
{
    return uv_hrtime() / 1000;
}

void eng__reply_copy(eng_reply_t *dst, const smtp_reply_t *src)
{
    dst->code = src->code;
    memcpy(dst->enhanced, src->enhanced, sizeof dst->enhanced);
    size_t n = src->text_len < sizeof dst->text - 1 ? src->text_len : sizeof dst->text - 1;
    memcpy(dst->text, src->text, n);
    dst->text[n] = '\0';
}

static void set_state(eng__sess_t *s, sess_state_t st)
{
    /* The pool walks its sessions for idle ones only when there are some. */
    if (s->state == SESS_READY && st != SESS_READY)
        s->pool->nready--;
    else if (s->state != SESS_READY && st == SESS_READY)
        s->pool->nready++;
    if (s->state != st)
        VL_TRACE("smtp conn %u: %s -> %s", s->id, state_names[s->state], state_names[st]);
    s->state = st;
}

static const eng_timeouts_t *tmo(const eng__sess_t *s)
{
    return &s->pool->route.timeouts;
}

/* ---- tracing ---------------------------------------------------------- */

static void trace_out(eng__sess_t *s, const char *text, size_t len)
{
    if (!s->pool->route.trace) return;
    while (len) {
        const char *nl = memchr(text, '\n', len);
        size_t l = nl ? (size_t)(nl - text) + 1 : len;
        size_t show = l;
        while (show && (text[show - 1] == '\n' || text[show - 1] == '\r'))
            show--;
        s->pool->route.trace(s->pool->route.ud, s->id, '>', text, show);
        text += l;
        len -= l;
    }
}

static void trace_in(eng__sess_t *s, const smtp_reply_t *r)
{
    if (!s->pool->route.trace) return;
    char line[SMTP_REPLY_MAX_LINE + 32];
    int n = snprintf(line, sizeof line, "%d%s%s %s", r->code, r->enhanced[0] ? " " : "",
                     r->enhanced, r->text);
    if (n > (int)sizeof line - 1) n = sizeof line - 1;
    s->pool->route.trace(s->pool->route.ud, s->id, '<', line, (size_t)n);
}

/* ---- timers ----------------------------------------------------------- */

static void on_timeout(uv_timer_t *t)
{
    eng__sess_t *s = t->data;
    char why[96];
    snprintf(why, sizeof why, "no reply within the time limit (state %s)", state_names[s->state]);
    eng_stage_t st = ENG_STAGE_NONE;
    switch (s->state) {
    case SESS_CONNECT:
        st = ENG_STAGE_CONNECT;
        break;
    case SESS_TLS_HANDSHAKE:
        st = ENG_STAGE_TLS;
        break;
    case SESS_GREETING:
        st = ENG_STAGE_GREETING;
        break;
    case SESS_EHLO:
    case SESS_HELO:
        st = ENG_STAGE_EHLO;
        break;
    case SESS_STARTTLS:
        st = ENG_STAGE_STARTTLS;
        break;
    case SESS_AUTH_PLAIN:
    case SESS_AUTH_LOGIN:
    case SESS_AUTH_LOGIN_USER:
    case SESS_AUTH_LOGIN_PASS:
        st = ENG_STAGE_AUTH;
        break;
    case SESS_READY:
        /* Idle too long: leave politely. */
        sess_quit(s);
        return;
    case SESS_QUIT:
        st = ENG_STAGE_QUIT;
        break;
    default:
        if (s->flen) st = cmd_stage[s->fifo[s->fhead].kind];
        break;
    }
    sess_abort(s, st, VL_ETIMEOUT, why, NULL);
}

static void arm(eng__sess_t *s, uint32_t ms)
{
    uv_timer_start(&s->timer, on_timeout, ms, 0);
}

/* Arm the timer for whatever the session now waits for. */
static void arm_for_wait(eng__sess_t *s)
{
    if (s->state == SESS_READY) {
        arm(s, tmo(s)->idle);
        return;
    }
    if (s->state != SESS_TXN || !s->flen) return;
    switch (s->fifo[s->fhead].kind) {
    case CMD_RSET:
        arm(s, tmo(s)->rset);
        break;
    case CMD_MAIL:
        arm(s, tmo(s)->mail);
        break;
    case CMD_RCPT:
        arm(s, tmo(s)->rcpt);
        break;
    case CMD_DATA:
        arm(s, tmo(s)->data_init);
        break;
    case CMD_BODY:
    case CMD_BODY_EMPTY:
    case CMD_BDAT:
        /* The data block and termination limits: a slow write of a large
         * message restarts the clock on every completed write (see on_write). */
        arm(s, tmo(s)->data_term > tmo(s)->data_block ? tmo(s)->data_term : tmo(s)->data_block);
        break;
    }
}

/* ---- closing and freeing ------------------------------------------------ */

static void sess_free(eng__sess_t *s)
{
    if (s->ai_list) uv_freeaddrinfo(s->ai_list);
    smtp_reader_free(s->rd);
    tls_conn_free(s->tls);
    free(s->rbuf);
    free(s->fifo);
    buf_free(&s->text);
    eng__iovv_free(&s->out);
    eng__iovv_free(&s->scratch);
    free(s);
}

/* Free the session once no handle and no lookup refers to it. */
static void maybe_free(eng__sess_t *s)
{
    if (s->handles > 0 || s->gai_pending) return;
    eng_event_t ev = {.kind = ENG_EV_CLOSED,
                      .conn_id = s->id,
                      .stage = s->fail_stage,
                      .err = s->fail_err,
                      .errstr = s->errstr,
                      .reply = s->fail_reply,
                      .messages = s->msgs};
    eng_pool_t *p = s->pool;
    eng__pool_sess_gone(p, s, &ev);
    sess_free(s);
}

static void on_handle_closed(uv_handle_t *h)
{
    eng__sess_t *s = h->data;
    s->handles--;
    maybe_free(s);
}

/* Close the handles; the session is freed when the last one is closed. */
static void sess_close(eng__sess_t *s)
{
    if (s->state == SESS_CLOSING) return;
    set_state(s, SESS_CLOSING);
    uv_timer_stop(&s->timer);
    if (s->gai_pending) uv_cancel((uv_req_t *)&s->gai);
    if (!uv_is_closing((uv_handle_t *)&s->timer))
        uv_close((uv_handle_t *)&s->timer, on_handle_closed);
    if (s->tcp_open && !uv_is_closing((uv_handle_t *)&s->tcp)) {
        uv_read_stop((uv_stream_t *)&s->tcp);
        uv_close((uv_handle_t *)&s->tcp, on_handle_closed);
    }
}

/* ---- results ---------------------------------------------------------- */

static void complete(eng__sess_t *s, eng_msg_t *m, eng_status_t st, eng_stage_t stage, int err,
                     const char *errstr, const eng_reply_t *reply)
{
    eng_result_t res = {.status = st,
                        .stage = stage,
                        .err = err,
                        .errstr = errstr ? errstr : (err ? vl_err_str(err) : ""),
                        .naccepted = m->naccepted,
                        .remote = s->remote,
                        .conn_id = s->id,
                        .conn_msgs = m->conn_msgs_before,
                        .conn_rcpts = m->conn_rcpts_before,
                        .queued_us = m->t_start - m->t_submit,
                        .txn_us = eng__now_us() - m->t_start};
    if (reply) res.reply = *reply;
    if (st != ENG_DELIVERED) res.naccepted = 0;
    if (st == ENG_DELIVERED) hist_record(&s->pool->stats.txn, res.txn_us);
    m->active = 0;
    if (s->txn == m) s->txn = NULL;
    /* Other FIFO entries may still point at m (a pipelined RCPT after a failed
     * MAIL, say): they must not outlive it. */
    for (unsigned i = 0; i < s->flen; i++) {
        cmd_t *c = &s->fifo[(s->fhead + i) % s->fcap];
        if (c->msg == m) c->msg = NULL;
    }
    eng__pool_complete(s->pool, m, &res);
}

/* Fail everything this session carries: a message whose content went out in
 * full has an unknown fate, the others were not delivered. */
static void fail_in_flight(eng__sess_t *s, eng_stage_t stage, int err, const char *why,
                           const eng_reply_t *reply)
{
    while (s->flen) {
        cmd_t c = s->fifo[s->fhead];
        s->fhead = (s->fhead + 1) % s->fcap;
        s->flen--;
        if (s->fsent) s->fsent--;
        if (!c.msg) continue;
        eng_status_t st = c.msg->content_sent ? ENG_UNKNOWN : ENG_FAILED;
        complete(s, c.msg, st, cmd_stage[c.kind] > stage ? cmd_stage[c.kind] : stage, err, why,
                 reply);
    }
    if (s->txn) complete(s, s->txn, ENG_FAILED, stage, err, why, reply);
}

static void leave_setup(eng__sess_t *s)
{
    if (s->in_setup) {
        s->in_setup = 0;
        s->pool->nsetup--;
    }
}

/* Something went wrong: record why, close, and fail what was in flight.
 * Handles are closed first so that nothing more is written from message
 * buffers the owner may free in its callback. */
static void sess_abort(eng__sess_t *s, eng_stage_t stage, int err, const char *why,
                       const smtp_reply_t *reply)
{
    if (s->state == SESS_CLOSING) return;
    int was_setup = s->in_setup;
    int was_quit = s->state == SESS_QUIT;
    s->fail_stage = stage;
    s->fail_err = err;
    snprintf(s->errstr, sizeof s->errstr, "%s", why ? why : vl_err_str(err));
    memset(&s->fail_reply, 0, sizeof s->fail_reply);
    /* A reply that broke the protocol (a 354 to RCPT, a 220 with injected
     * bytes behind it) decides nothing: owners classify replies by code
     * (ratelimit/ takes 4xx and 5xx) and must not be handed it. errstr says
     * what came. */
    if (err == VL_EPROTO) reply = NULL;
    if (reply) eng__reply_copy(&s->fail_reply, reply);
    VL_DEBUG("smtp conn %u (%s): %s at %s: %s", s->id, s->remote, vl_err_name(err),
             eng_stage_name(stage), s->errstr);
    sess_close(s);
    if (was_quit) {
        /* A close, a reset or OpenSSL's unexpected EOF after QUIT: fine. */
        s->fail_err = 0;
        return;
    }
    if (was_setup) {
        leave_setup(s);
        eng_event_t ev = {.kind = ENG_EV_SETUP_FAILED,
                          .conn_id = s->id,
                          .stage = stage,
                          .err = err,
                          .errstr = s->errstr,
                          .reply = s->fail_reply};
        eng__pool_setup_done(s->pool, s, &ev);
        return;
    }
    fail_in_flight(s, stage, err, s->errstr, reply ? &s->fail_reply : NULL);
}

/* ---- protocol errors of the server -------------------------------------- */

/* The stage the session is waiting in, for errors that are not a command's
 * reply (a dropped connection, a malformed reply). */
static eng_stage_t wait_stage(const eng__sess_t *s)
{
    switch (s->state) {
    case SESS_TXN:
        return s->flen ? cmd_stage[s->fifo[s->fhead].kind] : ENG_STAGE_NONE;
    case SESS_GREETING:
        return ENG_STAGE_GREETING;
    case SESS_TLS_HANDSHAKE:
        return ENG_STAGE_TLS;
    case SESS_EHLO:
    case SESS_HELO:
        return ENG_STAGE_EHLO;
    case SESS_STARTTLS:
        return ENG_STAGE_STARTTLS;
    case SESS_AUTH_PLAIN:
    case SESS_AUTH_LOGIN:
    case SESS_AUTH_LOGIN_USER:
    case SESS_AUTH_LOGIN_PASS:
        return ENG_STAGE_AUTH;
    case SESS_QUIT:
        return ENG_STAGE_QUIT;
    default:
        return ENG_STAGE_NONE;
    }
}

/* May a command whose positive reply is `success` (an exact code, or 2 for
 * any 2xx) draw `code`? RFC 5321 §4.3.2: besides its positive reply, a
 * command draws only 4xx or 5xx. A 250 to DATA or a 354 to RCPT means the
 * server and volley no longer agree on which reply answers which command;
 * taken as verdicts they would be matched to the wrong messages. */
static int reply_fits(int code, int success)
{
    if (code >= 400) return 1; /* the reader keeps codes within 200..599 */
    return success == 2 ? code / 100 == 2 : code == success;
}

/* Fail with a protocol error naming the reply that does not fit. */
static void abort_misfit(eng__sess_t *s, eng_stage_t stage, const char *cmd, const smtp_reply_t *r)
{
    char why[256];
    size_t tl = strcspn(r->text, "\n");
    snprintf(why, sizeof why, "the server answered %s with \"%d %.*s\", which %s cannot draw", cmd,
             r->code, (int)(tl < 80 ? tl : 80), r->text, cmd);
    sess_abort(s, stage, VL_EPROTO, why, NULL);
}

/* The session is about to write after reply r answered everything it had
 * asked: the server must be waiting now. Bytes already received are replies
 * nobody asked for (RFC 2920 §3.1: a reply with nothing outstanding is a
 * protocol error), and matching them to the commands about to be written
 * would shift every later reply by one. Returns 1 after failing the session
 * (why is the server's fault, the stray reply is quoted), 0 when nothing is
 * pending. r is borrowed from the reader and not used after the check. */
static int abort_if_pending(eng__sess_t *s, eng_stage_t stage, const char *why,
                            const smtp_reply_t *r)
{
    size_t pending = smtp_reader_pending(s->rd);
    if (!pending) return 0;
    char after[96], extra[96], msg[256];
    size_t tl = strcspn(r->text, "\n");
    snprintf(after, sizeof after, "%d %.*s", r->code, (int)(tl < 60 ? tl : 60), r->text);
    smtp_reply_t x; /* the reader is discarded with the session: taking is fine */
    if (smtp_reader_next(s->rd, &x) == 1) {
        size_t xl = strcspn(x.text, "\n");
        snprintf(extra, sizeof extra, "\"%d %.*s\"", x.code, (int)(xl < 60 ? xl : 60), x.text);
    } else {
        snprintf(extra, sizeof extra, "%zu more bytes", pending);
    }
    snprintf(msg, sizeof msg, "%s (%s after \"%s\")", why, extra, after);
    sess_abort(s, stage, VL_EPROTO, msg, NULL);
    return 1;
}

/* ---- writing ---------------------------------------------------------- */

static int queue_write(eng__sess_t *s, const struct iovec *iov, size_t n, char *owned_text);

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    eng__sess_t *s = w->s;
    free(w->text);
    free(w);
    if (status == UV_ECANCELED || s->state == SESS_CLOSING) return;
    if (status < 0) {
        sess_abort(s, s->flen ? cmd_stage[s->fifo[s->fhead].kind] : ENG_STAGE_CONNECT, VL_ENETWORK,
                   uv_strerror(status), NULL);
        return;
    }
    /* Progress on a large body restarts the data-block clock. */
    if (s->state == SESS_TXN) arm_for_wait(s);
}

static int plain_write(eng__sess_t *s, const struct iovec *iov, size_t n, char *owned_text)
{
    /* Most writes complete at once. uv_try_write spares them the write
     * request and, with libuv 1.44, an epoll_ctl each (a finished uv_write
     * re-queues the stream's watcher): one syscall a message fewer. What is
     * left, or all of it after an error (so that the error arrives through
     * on_write, with the stage of the command it hit), goes to uv_write. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += iov[i].iov_len;
    int done = uv_try_write((uv_stream_t *)&s->tcp, (const uv_buf_t *)iov, (unsigned)n);
    if (done > 0 && (size_t)done == total) {
        free(owned_text);
        return 0;
    }
    struct iovec rest_small[64], *rest = rest_small;
    if (done > 0) {
        size_t skip = (size_t)done, i = 0;
        while (i < n && skip >= iov[i].iov_len)
            skip -= iov[i++].iov_len;
        if (n - i > 64 && !(rest = malloc((n - i) * sizeof *rest))) {
            free(owned_text);
            return VL_ENOMEM;
        }
        for (size_t k = i; k < n; k++)
            rest[k - i] = iov[k];
        rest[0].iov_base = (char *)rest[0].iov_base + skip;
        rest[0].iov_len -= skip;
        n -= i;
        iov = rest;
    }
    int rc = queue_write(s, iov, n, owned_text);
    if (rest != rest_small) free(rest);
    return rc;
}

static int queue_write(eng__sess_t *s, const struct iovec *iov, size_t n, char *owned_text)
{
    wreq_t *w = malloc(sizeof *w);
    if (!w) {
        free(owned_text);
        return VL_ENOMEM;
    }
    w->s = s;
    w->text = owned_text;
    /* On Unix a uv_buf_t "may be cast to struct iovec" (uv/unix.h): libuv
     * hands the array to writev itself, and copies it. */
    _Static_assert(sizeof(uv_buf_t) == sizeof(struct iovec) &&
                       offsetof(uv_buf_t, base) == offsetof(struct iovec, iov_base) &&
                       offsetof(uv_buf_t, len) == offsetof(struct iovec, iov_len),
                   "uv_buf_t is not an iovec");
    int rc =
        uv_write(&w->req, (uv_stream_t *)&s->tcp, (const uv_buf_t *)iov, (unsigned)n, on_write);
    if (rc) {
        free(owned_text);
        free(w);
        return VL_ENETWORK;
    }
    return 0;
}

/* Send whatever ciphertext OpenSSL has produced. */
static int tls_send_pending(eng__sess_t *s)
{
    buf_t out;
    buf_init(&out, (size_t)1 << 30);
    ssize_t n = tls_conn_take_out(s->tls, &out);
    if (n <= 0) {
        buf_free(&out);
        return (int)n;
    }
    struct iovec iov = {out.data, out.len};
    return plain_write(s, &iov, 1, buf_take(&out));
}

static int tls_write(eng__sess_t *s, const struct iovec *iov, size_t n, char *owned_text)
{
    int rc = 0;
    for (size_t i = 0; i < n && !rc; i++)
        rc = tls_conn_write(s->tls, iov[i].iov_base, iov[i].iov_len);
    free(owned_text); /* encrypted copies are in OpenSSL's buffer now */
    return rc ? rc : tls_send_pending(s);
}

static void plain_on_data(eng__sess_t *s, const char *data, size_t len)
{
    if (smtp_reader_feed(s->rd, data, len)) {
        sess_abort(s, wait_stage(s), VL_EPROTO, "the server sent more than a reply's worth at once",
                   NULL);
        return;
    }
    process_replies(s);
}

static void tls_on_data(eng__sess_t *s, const char *data, size_t len)
{
    if (tls_conn_feed(s->tls, data, len)) {
        sess_abort(s, ENG_STAGE_TLS, VL_ENOMEM, NULL, NULL);
        return;
    }
    tls_pump(s);
}

static const transport_t plain_transport = {plain_write, plain_on_data};
static const transport_t tls_transport = {tls_write, tls_on_data};

/* Write one set-up command (lock-step). `shown` is what the trace shows
 * instead of the text (AUTH secrets), or NULL. */
static void send_line(eng__sess_t *s, const char *text, const char *shown)
{
    size_t len = strlen(text);
    char *copy = malloc(len + 1);
    if (!copy) {
        sess_abort(s, ENG_STAGE_NONE, VL_ENOMEM, NULL, NULL);
        return;
    }
    memcpy(copy, text, len + 1);
    trace_out(s, shown ? shown : text, shown ? strlen(shown) : len);
    s->t_wait = eng__now_us();
    struct iovec iov = {copy, len};
    int rc = s->tp->write(s, &iov, 1, copy);
    if (rc) sess_abort(s, ENG_STAGE_NONE, rc, NULL, NULL);
}

/* ---- the FIFO of expected replies ------------------------------------- */

static int fifo_push(eng__sess_t *s, cmd_kind_t kind, eng_msg_t *m, unsigned idx)
{
    if (s->flen == s->fcap) {
        unsigned cap = s->fcap ? s->fcap * 2 : 16;
        cmd_t *f = malloc(cap * sizeof *f);
        if (!f) return VL_ENOMEM;
        for (unsigned i = 0; i < s->flen; i++)
            f[i] = s->fifo[(s->fhead + i) % s->fcap];
        free(s->fifo);
        s->fifo = f;
        s->fhead = 0;
        s->fcap = cap;
    }
    cmd_t *c = &s->fifo[(s->fhead + s->flen) % s->fcap];
    c->kind = kind;
    c->msg = m;
    c->idx = idx;
    c->t_sent = 0;
    s->flen++;
    return 0;
}

static cmd_t *fifo_at(eng__sess_t *s, unsigned i)
{
    return &s->fifo[(s->fhead + i) % s->fcap];
}

/* The bytes a command's text needs at most (for one reservation per flush). */
static size_t cmd_text_max(const cmd_t *c)
{
    switch (c->kind) {
    case CMD_MAIL:
        return strlen(c->msg->mail_from) + 80;
    case CMD_RCPT:
        return strlen(c->msg->rcpts[c->idx]) + 16;
    case CMD_BDAT:
        return 40;
    case CMD_BODY:
    case CMD_BODY_EMPTY:
        return 8;
    default:
        return 8;
    }
}

/* The content's length as the caller gave it (before stuffing): SIZE=. */
static size_t msg_size(const eng_msg_t *m)
{
    return m->size ? m->size : iov_total(m->iov, m->iovcnt);
}

/* Append the wire form of one entry; commands go into s->text at an offset
 * recorded in the entry, content segments straight into s->out. */
static int emit(eng__sess_t *s, cmd_t *c, size_t *text_start)
{
    buf_t *t = &s->text;
    size_t off = t->len;
    int rc = 0;
    switch (c->kind) {
    case CMD_RSET:
        rc = buf_puts(t, "RSET\r\n");
        break;
    case CMD_MAIL: {
        eng_msg_t *m = c->msg;
        /* Pieces rather than printf: this runs for every message. */
        rc = buf_puts(t, "MAIL FROM:<");
        if (!rc) rc = buf_puts(t, m->mail_from);
        if (!rc) rc = buf_putc(t, '>');
        if (!rc && (s->caps & CAP_SIZE)) {
            rc = buf_puts(t, " SIZE=");
            if (!rc) rc = buf_put_dec(t, (long long)msg_size(m));
        }
        if (!rc && (m->flags & ENG_MSG_8BIT) && (s->caps & CAP_8BITMIME))
            rc = buf_puts(t, " BODY=8BITMIME");
        if (!rc && (m->flags & ENG_MSG_SMTPUTF8)) rc = buf_puts(t, " SMTPUTF8");
        if (!rc) rc = buf_puts(t, "\r\n");
        break;
    }
    case CMD_RCPT:
        rc = buf_puts(t, "RCPT TO:<");
        if (!rc) rc = buf_puts(t, c->msg->rcpts[c->idx]);
        if (!rc) rc = buf_puts(t, ">\r\n");
        break;
    case CMD_DATA:
        rc = buf_puts(t, "DATA\r\n");
        break;
    case CMD_BODY_EMPTY:
        rc = buf_puts(t, ".\r\n");
        break;
    case CMD_BODY:
    case CMD_BDAT:
        break;
    }
    if (rc) return rc;
    c->text_off = off;
    c->text_len = t->len - off;
    if (c->kind == CMD_BODY || c->kind == CMD_BDAT) {
        eng_msg_t *m = c->msg;
        /* Text written so far goes out before the content. */
        if (t->len > *text_start) {
            if (eng__iovv_push(&s->out, t->data + *text_start, t->len - *text_start))
                return VL_ENOMEM;
            *text_start = t->len;
        }
        int dot = c->kind == CMD_BODY;
        /* Content already in wire form goes out as it is: reading it here
         * (the producer wrote it on another core) made eng__stuff() the
         * largest of volley's own functions on send's loop (perf). */
        const struct iovec *src = m->iov;
        size_t nsrc = m->iovcnt;
        long n;
        if (m->flags & ENG_MSG_WIRE) {
            n = (long)msg_size(m);
        } else {
            eng__iovv_reset(&s->scratch);
            n = eng__stuff(&s->scratch, m->iov, m->iovcnt, (m->flags & ENG_MSG_CRLF) != 0, dot);
            if (n < 0) return (int)n;
            src = s->scratch.v;
            nsrc = s->scratch.n;
        }
        if (!dot) {
            rc = buf_puts(t, "BDAT ");
            if (!rc) rc = buf_put_dec(t, n);
            if (!rc) rc = buf_puts(t, " LAST\r\n");
            if (rc) return rc;
            c->text_off = off;
            c->text_len = t->len - off;
            if (eng__iovv_push(&s->out, t->data + *text_start, t->len - *text_start))
                return VL_ENOMEM;
            *text_start = t->len;
        }
        for (size_t i = 0; i < nsrc; i++)
            if (eng__iovv_push(&s->out, src[i].iov_base, src[i].iov_len)) return VL_ENOMEM;
        if (dot) {
            rc = buf_puts(t, ".\r\n");
            if (rc) return rc;
        }
        s->pool->stats.bytes_out += (uint64_t)n;
        m->content_sent = 1;
    }
    return 0;
}

/* Write every entry that may go now: all up to and including the next DATA
 * with PIPELINING (RFC 2920: DATA ends a group), one entry at a time
 * without it. */
static void sess_flush(eng__sess_t *s)
{
    if (s->state == SESS_CLOSING || s->fsent == s->flen) return;
    int pipelining = (s->caps & CAP_PIPELINING) && !s->pool->route.no_pipelining;
    if (!pipelining && s->fsent) return; /* lock-step: wait for the outstanding reply */

    /* One reservation so the text never moves while segments point into it. */
    size_t need = 0;
    unsigned end = s->fsent;
    while (end < s->flen) {
        cmd_t *c = fifo_at(s, end++);
        need += cmd_text_max(c);
        if (!pipelining || c->kind == CMD_DATA) break;
    }
    buf_reset(&s->text);
    eng__iovv_reset(&s->out);
    if (buf_reserve(&s->text, need)) {
        sess_abort(s, ENG_STAGE_NONE, VL_ENOMEM, NULL, NULL);
        return;
    }
    char *base = s->text.data;
    size_t text_start = 0;
    uint64_t now = eng__now_us();
    for (unsigned i = s->fsent; i < end; i++) {
        cmd_t *c = fifo_at(s, i);
        c->t_sent = now;
        if (emit(s, c, &text_start)) {
            sess_abort(s, ENG_STAGE_NONE, VL_ENOMEM, NULL, NULL);
            return;
        }
    }
    if (s->text.data != base) {
        sess_abort(s, ENG_STAGE_NONE, VL_EINVAL, "command text outgrew its reservation", NULL);
        return;
    }
    if (s->text.len > text_start &&
        eng__iovv_push(&s->out, s->text.data + text_start, s->text.len - text_start)) {
        sess_abort(s, ENG_STAGE_NONE, VL_ENOMEM, NULL, NULL);
        return;
    }
    if (s->pool->route.trace)
        for (unsigned i = s->fsent; i < end; i++) {
            cmd_t *c = fifo_at(s, i);
            if (c->text_len) trace_out(s, s->text.data + c->text_off, c->text_len);
        }
    s->fsent = end;
    /* The write takes the text; the buffer starts afresh next time. */
    int rc = s->tp->write(s, s->out.v, s->out.n, buf_take(&s->text));
    if (rc) {
        sess_abort(s, ENG_STAGE_NONE, rc, NULL, NULL);
        return;
    }
    if (s->state != SESS_TXN) set_state(s, SESS_TXN);
    arm_for_wait(s);
}

/* ---- transactions ----------------------------------------------------- */

static int conn_full(eng__sess_t *s)
{
    eng_pool_t *p = s->pool;
    return (p->msgs_cap && s->msgs >= p->msgs_cap) || (p->rcpts_cap && s->rcpts >= p->rcpts_cap);
}

/* Queue a transaction for m (its commands are written by the next flush). */
static void start_txn(eng__sess_t *s, eng_msg_t *m)
{
    m->t_start = eng__now_us();
    m->active = 1;
    m->naccepted = 0;
    m->nreplied = 0;
    m->content_sent = 0;
    m->fail_stage = ENG_STAGE_NONE;
    memset(&m->fail_reply, 0, sizeof m->fail_reply);
    for (size_t i = 0; i < m->nrcpts; i++)
        memset(&m->rcpt_status[i], 0, sizeof m->rcpt_status[i]);
    m->conn_msgs_before = s->msgs;
    m->conn_rcpts_before = s->rcpts;
    s->msgs++;
    s->rcpts += (unsigned)m->nrcpts;

    if ((m->flags & ENG_MSG_SMTPUTF8) && !(s->caps & CAP_SMTPUTF8)) {
        complete(s, m, ENG_FAILED, ENG_STAGE_MAIL, VL_ENOTSUP,
                 "the server does not offer SMTPUTF8, which this address needs", NULL);
        return;
    }
    if (s->size_limit && msg_size(m) > s->size_limit) {
        complete(s, m, ENG_FAILED, ENG_STAGE_MAIL, VL_ETOOBIG,
                 "the message is larger than the server's SIZE limit", NULL);
        return;
    }
    int chunking = (s->caps & CAP_CHUNKING) && !s->pool->route.no_chunking;
    int rc = 0;
    if (s->need_rset) {
        rc = fifo_push(s, CMD_RSET, NULL, 0);
        s->need_rset = 0;
    }
    if (!rc) rc = fifo_push(s, CMD_MAIL, m, 0);
    for (unsigned i = 0; !rc && i < m->nrcpts; i++)
        rc = fifo_push(s, CMD_RCPT, m, i);
    if (!rc) rc = fifo_push(s, chunking ? CMD_BDAT : CMD_DATA, m, 0);
    if (rc) {
        complete(s, m, ENG_FAILED, ENG_STAGE_MAIL, rc, NULL, NULL);
        return;
    }
    s->txn = m;
}

/* The envelope of the current transaction is settled: take the next message
 * (pipelined behind the body just queued), or QUIT, or idle. */
static void sess_next_txn(eng__sess_t *s)
{
    while (!s->txn && s->state != SESS_CLOSING) {
        if (s->quit_wanted || conn_full(s) || s->pool->closing || eng__pool_over_ceiling(s->pool)) {
            s->quit_wanted = 1;
            if (!s->flen) sess_quit(s);
            break;
        }
        eng_msg_t *m = eng__pool_take(s->pool, s->msgs, s->rcpts);
        if (!m) {
            /* Work is queued but would pass this connection's caps: make
             * room for a fresh connection. */
            eng_budget_t *b = s->pool->route.budget;
            if (s->pool->nqueued ||
                (b && b->wanted && b->used >= b->max && b->wanted(b, s->pool))) {
                s->quit_wanted = 1;
                if (!s->flen) sess_quit(s);
            }
            break;
        }
        start_txn(s, m); /* may complete m at once (SMTPUTF8, SIZE): loop */
    }
    if (s->state == SESS_CLOSING || s->state == SESS_QUIT) return;
    if (s->flen) {
        sess_flush(s);
    } else if (s->state != SESS_READY) {
        set_state(s, SESS_READY);
        arm_for_wait(s);
    }
}

/* The final verdict on m: the first failure of its envelope when it had one,
 * else the reply to its content. */
static void finish_msg(eng__sess_t *s, eng_msg_t *m, const smtp_reply_t *r, eng_reply_t *rr)
{
    if (m->fail_stage == ENG_STAGE_MAIL || m->naccepted == 0) {
        eng_reply_t fr = m->fail_reply;
        if (!fr.code) fr = *rr;
        complete(s, m, ENG_REJECTED,
                 m->fail_stage != ENG_STAGE_NONE ? m->fail_stage : ENG_STAGE_BODY, 0, NULL, &fr);
    } else if (r->code >= 200 && r->code < 300) {
        complete(s, m, ENG_DELIVERED, ENG_STAGE_BODY, 0, NULL, rr);
    } else {
        complete(s, m, ENG_REJECTED, ENG_STAGE_BODY, 0, NULL, rr);
    }
}

/* A 421 says the server is closing the channel (RFC 5321 §3.8): send nothing
 * more, not even QUIT. */
static void on_421(eng__sess_t *s, eng_stage_t stage, const smtp_reply_t *r)
{
    sess_abort(s, stage, 0, "the server is closing the connection (421)", r);
}

static void on_txn_reply(eng__sess_t *s, const smtp_reply_t *r)
{
    if (!s->flen || !s->fsent) {
        size_t tl = strcspn(r->text, "\n");
        char why[160];
        snprintf(why, sizeof why, "the server sent a reply that no command asked for (\"%d %.*s\")",
                 r->code, (int)(tl < 60 ? tl : 60), r->text);
        sess_abort(s, ENG_STAGE_NONE, VL_EPROTO, why, NULL);
        return;
    }
    /* Checked before the entry leaves the FIFO, so that its message is
     * failed with the others in flight. */
    const cmd_t *head = fifo_at(s, 0);
    if (!reply_fits(r->code, head->kind == CMD_DATA ? 354 : 2)) {
        abort_misfit(s, cmd_stage[head->kind], cmd_verb[head->kind], r);
        return;
    }
    /* After 354 the server waits for the content (RFC 2920 §3.1: DATA ends
     * a pipelined group): a reply already here is not the content's, though
     * it would be taken for it. The content has not gone out, so the
     * message fails as not delivered, safe to retry. */
    if (head->kind == CMD_DATA && r->code == 354 && s->fsent == 1 &&
        abort_if_pending(s, ENG_STAGE_DATA, "the server sent a reply before the message content",
                         r))
        return;
    cmd_t c = *fifo_at(s, 0);
    s->fhead = (s->fhead + 1) % s->fcap;
    s->flen--;
    s->fsent--;
    hist_record(&s->pool->stats.verb[cmd_stage[c.kind]], eng__now_us() - c.t_sent);
    eng_msg_t *m = c.msg;
    eng_reply_t rr;
    eng__reply_copy(&rr, r);
    int ok = r->code >= 200 && r->code < 300;

    switch (c.kind) {
    case CMD_RSET:
        break;
    case CMD_MAIL:
        if (m && !ok) {
            m->fail_reply = rr;
            m->fail_stage = ENG_STAGE_MAIL;
        }
        break;
    case CMD_RCPT:
        if (!m) break;
        m->rcpt_status[c.idx].reply = rr;
        m->rcpt_status[c.idx].accepted = ok;
        if (ok)
            m->naccepted++;
        else if (m->fail_stage == ENG_STAGE_NONE) {
            m->fail_reply = rr;
            m->fail_stage = ENG_STAGE_RCPT;
        }
        break;
    case CMD_DATA:
        if (!m) break;
        if (r->code == 354) {
            if (m->fail_stage == ENG_STAGE_MAIL || m->naccepted == 0) {
                /* RFC 2920 §3.1: a 354 with no valid recipient still needs a
                 * terminating dot; the transaction is then discarded. */
                if (fifo_push(s, CMD_BODY_EMPTY, NULL, 0)) {
                    sess_abort(s, ENG_STAGE_DATA, VL_ENOMEM, NULL, NULL);
                    return;
                }
                s->txn = NULL;
                finish_msg(s, m, r, &rr);
            } else if (fifo_push(s, CMD_BODY, m, 0)) {
                sess_abort(s, ENG_STAGE_DATA, VL_ENOMEM, NULL, NULL);
                return;
            }
            s->txn = NULL;
        } else {
            s->need_rset = 1;
            s->txn = NULL;
            if (m->fail_stage == ENG_STAGE_NONE) {
                m->fail_reply = rr;
                m->fail_stage = ENG_STAGE_DATA;
            }
            complete(s, m, ENG_REJECTED, m->fail_stage, 0, NULL, &m->fail_reply);
        }
        break;
    case CMD_BODY:
        if (m) finish_msg(s, m, r, &rr);
        break;
    case CMD_BODY_EMPTY:
        break; /* the end of DATA resets the transaction, whatever its reply */
    case CMD_BDAT:
        s->txn = NULL;
        if (!ok) s->need_rset = 1;
        if (m) finish_msg(s, m, r, &rr);
        break;
    }
    if (r->code == 421) {
        /* The message whose command drew the 421 has its answer; the others
         * in flight fail with it (see on_421). */
        if (m && m->active) complete(s, m, ENG_REJECTED, cmd_stage[c.kind], 0, NULL, &rr);
        on_421(s, cmd_stage[c.kind], r);
        return;
    }
    if (s->state == SESS_CLOSING) return;
    /* Every command written has its reply: anything more is unsolicited
     * and must not be matched to the commands written next. */
    if (!s->fsent &&
        abort_if_pending(s, ENG_STAGE_NONE, "the server sent a reply that no command asked for", r))
        return;
    if (!s->txn)
        sess_next_txn(s);
    else
        sess_flush(s); /* lock-step: the next command of this transaction */
    if (s->state == SESS_TXN) arm_for_wait(s);
}

/* ---- set-up ----------------------------------------------------------- */

static void ready(eng__sess_t *s)
{
    leave_setup(s);
    set_state(s, SESS_READY);
    eng_event_t ev = {.kind = ENG_EV_READY, .conn_id = s->id};
    eng__pool_setup_done(s->pool, s, &ev);
    if (s->state == SESS_READY) sess_next_txn(s);
}

static void send_ehlo(eng__sess_t *s)
{
    char line[300];
    snprintf(line, sizeof line, "EHLO %s\r\n", s->pool->helo);
    set_state(s, SESS_EHLO);
    arm(s, tmo(s)->ehlo);
    send_line(s, line, NULL);
}

static void base64(const char *in, size_t len, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)in, (int)len);
}

static void start_auth(eng__sess_t *s)
{
    eng_pool_t *p = s->pool;
    if (!s->tls && !p->route.allow_plain_auth) {
        sess_abort(s, ENG_STAGE_AUTH, VL_EAUTH,
                   "refusing to send credentials over an unencrypted connection", NULL);
        return;
    }
    arm(s, tmo(s)->auth);
    if (s->caps & CAP_AUTH_PLAIN) {
        /* RFC 4616: authzid NUL authcid NUL passwd, as the initial response. */
        size_t ul = strlen(p->user), pl = strlen(p->password);
        size_t rawlen = ul + pl + 2;
        char *raw = malloc(rawlen), *line = malloc(4 * (rawlen / 3 + 1) + 16);
        if (raw && line) {
            raw[0] = '\0';
            memcpy(raw + 1, p->user, ul);
            raw[ul + 1] = '\0';
            memcpy(raw + ul + 2, p->password, pl);
            memcpy(line, "AUTH PLAIN ", 11);
            base64(raw, rawlen, line + 11);
            strcat(line, "\r\n");
            set_state(s, SESS_AUTH_PLAIN);
            send_line(s, line, "AUTH PLAIN ***");
            OPENSSL_cleanse(line, strlen(line));
            OPENSSL_cleanse(raw, rawlen);
        } else {
            sess_abort(s, ENG_STAGE_AUTH, VL_ENOMEM, NULL, NULL);
        }
        free(raw);
        free(line);
    } else if (s->caps & CAP_AUTH_LOGIN) {
        set_state(s, SESS_AUTH_LOGIN);
        send_line(s, "AUTH LOGIN\r\n", NULL);
    } else {
        sess_abort(s, ENG_STAGE_AUTH, VL_ENOTSUP,
                   "the server offers neither AUTH PLAIN nor AUTH LOGIN", NULL);
    }
}

static void send_secret_b64(eng__sess_t *s, const char *secret)
{
    size_t l = strlen(secret);
    char *line = malloc(4 * (l / 3 + 1) + 4);
    if (!line) {
        sess_abort(s, ENG_STAGE_AUTH, VL_ENOMEM, NULL, NULL);
        return;
    }
    base64(secret, l, line);
    strcat(line, "\r\n");
    send_line(s, line, "***");
    OPENSSL_cleanse(line, strlen(line));
    free(line);
}

static void after_ehlo(eng__sess_t *s)
{
    eng_pool_t *p = s->pool;
    eng_tls_mode_t mode = p->route.tls;
    if (!s->tls && (mode == ENG_TLS_STARTTLS || mode == ENG_TLS_OPPORTUNISTIC) &&
        (s->caps & CAP_STARTTLS)) {
        set_state(s, SESS_STARTTLS);
        arm(s, tmo(s)->starttls);
        send_line(s, "STARTTLS\r\n", NULL);
        return;
    }
    if (!s->tls && mode == ENG_TLS_STARTTLS) {
        sess_abort(s, ENG_STAGE_STARTTLS, VL_ENOTSUP,
                   "TLS is required but the server does not offer STARTTLS", NULL);
        return;
    }
    if (p->user)
        start_auth(s);
    else
        ready(s);
}

static void parse_caps(eng__sess_t *s, const smtp_reply_t *r)
{
    s->caps = 0;
    s->size_limit = 0;
    const char *line = r->text;
    int first = 1;
    while (line && *line) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line) : strlen(line);
        if (!first) {
            char kw[32];
            size_t k = 0;
            while (k < len && k < sizeof kw - 1 && line[k] != ' ' && line[k] != '=') {
                kw[k] = line[k];
                k++;
            }
            kw[k] = '\0';
            const char *args = line + k;
            size_t alen = len - k;
            if (!strcasecmp(kw, "PIPELINING"))
                s->caps |= CAP_PIPELINING;
            else if (!strcasecmp(kw, "SIZE")) {
                s->caps |= CAP_SIZE;
                if (alen > 1) s->size_limit = strtoull(args + 1, NULL, 10);
            } else if (!strcasecmp(kw, "8BITMIME"))
                s->caps |= CAP_8BITMIME;
            else if (!strcasecmp(kw, "SMTPUTF8"))
                s->caps |= CAP_SMTPUTF8;
            else if (!strcasecmp(kw, "CHUNKING"))
                s->caps |= CAP_CHUNKING;
            else if (!strcasecmp(kw, "STARTTLS"))
                s->caps |= CAP_STARTTLS;
            else if (!strcasecmp(kw, "ENHANCEDSTATUSCODES"))
                s->caps |= CAP_ENHANCED;
            else if (!strcasecmp(kw, "AUTH")) {
                s->caps |= CAP_AUTH;
                char mech[256];
                size_t ml = alen < sizeof mech - 1 ? alen : sizeof mech - 1;
                memcpy(mech, args, ml);
                mech[ml] = '\0';
                for (char *save, *tok = strtok_r(mech, " =", &save); tok;
                     tok = strtok_r(NULL, " =", &save)) {
                    if (!strcasecmp(tok, "PLAIN"))
                        s->caps |= CAP_AUTH_PLAIN;
                    else if (!strcasecmp(tok, "LOGIN"))
                        s->caps |= CAP_AUTH_LOGIN;
                }
            }
        }
        first = 0;
        line = nl ? nl + 1 : NULL;
    }
}

static void start_tls(eng__sess_t *s)
{
    /* Direct delivery checks the certificate against the MX host's name. */
    eng_pool_t *p = s->pool;
    s->tls = tls_conn_new(p->tls_ctx, p->targets ? p->targets[s->tgt].name : p->host);
    if (!s->tls) {
        sess_abort(s, ENG_STAGE_TLS, VL_ENOMEM, NULL, NULL);
        return;
    }
    s->tp = &tls_transport;
    set_state(s, SESS_TLS_HANDSHAKE);
    arm(s, tmo(s)->starttls);
    s->t_wait = eng__now_us();
    tls_pump(s);
}

/* Drive OpenSSL after new ciphertext: the handshake first, then decrypt. */
static void tls_pump(eng__sess_t *s)
{
    if (s->state == SESS_TLS_HANDSHAKE) {
        int rc = tls_conn_handshake(s->tls);
        int wrc = tls_send_pending(s);
        if (rc < 0) {
            sess_abort(s, ENG_STAGE_TLS, rc, tls_conn_errstr(s->tls), NULL);
            return;
        }
        if (wrc < 0) {
            sess_abort(s, ENG_STAGE_TLS, wrc, NULL, NULL);
            return;
        }
        if (rc == 0) return;
        hist_record(&s->pool->stats.verb[ENG_STAGE_TLS], eng__now_us() - s->t_wait);
        VL_DEBUG("smtp conn %u: %s %s", s->id, tls_conn_version(s->tls), tls_conn_cipher(s->tls));
        if (s->after_starttls) {
            /* RFC 3207 §4.2: forget everything learnt before TLS. */
            send_ehlo(s);
        } else {
            set_state(s, SESS_GREETING);
            arm(s, tmo(s)->greeting);
            s->t_wait = eng__now_us();
        }
    }
    char buf[READ_BUF_SIZE];
    for (;;) {
        ssize_t n = tls_conn_read(s->tls, buf, sizeof buf);
        if (n == 0) break;
        if (n < 0) {
            sess_abort(s, s->state == SESS_QUIT ? ENG_STAGE_QUIT : ENG_STAGE_TLS, (int)n,
                       n == VL_ECONNRESET ? "the server closed the TLS session"
                                          : tls_conn_errstr(s->tls),
                       NULL);
            return;
        }
        if (smtp_reader_feed(s->rd, buf, (size_t)n)) {
            sess_abort(s, wait_stage(s), VL_EPROTO,
                       "the server sent more than a reply's worth at once", NULL);
            return;
        }
    }
    /* Alerts or session tickets OpenSSL wants to answer. */
    if (tls_send_pending(s) < 0) {
        sess_abort(s, ENG_STAGE_TLS, VL_ETLS, tls_conn_errstr(s->tls), NULL);
        return;
    }
    process_replies(s);
}

static void on_setup_reply(eng__sess_t *s, const smtp_reply_t *r)
{
    eng_pool_t *p = s->pool;
    uint64_t lat = eng__now_us() - s->t_wait;
    int ok = r->code >= 200 && r->code < 300;
    /* Set-up is lock-step: a reply of the wrong kind, or one more behind
     * this one, means the server is not answering the command just sent. */
    int success = 2;
    const char *cmd = s->state == SESS_HELO ? "HELO" : "EHLO";
    switch (s->state) {
    case SESS_GREETING:
    case SESS_STARTTLS:
        success = 220;
        cmd = s->state == SESS_GREETING ? "the connection (its greeting)" : "STARTTLS";
        break;
    case SESS_AUTH_PLAIN:
    case SESS_AUTH_LOGIN_PASS:
        success = 235;
        cmd = "AUTH";
        break;
    case SESS_AUTH_LOGIN:
    case SESS_AUTH_LOGIN_USER:
        success = 334;
        cmd = "AUTH";
        break;
    default:
        break;
    }
    if (!reply_fits(r->code, success)) {
        abort_misfit(s, wait_stage(s), cmd, r);
        return;
    }
    if (abort_if_pending(s, wait_stage(s),
                         s->state == SESS_STARTTLS && r->code == 220
                             /* Plaintext behind the 220 could be an injection
                              * (CVE-2011-0411 class); RFC 3207 forbids using it. */
                             ? "the server sent plaintext after agreeing to STARTTLS"
                             : "the server sent a reply that no command asked for",
                         r))
        return;
    switch (s->state) {
    case SESS_GREETING:
        hist_record(&p->stats.verb[ENG_STAGE_GREETING], lat);
        if (r->code != 220) {
            sess_abort(s, ENG_STAGE_GREETING, 0, "the server refused the connection", r);
            return;
        }
        send_ehlo(s);
        break;
    case SESS_EHLO:
        hist_record(&p->stats.verb[ENG_STAGE_EHLO], lat);
        if (ok) {
            parse_caps(s, r);
            after_ehlo(s);
        } else if (r->code >= 500 && r->code != 421 && !s->after_starttls) {
            /* RFC 5321 §3.2: an old server; fall back to HELO. */
            char line[300];
            snprintf(line, sizeof line, "HELO %s\r\n", p->helo);
            set_state(s, SESS_HELO);
            send_line(s, line, NULL);
        } else {
            sess_abort(s, ENG_STAGE_EHLO, 0, "the server refused EHLO", r);
        }
        break;
    case SESS_HELO:
        hist_record(&p->stats.verb[ENG_STAGE_EHLO], lat);
        if (!ok) {
            sess_abort(s, ENG_STAGE_EHLO, 0, "the server refused HELO", r);
            return;
        }
        s->caps = 0;
        after_ehlo(s);
        break;
    case SESS_STARTTLS:
        hist_record(&p->stats.verb[ENG_STAGE_STARTTLS], lat);
        if (r->code == 220) {
            /* Nothing is pending (checked above): start afresh under TLS. */
            smtp_reader_reset(s->rd);
            s->after_starttls = 1;
            start_tls(s);
        } else if (p->route.tls == ENG_TLS_OPPORTUNISTIC && r->code != 421) {
            /* Opportunistic: go on in plaintext, as RFC 3207 allows. */
            s->caps &= ~CAP_STARTTLS;
            if (p->user)
                start_auth(s);
            else
                ready(s);
        } else {
            sess_abort(s, ENG_STAGE_STARTTLS, VL_ETLS, "the server refused STARTTLS", r);
        }
        break;
    case SESS_AUTH_PLAIN:
    case SESS_AUTH_LOGIN_PASS:
        hist_record(&p->stats.verb[ENG_STAGE_AUTH], lat);
        if (r->code == 235)
            ready(s);
        else
            sess_abort(s, ENG_STAGE_AUTH, VL_EAUTH, "authentication failed", r);
        break;
    case SESS_AUTH_LOGIN:
        if (r->code != 334) {
            sess_abort(s, ENG_STAGE_AUTH, VL_EAUTH, "the server refused AUTH LOGIN", r);
            return;
        }
        set_state(s, SESS_AUTH_LOGIN_USER);
        send_secret_b64(s, p->user);
        break;
    case SESS_AUTH_LOGIN_USER:
        if (r->code != 334) {
            sess_abort(s, ENG_STAGE_AUTH, VL_EAUTH, "the server refused the user name", r);
            return;
        }
        set_state(s, SESS_AUTH_LOGIN_PASS);
        send_secret_b64(s, p->password);
        break;
    default:
        break;
    }
}

/* Hand each complete reply to its state's handler. */
static void process_replies(eng__sess_t *s)
{
    smtp_reply_t r;
    int rc;
    while (s->state != SESS_CLOSING && (rc = smtp_reader_next(s->rd, &r)) == 1) {
        trace_in(s, &r);
        switch (s->state) {
        case SESS_TXN:
            on_txn_reply(s, &r);
            break;
        case SESS_QUIT:
            hist_record(&s->pool->stats.verb[ENG_STAGE_QUIT], eng__now_us() - s->t_wait);
            sess_close(s);
            return;
        case SESS_READY:
            /* Unsolicited: most often a 421 before an idle timeout. */
            if (r.code == 421) {
                sess_abort(s, ENG_STAGE_NONE, 0, "the server closed an idle connection", &r);
                return;
            }
            sess_abort(s, ENG_STAGE_NONE, VL_EPROTO,
                       "the server sent a reply that no command asked for", NULL);
            return;
        case SESS_TLS_HANDSHAKE:
            sess_abort(s, ENG_STAGE_TLS, VL_EPROTO,
                       "the server sent a reply during the TLS handshake", NULL);
            return;
        default:
            if (r.code == 421 && s->state != SESS_GREETING) {
                sess_abort(s, s->state == SESS_EHLO ? ENG_STAGE_EHLO : ENG_STAGE_AUTH, 0,
                           "the server is closing the connection (421)", &r);
                return;
            }
            on_setup_reply(s, &r);
            break;
        }
    }
    if (s->state != SESS_CLOSING && rc < 0) {
        char why[160];
        snprintf(why, sizeof why, "the server sent a malformed reply: %s",
                 smtp_reader_errstr(s->rd));
        sess_abort(s, wait_stage(s), VL_EPROTO, why, NULL);
    }
}

/* ---- network ---------------------------------------------------------- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    eng__sess_t *s = h->data;
    *buf = uv_buf_init(s->rbuf, READ_BUF_SIZE);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    eng__sess_t *s = st->data;
    if (n == 0 || s->state == SESS_CLOSING) return;
    if (n < 0) {
        eng_stage_t stage = ENG_STAGE_NONE;
        if (s->state == SESS_TXN && s->flen)
            stage = cmd_stage[s->fifo[s->fhead].kind];
        else if (s->state == SESS_GREETING)
            stage = ENG_STAGE_GREETING;
        else if (s->state == SESS_TLS_HANDSHAKE)
            stage = ENG_STAGE_TLS;
        else if (s->state == SESS_EHLO || s->state == SESS_HELO)
            stage = ENG_STAGE_EHLO;
        else if (s->state >= SESS_AUTH_PLAIN && s->state <= SESS_AUTH_LOGIN_PASS)
            stage = ENG_STAGE_AUTH;
        else if (s->state == SESS_STARTTLS)
            stage = ENG_STAGE_STARTTLS;
        sess_abort(s, stage, VL_ECONNRESET,
                   n == UV_EOF ? "the server closed the connection" : uv_strerror((int)n), NULL);
        return;
    }
    s->tp->on_data(s, buf->base, (size_t)n);
}

static void try_connect(eng__sess_t *s);

static void on_retry_closed(uv_handle_t *h)
{
    eng__sess_t *s = h->data;
    s->handles--;
    s->tcp_open = 0;
    if (s->state == SESS_CLOSING)
        maybe_free(s);
    else
        try_connect(s);
}

/* Move to the next address to try: the resolver's next one, or the pool's
 * next target (wrapping round from the last good one). 0 when all were tried. */
static int next_address(eng__sess_t *s)
{
    eng_pool_t *p = s->pool;
    if (p->targets) {
        if (s->tgt_tries >= p->ntargets) return 0;
        s->tgt = (s->tgt + 1) % p->ntargets;
        s->tgt_tries++;
        return 1;
    }
    if (!s->ai_cur || !s->ai_cur->ai_next) return 0;
    s->ai_cur = s->ai_cur->ai_next;
    return 1;
}

static void on_connect(uv_connect_t *req, int status)
{
    eng__sess_t *s = req->data;
    if (s->state == SESS_CLOSING) return;
    if (status < 0) {
        /* Try the next address (IPv6 then IPv4, as the resolver ordered them)
         * on a fresh handle; the old one must be closed first. */
        if (status != UV_ECANCELED && next_address(s)) {
            /* A handle cannot be reused before its close callback. */
            uv_close((uv_handle_t *)&s->tcp, on_retry_closed);
            return;
        }
        sess_abort(s, ENG_STAGE_CONNECT,
                   status == UV_ECONNREFUSED ? VL_ECONNREFUSED
                   : status == UV_ETIMEDOUT  ? VL_ETIMEOUT
                                             : VL_ENETWORK,
                   uv_strerror(status), NULL);
        return;
    }
    struct sockaddr_storage ss;
    int len = sizeof ss;
    if (uv_tcp_getpeername(&s->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[INET6_ADDRSTRLEN] = "";
        int port = 0;
        /* Direct delivery names the MX host too, as postfix's relay= does:
         * "mx1.example.com[192.0.2.1]:25". */
        const char *name = s->pool->targets ? s->pool->targets[s->tgt].name : "";
        if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof ip);
            port = ntohs(a->sin6_port);
            snprintf(s->remote, sizeof s->remote, "%s[%s]:%d", name, ip, port);
        } else {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof ip);
            port = ntohs(a->sin_port);
            if (*name)
                snprintf(s->remote, sizeof s->remote, "%s[%s]:%d", name, ip, port);
            else
                snprintf(s->remote, sizeof s->remote, "%s:%d", ip, port);
        }
    }
    if (s->pool->targets) s->pool->tgt_good = s->tgt; /* the next connections start here */
    hist_record(&s->pool->stats.verb[ENG_STAGE_CONNECT], eng__now_us() - s->t_wait);
    uv_tcp_nodelay(&s->tcp, 1);
    int rc = uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (rc) {
        sess_abort(s, ENG_STAGE_CONNECT, VL_ENETWORK, uv_strerror(rc), NULL);
        return;
    }
    if (s->pool->route.tls == ENG_TLS_IMPLICIT) {
        start_tls(s);
        return;
    }
    set_state(s, SESS_GREETING);
    arm(s, tmo(s)->greeting);
    s->t_wait = eng__now_us();
}

static void try_connect(eng__sess_t *s)
{
    int rc = uv_tcp_init(s->pool->loop, &s->tcp);
    if (rc) {
        sess_abort(s, ENG_STAGE_CONNECT, VL_ENETWORK, uv_strerror(rc), NULL);
        return;
    }
    s->tcp.data = s;
    s->tcp_open = 1;
    s->handles++;
    set_state(s, SESS_CONNECT);
    arm(s, tmo(s)->connect);
    s->t_wait = eng__now_us();
    s->creq.data = s;
    const struct sockaddr *addr = s->pool->targets
                                      ? (const struct sockaddr *)&s->pool->targets[s->tgt].addr
                                      : s->ai_cur->ai_addr;
    rc = uv_tcp_connect(&s->creq, &s->tcp, addr, on_connect);
    if (rc && next_address(s)) {
        /* Refused at once (an IPv6 address without a route, say): the next. */
        uv_close((uv_handle_t *)&s->tcp, on_retry_closed);
        return;
    }
    if (rc)
        sess_abort(s, ENG_STAGE_CONNECT, rc == UV_ECONNREFUSED ? VL_ECONNREFUSED : VL_ENETWORK,
                   uv_strerror(rc), NULL);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    eng__sess_t *s = req->data;
    s->gai_pending = 0;
    if (s->state == SESS_CLOSING) {
        if (res) uv_freeaddrinfo(res);
        maybe_free(s); /* the handles may have closed while it was pending */
        return;
    }
    if (status < 0 || !res) {
        char why[160];
        snprintf(why, sizeof why, "cannot resolve %s: %s", s->pool->host, uv_strerror(status));
        sess_abort(s, ENG_STAGE_RESOLVE, VL_EDNS, why, NULL);
        return;
    }
    s->ai_list = s->ai_cur = res;
    try_connect(s);
}

int eng__sess_open(eng_pool_t *p)
{
    eng__sess_t *s = calloc(1, sizeof *s);
    if (!s) return VL_ENOMEM;
    s->pool = p;
    s->id = ++p->next_id;
    s->tp = &plain_transport;
    s->rd = smtp_reader_new();
    s->rbuf = malloc(READ_BUF_SIZE);
    buf_init(&s->text, CMD_TEXT_MAX);
    eng__iovv_init(&s->out);
    eng__iovv_init(&s->scratch);
    if (!s->rd || !s->rbuf) {
        sess_free(s);
        return VL_ENOMEM;
    }
    uv_timer_init(p->loop, &s->timer);
    s->timer.data = s;
    s->handles = 1;
    /* Link before anything can fail, so the pool sees every session. */
    s->next = p->sessions;
    if (p->sessions) p->sessions->prev = s;
    p->sessions = s;
    p->nsess++;
    p->nsetup++;
    s->in_setup = 1;
    p->stats.connections++;

    if (p->targets) {
        /* Addresses given (MX lookup done by the owner): no resolving. */
        s->tgt = p->tgt_good < p->ntargets ? p->tgt_good : 0;
        s->tgt_tries = 1;
        try_connect(s);
        return 0;
    }
    set_state(s, SESS_RESOLVE);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    s->gai.data = s;
    s->gai_pending = 1;
    s->t_wait = eng__now_us();
    int rc = uv_getaddrinfo(p->loop, &s->gai, on_resolved, p->host, p->port_str, &hints);
    if (rc) {
        s->gai_pending = 0;
        sess_abort(s, ENG_STAGE_RESOLVE, VL_EDNS, uv_strerror(rc), NULL);
    }
    return 0;
}

void eng__sess_kick(eng__sess_t *s)
{
    if (eng__sess_idle(s)) sess_next_txn(s);
}

int eng__sess_idle(const eng__sess_t *s)
{
    return s->state == SESS_READY && !s->flen && !s->txn && !s->quit_wanted;
}

int eng__sess_established(const eng__sess_t *s)
{
    return !s->in_setup && s->state != SESS_CLOSING && s->state != SESS_QUIT;
}

eng__sess_t *eng__sess_next(const eng__sess_t *s)
{
    return s->next;
}

static void sess_quit(eng__sess_t *s)
{
    if (s->state == SESS_CLOSING || s->state == SESS_QUIT) return;
    if (!s->quitting) { /* a retired session is counted already */
        s->quitting = 1;
        s->pool->nquitting++;
    }
    set_state(s, SESS_QUIT);
    arm(s, tmo(s)->quit);
    send_line(s, "QUIT\r\n", NULL);
    if (s->tls && s->state == SESS_QUIT) {
        tls_conn_shutdown(s->tls);
        tls_send_pending(s);
    }
}

void eng__sess_finish(eng__sess_t *s, int now)
{
    if (s->state == SESS_CLOSING) return;
    s->quit_wanted = 1;
    if (now || s->in_setup) {
        sess_abort(s, ENG_STAGE_NONE, VL_ECANCELED, "the pool was closed", NULL);
        return;
    }
    if (s->state == SESS_READY && !s->flen && !s->txn) sess_quit(s);
}

unsigned eng__sess_id(const eng__sess_t *s)
{
    return s->id;
}

void eng__sess_retire(eng__sess_t *s)
{
    if (s->state == SESS_CLOSING || s->state == SESS_QUIT) return;
    s->quit_wanted = 1;
    /* Counted as leaving from now on, so that the pool opens its replacement while this
     * one finishes the transactions it has under way. */
    if (!s->quitting) {
        s->quitting = 1;
        s->pool->nquitting++;
    }
    if (s->state == SESS_READY && !s->flen && !s->txn) sess_quit(s);
}

void eng__sess_unlink(eng_pool_t *p, eng__sess_t *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        p->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    p->nsess--;
    if (s->quitting) p->nquitting--;
    leave_setup(s);
}
