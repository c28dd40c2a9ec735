/* sink.c: volley-sink's process: options, listener, statistics, exit.
 *
 * The first line on stdout is always "listening HOST:PORT" with the real port
 * (so tests can ask for port 0 and read it); the last, at exit, the
 * statistics as one JSON object.
 */
#include "sink.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>

#include "common/err.h"

#define SINK_EX_USAGE 64
#define SINK_EX_UNAVAILABLE 69
#define SINK_EX_CONFIG 78

static void sink_usage(FILE *f)
{
    fputs(
        "usage: volley-sink [options]\n"
        "  --listen HOST:PORT        address to listen on (default 127.0.0.1:2525; port 0 picks)\n"
        "  --hostname NAME           name in the greeting and EHLO reply\n"
        "  --no-pipelining --no-chunking --no-8bitmime --no-smtputf8\n"
        "                            do not offer that extension\n"
        "  --size-limit BYTES        advertise SIZE and refuse bigger messages with 552\n"
        "  --tls-cert FILE --tls-key FILE   offer STARTTLS with this certificate chain\n"
        "  --implicit-tls            TLS from the first byte (smtps)\n"
        "  --require-tls             refuse MAIL before STARTTLS (530)\n"
        "  --auth-user NAME          require AUTH PLAIN/LOGIN; the password comes from\n"
        "                            $VOLLEY_SINK_PASSWORD or --auth-password-file FILE\n"
        "  --log FILE                one JSON line per accepted message\n"
        "  --stats FILE              statistics as JSON at exit (also printed on stdout);\n"
        "                            SIGUSR1 writes them without exiting\n"
        "  --exit-after-messages N   exit once N messages were accepted\n"
        "  --max-seconds S           exit after S seconds in any case\n"
        "faults (NetEase's replies unless told; counts are per process, all connections):\n"
        "  --max-conn N              421 HL:ICC past N concurrent connections, then close\n"
        "  --max-msgs-per-conn N     450 MI:DMC to MAIL after N accepted MAILs on a connection\n"
        "                            (it stays open)\n"
        "  --max-rcpts-per-conn N    450 RP:DRC past N recipients on a connection\n"
        "  --max-rate N              451 MI:SFQ past N MAILs in any second (--rate-limit N/s)\n"
        "  --rate-limit N/PERIOD     refuse MAIL past N accepted in any window of PERIOD\n"
        "                            (sliding; 800/s, 50/100ms, 1000/min); default reply\n"
        "                            451 4.7.1 Rate limited, try again later\n"
        "  --quota N/PERIOD          refuse MAIL once N were accepted in the current fixed\n"
        "                            window of PERIOD (100/5s, 500/15m); default reply\n"
        "                            451 4.7.1 Sender quota exceeded, try again later\n"
        "  --defer-all               refuse every MAIL (default 451 4.3.2 ...)\n"
        "  --defer-all-for DURATION  ... for DURATION from the start (30s, 500ms, 1h), then "
        "accept\n"
        "  --max-conn-reply R --max-msgs-per-conn-reply R --rate-reply R --quota-reply R\n"
        "  --defer-reply R           the reply R (\"CODE TEXT\", 4xx or 5xx) of that fault;\n"
        "                            421 also closes the connection\n"
        "  --reject-rcpt REGEX       550 5.1.1 Invalid User for matching recipients (POSIX ERE)\n"
        "  --random-4xx P            451 4.3.0 to MAIL/RCPT/end of data with probability P\n"
        "  --drop-mid-data P         close the connection inside the content with probability P\n"
        "  --delay-ms N              delay every reply by N milliseconds\n"
        "  --seed N                  seed for the random faults\n",
        f);
}

