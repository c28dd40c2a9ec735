/* sink_smtp.c: one volley-sink connection: socket I/O, TLS, SMTP.
 *
 * Input is processed a read at a time: every complete command in the read is
 * answered into `out`, and the answers of one read leave in one write (RFC
 * 2920 section 3.2 asks a server to batch like that, and volley's tests check
 * that the client pipelines by counting reads per transaction). Nothing is
 * allocated per command: each connection has a fixed input buffer and three
 * reusable output buffers:
 *
 *   out       replies (plaintext) produced since the last flush;
 *   wire      bytes ready for the socket (replies, encrypted when TLS is on,
 *             and TLS handshake records);
 *   inflight  what a pending uv_write is sending (one write at a time).
 *
 * Message content is streamed: DATA is scanned for the final dot (undoing
 * dot-stuffing for the size) and, with --log, the header section for the
 * Message-ID; nothing of the content is kept.
 */
#include "sink.h"

#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "common/err.h"

/* The connection's states: STOP first and LAST as a sentinel, one setter. */
enum sink_state {
    SINK_STOP,            /* closing: input is ignored */
    SINK_HANDSHAKE,       /* TLS handshake running (implicit TLS or STARTTLS) */
    SINK_CMD,             /* reading commands */
    SINK_AUTH_PLAIN,      /* waiting for the AUTH PLAIN response */
    SINK_AUTH_LOGIN_USER, /* waiting for the AUTH LOGIN user name */
    SINK_AUTH_LOGIN_PASS, /* waiting for the AUTH LOGIN password */
    SINK_DATA,            /* DATA content until CRLF.CRLF */
    SINK_BDAT,            /* a BDAT chunk's octets */
    SINK_STATE_LAST
};

static const char *const sink_state_names[SINK_STATE_LAST] = {
    "STOP", "HANDSHAKE", "CMD", "AUTH_PLAIN", "AUTH_LOGIN_USER", "AUTH_LOGIN_PASS", "DATA", "BDAT",
};

struct sink_conn {
    uv_tcp_t tcp; /* first: the handle's address is the connection's */
    uv_write_t wreq;
    uv_timer_t delay; /* only initialised with --delay-ms */
    struct sink_server *srv;
    struct sink_conn *prev, *next;
    uint64_t id;
    enum sink_state state;
    int pending_closes;

    unsigned closing : 1, writing : 1, close_after_flush : 1, delaying : 1, paused : 1;
    unsigned rejected : 1, greet_pending : 1, helo : 1, ehlo : 1, authed : 1, discard_line : 1;
    unsigned in_txn : 1, oversize : 1, drop_data : 1, bdat_seen : 1, bdat_last : 1;
    unsigned data_bol : 1, hdr_done : 1, hdr_bol : 1;
    unsigned hdr_match : 2;   /* the wanted headers the line's name still matches */
    unsigned hdr_capture : 2; /* the header whose value is being captured */
    unsigned hdr_have : 2;    /* the wanted headers already seen */
    unsigned hdr_line_len;    /* header line length so far (CR not counted) */

    tls_conn_t *tls;
    char *in;
    size_t in_len;
    buf_t out, wire, inflight;

    uint64_t read_seq;       /* socket reads so far */
    uint64_t txn_last_read;  /* read_seq of the transaction's last command */
    unsigned txn_cmd_reads;  /* distinct reads carrying the transaction's commands */
    unsigned msgs_on_conn;   /* MAIL commands accepted on this connection */
    unsigned rcpts_on_conn;  /* RCPT commands accepted on this connection */
    unsigned txn_rcpts;      /* recipients accepted in this transaction */
    uint64_t txn_size;       /* content octets (dot-stuffing undone) */
    uint64_t bdat_remaining; /* octets of the current chunk still to come */
    int bdat_reply;          /* 0, or the code to answer the chunk with */
    uint64_t msg_seq;        /* for queue ids */
    buf_t env;               /* with --log: from NUL rcpt NUL rcpt NUL ... */
    buf_t mid;               /* with --log: the Message-ID header value */
    buf_t row;               /* with --log: the X-Volley-Row header value */
    uint64_t txn_mail_ms;    /* when MAIL was accepted (sink__now_ms) */
    char login_user[256];    /* AUTH LOGIN: the user name until the password comes */
    size_t login_user_len;
};

static void sink_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b);
static void sink_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b);
static void sink_flush(struct sink_conn *c);
static void sink_write_wire(struct sink_conn *c);
static void sink_greet(struct sink_conn *c);

static void sink_set_state(struct sink_conn *c, enum sink_state st)
{
    if (c->srv->trace)
        fprintf(stderr, "sink: conn %llu %s -> %s\n", (unsigned long long)c->id,
                sink_state_names[c->state], sink_state_names[st]);
    c->state = st;
}

/* ---- output ---- */

static void sink_reply_raw(struct sink_conn *c, const char *s, size_t n)
{
    if (c->state == SINK_STOP && !c->close_after_flush) return;
    if (buf_append(&c->out, s, n) != 0) {
        /* A client that never reads its replies: give up on it. */
        sink__conn_close(c);
    }
}

#define SINK_REPLY(c, lit) sink_reply_raw((c), lit "\r\n", sizeof(lit "\r\n") - 1)
#define SINK_REPLY_CLOSE(c, lit) sink_reply_and_close((c), lit "\r\n", sizeof(lit "\r\n") - 1)

