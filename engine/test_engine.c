/* Engine tests against a scripted SMTP server on the same libuv loop.
 *
 * For every stage (connect, greeting, EHLO, MAIL, RCPT, DATA, end of data) a
 * 4xx, a 5xx, a dropped connection and a silence (timeout) each end with the
 * right outcome; the loop closes with no handle left (run under ASan for
 * leaks). Transcripts of what the server received are compared, so
 * pipelining is checked on the wire.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/err.h"
#include "engine/engine.h"
#include "engine/link.h"

/* ---- a scripted server ------------------------------------------------ */

enum step {
    S_GREETING,
    S_EHLO,
    S_HELO,
    S_MAIL,
    S_RCPT,
    S_DATA,
    S_DOT,
    S_RSET,
    S_QUIT,
    S_AUTH,
    S_N
};
static const char *const step_names[S_N] = {"greeting", "EHLO", "HELO", "MAIL", "RCPT",
                                            "DATA",     "DOT",  "RSET", "QUIT", "AUTH"};

#define DROP "<drop>"
#define SILENT "<silent>"

typedef struct server {
    uv_tcp_t listener;
    int port;
    const char *reply[S_N]; /* NULL = the default */
    int fail_after;         /* the scripted reply applies from this occurrence on (0 = first) */
    int seen[S_N];
    int pipelining, chunking;
    int keep_open_after_421; /* to see whether the client writes after one */
    size_t bytes_after_421;
    buf_t transcript; /* every command line received, '|' between reads */
    buf_t content;    /* the last DATA content as received, up to the CRLF before "." */
    int conns;
} server_t;

typedef struct sconn {
    uv_tcp_t tcp;
    server_t *srv;
    buf_t in;
    int in_data;
    int dead;
    int sent_421;
    int silent;     /* hung: answers nothing more */
    int login_step; /* AUTH LOGIN: 1 = user expected, 2 = password expected */
} sconn_t;

static const char *default_reply(server_t *s, enum step st)
{
    switch (st) {
    case S_GREETING:
        return "220 test ESMTP";
    case S_EHLO:
        return s->pipelining ? (s->chunking ? "250-test\r\n250-PIPELINING\r\n250-CHUNKING\r\n250-"
                                              "AUTH PLAIN LOGIN\r\n250 ENHANCEDSTATUSCODES"
                                            : "250-test\r\n250-PIPELINING\r\n250-AUTH PLAIN "
                                              "LOGIN\r\n250 ENHANCEDSTATUSCODES")
                             : "250-test\r\n250-AUTH LOGIN\r\n250 ENHANCEDSTATUSCODES";
    case S_HELO:
        return "250 test";
    case S_MAIL:
        return "250 2.1.0 Ok";
    case S_RCPT:
        return "250 2.1.5 Ok";
    case S_DATA:
        return "354 go ahead";
    case S_DOT:
        return "250 2.0.0 Ok: queued";
    case S_RSET:
        return "250 2.0.0 Ok";
    case S_QUIT:
        return "221 2.0.0 Bye";
    case S_AUTH:
        return "235 2.7.0 Authentication successful";
    default:
        return "500 what";
    }
}

static void on_sconn_closed(uv_handle_t *h)
{
    sconn_t *c = h->data;
    buf_free(&c->in);
    free(c);
}

static void sconn_close(sconn_t *c)
{
    if (c->dead) return;
    c->dead = 1;
    uv_close((uv_handle_t *)&c->tcp, on_sconn_closed);
}

static void on_swrite(uv_write_t *req, int status)
{
    free(req->data);
    free(req);
}

static void swrite(sconn_t *c, const char *text)
{
    size_t n = strlen(text);
    char *copy = malloc(n + 2);
    memcpy(copy, text, n);
    memcpy(copy + n, "\r\n", 2);
    uv_write_t *req = malloc(sizeof *req);
    req->data = copy;
    uv_buf_t b = uv_buf_init(copy, (unsigned)n + 2);
    if (uv_write(req, (uv_stream_t *)&c->tcp, &b, 1, on_swrite)) {
        free(copy);
        free(req);
    }
}

/* Answer one step: the scripted reply (from its fail_after-th occurrence) or the
 * default. Returns 0 to go on, -1 when the connection was dropped. */
static int answer(sconn_t *c, enum step st)
{
    server_t *s = c->srv;
    const char *r = s->reply[st] && s->seen[st] >= s->fail_after ? s->reply[st] : NULL;
    s->seen[st]++;
    if (!r) r = default_reply(s, st);
    if (!strcmp(r, DROP)) {
        sconn_close(c);
        return -1;
    }
    if (!strcmp(r, SILENT)) {
        c->silent = 1;
        return -1;
    }
    swrite(c, r);
    if (!strncmp(r, "421", 3)) {
        c->sent_421 = 1;
        if (!s->keep_open_after_421) sconn_close(c);
        return -1;
    }
    if (st == S_QUIT) sconn_close(c);
    return 0;
}

