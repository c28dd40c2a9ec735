/* cmd_bench.c: `volley bench`, the smtp-source of volley.
 *
 * Sends N synthetic messages of S bytes over C connections of one pool and
 * reports throughput, latency percentiles per SMTP verb and per transaction,
 * and counts by outcome. A window of in-flight messages (a few per
 * connection) is reused, so memory does not grow with N.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/url.h"
#include "common/err.h"
#include "common/log.h"
#include "engine/engine.h"
#include "ratelimit/provider.h"

#define MAX_RCPTS 1000

typedef struct bench bench_t;

typedef struct slot {
    eng_msg_t msg;
    bench_t *b;
    struct iovec iov[2];
    char head[512];
    const char **rcpts;
    eng_rcpt_status_t *status;
} slot_t;

struct bench {
    uv_loop_t *loop;
    eng_pool_t *pool;
    unsigned long n, submitted, done;
    unsigned long by_status[ENG_CANCELLED + 1];
    unsigned long rcpts_accepted;
    unsigned rcpts_per_msg;
    size_t size;
    char *body; /* shared by every message */
    size_t body_len;
    char **rcpt_names;
    const char *from;
    uint64_t t0, t1;
    int closed;
    /* The most common failure, to show the user why. */
    eng_result_t first_failure;
    char first_failure_errstr[256];
    int have_failure;
    eng_stats_t stats; /* copied from the pool before it closes */
};

static void submit_next(bench_t *b, slot_t *sl);

static void on_done(eng_msg_t *m, const eng_result_t *res)
{
    slot_t *sl = m->ud;
    bench_t *b = sl->b;
    b->done++;
    b->by_status[res->status]++;
    if (res->status == ENG_DELIVERED)
        b->rcpts_accepted += res->naccepted;
    else if (!b->have_failure) {
        b->have_failure = 1;
        b->first_failure = *res;
        snprintf(b->first_failure_errstr, sizeof b->first_failure_errstr, "%s",
                 res->errstr ? res->errstr : "");
    }
    if (b->submitted < b->n) submit_next(b, sl);
    if (b->done == b->n && !b->closed) {
        b->t1 = uv_hrtime();
        b->closed = 1;
        b->stats = *eng_pool_stats(b->pool);
        eng_pool_close(b->pool, 0, NULL, NULL);
    }
}

static void submit_next(bench_t *b, slot_t *sl)
{
    unsigned long i = b->submitted++;
    int hl = snprintf(sl->head, sizeof sl->head,
                      "Message-ID: <%lu.%" PRIu64 ".bench@volley.invalid>\r\n"
                      "From: volley bench <%s>\r\n"
                      "To: <%s>\r\n"
                      "Subject: volley bench message %lu\r\n"
                      "MIME-Version: 1.0\r\n"
                      "Content-Type: text/plain; charset=us-ascii\r\n"
                      "\r\n",
                      i + 1, b->t0, b->from, b->rcpt_names[0], i + 1);
    sl->iov[0].iov_base = sl->head;
    sl->iov[0].iov_len = (size_t)hl;
    /* Pad with the shared body so the whole message is about `size` bytes. */
    size_t want = b->size > (size_t)hl ? b->size - (size_t)hl : 0;
    sl->iov[1].iov_base = b->body;
    sl->iov[1].iov_len = want < b->body_len ? want : b->body_len;
    memset(&sl->msg, 0, sizeof sl->msg);
    sl->msg.mail_from = b->from;
    for (unsigned r = 0; r < b->rcpts_per_msg; r++)
        sl->rcpts[r] = b->rcpt_names[(i * b->rcpts_per_msg + r) % (b->rcpts_per_msg * 16)];
    sl->msg.rcpts = sl->rcpts;
    sl->msg.nrcpts = b->rcpts_per_msg;
    sl->msg.rcpt_status = sl->status;
    sl->msg.iov = sl->iov;
    sl->msg.iovcnt = 2;
    sl->msg.flags = ENG_MSG_CRLF;
    sl->msg.on_done = on_done;
    sl->msg.ud = sl;
    if (eng_pool_submit(b->pool, &sl->msg) != 0) {
        /* Only after close; count it rather than lose it. */
        b->done++;
        b->by_status[ENG_CANCELLED]++;
    }
}