static void sink_replyf(struct sink_conn *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void sink_replyf(struct sink_conn *c, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = buf_vprintf(&c->out, fmt, ap);
    va_end(ap);
    if (rc != 0) sink__conn_close(c);
}

/* Reply, then close once everything queued has been sent. */
static void sink_reply_and_close(struct sink_conn *c, const char *s, size_t n)
{
    sink_reply_raw(c, s, n);
    c->close_after_flush = 1;
    sink_set_state(c, SINK_STOP);
}

/* A configured refusal ("CODE TEXT"); 421 closes the connection after it,
 * as RFC 5321 section 3.8 says a 421 does. */
static void sink_reply_cfg(struct sink_conn *c, const char *r)
{
    sink_reply_raw(c, r, strlen(r));
    if (strncmp(r, "421", 3) == 0)
        sink_reply_and_close(c, "\r\n", 2);
    else
        sink_reply_raw(c, "\r\n", 2);
}

static void sink_close_cb(uv_handle_t *h)
{
    struct sink_conn *c = h->data;
    if (--c->pending_closes > 0) return;
    tls_conn_free(c->tls);
    free(c->in);
    buf_free(&c->out);
    buf_free(&c->wire);
    buf_free(&c->inflight);
    buf_free(&c->env);
    buf_free(&c->mid);
    buf_free(&c->row);
    OPENSSL_cleanse(c->login_user, sizeof c->login_user);
    free(c);
}

void sink__conn_close(struct sink_conn *c)
{
    if (c->closing) return;
    struct sink_server *srv = c->srv;
    c->closing = 1;
    sink_set_state(c, SINK_STOP);
    if (c->prev)
        c->prev->next = c->next;
    else
        srv->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    srv->conns_now--;
    if (!c->rejected) srv->conns_admitted--;
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->pending_closes = 1;
    if (srv->cfg.delay_ms) {
        c->pending_closes++;
        uv_close((uv_handle_t *)&c->delay, sink_close_cb);
    }
    uv_close((uv_handle_t *)&c->tcp, sink_close_cb);
    sink__conn_gone(srv);
}

static void sink_write_cb(uv_write_t *req, int status)
{
    struct sink_conn *c = req->data;
    c->writing = 0;
    buf_reset(&c->inflight);
    if (c->closing) return;
    if (status < 0) {
        sink__conn_close(c);
        return;
    }
    if (c->paused && !c->delaying) {
        c->paused = 0;
        uv_read_start((uv_stream_t *)&c->tcp, sink_alloc, sink_on_read);
    }
    sink_write_wire(c);
}

/* Send what is in wire: try a direct write first (the common case: the whole
 * batch goes out at once), else hand it to uv_write. */
static void sink_write_wire(struct sink_conn *c)
{
    if (c->writing || c->closing) return;
    if (c->wire.len == 0) {
        if (c->close_after_flush && c->out.len == 0) sink__conn_close(c);
        return;
    }
    uv_buf_t b = uv_buf_init(c->wire.data, (unsigned)c->wire.len);
    int n = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
    if (n == (int)c->wire.len) {
        buf_reset(&c->wire);
        if (c->close_after_flush && c->out.len == 0) sink__conn_close(c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        sink__conn_close(c);
        return;
    }
    if (n > 0) buf_consume(&c->wire, (size_t)n);
    buf_t t = c->inflight;
    c->inflight = c->wire;
    c->wire = t;
    buf_reset(&c->wire);
    b = uv_buf_init(c->inflight.data, (unsigned)c->inflight.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, sink_write_cb) != 0) {
        sink__conn_close(c);
        return;
    }
    c->writing = 1;
}

/* Move TLS records waiting in OpenSSL to wire. */
static int sink_tls_drain(struct sink_conn *c)
{
    if (!c->tls) return 0;
    if (tls_conn_take_out(c->tls, &c->wire) < 0) {
        sink__conn_close(c);
        return -1;
    }
    return 0;
}

/* Move the replies in out to wire (encrypting them under TLS) and send. */
static void sink_flush(struct sink_conn *c)
{
    if (c->closing) return;
    struct sink_server *srv = c->srv;
    /* The log line of a message is on disk before its 250 leaves, so a client
     * that saw the reply can read the log. */
    if (srv->log_dirty) {
        fflush(srv->log);
        srv->log_dirty = 0;
    }
    if (c->out.len) {
        if (c->tls && c->state != SINK_HANDSHAKE) {
            if (tls_conn_write(c->tls, c->out.data, c->out.len) != 0) {
                sink__conn_close(c);
                return;
            }
            buf_reset(&c->out);
            if (sink_tls_drain(c) != 0) return;
        } else if (!c->tls) {
            if (c->wire.len == 0) {
                buf_t t = c->wire; /* swap instead of copying */
                c->wire = c->out;
                c->out = t;
            } else if (buf_append(&c->wire, c->out.data, c->out.len) != 0) {
                sink__conn_close(c);
                return;
            }
            buf_reset(&c->out);
        }
    }
    sink_write_wire(c);
}

static void sink_delay_cb(uv_timer_t *t)
{
    struct sink_conn *c = t->data;
    c->delaying = 0;
    sink_flush(c);
    if (!c->closing && c->state != SINK_STOP && !c->paused)
        uv_read_start((uv_stream_t *)&c->tcp, sink_alloc, sink_on_read);
}

/* After a read was processed: send the replies now, or after --delay-ms. */
static void sink_after_input(struct sink_conn *c)
{
    if (c->closing) return;
    if (c->srv->cfg.delay_ms && c->out.len) {
        if (!c->delaying) {
            c->delaying = 1;
            uv_read_stop((uv_stream_t *)&c->tcp);
            uv_timer_start(&c->delay, sink_delay_cb, c->srv->cfg.delay_ms, 0);
        }
        sink_write_wire(c); /* handshake records are never delayed */
        return;
    }
    sink_flush(c);
    /* Back-pressure: a client that writes faster than it reads stops being
     * read until its replies drain. */
    if (!c->closing && c->writing && c->inflight.len + c->wire.len > (1u << 20) && !c->paused) {
        c->paused = 1;
        uv_read_stop((uv_stream_t *)&c->tcp);
    }
}

/* ---- transactions ---- */

static void sink_txn_reset(struct sink_conn *c)
{
    c->in_txn = 0;
    c->oversize = 0;
    c->drop_data = 0;
    c->bdat_seen = 0;
    c->txn_rcpts = 0;
    c->txn_size = 0;
    c->txn_cmd_reads = 0;
    c->txn_last_read = 0;
    c->hdr_done = 0;
    c->hdr_bol = 1;
    c->hdr_match = 0;
    c->hdr_capture = 0;
    c->hdr_have = 0;
    c->hdr_line_len = 0;
    buf_reset(&c->env);
    buf_reset(&c->mid);
    buf_reset(&c->row);
}

/* A command of the transaction arrived: count the reads that carried them. */
static void sink_txn_cmd(struct sink_conn *c)
{
    if (c->txn_last_read != c->read_seq) {
        c->txn_last_read = c->read_seq;
        c->txn_cmd_reads++;
    }
}

/* The headers the scanner captures: Message-ID and volley's row header, the
 * keys of the duplicate counts (a resent row gets a new Message-ID). Bit k of
 * hdr_match/hdr_capture/hdr_have is sink_want[k - 1]. */
static const char *const sink_want[2] = {"message-id:", "x-volley-row:"};
#define SINK_WANT_ALL 3u

/* Stream content bytes (dot-stuffing already undone) through the header
 * scanner that finds the Message-ID and X-Volley-Row. Only runs with --log,
 * and only until the header section ends. */
static void sink_scan_headers(struct sink_conn *c, const char *s, size_t n)
{
    for (size_t i = 0; i < n && !c->hdr_done; i++) {
        char ch = s[i];
        if (ch == '\n') {
            if (c->hdr_line_len == 0) c->hdr_done = 1; /* the empty line ends the header section */
            c->hdr_bol = 1;
            c->hdr_line_len = 0;
            continue;
        }
        if (ch == '\r') continue;
        if (c->hdr_bol) {
            c->hdr_bol = 0;
            if (ch == ' ' || ch == '\t') {
                /* A folded continuation: stays captured if its header was. */
            } else {
                c->hdr_have |= c->hdr_capture;
                c->hdr_capture = 0;
                c->hdr_match = SINK_WANT_ALL & ~c->hdr_have;
            }
        }
        c->hdr_line_len++;
        if (c->hdr_match) {
            char lc = (ch >= 'A' && ch <= 'Z') ? (char)(ch - 'A' + 'a') : ch;
            for (unsigned k = 0; k < 2; k++) {
                unsigned bit = 1u << k;
                if (!(c->hdr_match & bit)) continue;
                if (lc != sink_want[k][c->hdr_line_len - 1]) {
                    c->hdr_match &= ~bit;
                } else if (sink_want[k][c->hdr_line_len] == '\0') {
                    c->hdr_match = 0;
                    c->hdr_capture = bit;
                }
            }
            continue;
        }
        buf_t *dst = c->hdr_capture == 1 ? &c->mid : c->hdr_capture == 2 ? &c->row : NULL;
        if (dst && dst->len < 998)
            (void)!buf_putc(dst, ch); /* capped by the buffer's max; truncation is fine */
    }
}

static void sink_content(struct sink_conn *c, const char *s, size_t n)
{
    c->txn_size += n;
    if (c->txn_size > c->srv->cfg.size_limit) c->oversize = 1;
    if (c->srv->log && !c->hdr_done) sink_scan_headers(c, s, n);
}

static void sink_log_message(struct sink_conn *c)
{
    struct sink_server *srv = c->srv;
    buf_t *b = &srv->line;
    buf_reset(b);
    const char *e = c->env.data ? c->env.data : "";
    size_t flen = strlen(e);
    int rc = buf_printf(b, "{\"conn\":%llu,\"from\":", (unsigned long long)c->id);
    rc = rc ? rc : sink__json_str(b, e, flen);
    rc = rc ? rc : buf_puts(b, ",\"rcpts\":[");
    const char *p = e + flen + 1;
    for (unsigned i = 0; rc == 0 && i < c->txn_rcpts && p < c->env.data + c->env.len; i++) {
        size_t l = strlen(p);
        rc = i ? buf_putc(b, ',') : 0;
        rc = rc ? rc : sink__json_str(b, p, l);
        p += l + 1;
    }
    rc =
        rc ? rc : buf_printf(b, "],\"size\":%llu,\"message_id\":", (unsigned long long)c->txn_size);
    const char *id;
    size_t idlen;
    if (rc == 0 && c->mid.len && sink__msgid(c->mid.data, c->mid.len, &id, &idlen) == 0) {
        rc = sink__json_str(b, id, idlen);
        if (sink__strset_add(&srv->seen_mids, id, idlen) == 0) srv->st.dup_message_ids++;
    } else if (rc == 0) {
        rc = buf_puts(b, "null");
    }
    const char *row;
    size_t rowlen = 0;
    if (c->row.len) sink__trim(c->row.data, c->row.len, &row, &rowlen);
    rc = rc ? rc : buf_puts(b, ",\"row\":");
    if (rc == 0 && rowlen) {
        rc = sink__json_str(b, row, rowlen);
        if (sink__strset_add(&srv->seen_rows, row, rowlen) == 0) srv->st.dup_rows++;
    } else if (rc == 0) {
        rc = buf_puts(b, "null");
    }
    /* t: when its MAIL was admitted, which is what the rate and quota
     * faults count, so tests can check any window from the log. */
    rc = rc ? rc
            : buf_printf(b, ",\"t\":%.3f,\"cmd_reads\":%u,\"tls\":%s,\"auth\":%s}\n",
                         (double)c->txn_mail_ms / 1000.0, c->txn_cmd_reads,
                         c->tls ? "true" : "false", c->authed ? "true" : "false");
    if (rc == 0) {
        fwrite(b->data, 1, b->len, srv->log);
        srv->log_dirty = 1;
    }
}

/* The end of a message's content (final dot or BDAT LAST). */
static void sink_end_of_message(struct sink_conn *c)
{
    struct sink_server *srv = c->srv;
    if (c->oversize) {
        srv->st.rej_size++;
        SINK_REPLY(c, "552 5.3.4 Message size exceeds fixed maximum message size");
    } else if (srv->cfg.random_4xx > 0 && sink__rand(srv) < srv->cfg.random_4xx) {
        srv->st.rej_random++;
        SINK_REPLY(c, "451 4.3.0 Requested action aborted: local error in processing");
    } else {
        srv->st.messages++;
        srv->st.recipients += c->txn_rcpts;
        srv->st.bytes += c->txn_size;
        if (srv->log) sink_log_message(c);
        c->msg_seq++;
        sink_replyf(c, "250 2.0.0 Ok: queued as %llX%06llX\r\n", (unsigned long long)c->id,
                    (unsigned long long)c->msg_seq);
        sink__message_accepted(srv);
    }
    sink_txn_reset(c);
}

/* DATA content: returns the bytes consumed (less than n only when the rest
 * could be the start of the final ".\r\n"). */
static size_t sink_on_data(struct sink_conn *c, const char *p, size_t n)
{
    const char *s = p, *end = p + n;
    if (c->drop_data && n > 0) {
        /* --drop-mid-data: the content started; vanish before its end. */
        c->srv->st.drops++;
        c->close_after_flush = 1;
        sink_set_state(c, SINK_STOP);
        return n;
    }
    while (s < end) {
        if (c->data_bol && *s == '.') {
            if (end - s < 2) break;
            if (s[1] == '\n' || (s[1] == '\r' && end - s >= 3 && s[2] == '\n')) {
                s += s[1] == '\n' ? 2 : 3;
                sink_set_state(c, SINK_CMD);
                sink_end_of_message(c);
                return (size_t)(s - p);
            }
            if (s[1] == '\r' && end - s < 3) break;
            s++; /* a stuffed dot: not part of the content */
            if (s == end) break;
        }
        const char *nl = memchr(s, '\n', (size_t)(end - s));
        const char *seg_end = nl ? nl + 1 : end;
        sink_content(c, s, (size_t)(seg_end - s));
        c->data_bol = nl != NULL;
        s = seg_end;
    }
    return (size_t)(s - p);
}

static size_t sink_on_bdat(struct sink_conn *c, const char *p, size_t n)
{
    if (c->drop_data && n > 0) {
        c->srv->st.drops++;
        c->close_after_flush = 1;
        sink_set_state(c, SINK_STOP);
        return n;
    }
    size_t k = n < c->bdat_remaining ? n : (size_t)c->bdat_remaining;
    if (c->bdat_reply == 0) sink_content(c, p, k);
    c->bdat_remaining -= k;
    if (c->bdat_remaining == 0) {
        sink_set_state(c, SINK_CMD);
        if (c->bdat_reply == 503)
            SINK_REPLY(c, "503 5.5.1 Error: need MAIL and RCPT before BDAT");
        else if (c->bdat_reply == 554)
            SINK_REPLY(c, "554 5.5.1 Error: no valid recipients");
        else if (c->bdat_last)
            sink_end_of_message(c);
        else if (c->oversize)
            SINK_REPLY(c, "552 5.3.4 Message size exceeds fixed maximum message size");
        else
            sink_replyf(c, "250 2.0.0 %llu octets received\r\n", (unsigned long long)c->txn_size);
        if (c->bdat_last && c->bdat_reply) sink_txn_reset(c);
    }
    return k;
}

/* ---- commands ---- */

static int sink_is_word(const char *line, size_t len, const char *word)
{
    size_t wl = strlen(word);
    return sink__prefix(line, len, word) && (len == wl || line[wl] == ' ');
}

static void sink_cmd_ehlo(struct sink_conn *c, const char *arg, size_t alen, int ehlo)
{
    const struct sink_cfg *cfg = &c->srv->cfg;
    if (alen == 0) {
        if (ehlo)
            SINK_REPLY(c, "501 5.5.4 Syntax: EHLO hostname");
        else
            SINK_REPLY(c, "501 5.5.4 Syntax: HELO hostname");
        return;
    }
    sink_txn_reset(c);
    c->helo = 1;
    c->ehlo = ehlo ? 1 : 0;
    if (!ehlo) {
        sink_replyf(c, "250 %s\r\n", cfg->hostname);
        return;
    }
    const char *ext[10];
    char size[40];
    int n = 0;
    if (cfg->pipelining) ext[n++] = "PIPELINING";
    snprintf(size, sizeof size, "SIZE %llu", (unsigned long long)cfg->size_limit);
    ext[n++] = size;
    if (cfg->eightbit) ext[n++] = "8BITMIME";
    if (cfg->smtputf8) ext[n++] = "SMTPUTF8";
    if (cfg->chunking) ext[n++] = "CHUNKING";
    if (c->srv->tls && !c->tls) ext[n++] = "STARTTLS";
    /* AUTH only where the password cannot be sniffed, if TLS is possible. */
    if (cfg->auth_user && (c->tls || !c->srv->tls)) ext[n++] = "AUTH PLAIN LOGIN";
    ext[n++] = "ENHANCEDSTATUSCODES";
    sink_replyf(c, "250-%s\r\n", cfg->hostname);
    for (int i = 0; i < n; i++)
        sink_replyf(c, "250%c%s\r\n", i == n - 1 ? ' ' : '-', ext[i]);
}

/* Parameters after a path: "KEY[=VALUE]" separated by spaces. Returns 0 or
 * the reply already sent. */
static int sink_mail_params(struct sink_conn *c, const char *s, size_t n, uint64_t *size)
{
    const struct sink_cfg *cfg = &c->srv->cfg;
    size_t i = 0;
    while (i < n) {
        while (i < n && s[i] == ' ')
            i++;
        if (i == n) break;
        size_t b = i;
        while (i < n && s[i] != ' ')
            i++;
        const char *k = s + b;
        size_t kl = i - b;
        const char *eq = memchr(k, '=', kl);
        size_t kn = eq ? (size_t)(eq - k) : kl;
        const char *v = eq ? eq + 1 : NULL;
        size_t vl = eq ? kl - kn - 1 : 0;
        if (kn == 4 && sink__prefix(k, kn, "SIZE") && v) {
            if (sink__parse_u64(v, vl, size) != 0) {
                SINK_REPLY(c, "501 5.5.4 Bad SIZE parameter");
                return 501;
            }
        } else if (kn == 4 && sink__prefix(k, kn, "BODY") && v) {
            if (vl == 4 && sink__prefix(v, vl, "7BIT")) {
            } else if (vl == 8 && sink__prefix(v, vl, "8BITMIME") && cfg->eightbit) {
            } else {
                SINK_REPLY(c, "555 5.5.4 Unsupported BODY type");
                return 555;
            }
        } else if (kl == 8 && sink__prefix(k, kl, "SMTPUTF8") && cfg->smtputf8) {
        } else if ((kn == 3 && sink__prefix(k, kn, "RET")) ||
                   (kn == 5 && sink__prefix(k, kn, "ENVID")) ||
                   (kn == 4 && sink__prefix(k, kn, "AUTH"))) {
        } else {
            SINK_REPLY(c, "555 5.5.4 Unsupported option");
            return 555;
        }
    }
    return 0;
}

static void sink_cmd_mail(struct sink_conn *c, const char *line, size_t len)
{
    struct sink_server *srv = c->srv;
    const struct sink_cfg *cfg = &srv->cfg;
    if (srv->stopping) {
        SINK_REPLY_CLOSE(c, "421 4.3.2 Service shutting down");
        return;
    }
    if (!c->helo) {
        SINK_REPLY(c, "503 5.5.1 Error: send HELO/EHLO first");
        return;
    }
    if (c->in_txn) {
        SINK_REPLY(c, "503 5.5.1 Error: nested MAIL command");
        return;
    }
    if (cfg->require_tls && !c->tls) {
        srv->st.rej_tls_required++;
        SINK_REPLY(c, "530 5.7.0 Must issue a STARTTLS command first");
        return;
    }
    if (cfg->auth_user && !c->authed) {
        srv->st.rej_auth_required++;
        SINK_REPLY(c, "530 5.7.0 Authentication required");
        return;
    }
    const char *addr;
    size_t alen, end;
    if (len < 10 || !sink__prefix(line, len, "MAIL FROM:") ||
        sink__parse_path(line + 10, len - 10, &addr, &alen, &end) != 0) {
        srv->st.syntax_errors++;
        SINK_REPLY(c, "501 5.5.4 Syntax: MAIL FROM:<address>");
        return;
    }
    uint64_t size = 0;
    if (sink_mail_params(c, line + 10 + end, len - 10 - end, &size) != 0) return;
    if (size > cfg->size_limit) {
        srv->st.rej_size++;
        SINK_REPLY(c, "552 5.3.4 Message size exceeds fixed maximum message size");
        return;
    }
    /* The admission faults. Each only looks until every one has said yes,
     * so a refused MAIL does not count towards any window. */
    uint64_t now = sink__now_ms(srv);
    if (cfg->defer_all && (cfg->defer_ms == 0 || now < cfg->defer_ms)) {
        srv->st.rej_defer_all++;
        sink_reply_cfg(c, cfg->defer_reply);
        return;
    }
    if (cfg->max_msgs_per_conn && c->msgs_on_conn >= cfg->max_msgs_per_conn) {
        srv->st.rej_msgs_per_conn++;
        sink_reply_cfg(c, cfg->max_msgs_reply);
        return;
    }
    if (cfg->rate_n && !sink__window_ok(&srv->rate, now)) {
        srv->st.rej_rate++;
        sink_reply_cfg(c, cfg->rate_reply);
        return;
    }
    if (cfg->quota_n && !sink__quota_ok(&srv->quota, now)) {
        srv->st.rej_quota++;
        sink_reply_cfg(c, cfg->quota_reply);
        return;
    }
    if (cfg->random_4xx > 0 && sink__rand(srv) < cfg->random_4xx) {
        srv->st.rej_random++;
        SINK_REPLY(c, "451 4.3.0 Requested action aborted: local error in processing");
        return;
    }
    if (cfg->rate_n) sink__window_add(&srv->rate, now);
    if (cfg->quota_n) sink__quota_add(&srv->quota, now);
    sink_txn_reset(c);
    c->txn_mail_ms = now;
    c->in_txn = 1;
    c->msgs_on_conn++;
    sink_txn_cmd(c);
    if (srv->log && (buf_append(&c->env, addr, alen) != 0 || buf_putc(&c->env, '\0') != 0)) {
        SINK_REPLY(c, "452 4.3.1 Insufficient system storage");
        sink_txn_reset(c);
        return;
    }
    SINK_REPLY(c, "250 2.1.0 Ok");
}

static void sink_cmd_rcpt(struct sink_conn *c, const char *line, size_t len)
{
    struct sink_server *srv = c->srv;
    const struct sink_cfg *cfg = &srv->cfg;
    if (!c->in_txn) {
        SINK_REPLY(c, "503 5.5.1 Error: need MAIL command");
        return;
    }
    sink_txn_cmd(c);
    const char *addr;
    size_t alen, end;
    if (len < 8 || !sink__prefix(line, len, "RCPT TO:") ||
        sink__parse_path(line + 8, len - 8, &addr, &alen, &end) != 0 || alen == 0) {
        srv->st.syntax_errors++;
        SINK_REPLY(c, "501 5.5.4 Syntax: RCPT TO:<address>");
        return;
    }
    /* NOTIFY= and ORCPT= (DSN) are accepted and ignored; others refused. */
    for (size_t i = 8 + end; i < len;) {
        while (i < len && line[i] == ' ')
            i++;
        if (i == len) break;
        if (!sink__prefix(line + i, len - i, "NOTIFY=") &&
            !sink__prefix(line + i, len - i, "ORCPT=")) {
            SINK_REPLY(c, "555 5.5.4 Unsupported option");
            return;
        }
        while (i < len && line[i] != ' ')
            i++;
    }
    if (c->txn_rcpts >= SINK_MAX_RCPTS_PER_MSG) {
        SINK_REPLY(c, "452 4.5.3 Error: too many recipients");
        return;
    }
    if (cfg->max_rcpts_per_conn && c->rcpts_on_conn >= cfg->max_rcpts_per_conn) {
        srv->st.rej_rcpts_per_conn++;
        SINK_REPLY(c, "450 4.7.0 RP:DRC " SINK_NETEASE_INFO "volley-sink");
        return;
    }
    if (cfg->has_reject_rcpt) {
        char a[1024];
        size_t l = alen < sizeof a - 1 ? alen : sizeof a - 1;
        memcpy(a, addr, l);
        a[l] = '\0';
        if (regexec(&cfg->reject_rcpt, a, 0, NULL, 0) == 0) {
            srv->st.rej_rcpt_pattern++;
            SINK_REPLY(c, "550 5.1.1 Invalid User");
            return;
        }
    }
    if (cfg->random_4xx > 0 && sink__rand(srv) < cfg->random_4xx) {
        srv->st.rej_random++;
        SINK_REPLY(c, "451 4.3.0 Requested action aborted: local error in processing");
        return;
    }
    if (srv->log && (buf_append(&c->env, addr, alen) != 0 || buf_putc(&c->env, '\0') != 0)) {
        SINK_REPLY(c, "452 4.5.3 Error: too many recipients");
        return;
    }
    c->txn_rcpts++;
    c->rcpts_on_conn++;
    SINK_REPLY(c, "250 2.1.5 Ok");
}

static void sink_start_content(struct sink_conn *c)
{
    struct sink_server *srv = c->srv;
    if (!c->bdat_seen && srv->cfg.drop_mid_data > 0 && sink__rand(srv) < srv->cfg.drop_mid_data)
        c->drop_data = 1;
}

static void sink_cmd_data(struct sink_conn *c, size_t len)
{
    if (c->in_txn) sink_txn_cmd(c);
    if (len != 4) {
        SINK_REPLY(c, "501 5.5.4 Syntax: DATA");
    } else if (!c->in_txn) {
        SINK_REPLY(c, "503 5.5.1 Error: need MAIL command");
    } else if (c->txn_rcpts == 0) {
        SINK_REPLY(c, "554 5.5.1 Error: no valid recipients");
    } else if (c->bdat_seen) {
        SINK_REPLY(c, "503 5.5.1 Error: DATA after BDAT");
    } else {
        sink_start_content(c);
        SINK_REPLY(c, "354 End data with <CR><LF>.<CR><LF>");
        c->data_bol = 1;
        sink_set_state(c, SINK_DATA);
    }
}

static void sink_cmd_bdat(struct sink_conn *c, const char *line, size_t len)
{
    const char *s = line + 5, *end = line + len;
    const char *sp = memchr(s, ' ', (size_t)(end - s));
    const char *num_end = sp ? sp : end;
    uint64_t size;
    int last = 0;
    if (len < 6 || sink__parse_u64(s, (size_t)(num_end - s), &size) != 0) {
        c->srv->st.syntax_errors++;
        SINK_REPLY(c, "501 5.5.4 Syntax: BDAT size [LAST]");
        return;
    }
    if (sp) {
        if (end - sp - 1 == 4 && sink__prefix(sp + 1, 4, "LAST")) {
            last = 1;
        } else {
            c->srv->st.syntax_errors++;
            SINK_REPLY(c, "501 5.5.4 Syntax: BDAT size [LAST]");
            return;
        }
    }
    /* The chunk's octets follow in any case and must be consumed. */
    c->bdat_reply = 0;
    if (!c->in_txn)
        c->bdat_reply = 503;
    else if (c->txn_rcpts == 0)
        c->bdat_reply = 554;
    if (c->in_txn) {
        sink_txn_cmd(c);
        if (!c->bdat_seen) sink_start_content(c);
        c->bdat_seen = 1;
    }
    c->bdat_last = last ? 1 : 0;
    c->bdat_remaining = size;
    sink_set_state(c, SINK_BDAT);
    if (size == 0) sink_on_bdat(c, "", 0);
}

/* Check a user name and password against the configured ones, in time
 * independent of where they differ. */
static int sink_auth_check(struct sink_conn *c, const unsigned char *user, size_t ulen,
                           const unsigned char *pass, size_t plen)
{
    const struct sink_cfg *cfg = &c->srv->cfg;
    size_t eu = strlen(cfg->auth_user), ep = strlen(cfg->auth_pass);
    int ok = ulen == eu && plen == ep;
    ok &= CRYPTO_memcmp(user, cfg->auth_user, ulen < eu ? ulen : eu) == 0;
    ok &= CRYPTO_memcmp(pass, cfg->auth_pass, plen < ep ? plen : ep) == 0;
    return ok;
}

static void sink_auth_result(struct sink_conn *c, int ok)
{
    sink_set_state(c, SINK_CMD);
    if (ok) {
        c->authed = 1;
        SINK_REPLY(c, "235 2.7.0 Authentication successful");
    } else {
        c->srv->st.rej_auth++;
        SINK_REPLY(c, "535 5.7.8 Authentication credentials invalid");
    }
}

/* authzid NUL authcid NUL passwd (RFC 4616). */
static void sink_auth_plain(struct sink_conn *c, const char *b64, size_t n)
{
    unsigned char dec[1024];
    ssize_t dl = sink__b64_decode(b64, n, dec, sizeof dec);
    if (dl < 0) {
        sink_set_state(c, SINK_CMD);
        SINK_REPLY(c, "501 5.5.2 Cannot decode response");
        return;
    }
    unsigned char *z1 = memchr(dec, '\0', (size_t)dl);
    unsigned char *z2 = z1 ? memchr(z1 + 1, '\0', (size_t)(dec + dl - z1 - 1)) : NULL;
    int ok = 0;
    if (z2) {
        size_t zlen = (size_t)(z1 - dec);
        const unsigned char *user = z1 + 1;
        size_t ulen = (size_t)(z2 - user);
        /* An authorisation identity, if given, must be the user itself. */
        ok = sink_auth_check(c, user, ulen, z2 + 1, (size_t)(dec + dl - z2 - 1)) &&
             (zlen == 0 || (zlen == ulen && memcmp(dec, user, ulen) == 0));
    }
    OPENSSL_cleanse(dec, sizeof dec);
    sink_auth_result(c, ok);
}

static void sink_cmd_auth(struct sink_conn *c, const char *line, size_t len)
{
    struct sink_server *srv = c->srv;
    if (!srv->cfg.auth_user) {
        SINK_REPLY(c, "502 5.5.1 Error: authentication not enabled");
        return;
    }
    if (srv->tls && !c->tls) {
        SINK_REPLY(c, "538 5.7.11 Encryption required for requested authentication mechanism");
        return;
    }
    if (!c->ehlo) {
        SINK_REPLY(c, "503 5.5.1 Error: send EHLO first");
        return;
    }
    if (c->authed) {
        SINK_REPLY(c, "503 5.5.1 Error: already authenticated");
        return;
    }
    if (c->in_txn) {
        SINK_REPLY(c, "503 5.5.1 Error: MAIL transaction in progress");
        return;
    }
    const char *mech = line + 5, *end = line + len;
    if (len < 6) {
        SINK_REPLY(c, "501 5.5.4 Syntax: AUTH mechanism");
        return;
    }
    const char *sp = memchr(mech, ' ', (size_t)(end - mech));
    size_t ml = sp ? (size_t)(sp - mech) : (size_t)(end - mech);
    const char *ir = sp ? sp + 1 : NULL;
    size_t irl = sp ? (size_t)(end - ir) : 0;
    if (ml == 5 && sink__prefix(mech, ml, "PLAIN")) {
        if (!ir) {
            sink_set_state(c, SINK_AUTH_PLAIN);
            SINK_REPLY(c, "334 ");
        } else if (irl == 1 && ir[0] == '=') {
            sink_auth_plain(c, "", 0);
        } else {
            sink_auth_plain(c, ir, irl);
        }
    } else if (ml == 5 && sink__prefix(mech, ml, "LOGIN")) {
        if (!ir) {
            sink_set_state(c, SINK_AUTH_LOGIN_USER);
            SINK_REPLY(c, "334 VXNlcm5hbWU6");
            return;
        }
        ssize_t ul =
            sink__b64_decode(ir, irl, (unsigned char *)c->login_user, sizeof c->login_user);
        if (ul < 0) {
            SINK_REPLY(c, "501 5.5.2 Cannot decode response");
            return;
        }
        c->login_user_len = (size_t)ul;
        sink_set_state(c, SINK_AUTH_LOGIN_PASS);
        SINK_REPLY(c, "334 UGFzc3dvcmQ6");
    } else {
        SINK_REPLY(c, "504 5.5.4 Unrecognized authentication type");
    }
}

/* A line while an AUTH exchange waits for the client's response. */
static void sink_on_auth_line(struct sink_conn *c, const char *line, size_t len)
{
    if (len == 1 && line[0] == '*') {
        sink_set_state(c, SINK_CMD);
        SINK_REPLY(c, "501 5.7.0 Authentication cancelled");
        return;
    }
    if (c->state == SINK_AUTH_PLAIN) {
        sink_auth_plain(c, line, len);
    } else if (c->state == SINK_AUTH_LOGIN_USER) {
        ssize_t ul =
            sink__b64_decode(line, len, (unsigned char *)c->login_user, sizeof c->login_user);
        if (ul < 0) {
            sink_set_state(c, SINK_CMD);
            SINK_REPLY(c, "501 5.5.2 Cannot decode response");
            return;
        }
        c->login_user_len = (size_t)ul;
        sink_set_state(c, SINK_AUTH_LOGIN_PASS);
        SINK_REPLY(c, "334 UGFzc3dvcmQ6");
    } else {
        unsigned char pass[512];
        ssize_t pl = sink__b64_decode(line, len, pass, sizeof pass);
        if (pl < 0) {
            sink_set_state(c, SINK_CMD);
            SINK_REPLY(c, "501 5.5.2 Cannot decode response");
        } else {
            sink_auth_result(c, sink_auth_check(c, (unsigned char *)c->login_user,
                                                c->login_user_len, pass, (size_t)pl));
        }
        OPENSSL_cleanse(pass, sizeof pass);
        OPENSSL_cleanse(c->login_user, sizeof c->login_user);
        c->login_user_len = 0;
    }
}

static void sink_cmd_starttls(struct sink_conn *c, size_t len)
{
    struct sink_server *srv = c->srv;
    if (!srv->tls) {
        SINK_REPLY(c, "502 5.5.1 Error: command not implemented");
        return;
    }
    if (c->tls) {
        SINK_REPLY(c, "503 5.5.1 Error: TLS already active");
        return;
    }
    if (len != 8) {
        SINK_REPLY(c, "501 5.5.4 Syntax: STARTTLS");
        return;
    }
    SINK_REPLY(c, "220 2.0.0 Ready to start TLS");
    /* The 220 goes out in clear; everything after it is TLS. */
    sink_flush(c);
    if (c->closing) return;
    c->tls = tls_conn_new(srv->tls, NULL);
    if (!c->tls) {
        sink__conn_close(c);
        return;
    }
    /* RFC 3207 section 5: state from before TLS is forgotten. */
    sink_txn_reset(c);
    c->helo = c->ehlo = c->authed = 0;
    sink_set_state(c, SINK_HANDSHAKE);
}

/* One command line (without its line ending). */
static void sink_on_line(struct sink_conn *c, const char *line, size_t len)
{
    if (c->state != SINK_CMD) {
        sink_on_auth_line(c, line, len);
        return;
    }
    if (len < 4) {
        SINK_REPLY(c, "500 5.5.2 Error: command not recognized");
        return;
    }
    switch (line[0] | 0x20) {
    case 'm':
        if (sink__prefix(line, len, "MAIL ")) {
            sink_cmd_mail(c, line, len);
            return;
        }
        break;
    case 'r':
        if (sink__prefix(line, len, "RCPT ")) {
            sink_cmd_rcpt(c, line, len);
            return;
        }
        if (sink_is_word(line, len, "RSET")) {
            sink_txn_reset(c);
            SINK_REPLY(c, "250 2.0.0 Ok");
            return;
        }
        break;
    case 'd':
        if (sink_is_word(line, len, "DATA")) {
            sink_cmd_data(c, len);
            return;
        }
        break;
    case 'b':
        if (c->srv->cfg.chunking && sink_is_word(line, len, "BDAT")) {
            sink_cmd_bdat(c, line, len);
            return;
        }
        break;
    case 'e':
    case 'h':
        if (sink_is_word(line, len, "EHLO") || sink_is_word(line, len, "HELO")) {
            const char *a = line + 4;
            size_t al = len - 4;
            while (al && *a == ' ')
                a++, al--;
            sink_cmd_ehlo(c, a, al, (line[0] | 0x20) == 'e');
            return;
        }
        if (sink_is_word(line, len, "HELP")) {
            SINK_REPLY(c, "214 2.0.0 volley-sink: see RFC 5321");
            return;
        }
        if (sink_is_word(line, len, "EXPN")) {
            SINK_REPLY(c, "502 5.5.1 Error: command not implemented");
            return;
        }
        break;
    case 'n':
        if (sink_is_word(line, len, "NOOP")) {
            SINK_REPLY(c, "250 2.0.0 Ok");
            return;
        }
        break;
    case 'q':
        if (sink_is_word(line, len, "QUIT")) {
            SINK_REPLY_CLOSE(c, "221 2.0.0 Bye");
            return;
        }
        break;
    case 's':
        if (sink_is_word(line, len, "STARTTLS")) {
            sink_cmd_starttls(c, len);
            return;
        }
        break;
    case 'a':
        if (sink_is_word(line, len, "AUTH")) {
            sink_cmd_auth(c, line, len);
            return;
        }
        break;
    case 'v':
        if (sink_is_word(line, len, "VRFY")) {
            SINK_REPLY(c, "252 2.5.2 Cannot VRFY user");
            return;
        }
        break;
    case 't':
    case 'o':
        if (sink_is_word(line, len, "TURN") || sink_is_word(line, len, "ETRN")) {
            SINK_REPLY(c, "502 5.5.1 Error: command not implemented");
            return;
        }
        break;
    }
    c->srv->st.syntax_errors++;
    SINK_REPLY(c, "500 5.5.2 Error: command not recognized");
}

/* Process everything complete in the input buffer; keep the rest. */
static void sink_process(struct sink_conn *c)
{
    size_t off = 0;
    while (off < c->in_len && !c->closing) {
        const char *p = c->in + off;
        size_t avail = c->in_len - off;
        size_t used;
        if (c->state == SINK_DATA) {
            used = sink_on_data(c, p, avail);
        } else if (c->state == SINK_BDAT) {
            used = sink_on_bdat(c, p, avail);
        } else if (c->state == SINK_STOP) {
            used = avail; /* after QUIT or a fault: ignore the rest */
        } else if (c->state == SINK_HANDSHAKE) {
            /* Plaintext pipelined after STARTTLS: refused by dropping it
             * (RFC 3207 section 5, the command-injection attack). */
            used = avail;
        } else {
            const char *nl = memchr(p, '\n', avail);
            if (!nl) {
                if (avail > SINK_MAX_LINE || c->discard_line) {
                    c->discard_line = 1;
                    used = avail;
                } else {
                    used = 0;
                }
            } else {
                used = (size_t)(nl - p) + 1;
                size_t len = used - 1;
                if (len && p[len - 1] == '\r') len--;
                if (c->discard_line || len > SINK_MAX_LINE) {
                    c->discard_line = 0;
                    c->srv->st.syntax_errors++;
                    SINK_REPLY(c, "500 5.5.6 Error: line too long");
                } else {
                    sink_on_line(c, p, len);
                }
            }
        }
        if (used == 0) break;
        off += used;
    }
    if (c->closing) return;
    if (off < c->in_len) memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
}

/* ---- TLS ---- */

/* Advance the handshake; greet when it completes for implicit TLS. 0 when
 * the connection goes on, -1 when it was closed. */
static int sink_tls_handshake(struct sink_conn *c)
{
    int r = tls_conn_handshake(c->tls);
    if (sink_tls_drain(c) != 0) return -1;
    if (r < 0) {
        c->srv->st.tls_failures++;
        if (c->srv->trace)
            fprintf(stderr, "sink: conn %llu: %s\n", (unsigned long long)c->id,
                    tls_conn_errstr(c->tls));
        /* Send the alert, then close. */
        c->close_after_flush = 1;
        sink_set_state(c, SINK_STOP);
        sink_write_wire(c);
        return -1;
    }
    if (r == 1) {
        c->srv->st.tls_handshakes++;
        sink_set_state(c, SINK_CMD);
        if (c->greet_pending) sink_greet(c);
    }
    return 0;
}

/* Ciphertext from the socket: handshake, then decrypt into the input
 * buffer, processing as it fills. */
static void sink_on_tls_input(struct sink_conn *c, const char *data, size_t n)
{
    if (tls_conn_feed(c->tls, data, n) != 0) {
        sink__conn_close(c);
        return;
    }
    if (c->state == SINK_HANDSHAKE && sink_tls_handshake(c) != 0) return;
    while (!c->closing && c->state != SINK_HANDSHAKE && c->state != SINK_STOP) {
        ssize_t r = tls_conn_read(c->tls, c->in + c->in_len, SINK_IN_CAP - c->in_len);
        if (r == 0) break;
        if (r < 0) {
            /* close_notify or an error: nothing more will come. */
            sink_flush(c);
            c->close_after_flush = 1;
            sink_set_state(c, SINK_STOP);
            break;
        }
        c->in_len += (size_t)r;
        sink_process(c);
    }
    if (!c->closing) sink_tls_drain(c);
}

/* ---- libuv callbacks ---- */

static void sink_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *b)
{
    struct sink_conn *c = h->data;
    (void)suggested;
    if (c->tls) {
        /* Ciphertext is fed to OpenSSL within the read callback, so one
         * buffer serves every TLS connection. */
        *b = uv_buf_init(c->srv->scratch, sizeof c->srv->scratch);
    } else {
        *b = uv_buf_init(c->in + c->in_len, (unsigned)(SINK_IN_CAP - c->in_len));
    }
}