static void handle_line(sconn_t *c, const char *line, size_t len)
{
    server_t *s = c->srv;
    if (buf_append(&s->transcript, line, len) || buf_putc(&s->transcript, '\n')) fail();
    enum step st;
    if (c->login_step == 1) {
        c->login_step = 2;
        swrite(c, "334 UGFzc3dvcmQ6");
        return;
    }
    if (c->login_step == 2) {
        c->login_step = 0;
        answer(c, S_AUTH);
        return;
    }
    if (!strncasecmp(line, "AUTH LOGIN", 10)) {
        c->login_step = 1;
        swrite(c, "334 VXNlcm5hbWU6");
        return;
    }
    if (!strncasecmp(line, "EHLO", 4))
        st = S_EHLO;
    else if (!strncasecmp(line, "HELO", 4))
        st = S_HELO;
    else if (!strncasecmp(line, "MAIL", 4))
        st = S_MAIL;
    else if (!strncasecmp(line, "RCPT", 4))
        st = S_RCPT;
    else if (!strncasecmp(line, "DATA", 4))
        st = S_DATA;
    else if (!strncasecmp(line, "RSET", 4))
        st = S_RSET;
    else if (!strncasecmp(line, "QUIT", 4))
        st = S_QUIT;
    else if (!strncasecmp(line, "AUTH", 4))
        st = S_AUTH;
    else if (!strncasecmp(line, "BDAT", 4)) {
        /* Tests use BDAT only for small messages that arrive in one read:
         * the chunk's bytes follow the command in the input buffer. */
        st = S_DOT;
        c->in_data = 2;
        c->srv->seen[S_DATA]++;
        (void)st;
        return;
    } else {
        swrite(c, "500 5.5.2 unrecognised");
        return;
    }
    int was354 = st == S_DATA;
    if (answer(c, st) == 0 && was354 && !c->dead) {
        const char *r =
            s->reply[S_DATA] && s->seen[S_DATA] - 1 >= s->fail_after ? s->reply[S_DATA] : "354";
        if (!strncmp(r, "354", 3)) c->in_data = 1;
    }
}

static void on_salloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    static char mem[65536];
    *b = uv_buf_init(mem, sizeof mem);
}

static void on_sread(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    sconn_t *c = st->data;
    if (n < 0) {
        sconn_close(c);
        return;
    }
    if (c->dead) return;
    if (c->sent_421) {
        c->srv->bytes_after_421 += (size_t)n;
        return;
    }
    if (c->silent) return;
    if (buf_append(&c->in, b->base, (size_t)n) || buf_putc(&c->srv->transcript, '|')) fail();
    for (;;) {
        if (c->dead || c->sent_421 || c->silent) return;
        if (c->in_data == 1) {
            char *end = memmem(c->in.data, c->in.len, "\r\n.\r\n", 5);
            size_t skip = 5;
            if (!end && c->in.len >= 3 && !memcmp(c->in.data, ".\r\n", 3)) {
                end = c->in.data;
                skip = 3;
            }
            if (!end) return;
            buf_reset(&c->srv->content);
            if (skip == 5 &&
                buf_append(&c->srv->content, c->in.data, (size_t)(end - c->in.data) + 2))
                fail();
            buf_consume(&c->in, (size_t)(end - c->in.data) + skip);
            c->in_data = 0;
            if (buf_puts(&c->srv->transcript, "<content>\n")) fail();
            if (answer(c, S_DOT)) return;
            continue;
        }
        if (c->in_data == 2) {
            /* BDAT n LAST: the chunk follows; take it all (small tests). */
            buf_reset(&c->in);
            c->in_data = 0;
            if (buf_puts(&c->srv->transcript, "<chunk>\n")) fail();
            answer(c, S_DOT);
            return;
        }
        char *nl = memchr(c->in.data, '\n', c->in.len);
        if (!nl) return;
        size_t len = (size_t)(nl - c->in.data);
        if (len && c->in.data[len - 1] == '\r') len--;
        char line[1024];
        if (len >= sizeof line) len = sizeof line - 1;
        memcpy(line, c->in.data, len);
        line[len] = '\0';
        buf_consume(&c->in, (size_t)(nl - c->in.data) + 1);
        handle_line(c, line, len);
    }
}