enum {
    OPT_LISTEN = 256,
    OPT_HOSTNAME,
    OPT_NO_PIPELINING,
    OPT_NO_CHUNKING,
    OPT_NO_8BITMIME,
    OPT_NO_SMTPUTF8,
    OPT_SIZE_LIMIT,
    OPT_TLS_CERT,
    OPT_TLS_KEY,
    OPT_IMPLICIT_TLS,
    OPT_REQUIRE_TLS,
    OPT_AUTH_USER,
    OPT_AUTH_PASSWORD_FILE,
    OPT_LOG,
    OPT_STATS,
    OPT_EXIT_AFTER,
    OPT_MAX_SECONDS,
    OPT_MAX_CONN,
    OPT_MAX_MSGS,
    OPT_MAX_RCPTS,
    OPT_MAX_RATE,
    OPT_RATE_LIMIT,
    OPT_QUOTA,
    OPT_DEFER_ALL,
    OPT_DEFER_ALL_FOR,
    OPT_MAX_CONN_REPLY,
    OPT_MAX_MSGS_REPLY,
    OPT_RATE_REPLY,
    OPT_QUOTA_REPLY,
    OPT_DEFER_REPLY,
    OPT_REJECT_RCPT,
    OPT_RANDOM_4XX,
    OPT_DROP_MID_DATA,
    OPT_DELAY_MS,
    OPT_SEED,
    OPT_HELP,
};

static const struct option sink_options[] = {
    {"listen", required_argument, NULL, OPT_LISTEN},
    {"hostname", required_argument, NULL, OPT_HOSTNAME},
    {"no-pipelining", no_argument, NULL, OPT_NO_PIPELINING},
    {"no-chunking", no_argument, NULL, OPT_NO_CHUNKING},
    {"no-8bitmime", no_argument, NULL, OPT_NO_8BITMIME},
    {"no-smtputf8", no_argument, NULL, OPT_NO_SMTPUTF8},
    {"size-limit", required_argument, NULL, OPT_SIZE_LIMIT},
    {"tls-cert", required_argument, NULL, OPT_TLS_CERT},
    {"tls-key", required_argument, NULL, OPT_TLS_KEY},
    {"implicit-tls", no_argument, NULL, OPT_IMPLICIT_TLS},
    {"require-tls", no_argument, NULL, OPT_REQUIRE_TLS},
    {"auth-user", required_argument, NULL, OPT_AUTH_USER},
    {"auth-password-file", required_argument, NULL, OPT_AUTH_PASSWORD_FILE},
    {"log", required_argument, NULL, OPT_LOG},
    {"stats", required_argument, NULL, OPT_STATS},
    {"exit-after-messages", required_argument, NULL, OPT_EXIT_AFTER},
    {"max-seconds", required_argument, NULL, OPT_MAX_SECONDS},
    {"max-conn", required_argument, NULL, OPT_MAX_CONN},
    {"max-msgs-per-conn", required_argument, NULL, OPT_MAX_MSGS},
    {"max-rcpts-per-conn", required_argument, NULL, OPT_MAX_RCPTS},
    {"max-rate", required_argument, NULL, OPT_MAX_RATE},
    {"rate-limit", required_argument, NULL, OPT_RATE_LIMIT},
    {"quota", required_argument, NULL, OPT_QUOTA},
    {"defer-all", no_argument, NULL, OPT_DEFER_ALL},
    {"defer-all-for", required_argument, NULL, OPT_DEFER_ALL_FOR},
    {"max-conn-reply", required_argument, NULL, OPT_MAX_CONN_REPLY},
    {"max-msgs-per-conn-reply", required_argument, NULL, OPT_MAX_MSGS_REPLY},
    {"rate-reply", required_argument, NULL, OPT_RATE_REPLY},
    {"quota-reply", required_argument, NULL, OPT_QUOTA_REPLY},
    {"defer-reply", required_argument, NULL, OPT_DEFER_REPLY},
    {"reject-rcpt", required_argument, NULL, OPT_REJECT_RCPT},
    {"random-4xx", required_argument, NULL, OPT_RANDOM_4XX},
    {"drop-mid-data", required_argument, NULL, OPT_DROP_MID_DATA},
    {"delay-ms", required_argument, NULL, OPT_DELAY_MS},
    {"seed", required_argument, NULL, OPT_SEED},
    {"help", no_argument, NULL, OPT_HELP},
    {NULL, 0, NULL, 0},
};

static int sink_arg_u64(const char *opt, const char *s, uint64_t *out)
{
    if (sink__parse_u64(s, strlen(s), out) != 0) {
        fprintf(stderr, "volley-sink: --%s needs a whole number, not '%s'\n", opt, s);
        return -1;
    }
    return 0;
}

