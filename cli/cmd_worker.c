/* cmd_worker.c: `volley enqueue` and `volley worker`: the two halves of send,
 * for many workers on many machines sharing one Redis.
 *
 * enqueue ingests a campaign into Redis (idempotent) and returns. worker
 * watches the campaigns enqueued there and runs a scheduler worker for every campaign
 * that is running, until it is done; it opens each campaign from the path
 * enqueue recorded, so every worker machine must see the campaign's files
 * at that path (a shared or replicated directory).
 */
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/campaign.h"
#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/metrics.h"
#include "cli/redisconn.h"
#include "cli/send_run.h"
#include "common/err.h"
#include "common/log.h"
#include "scheduler/campaign.h"
#include "scheduler/redis.h"
#include "scheduler/worker.h"

int cmd_enqueue(int argc, char **argv)
{
    static const struct option opts[] = {{"redis", required_argument, NULL, 'r'},
                                         {"at", required_argument, NULL, 'a'},
                                         {"limit", required_argument, NULL, 'n'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *url = NULL, *at = NULL;
    unsigned long limit = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            url = cli_redis_url_arg(optarg);
            break;
        case 'a':
            at = optarg;
            break;
        case 'n':
            limit = strtoul(optarg, NULL, 10);
            break;
        case 'h':
            printf("usage: volley enqueue CAMPAIGN.json --redis URL [--at TIME] [--limit N]\n\n"
                   "Put a campaign's rows into Redis for `volley worker`s to send. Idempotent:\n"
                   "enqueueing again adds nothing twice. --at schedules rows without send_at\n"
                   "(RFC 3339, e.g. 2026-11-23T09:00:00+08:00), overriding schedule.start_at.\n");
            return EX_OK;
        default:
            return EX_USAGE;
        }
    }
    if (optind != argc - 1 || !url) {
        fprintf(stderr, "usage: volley enqueue CAMPAIGN.json --redis URL [--at TIME]\n");
        return EX_USAGE;
    }
    camp_job_t j;
    int rc = camp_job_open_cmd(&j, argv[optind]);
    if (rc) return rc;
    rl_providers_t *provs = NULL;
    int code = cli_load_providers(j.c, &provs);
    char abspath[PATH_MAX], err[512];
    if (!realpath(argv[optind], abspath)) snprintf(abspath, sizeof abspath, "%s", argv[optind]);
    redisContext *ctx = code ? NULL : sched_redis_connect_sync(url, 5000, err, sizeof err);
    if (!code && !ctx) {
        fprintf(stderr, "volley enqueue: Redis: %s\n", err);
        code = EX_UNAVAILABLE;
    }
    if (!code) code = cli_ingest(ctx, &j, provs, abspath, at, limit);
    if (!code)
        printf("campaign %s enqueued; run `volley worker --redis URL` to send it\n", j.c->id);
    if (ctx) redisFree(ctx);
    rl_providers_free(provs);
    camp_job_close(&j);
    return code;
}

/* ---- worker ---------------------------------------------------------------- */

typedef struct served served_t;

/* Results counted for --metrics, per campaign, provider and status; kept
 * after a campaign finishes so the counters never go back (Prometheus
 * counters must only grow while the process lives). */
typedef struct tally {
    struct tally *next;
    char *campaign;
    const char *provider_copy; /* owned copy */
    const char *status;        /* static */
    unsigned long long n;
    uint64_t until_ms; /* held-off campaigns: not served again before this */
} tally_t;

typedef struct wk {
    uv_loop_t *loop;
    sched_redis_t *r;
    uv_timer_t scan;
    uv_signal_t sigint, sigterm;
    served_t *served;
    int stopping;
    const char *ca_file;
    int insecure;
    const char *dns_servers;
    uint64_t retry_base_ms;
    uint32_t lease_ms;
    cli_metrics_t *metrics;
    tally_t *tallies;
    tally_t *refused; /* campaigns of an older layout, by id (only campaign is set) */
    tally_t *held;    /* campaigns whose run stopped on an error: n times, until_ms */
} wk_t;

struct served {
    served_t *next;
    wk_t *wk;
    char *id;
    camp_job_t job;
    rl_providers_t *provs;
    sched_worker_t *w;
};

static void on_result(const char *provider, const char *status, void *ud)
{
    served_t *s = ud;
    wk_t *wk = s->wk;
    if (!wk->metrics) return;
    tally_t *t = wk->tallies;
    while (t && (t->status != status || strcmp(t->provider_copy, provider) ||
                 strcmp(t->campaign, s->id)))
        t = t->next;
    if (!t) {
        t = calloc(1, sizeof *t);
        if (!t) return;
        t->campaign = strdup(s->id);
        t->provider_copy = strdup(provider);
        t->status = status;
        if (!t->campaign || !t->provider_copy) {
            free(t->campaign);
            free((char *)t->provider_copy);
            free(t);
            return;
        }
        t->next = wk->tallies;
        wk->tallies = t;
    }
    t->n++;
}