static void on_sconnect(uv_stream_t *l, int status)
{
    server_t *s = l->data;
    sconn_t *c = calloc(1, sizeof *c);
    c->srv = s;
    buf_init(&c->in, 1 << 20);
    uv_tcp_init(l->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(l, (uv_stream_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, on_sconn_closed);
        return;
    }
    s->conns++;
    uv_read_start((uv_stream_t *)&c->tcp, on_salloc, on_sread);
    answer(c, S_GREETING);
}

static void server_start(server_t *s, uv_loop_t *loop)
{
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    assert_int_equal(uv_tcp_init(loop, &s->listener), 0);
    s->listener.data = s;
    assert_int_equal(uv_tcp_bind(&s->listener, (struct sockaddr *)&a, 0), 0);
    assert_int_equal(uv_listen((uv_stream_t *)&s->listener, 128, on_sconnect), 0);
    struct sockaddr_in b;
    int len = sizeof b;
    uv_tcp_getsockname(&s->listener, (struct sockaddr *)&b, &len);
    s->port = ntohs(b.sin_port);
    buf_init(&s->transcript, 1 << 20);
    buf_init(&s->content, 1 << 20);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    if (!uv_is_closing(h))
        uv_close(h, h->data && h->type == UV_TCP && h != arg ? on_sconn_closed : NULL);
}

/* ---- the client side -------------------------------------------------- */

typedef struct outcome {
    int done;
    eng_result_t res; /* res.errstr is borrowed: see errstr below */
    char errstr[256];
    eng_rcpt_status_t st[4];
} outcome_t;

typedef struct harness {
    uv_loop_t loop;
    server_t srv;
    eng_pool_t *pool;
    int pool_closed;
    int events[3];
} harness_t;

static void on_done(eng_msg_t *m, const eng_result_t *res)
{
    outcome_t *o = m->ud;
    o->done++;
    o->res = *res;
    snprintf(o->errstr, sizeof o->errstr, "%s", res->errstr ? res->errstr : "");
    o->res.errstr = o->errstr;
}

static void on_event(eng_pool_t *p, const eng_event_t *ev, void *ud)
{
    harness_t *h = ud;
    h->events[ev->kind]++;
}

static void on_pool_closed(void *ud)
{
    harness_t *h = ud;
    h->pool_closed = 1;
    uv_close((uv_handle_t *)&h->srv.listener, NULL);
}

static const char *const rcpts2[] = {"a@example.com", "b@example.com"};
static const char body[] = "Subject: test\r\n\r\nhello\r\n.dot line\r\n";

static void msg_init(eng_msg_t *m, outcome_t *o, size_t nrcpts, struct iovec *iov)
{
    memset(m, 0, sizeof *m);
    memset(o, 0, sizeof *o);
    iov->iov_base = (void *)body;
    iov->iov_len = sizeof body - 1;
    m->mail_from = "sender@example.com";
    m->rcpts = rcpts2;
    m->nrcpts = nrcpts;
    m->iov = iov;
    m->iovcnt = 1;
    m->rcpt_status = o->st;
    m->on_done = on_done;
    m->ud = o;
}

static void harness_init(harness_t *h, int pipelining)
{
    memset(h, 0, sizeof *h);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    h->srv.pipelining = pipelining;
    server_start(&h->srv, &h->loop);
}

/* The route to the harness's server: plain, short timeouts, one set-up failure. */
static eng_route_t harness_route(harness_t *h, unsigned conns, unsigned msgs_per_conn)
{
    eng_route_t r;
    eng_route_init(&r);
    r.host = "127.0.0.1";
    r.port = (uint16_t)h->srv.port;
    r.tls = ENG_TLS_NONE;
    r.max_connections = conns;
    r.max_msgs_per_conn = msgs_per_conn;
    r.max_setup_failures = 1;
    r.on_event = on_event;
    r.ud = h;
    eng_timeouts_t t = {300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 2000};
    r.timeouts = t;
    return r;
}

static void harness_pool(harness_t *h, unsigned conns, unsigned msgs_per_conn)
{
    eng_route_t r = harness_route(h, conns, msgs_per_conn);
    char err[256];
    assert_int_equal(eng_pool_new(&h->pool, &h->loop, &r, err, sizeof err), 0);
}

/* Run until every message is done, close the pool, and check the loop has
 * nothing left open. */
static void harness_finish(harness_t *h)
{
    uv_run(&h->loop, UV_RUN_DEFAULT);
    if (!h->pool_closed) {
        eng_pool_close(h->pool, 1, on_pool_closed, h);
        uv_run(&h->loop, UV_RUN_DEFAULT);
    }
    assert_true(h->pool_closed);
    /* Server connections may still be open (silent scripts): close them. */
    uv_walk(&h->loop, close_walk, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
    buf_free(&h->srv.transcript);
    buf_free(&h->srv.content);
}

static void on_msg_done_close(eng_msg_t *m, const eng_result_t *res)
{
    on_done(m, res);
    outcome_t *o = m->ud;
    harness_t *h = *(harness_t **)&o->st[3];
    if (eng_pool_pending(h->pool) == 0) eng_pool_close(h->pool, 0, on_pool_closed, h);
}

/* Send one message with the server scripted to answer `reply` at step `st`;
 * check the outcome. */
static void run_one(enum step st, const char *reply, int pipelining, eng_status_t want,
                    eng_stage_t want_stage, int want_code, int want_err)
{
    harness_t h;
    harness_init(&h, pipelining);
    h.srv.reply[st] = reply;
    if (st == S_EHLO && reply[0] == '5') h.srv.reply[S_HELO] = "550 no HELO either";
    harness_pool(&h, 1, 0);
    eng_msg_t m;
    outcome_t o;
    struct iovec iov;
    msg_init(&m, &o, 2, &iov);
    *(harness_t **)&o.st[3] = &h;
    m.on_done = on_msg_done_close;
    assert_int_equal(eng_pool_submit(h.pool, &m), 0);
    uv_run(&h.loop, UV_RUN_DEFAULT);
    if (o.done != 1 || o.res.status != want || o.res.stage != want_stage ||
        o.res.reply.code != want_code || o.res.err != want_err)
        print_error("step %s reply '%s' pipelining %d: got %s at %s code %d err %s (%s)\n",
                    step_names[st], reply, pipelining, eng_status_name(o.res.status),
                    eng_stage_name(o.res.stage), o.res.reply.code, vl_err_name(o.res.err),
                    o.res.errstr ? o.res.errstr : "");
    assert_int_equal(o.done, 1);
    assert_int_equal(o.res.status, want);
    assert_int_equal(o.res.stage, want_stage);
    assert_int_equal(o.res.reply.code, want_code);
    assert_int_equal(o.res.err, want_err);
    harness_finish(&h);
}

static void test_every_stage(void **state)
{
    (void)state;
    for (int pl = 0; pl <= 1; pl++) {
        /* greeting */
        run_one(S_GREETING, "421 4.4.5 HL:ICC too many connections", pl, ENG_FAILED,
                ENG_STAGE_GREETING, 421, 0);
        run_one(S_GREETING, "554 5.7.1 go away", pl, ENG_FAILED, ENG_STAGE_GREETING, 554, 0);
        run_one(S_GREETING, DROP, pl, ENG_FAILED, ENG_STAGE_GREETING, 0, VL_ECONNRESET);
        run_one(S_GREETING, SILENT, pl, ENG_FAILED, ENG_STAGE_GREETING, 0, VL_ETIMEOUT);
        /* EHLO (a 5xx falls back to HELO, scripted to fail too) */
        run_one(S_EHLO, "421 4.3.2 shutting down", pl, ENG_FAILED, ENG_STAGE_EHLO, 421, 0);
        run_one(S_EHLO, "550 5.5.1 no", pl, ENG_FAILED, ENG_STAGE_EHLO, 550, 0);
        run_one(S_EHLO, DROP, pl, ENG_FAILED, ENG_STAGE_EHLO, 0, VL_ECONNRESET);
        run_one(S_EHLO, SILENT, pl, ENG_FAILED, ENG_STAGE_EHLO, 0, VL_ETIMEOUT);
        /* MAIL */
        run_one(S_MAIL, "451 4.7.0 MI:SFQ too many", pl, ENG_REJECTED, ENG_STAGE_MAIL, 451, 0);
        run_one(S_MAIL, "553 5.1.8 bad sender", pl, ENG_REJECTED, ENG_STAGE_MAIL, 553, 0);
        run_one(S_MAIL, DROP, pl, ENG_FAILED, ENG_STAGE_MAIL, 0, VL_ECONNRESET);
        run_one(S_MAIL, SILENT, pl, ENG_FAILED, ENG_STAGE_MAIL, 0, VL_ETIMEOUT);
        /* RCPT (both recipients get the scripted reply) */
        run_one(S_RCPT, "450 4.7.0 RP:DRC too many", pl, ENG_REJECTED, ENG_STAGE_RCPT, 450, 0);
        run_one(S_RCPT, "550 5.1.1 Invalid User", pl, ENG_REJECTED, ENG_STAGE_RCPT, 550, 0);
        run_one(S_RCPT, DROP, pl, ENG_FAILED, ENG_STAGE_RCPT, 0, VL_ECONNRESET);
        run_one(S_RCPT, SILENT, pl, ENG_FAILED, ENG_STAGE_RCPT, 0, VL_ETIMEOUT);
        /* DATA */
        run_one(S_DATA, "451 4.3.0 local error", pl, ENG_REJECTED, ENG_STAGE_DATA, 451, 0);
        run_one(S_DATA, "554 5.5.1 no valid recipients", pl, ENG_REJECTED, ENG_STAGE_DATA, 554, 0);
        run_one(S_DATA, DROP, pl, ENG_FAILED, ENG_STAGE_DATA, 0, VL_ECONNRESET);
        run_one(S_DATA, SILENT, pl, ENG_FAILED, ENG_STAGE_DATA, 0, VL_ETIMEOUT);
        /* end of data: after the content went out, a lost reply is UNKNOWN */
        run_one(S_DOT, "451 4.7.1 DT:SPM please try again", pl, ENG_REJECTED, ENG_STAGE_BODY, 451,
                0);
        run_one(S_DOT, "552 5.3.4 Illegal Attachment", pl, ENG_REJECTED, ENG_STAGE_BODY, 552, 0);
        run_one(S_DOT, DROP, pl, ENG_UNKNOWN, ENG_STAGE_BODY, 0, VL_ECONNRESET);
        run_one(S_DOT, SILENT, pl, ENG_UNKNOWN, ENG_STAGE_BODY, 0, VL_ETIMEOUT);
        /* and the happy path */
        run_one(S_QUIT, "221 bye", pl, ENG_DELIVERED, ENG_STAGE_BODY, 250, 0);
    }
}

static void test_refused(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    int port = h.srv.port;
    uv_close((uv_handle_t *)&h.srv.listener, NULL);
    uv_run(&h.loop, UV_RUN_DEFAULT); /* the port is closed now */
    eng_route_t r;
    eng_route_init(&r);
    r.host = "127.0.0.1";
    r.port = (uint16_t)port;
    r.tls = ENG_TLS_NONE;
    r.max_connections = 3;
    char err[256];
    assert_int_equal(eng_pool_new(&h.pool, &h.loop, &r, err, sizeof err), 0);
    eng_msg_t m[5];
    outcome_t o[5];
    struct iovec iov[5];
    for (int i = 0; i < 5; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        assert_int_equal(eng_pool_submit(h.pool, &m[i]), 0);
    }
    uv_run(&h.loop, UV_RUN_NOWAIT);
    while (eng_pool_pending(h.pool))
        uv_run(&h.loop, UV_RUN_ONCE);
    for (int i = 0; i < 5; i++) {
        assert_int_equal(o[i].done, 1);
        assert_int_equal(o[i].res.status, ENG_FAILED);
        assert_int_equal(o[i].res.stage, ENG_STAGE_CONNECT);
        assert_int_equal(o[i].res.err, VL_ECONNREFUSED);
    }
    /* The messages failed after three rounds of set-ups (max_setup_failures
     * 0 = 3), three connections each: connections started together count
     * once. Counting each, the first round's three ended it. */
    assert_true(eng_pool_stats(h.pool)->setup_failures >= 7);
    eng_pool_close(h.pool, 1, NULL, NULL);
    uv_run(&h.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h.loop), 0);
    buf_free(&h.srv.transcript);
    buf_free(&h.srv.content);
}

/* Count '|' (read boundaries) in a transcript section. */
static void test_pipelining_on_the_wire(void **state)
{
    (void)state;
    for (int pl = 0; pl <= 1; pl++) {
        harness_t h;
        harness_init(&h, pl);
        harness_pool(&h, 1, 0);
        eng_msg_t m[3];
        outcome_t o[3];
        struct iovec iov[3];
        for (int i = 0; i < 3; i++) {
            msg_init(&m[i], &o[i], 2, &iov[i]);
            assert_int_equal(eng_pool_submit(h.pool, &m[i]), 0);
        }
        while (eng_pool_pending(h.pool))
            uv_run(&h.loop, UV_RUN_ONCE);
        for (int i = 0; i < 3; i++) {
            assert_int_equal(o[i].res.status, ENG_DELIVERED);
            assert_int_equal(o[i].res.naccepted, 2);
            assert_true(o[i].st[0].accepted && o[i].st[1].accepted);
        }
        eng_pool_close(h.pool, 0, on_pool_closed, &h);
        uv_run(&h.loop, UV_RUN_DEFAULT);
        const char *t = h.srv.transcript.data;
        if (pl) {
            /* MAIL, both RCPTs and DATA in one read; the next envelope in the
             * same read as the previous content. */
            assert_non_null(strstr(t, "|MAIL FROM:<sender@example.com>\nRCPT TO:<a@example.com>\n"
                                      "RCPT TO:<b@example.com>\nDATA\n|<content>\n"
                                      "MAIL FROM:<sender@example.com>\nRCPT TO:<a@example.com>\n"
                                      "RCPT TO:<b@example.com>\nDATA\n|"));
        } else {
            assert_non_null(strstr(t, "|MAIL FROM:<sender@example.com>\n|RCPT TO:<a@example.com>\n"
                                      "|RCPT TO:<b@example.com>\n|DATA\n|<content>\n|MAIL"));
        }
        harness_finish(&h);
    }
}

/* A 421 on a live connection: nothing more is written on it, the message
 * in flight is retried elsewhere by its owner, the rest go on a new
 * connection. */
static void test_421_midstream(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    h.srv.reply[S_MAIL] = "421 4.7.0 HL:IFC too fast";
    h.srv.fail_after = 2; /* from the third MAIL on */
    h.srv.keep_open_after_421 = 1;
    harness_pool(&h, 1, 0);
    eng_msg_t m[5];
    outcome_t o[5];
    struct iovec iov[5];
    for (int i = 0; i < 5; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        assert_int_equal(eng_pool_submit(h.pool, &m[i]), 0);
    }
    while (eng_pool_pending(h.pool))
        uv_run(&h.loop, UV_RUN_ONCE);
    assert_int_equal(o[0].res.status, ENG_DELIVERED);
    assert_int_equal(o[1].res.status, ENG_DELIVERED);
    assert_int_equal(o[2].res.status, ENG_REJECTED);
    assert_int_equal(o[2].res.reply.code, 421);
    /* The client wrote nothing on a connection after reading its 421 (the
     * server kept it open to see), and the rest went on new connections. */
    assert_int_equal(h.srv.bytes_after_421, 0);
    assert_true(h.srv.conns >= 2);
    eng_pool_close(h.pool, 0, on_pool_closed, &h);
    harness_finish(&h);
}

static void test_reuse_cap_and_ceiling(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    harness_pool(&h, 2, 3);
    enum { N = 20 };
    eng_msg_t m[N];
    outcome_t o[N];
    struct iovec iov[N];
    for (int i = 0; i < N; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        assert_int_equal(eng_pool_submit(h.pool, &m[i]), 0);
    }
    eng_pool_set_max_connections(h.pool, 1); /* lowered while running */
    while (eng_pool_pending(h.pool))
        uv_run(&h.loop, UV_RUN_ONCE);
    for (int i = 0; i < N; i++)
        assert_int_equal(o[i].res.status, ENG_DELIVERED);
    /* 3 messages per connection at most: at least 7 connections. */
    assert_true(h.srv.conns >= 7);
    assert_int_equal(h.srv.seen[S_QUIT], h.srv.conns - (int)eng_pool_connections(h.pool));
    eng_pool_close(h.pool, 0, on_pool_closed, &h);
    harness_finish(&h);
}

/* Direct delivery's building blocks: targets tried in order (the first one's
 * port is closed), and two pools under one shared budget of one connection. */
static eng_pool_t *budget_pools[2];

static void kick_waiting(eng_budget_t *b)
{
    (void)b;
    for (int i = 0; i < 2; i++)
        if (budget_pools[i] && eng_pool_queued(budget_pools[i]))
            eng_pool_set_max_connections(budget_pools[i], 1);
}

static void test_targets_and_budget(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    /* A closed port: bind a listener, note its port, close it. */
    uv_tcp_t tmp;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&h.loop, &tmp);
    assert_int_equal(uv_tcp_bind(&tmp, (const struct sockaddr *)&a, 0), 0);
    int len = sizeof a;
    uv_tcp_getsockname(&tmp, (struct sockaddr *)&a, &len);
    uv_close((uv_handle_t *)&tmp, NULL);
    uv_run(&h.loop, UV_RUN_NOWAIT);
    eng_target_t t[2];
    memset(t, 0, sizeof t);
    snprintf(t[0].name, sizeof t[0].name, "dead.example");
    memcpy(&t[0].addr, &a, sizeof a);
    snprintf(t[1].name, sizeof t[1].name, "live.example");
    uv_ip4_addr("127.0.0.1", h.srv.port, (struct sockaddr_in *)&t[1].addr);
    eng_budget_t b = {.max = 1, .on_release = kick_waiting};
    for (int i = 0; i < 2; i++) {
        eng_route_t r;
        eng_route_init(&r);
        r.host = i ? "b.example" : "a.example";
        r.targets = t;
        r.ntargets = 2;
        r.budget = &b;
        r.tls = ENG_TLS_NONE;
        r.max_connections = 4;
        r.max_msgs_per_conn = 2;
        char err[256];
        assert_int_equal(eng_pool_new(&budget_pools[i], &h.loop, &r, err, sizeof err), 0);
    }
    enum { N = 6 };
    eng_msg_t m[2 * N];
    outcome_t o[2 * N];
    struct iovec iov[2 * N];
    for (int i = 0; i < 2 * N; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        assert_int_equal(eng_pool_submit(budget_pools[i % 2], &m[i]), 0);
    }
    while (eng_pool_pending(budget_pools[0]) || eng_pool_pending(budget_pools[1])) {
        uv_run(&h.loop, UV_RUN_ONCE);
        /* One connection at a time over both pools, whatever each allows. */
        assert_true(b.used <= 1);
        assert_true(eng_pool_connections(budget_pools[0]) + eng_pool_connections(budget_pools[1]) <=
                    1);
    }
    for (int i = 0; i < 2 * N; i++)
        assert_int_equal(o[i].res.status, ENG_DELIVERED);
    /* Two messages a connection: at least 6 connections reached the server. */
    assert_true(h.srv.conns >= 6);
    eng_pool_close(budget_pools[1], 0, NULL, NULL);
    budget_pools[1] = NULL;
    eng_pool_close(budget_pools[0], 0, on_pool_closed, &h);
    h.pool = budget_pools[0];
    budget_pools[0] = NULL;
    harness_finish(&h);
    assert_int_equal(b.used, 0);
}