static int sink_arg_uint(const char *opt, const char *s, unsigned *out)
{
    uint64_t v;
    if (sink_arg_u64(opt, s, &v) != 0) return -1;
    if (v > 100000000) {
        fprintf(stderr, "volley-sink: --%s %s is too large\n", opt, s);
        return -1;
    }
    *out = (unsigned)v;
    return 0;
}

static int sink_arg_prob(const char *opt, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= 0.0 && v <= 1.0)) {
        fprintf(stderr, "volley-sink: --%s needs a probability between 0 and 1, not '%s'\n", opt,
                s);
        return -1;
    }
    *out = v;
    return 0;
}

static int sink_arg_per(const char *opt, const char *s, uint64_t *n, uint64_t *per_ms)
{
    if (sink__parse_per(s, n, per_ms) != 0) {
        fprintf(stderr,
                "volley-sink: --%s wants COUNT/PERIOD (like 800/s, 50/100ms, 100/5s, 500/15m; "
                "units ms, s, m, min, h, d), not '%s'\n",
                opt, s);
        return -1;
    }
    return 0;
}

static int sink_arg_reply(const char *opt, const char *s, const char **out)
{
    if (sink__parse_reply(s) < 0) {
        fprintf(stderr,
                "volley-sink: --%s wants \"CODE TEXT\" with a 4xx or 5xx code (like \"451 4.7.1 "
                "Rate limited\"), not '%s'\n",
                opt, s);
        return -1;
    }
    *out = s;
    return 0;
}

/* HOST:PORT, [V6]:PORT or :PORT. */
static int sink_parse_listen(struct sink_cfg *cfg, const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon) {
        fprintf(stderr, "volley-sink: --listen wants HOST:PORT, not '%s'\n", s);
        return -1;
    }
    const char *h = s;
    size_t hl = (size_t)(colon - s);
    if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    uint64_t port;
    if (hl >= sizeof cfg->listen_host || sink__parse_u64(colon + 1, strlen(colon + 1), &port) ||
        port > 65535) {
        fprintf(stderr, "volley-sink: bad --listen '%s'\n", s);
        return -1;
    }
    if (hl == 0 || (hl == 9 && memcmp(h, "localhost", 9) == 0)) {
        snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    } else {
        memcpy(cfg->listen_host, h, hl);
        cfg->listen_host[hl] = '\0';
    }
    cfg->listen_port = (int)port;
    return 0;
}

/* The password from a file: the first line, without its line ending. */
static char *sink_read_password(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "volley-sink: cannot read the password file %s: %s\n", path,
                strerror(errno));
        return NULL;
    }
    char line[1024];
    char *p = fgets(line, sizeof line, f) ? strdup(line) : strdup("");
    fclose(f);
    if (p) p[strcspn(p, "\r\n")] = '\0';
    memset(line, 0, sizeof line);
    return p;
}