/* The Prometheus text of this worker process. */
static int fill_metrics(buf_t *out, void *ud)
{
    wk_t *wk = ud;
    int rc = buf_puts(out, "# HELP volley_worker_results_total Results this worker recorded.\n"
                           "# TYPE volley_worker_results_total counter\n");
    for (tally_t *t = wk->tallies; t && !rc; t = t->next) {
        rc = buf_puts(out, "volley_worker_results_total{campaign=");
        if (!rc) rc = cli_metrics_label(out, t->campaign);
        if (!rc) rc = buf_puts(out, ",provider=");
        if (!rc) rc = cli_metrics_label(out, t->provider_copy);
        if (!rc) rc = buf_printf(out, ",status=\"%s\"} %llu\n", t->status, t->n);
    }
    static const struct {
        const char *name, *help;
    } gauges[] = {
        {"volley_worker_in_flight", "Messages handed to the connections."},
        {"volley_worker_backlog", "Claimed rows waiting for rate and quota tokens."},
        {"volley_worker_connections", "Open connections."},
        {"volley_worker_max_connections",
         "The connection ceiling in force (learned or configured)."},
    };
    for (size_t g = 0; g < sizeof gauges / sizeof *gauges && !rc; g++) {
        rc = buf_printf(out, "# HELP %s %s\n# TYPE %s gauge\n", gauges[g].name, gauges[g].help,
                        gauges[g].name);
        for (served_t *s = wk->served; s && !rc; s = s->next) {
            for (size_t i = 0; i < sched_worker_providers(s->w) && !rc; i++) {
                sched_prov_stats_t st;
                sched_worker_provider_stats(s->w, i, &st);
                unsigned v = g == 0   ? st.inflight
                             : g == 1 ? st.backlog
                             : g == 2 ? st.connections
                                      : st.max_connections;
                rc = buf_printf(out, "%s{campaign=", gauges[g].name);
                if (!rc) rc = cli_metrics_label(out, s->id);
                if (!rc) rc = buf_puts(out, ",provider=");
                if (!rc) rc = cli_metrics_label(out, st.provider);
                if (!rc) rc = buf_printf(out, "} %u\n", v);
            }
        }
    }
    unsigned n = 0;
    for (served_t *s = wk->served; s; s = s->next)
        n++;
    if (!rc)
        rc = buf_printf(out,
                        "# HELP volley_worker_campaigns Campaigns this worker serves.\n"
                        "# TYPE volley_worker_campaigns gauge\nvolley_worker_campaigns %u\n",
                        n);
    return rc;
}

static void maybe_exit(wk_t *wk)
{
    if (!wk->stopping || wk->served) return;
    cli_metrics_close(wk->metrics);
    wk->metrics = NULL;
    uv_timer_stop(&wk->scan);
    uv_close((uv_handle_t *)&wk->scan, NULL);
    uv_close((uv_handle_t *)&wk->sigint, NULL);
    uv_close((uv_handle_t *)&wk->sigterm, NULL);
    sched_redis_close(wk->r);
}

/* The entry of id in the held-off list; created (n 0) when create is set. */
static tally_t *held_entry(wk_t *wk, const char *id, int create)
{
    for (tally_t *t = wk->held; t; t = t->next)
        if (!strcmp(t->campaign, id)) return t;
    tally_t *t = create ? calloc(1, sizeof *t) : NULL;
    if (t && !(t->campaign = strdup(id))) {
        free(t);
        return NULL;
    }
    if (t) {
        t->next = wk->held;
        wk->held = t;
    }
    return t;
}