static void test_partial_rcpts_and_rset(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    h.srv.reply[S_DATA] = "554 5.5.1 no valid recipients";
    h.srv.fail_after = 0;
    harness_pool(&h, 1, 0);
    eng_msg_t m[2];
    outcome_t o[2];
    struct iovec iov[2];
    for (int i = 0; i < 2; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        assert_int_equal(eng_pool_submit(h.pool, &m[i]), 0);
    }
    while (eng_pool_pending(h.pool))
        uv_run(&h.loop, UV_RUN_ONCE);
    assert_int_equal(o[0].res.status, ENG_REJECTED);
    assert_int_equal(o[1].res.status, ENG_REJECTED);
    /* A refused DATA leaves the transaction open: RSET before the next MAIL. */
    assert_non_null(strstr(h.srv.transcript.data, "DATA\n|RSET\nMAIL"));
    eng_pool_close(h.pool, 0, on_pool_closed, &h);
    harness_finish(&h);
}

static void test_bdat(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    h.srv.chunking = 1;
    harness_pool(&h, 1, 0);
    eng_msg_t m;
    outcome_t o;
    struct iovec iov;
    msg_init(&m, &o, 1, &iov);
    assert_int_equal(eng_pool_submit(h.pool, &m), 0);
    while (eng_pool_pending(h.pool))
        uv_run(&h.loop, UV_RUN_ONCE);
    assert_int_equal(o.res.status, ENG_DELIVERED);
    char want[64];
    /* The content is CRLF-normalised but not dot-stuffed. */
    snprintf(want, sizeof want, "BDAT %zu LAST\n", sizeof body - 1);
    assert_non_null(strstr(h.srv.transcript.data, want));
    eng_pool_close(h.pool, 0, on_pool_closed, &h);
    harness_finish(&h);
}