/* Options into cfg. 0, or an exit status. */
static int sink_parse_args(struct sink_cfg *cfg, int argc, char **argv)
{
    const char *pass_file = NULL;
    snprintf(cfg->listen_host, sizeof cfg->listen_host, "127.0.0.1");
    cfg->listen_port = 2525;
    cfg->hostname = "volley-sink";
    cfg->pipelining = cfg->chunking = cfg->eightbit = cfg->smtputf8 = 1;
    cfg->size_limit = SINK_DEFAULT_SIZE_LIMIT;
    cfg->seed = 0x9e3779b97f4a7c15ull;
    cfg->max_conn_reply = "421 4.4.5 HL:ICC " SINK_NETEASE_INFO "volley-sink";
    cfg->max_msgs_reply = "450 4.7.0 MI:DMC " SINK_NETEASE_INFO "volley-sink";
    cfg->quota_reply = "451 4.7.1 Sender quota exceeded, try again later";
    cfg->defer_reply = "451 4.3.2 Not accepting messages at this time, try again later";
    const char *rate_reply = NULL;
    int netease_rate = 0;
    int opt, rc = 0;
    while ((opt = getopt_long(argc, argv, "h", sink_options, NULL)) != -1) {
        const char *name = opt >= OPT_LISTEN ? sink_options[opt - OPT_LISTEN].name : "";
        switch (opt) {
        case OPT_LISTEN:
            rc = sink_parse_listen(cfg, optarg);
            break;
        case OPT_HOSTNAME:
            cfg->hostname = optarg;
            break;
        case OPT_NO_PIPELINING:
            cfg->pipelining = 0;
            break;
        case OPT_NO_CHUNKING:
            cfg->chunking = 0;
            break;
        case OPT_NO_8BITMIME:
            cfg->eightbit = 0;
            break;
        case OPT_NO_SMTPUTF8:
            cfg->smtputf8 = 0;
            break;
        case OPT_SIZE_LIMIT:
            rc = sink_arg_u64(name, optarg, &cfg->size_limit);
            break;
        case OPT_TLS_CERT:
            cfg->tls_cert = optarg;
            break;
        case OPT_TLS_KEY:
            cfg->tls_key = optarg;
            break;
        case OPT_IMPLICIT_TLS:
            cfg->implicit_tls = 1;
            break;
        case OPT_REQUIRE_TLS:
            cfg->require_tls = 1;
            break;
        case OPT_AUTH_USER:
            cfg->auth_user = optarg;
            break;
        case OPT_AUTH_PASSWORD_FILE:
            pass_file = optarg;
            break;
        case OPT_LOG:
            cfg->log_path = optarg;
            break;
        case OPT_STATS:
            cfg->stats_path = optarg;
            break;
        case OPT_EXIT_AFTER:
            rc = sink_arg_u64(name, optarg, &cfg->exit_after);
            break;
        case OPT_MAX_SECONDS: {
            char *end;
            cfg->max_seconds = strtod(optarg, &end);
            if (end == optarg || *end || !(cfg->max_seconds > 0)) {
                fprintf(stderr, "volley-sink: bad --max-seconds '%s'\n", optarg);
                rc = -1;
            }
            break;
        }
        case OPT_MAX_CONN:
            rc = sink_arg_uint(name, optarg, &cfg->max_conn);
            break;
        case OPT_MAX_MSGS:
            rc = sink_arg_uint(name, optarg, &cfg->max_msgs_per_conn);
            break;
        case OPT_MAX_RCPTS:
            rc = sink_arg_uint(name, optarg, &cfg->max_rcpts_per_conn);
            break;
        case OPT_MAX_RATE: {
            unsigned n;
            rc = sink_arg_uint(name, optarg, &n);
            cfg->rate_n = n;
            cfg->rate_per_ms = 1000;
            netease_rate = 1;
            break;
        }
        case OPT_RATE_LIMIT:
            rc = sink_arg_per(name, optarg, &cfg->rate_n, &cfg->rate_per_ms);
            netease_rate = 0;
            break;
        case OPT_QUOTA:
            rc = sink_arg_per(name, optarg, &cfg->quota_n, &cfg->quota_per_ms);
            break;
        case OPT_DEFER_ALL:
            cfg->defer_all = 1;
            cfg->defer_ms = 0;
            break;
        case OPT_DEFER_ALL_FOR:
            cfg->defer_all = 1;
            if (sink__parse_duration(optarg, &cfg->defer_ms) != 0) {
                fprintf(stderr,
                        "volley-sink: --%s wants a duration (like 30s, 500ms, 2m, 1h), not '%s'\n",
                        name, optarg);
                rc = -1;
            }
            break;
        case OPT_MAX_CONN_REPLY:
            rc = sink_arg_reply(name, optarg, &cfg->max_conn_reply);
            break;
        case OPT_MAX_MSGS_REPLY:
            rc = sink_arg_reply(name, optarg, &cfg->max_msgs_reply);
            break;
        case OPT_RATE_REPLY:
            rc = sink_arg_reply(name, optarg, &rate_reply);
            break;
        case OPT_QUOTA_REPLY:
            rc = sink_arg_reply(name, optarg, &cfg->quota_reply);
            break;
        case OPT_DEFER_REPLY:
            rc = sink_arg_reply(name, optarg, &cfg->defer_reply);
            break;
        case OPT_REJECT_RCPT: {
            if (cfg->has_reject_rcpt) regfree(&cfg->reject_rcpt);
            int e = regcomp(&cfg->reject_rcpt, optarg, REG_EXTENDED | REG_NOSUB);
            if (e) {
                char msg[200];
                regerror(e, &cfg->reject_rcpt, msg, sizeof msg);
                fprintf(stderr, "volley-sink: bad --reject-rcpt '%s': %s\n", optarg, msg);
                rc = -1;
            } else {
                cfg->has_reject_rcpt = 1;
            }
            break;
        }
        case OPT_RANDOM_4XX:
            rc = sink_arg_prob(name, optarg, &cfg->random_4xx);
            break;
        case OPT_DROP_MID_DATA:
            rc = sink_arg_prob(name, optarg, &cfg->drop_mid_data);
            break;
        case OPT_DELAY_MS:
            rc = sink_arg_uint(name, optarg, &cfg->delay_ms);
            break;
        case OPT_SEED:
            rc = sink_arg_u64(name, optarg, &cfg->seed);
            break;
        case OPT_HELP:
        case 'h':
            sink_usage(stdout);
            exit(0);
        default:
            sink_usage(stderr);
            return SINK_EX_USAGE;
        }
        if (rc) return SINK_EX_USAGE;
    }
    if (optind < argc) {
        fprintf(stderr, "volley-sink: unexpected argument '%s'\n", argv[optind]);
        return SINK_EX_USAGE;
    }
    if (!cfg->tls_cert != !cfg->tls_key) {
        fprintf(stderr, "volley-sink: --tls-cert and --tls-key go together\n");
        return SINK_EX_USAGE;
    }
    if ((cfg->implicit_tls || cfg->require_tls) && !cfg->tls_cert) {
        fprintf(stderr, "volley-sink: --implicit-tls and --require-tls need --tls-cert\n");
        return SINK_EX_USAGE;
    }
    if (cfg->auth_user) {
        const char *env = getenv("VOLLEY_SINK_PASSWORD");
        cfg->auth_pass = pass_file ? sink_read_password(pass_file) : env ? strdup(env) : NULL;
        if (!cfg->auth_pass) {
            fprintf(stderr, "volley-sink: --auth-user needs a password in $VOLLEY_SINK_PASSWORD "
                            "or --auth-password-file\n");
            return SINK_EX_CONFIG;
        }
    } else if (pass_file) {
        fprintf(stderr, "volley-sink: --auth-password-file needs --auth-user\n");
        return SINK_EX_USAGE;
    }
    /* --max-rate keeps its NetEase reply; --rate-limit is the generic one. */
    cfg->rate_reply = rate_reply     ? rate_reply
                      : netease_rate ? "451 4.7.0 MI:SFQ " SINK_NETEASE_INFO "volley-sink"
                                     : "451 4.7.1 Rate limited, try again later";
    if (cfg->seed == 0) cfg->seed = 1; /* xorshift's one forbidden state */
    return 0;
}

