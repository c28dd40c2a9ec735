/* cmd_worker.c: `volley enqueue` and `volley worker`: the two halves of send,
 * for many workers on many machines sharing one Redis.
 *
 * enqueue ingests a campaign into Redis (idempotent) and returns. worker
 * watches volley:campaigns and runs a scheduler worker for every campaign
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
#include "cli/send_run.h"
#include "common/err.h"
#include "common/log.h"
#include "scheduler/keys.h"
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
            url = optarg;
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
    if (rc)
        return rc;
    rl_providers_t *provs = NULL;
    int code = cli_load_providers(j.c, &provs);
    char abspath[PATH_MAX], err[512];
    if (!realpath(argv[optind], abspath))
        snprintf(abspath, sizeof abspath, "%s", argv[optind]);
    redisContext *ctx = code ? NULL : sched_redis_connect_sync(url, 5000, err, sizeof err);
    if (!code && !ctx) {
        fprintf(stderr, "volley enqueue: Redis: %s\n", err);
        code = EX_UNAVAILABLE;
    }
    if (!code)
        code = cli_ingest(ctx, &j, provs, abspath, at, limit);
    if (!code)
        printf("campaign %s enqueued; run `volley worker --redis URL` to send it\n", j.c->id);
    if (ctx)
        redisFree(ctx);
    rl_providers_free(provs);
    camp_job_close(&j);
    return code;
}

/* ---- worker ---------------------------------------------------------------- */

typedef struct served served_t;
typedef struct wk {
    uv_loop_t *loop;
    sched_redis_t *r;
    uv_timer_t scan;
    uv_signal_t sigint, sigterm;
    served_t *served;
    int stopping;
    const char *ca_file;
    int insecure;
    uint64_t retry_base_ms;
    uint32_t lease_ms;
} wk_t;

struct served {
    served_t *next;
    wk_t *wk;
    char *id;
    camp_job_t job;
    rl_providers_t *provs;
    sched_worker_t *w;
};

static void maybe_exit(wk_t *wk)
{
    if (!wk->stopping || wk->served)
        return;
    uv_timer_stop(&wk->scan);
    uv_close((uv_handle_t *)&wk->scan, NULL);
    uv_close((uv_handle_t *)&wk->sigint, NULL);
    uv_close((uv_handle_t *)&wk->sigterm, NULL);
    sched_redis_close(wk->r);
}

static void served_finish(int rc, const char *why, void *ud)
{
    served_t *s = ud;
    wk_t *wk = s->wk;
    if (rc && why && *why)
        fprintf(stderr, "volley worker: campaign %s: %s\n", s->id, why);
    else
        fprintf(stderr, "volley worker: campaign %s: finished\n", s->id);
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

static int is_served(wk_t *wk, const char *id)
{
    for (served_t *s = wk->served; s; s = s->next)
        if (!strcmp(s->id, id))
            return 1;
    return 0;
}

static void serve(wk_t *wk, const char *id, const char *path)
{
    served_t *s = calloc(1, sizeof *s);
    if (!s)
        return;
    s->wk = wk;
    s->id = strdup(id);
    if (camp_job_open(&s->job, path, 0, camp_print_diag, stderr) ||
        strcmp(s->job.c->id, id) != 0 || cli_load_providers(s->job.c, &s->provs)) {
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
    o.retry_base_ms = wk->retry_base_ms;
    o.lease_ms = wk->lease_ms;
    o.on_finish = served_finish;
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

static void on_meta(sched_redis_t *r, redisReply *reply, void *priv, int err, const char *es)
{
    wk_t *wk = sched_redis_loop(r)->data;
    char *id = priv;
    if (!err && reply && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2 &&
        reply->element[0]->str && reply->element[1]->str && !wk->stopping &&
        !strcmp(reply->element[0]->str, "running") && !is_served(wk, id))
        serve(wk, id, reply->element[1]->str);
    free(id);
}

static void on_campaigns(sched_redis_t *r, redisReply *reply, void *priv, int err,
                         const char *es)
{
    wk_t *wk = priv;
    if (err || !reply || reply->type != REDIS_REPLY_ARRAY)
        return;
    for (size_t i = 0; i < reply->elements; i++) {
        const char *id = reply->element[i]->str;
        if (!id || is_served(wk, id))
            continue;
        char key[300];
        snprintf(key, sizeof key, SCHED_KEY_META, id);
        char *copy = strdup(id);
        if (sched_redis_cmd(r, on_meta, copy, "HMGET %s state path", key))
            free(copy);
    }
}

static void on_scan(uv_timer_t *t)
{
    wk_t *wk = t->data;
    if (!wk->stopping && sched_redis_connected(wk->r))
        sched_redis_cmd(wk->r, on_campaigns, wk, "SMEMBERS %s", SCHED_KEY_CAMPAIGNS);
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
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    wk_t wk = {0};
    const char *url = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            url = optarg;
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
        case 'h':
            printf("usage: volley worker --redis URL [--ca-file FILE] [--insecure]\n"
                   "                     [--retry-base-ms N] [--lease-ms N]\n\n"
                   "Send the running campaigns enqueued on that Redis, sharing every\n"
                   "provider's limits with the other workers. SIGINT/SIGTERM: finish the\n"
                   "messages in flight and stop (twice: stop at once; leases bring the\n"
                   "rows back to the other workers).\n"
                   "  --lease-ms N  how long a claimed row stays this worker's before another\n"
                   "                may take it (default 120000; longer than a transaction)\n");
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
    return EX_OK;
}