/* Content the producer marks as in wire form (ENG_MSG_WIRE) goes out byte for
 * byte, unread, with the size it gives; other content is still dot-stuffed.
 * The engine takes the producer's word: to show that it did not scan, the
 * marked message has a line starting with '.' (a real producer must not:
 * msg_out_wire_ready() checks), which arrives unstuffed. */
static void test_wire_form(void **state)
{
    (void)state;
    static const char w0[] = "Subject: w\r\n\r\n", w1[] = ".line one\r\n", w2[] = "two\r\n";
    for (int chunking = 0; chunking < 2; chunking++) {
        harness_t h;
        harness_init(&h, 1);
        h.srv.chunking = chunking;
        harness_pool(&h, 1, 0);
        eng_msg_t m[2];
        outcome_t o[2];
        struct iovec iov[2][3];
        for (int k = 0; k < 2; k++) {
            msg_init(&m[k], &o[k], 1, &iov[k][0]);
            iov[k][0] = (struct iovec){(void *)w0, sizeof w0 - 1};
            iov[k][1] = (struct iovec){(void *)w1, sizeof w1 - 1};
            iov[k][2] = (struct iovec){(void *)w2, sizeof w2 - 1};
            m[k].iov = iov[k];
            m[k].iovcnt = 3;
        }
        m[0].flags = ENG_MSG_CRLF | ENG_MSG_WIRE;
        m[0].size = sizeof w0 + sizeof w1 + sizeof w2 - 3;
        /* Not in wire form: a line starts with '.', and the size is left to
         * the engine. */
        iov[1][1] = (struct iovec){(void *)".dot\r\n", 6};
        m[1].flags = ENG_MSG_CRLF;
        assert_int_equal(eng_pool_submit(h.pool, &m[0]), 0);
        while (eng_pool_pending(h.pool))
            uv_run(&h.loop, UV_RUN_ONCE);
        assert_int_equal(o[0].res.status, ENG_DELIVERED);
        char want[64];
        if (chunking) {
            snprintf(want, sizeof want, "BDAT %zu LAST\n", m[0].size);
            assert_non_null(strstr(h.srv.transcript.data, want));
        } else {
            assert_int_equal(h.srv.content.len, m[0].size);
            assert_memory_equal(h.srv.content.data, "Subject: w\r\n\r\n.line one\r\ntwo\r\n",
                                m[0].size);
        }
        assert_int_equal(eng_pool_submit(h.pool, &m[1]), 0);
        while (eng_pool_pending(h.pool))
            uv_run(&h.loop, UV_RUN_ONCE);
        assert_int_equal(o[1].res.status, ENG_DELIVERED);
        if (chunking) {
            snprintf(want, sizeof want, "BDAT %zu LAST\n", sizeof w0 + 6 + sizeof w2 - 2);
            assert_non_null(strstr(h.srv.transcript.data, want));
        } else {
            static const char stuffed[] = "Subject: w\r\n\r\n..dot\r\ntwo\r\n";
            assert_int_equal(h.srv.content.len, sizeof stuffed - 1);
            assert_memory_equal(h.srv.content.data, stuffed, sizeof stuffed - 1);
        }
        eng_pool_close(h.pool, 0, on_pool_closed, &h);
        harness_finish(&h);
    }
}