/* A body of 76-character lines, some starting with '.', so dot-stuffing is
 * exercised on every message as it would be for real mail. */
static char *make_body(size_t size, size_t *len)
{
    char *p = malloc(size + 80);
    if (!p) return NULL;
    size_t at = 0;
    unsigned line = 0;
    while (at < size) {
        char l[80];
        int n = snprintf(l, sizeof l,
                         "%s%05u volley benchmark payload line, "
                         "abcdefghijklmnopqrstuvwxyz0123456789",
                         line % 20 == 19 ? "." : "", line);
        memcpy(p + at, l, (size_t)n);
        at += (size_t)n;
        memcpy(p + at, "\r\n", 2);
        at += 2;
        line++;
    }
    *len = at;
    return p;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: volley bench smtp[s]://[USER@]HOST:PORT [options]\n"
               "\n"
               "Send synthetic messages to an SMTP server and report throughput and latency.\n"
               "\n"
               "  -c, --connections N   connections (default 10)\n"
               "  -n, --messages N      messages to send (default 1000)\n"
               "  -s, --size BYTES      message size (default 2000)\n"
               "  -r, --rcpts N         recipients per message (default 1)\n"
               "      --msgs-per-conn N QUIT and reconnect after N messages (default: never)\n"
               "      --no-pipelining   one command per round trip even if PIPELINING is offered\n"
               "      --no-chunking     DATA even if CHUNKING is offered\n"
               "      --no-tls          never STARTTLS (smtp:// only)\n"
               "      --require-tls     fail unless STARTTLS succeeds (smtp:// only)\n"
               "      --ca-file FILE    trust these CAs instead of the system store\n"
               "      --insecure        do not verify the server's certificate (tests only)\n"
               "      --allow-plain-auth  allow AUTH without TLS (loopback tests only)\n"
               "      --from ADDR       envelope sender (default bench@volley.invalid)\n"
               "      --rcpt-domain D   recipients are userN@D (default example.com)\n"
               "      --helo NAME       EHLO name\n"
               "      --timeout MS      every per-stage timeout, in milliseconds\n"
               "      --json            print the results as one JSON object\n"
               "      --trace           print the SMTP conversation to stderr\n"
               "\n"
               "The password for USER comes from the environment variable VOLLEY_SMTP_PASSWORD\n"
               "or --password-file FILE, never from the command line.\n");
}

static void trace_cb(void *ud, unsigned conn, char dir, const char *line, size_t len)
{
    (void)ud;
    fprintf(stderr, "[%u] %c %.*s\n", conn, dir, (int)len, line);
}

static double us_to_ms(uint64_t us)
{
    return (double)us / 1000.0;
}

static void print_text(const bench_t *b, const eng_stats_t *st, double secs, double cpu)
{
    printf("messages:   %lu sent in %.3f s\n", b->n, secs);
    printf("throughput: %.0f messages/s, %.0f recipients/s, %.2f MB/s\n", (double)b->done / secs,
           (double)b->rcpts_accepted / secs, (double)st->bytes_out / secs / 1e6);
    printf("cpu:        %.3f s (%.1f us per message)\n", cpu,
           b->n ? cpu * 1e6 / (double)b->n : 0.0);
    printf("outcomes:   delivered %lu, rejected %lu, failed %lu, unknown %lu, cancelled %lu\n",
           b->by_status[ENG_DELIVERED], b->by_status[ENG_REJECTED], b->by_status[ENG_FAILED],
           b->by_status[ENG_UNKNOWN], b->by_status[ENG_CANCELLED]);
    printf("connections: %" PRIu64 " opened, %" PRIu64 " failed set-up\n", st->connections,
           st->setup_failures);
    printf("latency (ms)        count      p50      p90      p99      max\n");
    for (int i = 0; i < ENG_STAGE_LAST; i++) {
        const hist_t *h = &st->verb[i];
        if (!h->count) continue;
        printf("  %-12s %12" PRIu64 " %8.2f %8.2f %8.2f %8.2f\n", eng_stage_name(i), h->count,
               us_to_ms(hist_percentile(h, 50)), us_to_ms(hist_percentile(h, 90)),
               us_to_ms(hist_percentile(h, 99)), us_to_ms(h->max));
    }
    if (st->txn.count)
        printf("  %-12s %12" PRIu64 " %8.2f %8.2f %8.2f %8.2f\n", "transaction", st->txn.count,
               us_to_ms(hist_percentile(&st->txn, 50)), us_to_ms(hist_percentile(&st->txn, 90)),
               us_to_ms(hist_percentile(&st->txn, 99)), us_to_ms(st->txn.max));
    if (b->have_failure) {
        const eng_result_t *f = &b->first_failure;
        printf("first failure: %s at %s", eng_status_name(f->status), eng_stage_name(f->stage));
        if (f->reply.code)
            printf(": %d %s %s", f->reply.code, f->reply.enhanced, f->reply.text);
        else if (b->first_failure_errstr[0])
            printf(": %s", b->first_failure_errstr);
        printf("\n");
    }
}