static void sink_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *b)
{
    struct sink_conn *c = s->data;
    if (nread == 0 || c->closing) return;
    if (nread < 0) {
        /* The client went away (or reset): nothing to answer any more. */
        sink__conn_close(c);
        return;
    }
    c->read_seq++;
    if (c->tls) {
        sink_on_tls_input(c, b->base, (size_t)nread);
    } else {
        c->in_len += (size_t)nread;
        sink_process(c);
    }
    sink_after_input(c);
}

static void sink_greet(struct sink_conn *c)
{
    c->greet_pending = 0;
    if (c->rejected) {
        c->srv->st.rej_max_conn++;
        /* Refused at the greeting: closed whatever the code. */
        sink_reply_raw(c, c->srv->cfg.max_conn_reply, strlen(c->srv->cfg.max_conn_reply));
        SINK_REPLY_CLOSE(c, "");
    } else {
        sink_replyf(c, "220 %s ESMTP volley-sink\r\n", c->srv->cfg.hostname);
    }
    /* The greeting is a reply like any other, delayed with --delay-ms. */
}

void sink__conn_accept(struct sink_server *srv)
{
    struct sink_conn *c = calloc(1, sizeof *c);
    char *in = malloc(SINK_IN_CAP);
    if (!c || !in || uv_tcp_init(srv->loop, &c->tcp) != 0) {
        free(c);
        free(in);
        return;
    }
    c->in = in;
    c->srv = srv;
    c->tcp.data = c;
    c->id = ++srv->next_conn_id;
    c->state = SINK_CMD;
    buf_init(&c->out, 4u << 20);
    buf_init(&c->wire, 8u << 20);
    buf_init(&c->inflight, 8u << 20);
    buf_init(&c->env, 256 * 1024);
    buf_init(&c->mid, 998);
    buf_init(&c->row, 998);
    sink_txn_reset(c);
    if (srv->cfg.delay_ms) {
        uv_timer_init(srv->loop, &c->delay);
        c->delay.data = c;
    }
    c->next = srv->conns;
    if (srv->conns) srv->conns->prev = c;
    srv->conns = c;
    srv->conns_now++;
    srv->conns_admitted++;
    if (uv_accept((uv_stream_t *)&srv->listener, (uv_stream_t *)&c->tcp) != 0) {
        sink__conn_close(c);
        return;
    }
    srv->st.connections++;
    if (srv->conns_now > srv->st.max_concurrent) srv->st.max_concurrent = srv->conns_now;
    if (srv->stopping) {
        sink__conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    if (srv->cfg.max_conn && srv->conns_admitted > srv->cfg.max_conn) {
        c->rejected = 1;
        srv->conns_admitted--;
    }
    if (uv_read_start((uv_stream_t *)&c->tcp, sink_alloc, sink_on_read) != 0) {
        sink__conn_close(c);
        return;
    }
    if (srv->cfg.implicit_tls) {
        c->tls = tls_conn_new(srv->tls, NULL);
        if (!c->tls) {
            sink__conn_close(c);
            return;
        }
        c->greet_pending = 1;
        sink_set_state(c, SINK_HANDSHAKE);
        return;
    }
    sink_greet(c);
    sink_after_input(c);
}