static void test_auth_plain_refused_without_tls(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    eng_route_t r;
    eng_route_init(&r);
    r.host = "127.0.0.1";
    r.port = (uint16_t)h.srv.port;
    r.tls = ENG_TLS_NONE;
    r.user = "me";
    r.password = "secret";
    r.max_setup_failures = 1;
    char err[256];
    assert_int_equal(eng_pool_new(&h.pool, &h.loop, &r, err, sizeof err), 0);
    eng_msg_t m;
    outcome_t o;
    struct iovec iov;
    msg_init(&m, &o, 1, &iov);
    assert_int_equal(eng_pool_submit(h.pool, &m), 0);
    while (eng_pool_pending(h.pool))
        uv_run(&h.loop, UV_RUN_ONCE);
    assert_int_equal(o.res.status, ENG_FAILED);
    assert_int_equal(o.res.stage, ENG_STAGE_AUTH);
    assert_int_equal(o.res.err, VL_EAUTH);
    /* Nothing secret went over the wire. */
    assert_null(strstr(h.srv.transcript.data, "AUTH"));
    eng_pool_close(h.pool, 0, on_pool_closed, &h);
    harness_finish(&h);
}

static void trace_cb(void *ud, unsigned conn, char dir, const char *line, size_t len)
{
    buf_t *b = ud;
    if (buf_printf(b, "%c %.*s\n", dir, (int)len, line)) fail();
}

