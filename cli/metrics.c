#include "cli/metrics.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"

#define REQ_MAX 8192
#define REQ_TIMEOUT_MS 10000

struct cli_metrics {
    uv_tcp_t listener;
    cli_metrics_fill fill;
    void *ud;
    struct mconn *conns;
};

/* One client: read the request head, write the answer, close. */
typedef struct mconn {
    struct mconn *next;
    cli_metrics_t *m;
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    buf_t in, out;
    int closing, handles;
} mconn_t;

static void conn_closed(uv_handle_t *h)
{
    mconn_t *c = h->data;
    if (--c->handles) return;
    buf_free(&c->in);
    buf_free(&c->out);
    free(c);
}

static void conn_close(mconn_t *c)
{
    if (c->closing) return;
    c->closing = 1;
    for (mconn_t **pp = &c->m->conns; *pp; pp = &(*pp)->next)
        if (*pp == c) {
            *pp = c->next;
            break;
        }
    uv_close((uv_handle_t *)&c->tcp, conn_closed);
    uv_close((uv_handle_t *)&c->timer, conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
    (void)status;
    conn_close(req->data);
}

static void answer(mconn_t *c, const char *status, const char *type, const char *body, size_t len)
{
    if (buf_printf(&c->out,
                   "HTTP/1.0 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                   "Connection: close\r\n\r\n",
                   status, type, len) ||
        buf_append(&c->out, body, len)) {
        conn_close(c);
        return;
    }
    uv_read_stop((uv_stream_t *)&c->tcp);
    uv_buf_t b = uv_buf_init(c->out.data, (unsigned)c->out.len);
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, on_written)) conn_close(c);
}

static void handle(mconn_t *c)
{
    const char *req = c->in.data;
    if (strncmp(req, "GET /metrics ", 13) && strncmp(req, "GET /metrics?", 13)) {
        static const char nf[] = "not found: try /metrics\n";
        answer(c, "404 Not Found", "text/plain; charset=utf-8", nf, sizeof nf - 1);
        return;
    }
    buf_t body;
    buf_init(&body, (size_t)64 << 20);
    if (c->m->fill(&body, c->m->ud)) {
        static const char oom[] = "out of memory\n";
        answer(c, "500 Internal Server Error", "text/plain; charset=utf-8", oom, sizeof oom - 1);
    } else {
        answer(c, "200 OK", "text/plain; version=0.0.4; charset=utf-8", body.data ? body.data : "",
               body.len);
    }
    buf_free(&body);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    mconn_t *c = h->data;
    if (buf_reserve(&c->in, 1024)) {
        *b = uv_buf_init(NULL, 0);
        return;
    }
    *b = uv_buf_init(c->in.data + c->in.len, (unsigned)(c->in.cap - c->in.len - 1));
}

static void on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    (void)b;
    mconn_t *c = s->data;
    if (n < 0 || c->closing) {
        conn_close(c);
        return;
    }
    c->in.len += (size_t)n;
    c->in.data[c->in.len] = '\0';
    if (strstr(c->in.data, "\r\n\r\n") || strstr(c->in.data, "\n\n"))
        handle(c);
    else if (c->in.len >= REQ_MAX - 1)
        conn_close(c);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *server, int status)
{
    cli_metrics_t *m = server->data;
    if (status < 0) return;
    mconn_t *c = calloc(1, sizeof *c);
    if (!c) return;
    c->m = m;
    buf_init(&c->in, REQ_MAX);
    buf_init(&c->out, (size_t)64 << 20);
    uv_tcp_init(server->loop, &c->tcp);
    uv_timer_init(server->loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles = 2;
    c->next = m->conns;
    m->conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read)) {
        conn_close(c);
        return;
    }
    uv_timer_start(&c->timer, on_timeout, REQ_TIMEOUT_MS, 0);
}

int cli_metrics_start(cli_metrics_t **out, uv_loop_t *loop, const char *hostport,
                      cli_metrics_fill fill, void *ud, char *bound, size_t boundlen, char *err,
                      size_t errlen)
{
    *out = NULL;
    const char *colon = strrchr(hostport, ':');
    char host[64];
    size_t hl = colon ? (size_t)(colon - hostport) : 0;
    const char *h = hostport;
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') h++, hl -= 2;
    char *end = NULL;
    long port = colon ? strtol(colon + 1, &end, 10) : -1;
    if (!colon || hl >= sizeof host || !colon[1] || *end || port < 0 || port > 65535) {
        snprintf(err, errlen, "--metrics wants HOST:PORT, not '%s'", hostport);
        return VL_EINVAL;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    if (!hl) snprintf(host, sizeof host, "127.0.0.1");
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss)) {
        snprintf(err, errlen, "--metrics: '%s' is not an IP address", host);
        return VL_EINVAL;
    }
    cli_metrics_t *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    m->fill = fill;
    m->ud = ud;
    uv_tcp_init(loop, &m->listener);
    m->listener.data = m;
    int r = uv_tcp_bind(&m->listener, (struct sockaddr *)&ss, 0);
    if (!r) r = uv_listen((uv_stream_t *)&m->listener, 16, on_connection);
    if (r) {
        snprintf(err, errlen, "--metrics %s: %s", hostport, uv_strerror(r));
        uv_close((uv_handle_t *)&m->listener, (uv_close_cb)free);
        return VL_ENETWORK;
    }
    int len = sizeof ss;
    uv_tcp_getsockname(&m->listener, (struct sockaddr *)&ss, &len);
    char name[64];
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, name, sizeof name);
        snprintf(bound, boundlen, "[%s]:%d", name, ntohs(((struct sockaddr_in6 *)&ss)->sin6_port));
    } else {
        uv_ip4_name((struct sockaddr_in *)&ss, name, sizeof name);
        snprintf(bound, boundlen, "%s:%d", name, ntohs(((struct sockaddr_in *)&ss)->sin_port));
    }
    *out = m;
    return 0;
}

void cli_metrics_close(cli_metrics_t *m)
{
    if (!m) return;
    while (m->conns)
        conn_close(m->conns);
    uv_close((uv_handle_t *)&m->listener, (uv_close_cb)free);
}

int cli_metrics_label(buf_t *out, const char *s)
{
    int rc = buf_putc(out, '"');
    for (; !rc && *s; s++) {
        if (*s == '\\' || *s == '"') {
            rc = buf_putc(out, '\\');
            if (!rc) rc = buf_putc(out, *s);
        } else if (*s == '\n')
            rc = buf_puts(out, "\\n");
        else
            rc = buf_putc(out, *s);
    }
    return rc ? rc : buf_putc(out, '"');
}