static void served_finish(int rc, const char *why, void *ud)
{
    served_t *s = ud;
    wk_t *wk = s->wk;
    /* A run that stopped on an error (a provider stopped, a configuration
     * a person must fix) is not served again at the next scan: that retried
     * a refused login every 2 s and printed the same error each time. It is
     * held off for a minute, doubling up to 15 while the error stays. */
    tally_t *h = rc && !wk->stopping ? held_entry(wk, s->id, 1) : NULL;
    if (h) {
        uint64_t delay = 60000;
        for (unsigned long long i = 0; i < h->n && delay < 900000; i++)
            delay *= 2;
        if (delay > 900000) delay = 900000;
        h->n++;
        h->until_ms = uv_now(wk->loop) + delay;
        fprintf(stderr, "volley worker: campaign %s: %s; trying it again in %llu s\n", s->id,
                why && *why ? why : "stopped", (unsigned long long)(delay / 1000));
    } else if (rc && why && *why) {
        fprintf(stderr, "volley worker: campaign %s: %s\n", s->id, why);
    } else {
        fprintf(stderr, "volley worker: campaign %s: finished\n", s->id);
        if ((h = held_entry(wk, s->id, 0))) h->n = 0; /* the next error starts again at a minute */
    }
    for (served_t **pp = &wk->served; *pp; pp = &(*pp)->next)
        if (*pp == s) {
            *pp = s->next;
            break;
        }
    rl_providers_free(s->provs);
    camp_job_close(&s->job);
    free(s->id);
    free(s);
    maybe_exit(wk);
}

/* Whether id was already refused (said once, not every scan). */
static int is_refused(wk_t *wk, const char *id)
{
    for (tally_t *t = wk->refused; t; t = t->next)
        if (!strcmp(t->campaign, id)) return 1;
    tally_t *t = calloc(1, sizeof *t);
    if (t && (t->campaign = strdup(id))) {
        t->next = wk->refused;
        wk->refused = t;
    } else {
        free(t);
    }
    return 0;
}

static int held_off(wk_t *wk, const char *id)
{
    const tally_t *h = held_entry(wk, id, 0);
    return h && uv_now(wk->loop) < h->until_ms;
}

static int is_served(wk_t *wk, const char *id)
{
    for (served_t *s = wk->served; s; s = s->next)
        if (!strcmp(s->id, id)) return 1;
    return 0;
}

static void serve(wk_t *wk, const char *id, const char *path)
{
    served_t *s = calloc(1, sizeof *s);
    if (!s) return;
    s->wk = wk;
    s->id = strdup(id);
    if (camp_job_open(&s->job, path, 0, camp_print_diag, stderr) || strcmp(s->job.c->id, id) != 0 ||
        cli_load_providers(s->job.c, &s->provs)) {
        fprintf(stderr, "volley worker: campaign %s: cannot open %s; skipped\n", id, path);
        camp_job_close(&s->job);
        free(s->id);
        free(s);
        return;
    }
    sched_worker_opts_t o = {0};
    o.id = id;
    o.factory = s->job.f;
    o.providers = s->provs;
    o.email_col = tpl_csv_email_column(s->job.csv);
    o.until_done = 1;
    o.require_ingested = 1;
    o.ca_file = wk->ca_file;
    o.tls_insecure = wk->insecure;
    o.dns_servers = wk->dns_servers;
    o.retry_base_ms = wk->retry_base_ms;
    o.lease_ms = wk->lease_ms;
    o.on_finish = served_finish;
    o.on_result = on_result;
    o.ud = s;
    char err[512];
    if (sched_worker_start(&s->w, wk->loop, wk->r, &o, err, sizeof err)) {
        fprintf(stderr, "volley worker: campaign %s: %s\n", id, err);
        rl_providers_free(s->provs);
        camp_job_close(&s->job);
        free(s->id);
        free(s);
        return;
    }
    s->next = wk->served;
    wk->served = s;
    fprintf(stderr, "volley worker: serving campaign %s\n", id);
}

static int want_campaign(const char *id, void *ud)
{
    return !is_served(ud, id);
}

static void on_campaign(const char *id, const char *state, const char *path, int schema_ok,
                        void *ud)
{
    wk_t *wk = ud;
    if (!path[0] || wk->stopping || strcmp(state, "running") || is_served(wk, id) ||
        held_off(wk, id))
        return;
    if (schema_ok)
        serve(wk, id, path);
    else if (!is_refused(wk, id))
        fprintf(stderr,
                "volley worker: campaign %s was enqueued by an older volley whose "
                "Redis layout this one cannot read; skipped\n",
                id);
}

static void on_scan(uv_timer_t *t)
{
    wk_t *wk = t->data;
    if (!wk->stopping && sched_redis_connected(wk->r))
        sched_campaigns_scan(wk->r, want_campaign, on_campaign, wk);
}

static void on_wk_signal(uv_signal_t *sig, int signum)
{
    wk_t *wk = sig->data;
    if (wk->stopping) {
        fprintf(stderr, "volley worker: leaving at once; leases bring rows back\n");
        _exit(EX_TEMPFAIL);
    }
    fprintf(stderr, "volley worker: stopping after the messages in flight\n");
    wk->stopping = 1;
    for (served_t *s = wk->served; s; s = s->next)
        sched_worker_stop(s->w);
    maybe_exit(wk);
}