static void test_auth_and_trace(void **state)
{
    (void)state;
    for (int login = 0; login <= 1; login++)
        for (int bad = 0; bad <= 1; bad++) {
            harness_t h;
            harness_init(&h, !login); /* without PIPELINING the script offers only LOGIN */
            if (bad) h.srv.reply[S_AUTH] = "535 5.7.8 Authentication credentials invalid";
            buf_t trace;
            buf_init(&trace, 1 << 20);
            eng_route_t r;
            eng_route_init(&r);
            r.host = "127.0.0.1";
            r.port = (uint16_t)h.srv.port;
            r.tls = ENG_TLS_NONE;
            r.user = "me@example.com";
            r.password = "s3cr3t-pw";
            r.allow_plain_auth = 1;
            r.max_setup_failures = 1;
            r.trace = trace_cb;
            r.ud = &trace;
            r.timeouts.auth = 300;
            char err[256];
            assert_int_equal(eng_pool_new(&h.pool, &h.loop, &r, err, sizeof err), 0);
            eng_msg_t m;
            outcome_t o;
            struct iovec iov;
            msg_init(&m, &o, 1, &iov);
            assert_int_equal(eng_pool_submit(h.pool, &m), 0);
            while (eng_pool_pending(h.pool))
                uv_run(&h.loop, UV_RUN_ONCE);
            if (bad) {
                assert_int_equal(o.res.status, ENG_FAILED);
                assert_int_equal(o.res.stage, ENG_STAGE_AUTH);
                assert_int_equal(o.res.reply.code, 535);
                assert_int_equal(o.res.err, VL_EAUTH);
            } else {
                assert_int_equal(o.res.status, ENG_DELIVERED);
                /* On the wire: base64("\0me@example.com\0s3cr3t-pw") for
                 * PLAIN; base64 of the user, then of the password, for LOGIN. */
                assert_non_null(strstr(h.srv.transcript.data,
                                       login ? "AUTH LOGIN\n|bWVAZXhhbXBsZS5jb20=\n|czNjcjN0LXB3\n"
                                             : "AUTH PLAIN AG1lQGV4YW1wbGUuY29tAHMzY3IzdC1wdw=="));
            }
            /* The trace never shows the secret, plain or encoded. */
            assert_null(strstr(trace.data, "s3cr3t"));
            assert_null(strstr(trace.data, "czNjcjN0"));
            assert_null(strstr(trace.data, "AG1lQGV4YW1wbGUuY29tAHMzY3IzdC1wdw"));
            assert_non_null(strstr(trace.data, login ? "> AUTH LOGIN" : "> AUTH PLAIN ***"));
            eng_pool_close(h.pool, 0, on_pool_closed, &h);
            harness_finish(&h);
            buf_free(&trace);
        }
}

/* Send three messages on at most one connection at a time; the server
 * scripted with reply at step st on every occurrence. */
static void run_three(harness_t *h, enum step st, const char *reply, int pipelining, eng_msg_t *m,
                      outcome_t *o, struct iovec *iov)
{
    harness_init(h, pipelining);
    h->srv.reply[st] = reply;
    harness_pool(h, 1, 0);
    for (int i = 0; i < 3; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        assert_int_equal(eng_pool_submit(h->pool, &m[i]), 0);
    }
    while (eng_pool_pending(h->pool))
        uv_run(&h->loop, UV_RUN_ONCE);
    for (int i = 0; i < 3; i++)
        assert_int_equal(o[i].done, 1);
}

/* RFC 2920 §3.1: the client waits after DATA, and a reply with nothing
 * outstanding is a protocol error. A reply sent together with the 354 was
 * taken for the content's (row 1 "delivered" by "250 early", every later
 * reply one command off); an unsolicited reply behind another was matched to
 * the next command. Now the connection ends, and no message is decided by a
 * reply meant for another. */