/* ---- shared helpers ---- */

double sink__rand(struct sink_server *srv)
{
    /* xorshift64*: deterministic for a --seed, good enough for faults. */
    uint64_t x = srv->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    srv->rng = x;
    return (double)((x * 0x2545f4914f6cdd1dull) >> 11) / (double)(1ull << 53);
}

uint64_t sink__now_ms(struct sink_server *srv)
{
    return (uv_hrtime() - srv->start_ns) / 1000000;
}

static void sink_stop(struct sink_server *srv);

static void sink_grace_cb(uv_timer_t *t)
{
    sink_stop(t->data);
}

void sink__message_accepted(struct sink_server *srv)
{
    if (!srv->cfg.exit_after || srv->st.messages < srv->cfg.exit_after || srv->stopping) return;
    /* Stop accepting; leave when the clients are gone, or after a grace
     * period for those that linger without QUIT. */
    srv->stopping = 1;
    uv_close((uv_handle_t *)&srv->listener, NULL);
    uv_timer_start(&srv->grace_timer, sink_grace_cb, 2000, 0);
}

void sink__conn_gone(struct sink_server *srv)
{
    if (srv->stopping && !srv->stopped && srv->conns_now == 0) sink_stop(srv);
}

/* ---- process lifetime ---- */

static void sink_close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

/* Close everything; uv_run returns once the handles are closed. */
static void sink_stop(struct sink_server *srv)
{
    if (srv->stopped) return;
    srv->stopped = 1;
    srv->stopping = 1;
    while (srv->conns)
        sink__conn_close(srv->conns);
    sink_close_handle((uv_handle_t *)&srv->listener);
    sink_close_handle((uv_handle_t *)&srv->sigterm);
    sink_close_handle((uv_handle_t *)&srv->sigint);
    sink_close_handle((uv_handle_t *)&srv->sigusr1);
    sink_close_handle((uv_handle_t *)&srv->max_timer);
    sink_close_handle((uv_handle_t *)&srv->grace_timer);
}