static void on_wk_state(sched_redis_t *r, int connected, const char *reason, void *ud)
{
    (void)r;
    (void)ud;
    if (connected)
        fprintf(stderr, "volley worker: Redis connected\n");
    else
        fprintf(stderr, "volley worker: Redis unavailable: %s\n", reason ? reason : "");
}

int cmd_worker(int argc, char **argv)
{
    static const struct option opts[] = {{"redis", required_argument, NULL, 'r'},
                                         {"ca-file", required_argument, NULL, 'c'},
                                         {"insecure", no_argument, NULL, 'k'},
                                         {"retry-base-ms", required_argument, NULL, 'b'},
                                         {"lease-ms", required_argument, NULL, 'l'},
                                         {"metrics", required_argument, NULL, 'm'},
                                         {"dns", required_argument, NULL, 'd'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    wk_t wk = {0};
    const char *url = NULL, *metrics = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            url = cli_redis_url_arg(optarg);
            break;
        case 'c':
            wk.ca_file = optarg;
            break;
        case 'k':
            wk.insecure = 1;
            break;
        case 'b':
            wk.retry_base_ms = strtoull(optarg, NULL, 10);
            break;
        case 'l':
            wk.lease_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'm':
            metrics = optarg;
            break;
        case 'd':
            wk.dns_servers = optarg;
            break;
        case 'h':
            printf("usage: volley worker --redis URL [--metrics HOST:PORT] [--ca-file FILE]\n"
                   "                     [--insecure] [--retry-base-ms N] [--lease-ms N]\n"
                   "                     [--dns SERVERS]\n\n"
                   "Send the running campaigns enqueued on that Redis, sharing every\n"
                   "provider's limits with the other workers. SIGINT/SIGTERM: finish the\n"
                   "messages in flight and stop (twice: stop at once; leases bring the\n"
                   "rows back to the other workers).\n"
                   "  --lease-ms N  how long a claimed row stays this worker's before another\n"
                   "                may take it (default 120000; renewed while held)\n"
                   "  --metrics HOST:PORT  serve Prometheus metrics at http://HOST:PORT/metrics\n"
                   "                (results by campaign, provider and status; messages in\n"
                   "                flight, backlog and connections per provider). Port 0\n"
                   "                picks one; the address is printed on stderr.\n"
                   "  --dns SERVERS MX lookups of route \"mx\" ask these DNS servers\n"
                   "                (IP[:PORT],...; default: /etc/resolv.conf's)\n");
            return EX_OK;
        default:
            return EX_USAGE;
        }
    }
    if (!url || optind != argc) {
        fprintf(stderr, "usage: volley worker --redis URL\n");
        return EX_USAGE;
    }
    wk.loop = uv_default_loop();
    wk.loop->data = &wk;
    char err[512];
    sched_redis_opts_t ro = {.on_state = on_wk_state};
    if (sched_redis_new(&wk.r, wk.loop, url, &ro, err, sizeof err)) {
        fprintf(stderr, "volley worker: Redis: %s\n", err);
        return EX_USAGE;
    }
    if (metrics) {
        char bound[96];
        if (cli_metrics_start(&wk.metrics, wk.loop, metrics, fill_metrics, &wk, bound, sizeof bound,
                              err, sizeof err)) {
            fprintf(stderr, "volley worker: %s\n", err);
            sched_redis_close(wk.r);
            uv_run(wk.loop, UV_RUN_DEFAULT);
            return EX_USAGE;
        }
        fprintf(stderr, "volley worker: metrics on http://%s/metrics\n", bound);
    }
    uv_timer_init(wk.loop, &wk.scan);
    wk.scan.data = &wk;
    uv_timer_start(&wk.scan, on_scan, 0, 2000);
    uv_signal_init(wk.loop, &wk.sigint);
    uv_signal_init(wk.loop, &wk.sigterm);
    wk.sigint.data = wk.sigterm.data = &wk;
    uv_signal_start(&wk.sigint, on_wk_signal, SIGINT);
    uv_signal_start(&wk.sigterm, on_wk_signal, SIGTERM);
    uv_run(wk.loop, UV_RUN_DEFAULT);
    uv_loop_close(wk.loop);
    tally_t *lists[] = {wk.tallies, wk.refused, wk.held};
    for (size_t i = 0; i < 3; i++)
        while (lists[i]) {
            tally_t *t = lists[i];
            lists[i] = t->next;
            free(t->campaign);
            free((char *)t->provider_copy);
            free(t);
        }
    return EX_OK;
}