static void json_str(const char *s)
{
    putchar('"');
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
    putchar('"');
}

static void print_hist_json(const hist_t *h)
{
    printf("{\"count\":%" PRIu64 ",\"p50_ms\":%.3f,\"p90_ms\":%.3f,\"p99_ms\":%.3f,"
           "\"max_ms\":%.3f}",
           h->count, us_to_ms(hist_percentile(h, 50)), us_to_ms(hist_percentile(h, 90)),
           us_to_ms(hist_percentile(h, 99)), us_to_ms(h->max));
}

static void print_json(const bench_t *b, const eng_stats_t *st, double secs, double cpu,
                       unsigned conns)
{
    printf("{\"messages\":%lu,\"connections\":%u,\"size\":%zu,\"rcpts_per_message\":%u,"
           "\"seconds\":%.6f,\"cpu_seconds\":%.6f,\"messages_per_second\":%.1f,"
           "\"recipients_per_second\":%.1f,\"mb_per_second\":%.3f,",
           b->n, conns, b->size, b->rcpts_per_msg, secs, cpu, (double)b->done / secs,
           (double)b->rcpts_accepted / secs, (double)st->bytes_out / secs / 1e6);
    printf("\"outcomes\":{\"delivered\":%lu,\"rejected\":%lu,\"failed\":%lu,\"unknown\":%lu,"
           "\"cancelled\":%lu},",
           b->by_status[ENG_DELIVERED], b->by_status[ENG_REJECTED], b->by_status[ENG_FAILED],
           b->by_status[ENG_UNKNOWN], b->by_status[ENG_CANCELLED]);
    printf("\"connections_opened\":%" PRIu64 ",\"setup_failures\":%" PRIu64 ",\"latency\":{",
           st->connections, st->setup_failures);
    int first = 1;
    for (int i = 0; i < ENG_STAGE_LAST; i++) {
        if (!st->verb[i].count) continue;
        printf("%s\"%s\":", first ? "" : ",", eng_stage_name(i));
        print_hist_json(&st->verb[i]);
        first = 0;
    }
    printf("%s\"transaction\":", first ? "" : ",");
    print_hist_json(&st->txn);
    printf("}");
    if (b->have_failure) {
        const eng_result_t *f = &b->first_failure;
        printf(",\"first_failure\":{\"status\":\"%s\",\"stage\":\"%s\",\"code\":%d,"
               "\"enhanced\":",
               eng_status_name(f->status), eng_stage_name(f->stage), f->reply.code);
        json_str(f->reply.enhanced);
        printf(",\"text\":");
        json_str(f->reply.text);
        printf(",\"error\":");
        json_str(b->first_failure_errstr);
        printf("}");
    }
    printf("}\n");
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

int cmd_bench(int argc, char **argv)
{
    enum {
        O_NO_PIPE = 256,
        O_NO_CHUNK,
        O_NO_TLS,
        O_REQ_TLS,
        O_CA,
        O_INSECURE,
        O_PLAIN_AUTH,
        O_FROM,
        O_DOMAIN,
        O_HELO,
        O_TIMEOUT,
        O_JSON,
        O_TRACE,
        O_MPC,
        O_PWFILE,
    };
    static const struct option opts[] = {
        {"connections", required_argument, 0, 'c'},
        {"messages", required_argument, 0, 'n'},
        {"size", required_argument, 0, 's'},
        {"rcpts", required_argument, 0, 'r'},
        {"msgs-per-conn", required_argument, 0, O_MPC},
        {"no-pipelining", no_argument, 0, O_NO_PIPE},
        {"no-chunking", no_argument, 0, O_NO_CHUNK},
        {"no-tls", no_argument, 0, O_NO_TLS},
        {"require-tls", no_argument, 0, O_REQ_TLS},
        {"ca-file", required_argument, 0, O_CA},
        {"insecure", no_argument, 0, O_INSECURE},
        {"allow-plain-auth", no_argument, 0, O_PLAIN_AUTH},
        {"from", required_argument, 0, O_FROM},
        {"rcpt-domain", required_argument, 0, O_DOMAIN},
        {"helo", required_argument, 0, O_HELO},
        {"timeout", required_argument, 0, O_TIMEOUT},
        {"json", no_argument, 0, O_JSON},
        {"trace", no_argument, 0, O_TRACE},
        {"password-file", required_argument, 0, O_PWFILE},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    long conns = 10, n = 1000, size = 2000, rcpts = 1, mpc = 0, timeout = 0;
    int no_pipe = 0, no_chunk = 0, no_tls = 0, req_tls = 0, insecure = 0, plain_auth = 0;
    int json = 0, trace = 0;
    const char *ca = NULL, *from = "bench@volley.invalid", *domain = "example.com";
    const char *helo = NULL, *pwfile = NULL;
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "c:n:s:r:h", opts, NULL)) != -1) {
        char *end = NULL;
        switch (c) {
        case 'c':
        case 'n':
        case 's':
        case 'r':
        case O_MPC:
        case O_TIMEOUT: {
            long v = strtol(optarg, &end, 10);
            if (!*optarg || *end || v < (c == O_MPC ? 0 : 1)) {
                fprintf(stderr, "volley bench: invalid number '%s'\n", optarg);
                return EX_USAGE;
            }
            if (c == 'c')
                conns = v;
            else if (c == 'n')
                n = v;
            else if (c == 's')
                size = v;
            else if (c == 'r')
                rcpts = v;
            else if (c == O_MPC)
                mpc = v;
            else
                timeout = v;
            break;
        }
        case O_NO_PIPE:
            no_pipe = 1;
            break;
        case O_NO_CHUNK:
            no_chunk = 1;
            break;
        case O_NO_TLS:
            no_tls = 1;
            break;
        case O_REQ_TLS:
            req_tls = 1;
            break;
        case O_CA:
            ca = optarg;
            break;
        case O_INSECURE:
            insecure = 1;
            break;
        case O_PLAIN_AUTH:
            plain_auth = 1;
            break;
        case O_FROM:
            from = optarg;
            break;
        case O_DOMAIN:
            domain = optarg;
            break;
        case O_HELO:
            helo = optarg;
            break;
        case O_JSON:
            json = 1;
            break;
        case O_TRACE:
            trace = 1;
            break;
        case O_PWFILE:
            pwfile = optarg;
            break;
        case 'h':
            usage(stdout);
            return EX_OK;
        default:
            usage(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return EX_USAGE;
    }
    if (rcpts > MAX_RCPTS || conns > 100000) {
        fprintf(stderr,
                "volley bench: at most %d recipients per message and 100000 "
                "connections\n",
                MAX_RCPTS);
        return EX_USAGE;
    }
    if (helo) {
        /* The name goes on the wire as it is: CR/LF in it would inject commands. */
        char why[200];
        if (rl_helo_check(helo, why, sizeof why)) {
            fprintf(stderr, "volley bench: --helo: %s\n", why);
            return EX_USAGE;
        }
    }
    if (no_tls && req_tls) {
        fprintf(stderr, "volley bench: --no-tls and --require-tls contradict each other\n");
        return EX_USAGE;
    }

    cli_url_t url;
    char err[512];
    if (cli_url_parse(argv[optind], &url, err, sizeof err)) {
        fprintf(stderr, "volley bench: %s\n", err);
        return EX_USAGE;
    }
    if (url.password_in_url) {
        fprintf(stderr, "volley bench: warning: a password in the URL is visible to other "
                        "users of this machine; use VOLLEY_SMTP_PASSWORD or --password-file\n");
        cli_url_scrub_arg(argv[optind]);
    }
    if (url.user && !url.password) {
        if (cli_read_secret(pwfile, "VOLLEY_SMTP_PASSWORD", &url.password, err, sizeof err)) {
            fprintf(stderr, "volley bench: %s\n", err);
            cli_url_free(&url);
            return EX_CONFIG;
        }
    }

    eng_route_t r;
    eng_route_init(&r);
    r.host = url.host;
    r.port = url.port;
    r.tls = url.implicit_tls ? ENG_TLS_IMPLICIT
            : no_tls         ? ENG_TLS_NONE
            : req_tls        ? ENG_TLS_STARTTLS
                             : ENG_TLS_OPPORTUNISTIC;
    r.ca_file = ca;
    r.tls_insecure = insecure;
    r.user = url.user;
    r.password = url.password;
    r.allow_plain_auth = plain_auth;
    r.helo_name = helo;
    r.max_connections = (unsigned)conns;
    r.max_msgs_per_conn = (unsigned)mpc;
    r.no_pipelining = no_pipe;
    r.no_chunking = no_chunk;
    if (timeout) {
        uint32_t t = (uint32_t)timeout;
        r.timeouts = (eng_timeouts_t){t, t, t, t, t, t, t, t, t, t, t, t, t};
    }
    if (trace) {
        r.trace = trace_cb;
        vl_log_set_level(VL_LOG_DEBUG);
    }

    static bench_t b; /* large (histograms): not on the stack */
    memset(&b, 0, sizeof b);
    b.loop = uv_default_loop();
    b.n = (unsigned long)n;
    b.size = (size_t)size;
    b.rcpts_per_msg = (unsigned)rcpts;
    b.from = from;
    int rc = eng_pool_new(&b.pool, b.loop, &r, err, sizeof err);
    cli_url_free(&url);
    if (rc) {
        fprintf(stderr, "volley bench: %s\n", err);
        return rc == VL_ENOMEM ? EX_OSERR : EX_CONFIG;
    }
    b.body = make_body(b.size, &b.body_len);
    size_t nnames = (size_t)rcpts * 16;
    b.rcpt_names = calloc(nnames, sizeof *b.rcpt_names);
    /* A few messages in flight per connection keep every connection busy
     * (one being answered, one queued behind it). */
    size_t nslots = (size_t)conns * 4;
    if (nslots > (size_t)n) nslots = (size_t)n;
    slot_t *slots = calloc(nslots, sizeof *slots);
    int oom = !b.body || !b.rcpt_names || !slots;
    for (size_t i = 0; !oom && i < nnames; i++) {
        if (asprintf(&b.rcpt_names[i], "user%zu@%s", i + 1, domain) < 0) oom = 1;
    }
    for (size_t i = 0; !oom && i < nslots; i++) {
        slots[i].b = &b;
        slots[i].rcpts = calloc((size_t)rcpts, sizeof *slots[i].rcpts);
        slots[i].status = calloc((size_t)rcpts, sizeof *slots[i].status);
        oom = !slots[i].rcpts || !slots[i].status;
    }
    if (oom) {
        fprintf(stderr, "volley bench: out of memory\n");
        return EX_OSERR;
    }

    double cpu0 = cpu_seconds();
    b.t0 = uv_hrtime();
    for (size_t i = 0; i < nslots; i++)
        submit_next(&b, &slots[i]);
    uv_run(b.loop, UV_RUN_DEFAULT);
    if (!b.t1) b.t1 = uv_hrtime();
    double cpu = cpu_seconds() - cpu0;
    double secs = (double)(b.t1 - b.t0) / 1e9;
    if (secs <= 0) secs = 1e-9;

    if (json)
        print_json(&b, &b.stats, secs, cpu, (unsigned)conns);
    else
        print_text(&b, &b.stats, secs, cpu);

    for (size_t i = 0; i < nslots; i++) {
        free(slots[i].rcpts);
        free(slots[i].status);
    }
    free(slots);
    for (size_t i = 0; i < nnames; i++)
        free(b.rcpt_names[i]);
    free(b.rcpt_names);
    free(b.body);
    uv_loop_close(b.loop);

    if (b.by_status[ENG_DELIVERED] == b.n) return EX_OK;
    /* Nothing got through because no connection could be set up: the
     * service is unavailable. Anything else is a partial, temporary failure. */
    if (b.by_status[ENG_DELIVERED] == 0 && b.stats.setup_failures && b.have_failure &&
        b.first_failure.stage <= ENG_STAGE_AUTH)
        return EX_UNAVAILABLE;
    return EX_TEMPFAIL;
}