static void sink_signal_cb(uv_signal_t *s, int signum)
{
    (void)signum;
    sink_stop(s->data);
}

static int sink_write_stats(struct sink_server *srv);

/* SIGUSR1: the statistics so far, for tests that watch a running sink. */
static void sink_usr1_cb(uv_signal_t *s, int signum)
{
    (void)signum;
    (void)sink_write_stats(s->data);
}

static void sink_max_cb(uv_timer_t *t)
{
    sink_stop(t->data);
}

static void sink_on_connection(uv_stream_t *l, int status)
{
    struct sink_server *srv = l->data;
    if (status < 0 || srv->stopping) return;
    sink__conn_accept(srv);
}

static int sink_write_stats(struct sink_server *srv)
{
    const struct sink_stats *st = &srv->st;
    double secs = (double)(uv_hrtime() - srv->start_ns) / 1e9;
    char line[2048];
    snprintf(line, sizeof line,
             "{\"connections\":%" PRIu64 ",\"messages\":%" PRIu64 ",\"recipients\":%" PRIu64
             ",\"bytes\":%" PRIu64 ",\"max_concurrent\":%" PRIu64 ",\"seconds\":%.3f"
             ",\"rejected\":{\"max_conn\":%" PRIu64 ",\"max_msgs_per_conn\":%" PRIu64
             ",\"max_rcpts_per_conn\":%" PRIu64 ",\"max_rate\":%" PRIu64 ",\"reject_rcpt\":%" PRIu64
             ",\"random_4xx\":%" PRIu64 ",\"drop_mid_data\":%" PRIu64 ",\"size\":%" PRIu64
             ",\"auth\":%" PRIu64 ",\"auth_required\":%" PRIu64 ",\"tls_required\":%" PRIu64
             ",\"syntax\":%" PRIu64 ",\"quota\":%" PRIu64 ",\"defer_all\":%" PRIu64 "}"
             ",\"duplicates\":{\"message_id\":%" PRIu64 ",\"row\":%" PRIu64 "}"
             ",\"tls_handshakes\":%" PRIu64 ",\"tls_failures\":%" PRIu64 "}",
             st->connections, st->messages, st->recipients, st->bytes, st->max_concurrent, secs,
             st->rej_max_conn, st->rej_msgs_per_conn, st->rej_rcpts_per_conn, st->rej_rate,
             st->rej_rcpt_pattern, st->rej_random, st->drops, st->rej_size, st->rej_auth,
             st->rej_auth_required, st->rej_tls_required, st->syntax_errors, st->rej_quota,
             st->rej_defer_all, st->dup_message_ids, st->dup_rows, st->tls_handshakes,
             st->tls_failures);
    printf("%s\n", line);
    fflush(stdout);
    if (!srv->cfg.stats_path) return 0;
    /* Written aside and renamed, so a reader never sees half of it (SIGUSR1
     * can come while a test reads the file). */
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", srv->cfg.stats_path);
    FILE *f = fopen(tmp, "w");
    int ok = f != NULL;
    if (f && (fprintf(f, "%s\n", line) < 0)) ok = 0;
    if (f && fclose(f) != 0) ok = 0;
    if (!ok || rename(tmp, srv->cfg.stats_path) != 0) {
        fprintf(stderr, "volley-sink: cannot write %s: %s\n", srv->cfg.stats_path, strerror(errno));
        return -1;
    }
    return 0;
}