static void test_replies_out_of_turn(void **state)
{
    (void)state;
    for (int pl = 0; pl <= 1; pl++) {
        /* 354 and "250 early" in one write: each message fails before its
         * content went out (safe to retry), naming the server's fault. */
        harness_t h;
        eng_msg_t m[3];
        outcome_t o[3];
        struct iovec iov[3];
        run_three(&h, S_DATA, "354 go\r\n250 early", pl, m, o, iov);
        for (int i = 0; i < 3; i++) {
            if (o[i].res.status != ENG_FAILED)
                print_error("pipelining %d message %d: %s at %s, %d %s (%s)\n", pl, i,
                            eng_status_name(o[i].res.status), eng_stage_name(o[i].res.stage),
                            o[i].res.reply.code, o[i].res.reply.text, o[i].errstr);
            assert_int_equal(o[i].res.status, ENG_FAILED);
            assert_int_equal(o[i].res.stage, ENG_STAGE_DATA);
            assert_int_equal(o[i].res.err, VL_EPROTO);
            assert_int_equal(o[i].res.reply.code, 0);
            assert_non_null(strstr(o[i].errstr, "before the message content"));
            assert_non_null(strstr(o[i].errstr, "250 early"));
        }
        assert_null(strstr(h.srv.transcript.data, "<content>"));
        assert_int_equal(h.srv.conns, 3);
        eng_pool_close(h.pool, 0, on_pool_closed, &h);
        harness_finish(&h);

        /* A stray 354 behind the content's 250: the 250 stands (it is the
         * content's by count), the stray one ends the connection. The next
         * message had started on it (pipelined, its MAIL went out and the
         * 354 would have been taken for its reply): it fails, untried. */
        run_three(&h, S_DOT, "250 2.0.0 Ok: queued\r\n354 unsolicited", pl, m, o, iov);
        for (int i = 0; i < 3; i++) {
            eng_status_t want = i == 1 ? ENG_FAILED : ENG_DELIVERED;
            if (o[i].res.status != want)
                print_error("pipelining %d message %d: %s at %s, %d %s (%s)\n", pl, i,
                            eng_status_name(o[i].res.status), eng_stage_name(o[i].res.stage),
                            o[i].res.reply.code, o[i].res.reply.text, o[i].errstr);
            assert_int_equal(o[i].res.status, want);
            if (want == ENG_FAILED) {
                assert_int_equal(o[i].res.err, VL_EPROTO);
                assert_int_equal(o[i].res.stage, ENG_STAGE_MAIL);
                assert_int_equal(o[i].res.reply.code, 0);
                assert_non_null(strstr(o[i].errstr, "354 unsolicited"));
            }
        }
        assert_int_equal(h.srv.seen[S_DOT], 2);
        eng_pool_close(h.pool, 0, on_pool_closed, &h);
        harness_finish(&h);

        /* An extra reply behind the greeting would be taken for EHLO's. */
        run_one(S_GREETING, "220 test ESMTP\r\n250 extra", pl, ENG_FAILED, ENG_STAGE_GREETING, 0,
                VL_EPROTO);
        /* Replies a command cannot draw (RFC 5321 §4.3.2) decide nothing:
         * a 250 to DATA, a 354 to RCPT or MAIL, a 334 to EHLO, code 999. */
        run_one(S_DATA, "250 2.0.0 ok", pl, ENG_FAILED, ENG_STAGE_DATA, 0, VL_EPROTO);
        run_one(S_RCPT, "354 go ahead", pl, ENG_FAILED, ENG_STAGE_RCPT, 0, VL_EPROTO);
        run_one(S_MAIL, "354 go ahead", pl, ENG_FAILED, ENG_STAGE_MAIL, 0, VL_EPROTO);
        run_one(S_EHLO, "334 what", pl, ENG_FAILED, ENG_STAGE_EHLO, 0, VL_EPROTO);
        run_one(S_MAIL, "999 weird", pl, ENG_FAILED, ENG_STAGE_MAIL, 0, VL_EPROTO);
        run_one(S_DOT, "999 weird", pl, ENG_UNKNOWN, ENG_STAGE_BODY, 0, VL_EPROTO);
    }
}

/* A connection retired by id (a reply said it is spent: 450 MI:CEL) takes no more
 * messages and QUITs, and the next ones go on a fresh connection, even at a ceiling of
 * one. Through eng_link, the handle the scheduler uses for pools and MX routers alike. */
static eng_link_t *retire_link;
static int retire_rc = 1;
static unsigned retired_id;

static void on_done_retire(eng_msg_t *m, const eng_result_t *res)
{
    on_done(m, res);
    if (retire_rc == 1) {
        retired_id = res->conn_id;
        retire_rc = eng_link_retire(retire_link, "example.com", res->conn_id);
    }
}

static void test_link_retire(void **state)
{
    (void)state;
    harness_t h;
    harness_init(&h, 1);
    eng_route_t r = harness_route(&h, 1, 0);
    char err[256];
    assert_int_equal(eng_link_new_pool(&retire_link, &h.loop, &r, err, sizeof err), 0);
    enum { N = 3 };
    eng_msg_t m[N];
    outcome_t o[N];
    struct iovec iov[N];
    for (int i = 0; i < N; i++) {
        msg_init(&m[i], &o[i], 1, &iov[i]);
        if (i == 0) m[i].on_done = on_done_retire;
    }
    assert_int_equal(eng_link_submit(retire_link, &m[0], "example.com"), 0);
    while (!o[0].done)
        uv_run(&h.loop, UV_RUN_ONCE);
    assert_int_equal(retire_rc, 0);
    for (int i = 1; i < N; i++)
        assert_int_equal(eng_link_submit(retire_link, &m[i], "example.com"), 0);
    while (!o[N - 1].done || !o[N - 2].done)
        uv_run(&h.loop, UV_RUN_ONCE);
    for (int i = 0; i < N; i++)
        assert_int_equal(o[i].res.status, ENG_DELIVERED);
    /* The retired connection carried message 0 only; a second one carried the rest. */
    assert_int_equal(h.srv.conns, 2);
    assert_int_not_equal(o[1].res.conn_id, retired_id);
    assert_int_equal(o[1].res.conn_id, o[2].res.conn_id);
    assert_int_equal(h.srv.seen[S_QUIT], 1);
    assert_int_equal(eng_link_connections(retire_link), 1);
    /* A connection that is gone cannot be retired again. */
    assert_int_equal(eng_link_retire(retire_link, "example.com", retired_id), VL_ENOENT);
    eng_link_close(retire_link, 0, on_pool_closed, &h);
    harness_finish(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_every_stage),
        cmocka_unit_test(test_refused),
        cmocka_unit_test(test_pipelining_on_the_wire),
        cmocka_unit_test(test_421_midstream),
        cmocka_unit_test(test_reuse_cap_and_ceiling),
        cmocka_unit_test(test_targets_and_budget),
        cmocka_unit_test(test_partial_rcpts_and_rset),
        cmocka_unit_test(test_bdat),
        cmocka_unit_test(test_wire_form),
        cmocka_unit_test(test_auth_plain_refused_without_tls),
        cmocka_unit_test(test_auth_and_trace),
        cmocka_unit_test(test_replies_out_of_turn),
        cmocka_unit_test(test_link_retire),
    };
    return cmocka_run_group_tests_name("engine", tests, NULL, NULL);
}