static int sink_listen(struct sink_server *srv)
{
    struct sockaddr_storage ss;
    const struct sink_cfg *cfg = &srv->cfg;
    if (uv_ip4_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(cfg->listen_host, cfg->listen_port, (struct sockaddr_in6 *)&ss) != 0) {
        fprintf(stderr, "volley-sink: --listen wants an IP address, not '%s'\n", cfg->listen_host);
        return SINK_EX_USAGE;
    }
    uv_tcp_init(srv->loop, &srv->listener);
    srv->listener.data = srv;
    int r = uv_tcp_bind(&srv->listener, (struct sockaddr *)&ss, 0);
    if (r == 0) r = uv_listen((uv_stream_t *)&srv->listener, 4096, sink_on_connection);
    if (r != 0) {
        fprintf(stderr, "volley-sink: cannot listen on %s:%d: %s\n", cfg->listen_host,
                cfg->listen_port, uv_strerror(r));
        return SINK_EX_UNAVAILABLE;
    }
    int len = sizeof ss;
    uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&ss, &len);
    char host[64];
    int port;
    if (ss.ss_family == AF_INET6) {
        uv_ip6_name((struct sockaddr_in6 *)&ss, host + 1, sizeof host - 2);
        host[0] = '[';
        strcat(host, "]");
        port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    } else {
        uv_ip4_name((struct sockaddr_in *)&ss, host, sizeof host);
        port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    }
    printf("listening %s:%d\n", host, port);
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv)
{
    static struct sink_server server; /* large (scratch buffer): not on the stack */
    struct sink_server *srv = &server;
    int rc = sink_parse_args(&srv->cfg, argc, argv);
    if (rc) return rc;
    srv->rng = srv->cfg.seed;
    srv->trace = getenv("VOLLEY_SINK_TRACE") != NULL;
    srv->start_ns = uv_hrtime();
    buf_init(&srv->line, 1 << 20);

    /* A thousand clients need a thousand descriptors. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    signal(SIGPIPE, SIG_IGN);

    if (srv->cfg.tls_cert) {
        char err[512];
        if (tls_ctx_server_new(&srv->tls, srv->cfg.tls_cert, srv->cfg.tls_key, err, sizeof err)) {
            fprintf(stderr, "volley-sink: %s\n", err);
            return SINK_EX_CONFIG;
        }
    }
    if (srv->cfg.log_path) {
        srv->log = fopen(srv->cfg.log_path, "a");
        if (!srv->log) {
            fprintf(stderr, "volley-sink: cannot open %s: %s\n", srv->cfg.log_path,
                    strerror(errno));
            return SINK_EX_CONFIG;
        }
    }
    if (srv->cfg.rate_n && sink__window_init(&srv->rate, srv->cfg.rate_n, srv->cfg.rate_per_ms)) {
        fprintf(stderr, "volley-sink: out of memory for --rate-limit\n");
        return SINK_EX_CONFIG;
    }
    if (srv->cfg.quota_n) sink__quota_init(&srv->quota, srv->cfg.quota_n, srv->cfg.quota_per_ms, 0);

    srv->loop = uv_default_loop();
    rc = sink_listen(srv);
    if (rc) return rc;
    uv_signal_init(srv->loop, &srv->sigterm);
    uv_signal_init(srv->loop, &srv->sigint);
    uv_signal_init(srv->loop, &srv->sigusr1);
    srv->sigterm.data = srv->sigint.data = srv->sigusr1.data = srv;
    uv_signal_start(&srv->sigterm, sink_signal_cb, SIGTERM);
    uv_signal_start(&srv->sigint, sink_signal_cb, SIGINT);
    uv_signal_start(&srv->sigusr1, sink_usr1_cb, SIGUSR1);
    uv_timer_init(srv->loop, &srv->max_timer);
    uv_timer_init(srv->loop, &srv->grace_timer);
    srv->max_timer.data = srv->grace_timer.data = srv;
    if (srv->cfg.max_seconds > 0)
        uv_timer_start(&srv->max_timer, sink_max_cb, (uint64_t)(srv->cfg.max_seconds * 1000), 0);

    uv_run(srv->loop, UV_RUN_DEFAULT);

    if (srv->log && fclose(srv->log) != 0) rc = 1;
    if (sink_write_stats(srv) != 0) rc = 1;
    uv_loop_close(srv->loop);
    tls_ctx_free(srv->tls);
    buf_free(&srv->line);
    sink__window_free(&srv->rate);
    sink__strset_free(&srv->seen_mids);
    sink__strset_free(&srv->seen_rows);
    if (srv->cfg.has_reject_rcpt) regfree(&srv->cfg.reject_rcpt);
    if (srv->cfg.auth_pass) {
        memset(srv->cfg.auth_pass, 0, strlen(srv->cfg.auth_pass));
        free(srv->cfg.auth_pass);
    }
    return rc;
}
