/* cmd_status.c: `volley status CAMPAIGN` and `volley pause|resume|cancel
 * CAMPAIGN`: look at a campaign in Redis, or change its state, through
 * scheduler/campaign.h; this file only prints. Workers read the state before
 * every claim, so pausing takes effect at their next claim; cancelling also
 * finishes every row still waiting, so no worker can claim it afterwards. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/redisconn.h"
#include "common/err.h"
#include "scheduler/campaign.h"

typedef int (*campaign_fn)(cli_redis_t *r, const char *name, int json);

static void campaign_usage(FILE *f, const char *name)
{
    if (!strcmp(name, "status")) {
        fprintf(f, "usage: volley status CAMPAIGN [--redis URL] [--json]\n\n"
                   "Show a campaign: its state, rows by state, rows waiting (due now and later\n"
                   "per provider) and leased to workers, each provider's suspension and learned\n"
                   "limits, and why sending stopped if it did.\n"
                   "  --json        one JSON object instead of text\n");
    } else if (!strcmp(name, "pause")) {
        fprintf(f, "usage: volley pause CAMPAIGN [--redis URL]\n\n"
                   "Pause a campaign: within about a second workers stop sending it. Rows they\n"
                   "had claimed go back to waiting; only messages already on a connection\n"
                   "finish. `volley resume` continues it.\n");
    } else if (!strcmp(name, "resume")) {
        fprintf(f, "usage: volley resume CAMPAIGN [--redis URL]\n\n"
                   "Resume a paused campaign: workers claim its rows again.\n");
    } else {
        fprintf(f, "usage: volley cancel CAMPAIGN [--redis URL]\n\n"
                   "Cancel a campaign: workers claim no more of its rows, and every row still\n"
                   "waiting ends with status \"cancelled\". Rows a worker holds at that moment\n"
                   "are finished by it. A cancelled campaign cannot be resumed.\n");
    }
    fprintf(f, "\nCAMPAIGN is the campaign file (its embedded Redis in the state directory is\n"
               "started for the command), or with --redis the campaign id.\n"
               "  --redis URL   redis://[user:pass@]host:port[/db] or unix:///path.sock\n"
               "Exit codes: 0, 64 usage, 66 unknown campaign, 69 Redis unavailable, 78 bad\n"
               "campaign file.\n");
}

static int run_campaign_cmd(int argc, char **argv, campaign_fn fn)
{
    const char *name = argv[0];
    static const struct option opts[] = {{"redis", required_argument, NULL, 'R'},
                                         {"json", no_argument, NULL, 'j'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *url = NULL;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'R') {
            url = cli_redis_url_arg(optarg);
        } else if (c == 'j' && !strcmp(name, "status")) {
            json = 1;
        } else if (c == 'h') {
            campaign_usage(stdout, name);
            return EX_OK;
        } else {
            campaign_usage(stderr, name);
            return EX_USAGE;
        }
    }
    if (optind != argc - 1) {
        campaign_usage(stderr, name);
        return EX_USAGE;
    }
    char err[1024] = "";
    cli_redis_t *r;
    int code = cli_redis_open_campaign(&r, argv[optind], url, CLI_REDIS_KNOWN, 0, err, sizeof err);
    if (code) {
        fprintf(stderr, "volley %s: %s\n", name, err);
        return code;
    }
    code = fn(r, name, json);
    cli_redis_close(r);
    return code;
}

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The exit code for a scheduler error (campaign.h), after printing err. */
static int fail(const char *name, int rc, const char *err)
{
    fprintf(stderr, "volley %s: %s\n", name, err);
    switch (rc) {
    case VL_ENETWORK:
        return EX_UNAVAILABLE;
    case VL_ENOENT:
        return EX_NOINPUT;
    case VL_ESTATE:
        return EX_USAGE;
    case VL_ENOMEM:
        return EX_OSERR;
    default:
        return EX_SOFTWARE;
    }
}

static void fmt_time(long long ms, char *dst, size_t n)
{
    if (ms <= 0) {
        snprintf(dst, n, "-");
        return;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    size_t len = strftime(dst, n, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(dst + len, n - len, ".%03dZ", (int)(ms % 1000));
}

/* v as JSON: a number where it is a whole number, else a string. */
static json_t *num_or_string(const char *v)
{
    char *end;
    long long n = strtoll(v, &end, 10);
    return *v && !*end ? json_integer(n) : json_string(v);
}

static void print_json(const sched_campaign_status_t *st, const char *id)
{
    const sched_campaign_info_t *m = &st->info;
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(id));
    json_object_set_new(o, "state", m->state[0] ? json_string(m->state) : json_null());
    json_object_set_new(o, "total", json_integer(m->total));
    json_object_set_new(o, "ingested", json_boolean(m->ingested));
    json_t *cs = json_object();
    for (int i = 0; i < SCHED_NFINAL; i++)
        json_object_set_new(cs, sched_status_name((sched_status_t)i),
                            json_integer(st->counts.n[i]));
    json_object_set_new(cs, "final", json_integer(st->counts.final));
    json_object_set_new(o, "counts", cs);
    json_object_set_new(o, "attempts", json_integer(st->counts.attempts));
    json_object_set_new(o, "deferred", json_integer(st->counts.deferred));
    json_object_set_new(o, "pending", json_integer(st->pending));
    json_object_set_new(o, "due_now", json_integer(st->due_now));
    json_object_set_new(o, "leased", json_integer(st->leased));
    json_object_set_new(o, "stop_reason",
                        m->stop_reason[0] ? json_string(m->stop_reason) : json_null());
    const char *const times[] = {"created_ms", "started_ms", "finished_ms"};
    const long long tv[] = {m->created_ms, m->started_ms, m->finished_ms};
    for (size_t i = 0; i < 3; i++)
        json_object_set_new(o, times[i], tv[i] > 0 ? json_integer(tv[i]) : json_null());
    json_t *plist = json_array();
    for (size_t i = 0; i < st->nproviders; i++) {
        const sched_provider_status_t *p = &st->providers[i];
        json_t *po = json_object();
        json_object_set_new(po, "name", json_string(p->name));
        json_object_set_new(po, "due_now", json_integer(p->due_now));
        json_object_set_new(po, "scheduled_later", json_integer(p->later));
        if (p->suspended_until_ms) {
            char t[40];
            fmt_time(p->suspended_until_ms, t, sizeof t);
            json_object_set_new(po, "suspended_until", json_string(t));
            json_object_set_new(po, "suspended_until_ms", json_integer(p->suspended_until_ms));
            json_object_set_new(po, "suspend_reason",
                                p->suspend_reason ? json_string(p->suspend_reason) : json_null());
        } else {
            json_object_set_new(po, "suspended_until", json_null());
        }
        json_t *l = json_object();
        for (size_t k = 0; k < p->nlearned; k++)
            json_object_set_new(l, p->learned[k].name, num_or_string(p->learned[k].value));
        json_object_set_new(po, "learned", l);
        json_array_append_new(plist, po);
    }
    json_object_set_new(o, "providers", plist);
    json_dumpf(o, stdout, JSON_PRESERVE_ORDER | JSON_COMPACT);
    putchar('\n');
    json_decref(o);
}

static void print_text(const sched_campaign_status_t *st, const char *id)
{
    const sched_campaign_info_t *m = &st->info;
    char t1[40], t2[40], t3[40];
    fmt_time(m->created_ms, t1, sizeof t1);
    fmt_time(m->started_ms, t2, sizeof t2);
    fmt_time(m->finished_ms, t3, sizeof t3);
    printf("campaign %s: %s\n", id, m->state[0] ? m->state : "unknown");
    printf("  rows       %lld%s\n", m->total, m->ingested ? "" : " so far (ingest not finished)");
    printf("  created    %s\n  started    %s\n  finished   %s\n", t1, t2, t3);
    if (m->stop_reason[0]) printf("  STOPPED    %s\n", m->stop_reason);
    printf("  final      %lld of %lld\n", st->counts.final, m->total);
    for (int i = 0; i < SCHED_NFINAL; i++)
        printf("    %-11s %lld\n", sched_status_name((sched_status_t)i), st->counts.n[i]);
    printf("  pending    %lld (due now %lld, scheduled later %lld)\n", st->pending, st->due_now,
           st->pending - st->due_now);
    printf("  leased     %lld (being sent by workers)\n", st->leased);
    printf("  attempts   %lld (%lld deferred and requeued)\n", st->counts.attempts,
           st->counts.deferred);
    printf("providers:\n");
    for (size_t i = 0; i < st->nproviders; i++) {
        const sched_provider_status_t *p = &st->providers[i];
        printf("  %-16s due now %lld, later %lld", p->name, p->due_now, p->later);
        if (p->suspended_until_ms) {
            char until[40];
            fmt_time(p->suspended_until_ms, until, sizeof until);
            const char *why = p->suspend_reason;
            printf("; SUSPENDED until %s%s%s", until, why ? ": " : "", why ? why : "");
        }
        if (p->nlearned) {
            printf("; learned");
            for (size_t k = 0; k < p->nlearned; k++)
                printf("%s %s=%s", k ? "," : "", p->learned[k].name, p->learned[k].value);
        }
        putchar('\n');
    }
    if (st->nproviders == 0) printf("  (none yet)\n");
}

static int do_status(cli_redis_t *r, const char *name, int json)
{
    const char *id = cli_redis_id(r);
    char err[1024] = "";
    sched_campaign_status_t st;
    int rc = sched_campaign_status(cli_redis_ctx(r), id, now_ms(), &st, err, sizeof err);
    int code = EX_OK;
    if (rc) {
        code = fail(name, rc, err);
    } else {
        if (json)
            print_json(&st, id);
        else
            print_text(&st, id);
        if (fflush(stdout) != 0) code = EX_IOERR;
    }
    sched_campaign_status_free(&st);
    return code;
}

static int do_set_state(cli_redis_t *r, const char *name, int json)
{
    (void)json;
    const char *id = cli_redis_id(r);
    char err[1024] = "", was[32] = "";
    if (strcmp(name, "cancel")) {
        sched_campaign_state_t want =
            !strcmp(name, "pause") ? SCHED_CAMPAIGN_PAUSED : SCHED_CAMPAIGN_RUNNING;
        const char *w = sched_campaign_state_name(want);
        int rc =
            sched_campaign_set_state(cli_redis_ctx(r), id, want, was, sizeof was, err, sizeof err);
        if (rc) return fail(name, rc, err);
        if (!strcmp(was, w))
            printf("campaign %s was already %s\n", id, w);
        else
            printf("campaign %s: %s -> %s\n", id, was[0] ? was : "(no state)", w);
        return EX_OK;
    }
    long long cancelled = 0, leased = 0;
    int rc = sched_campaign_cancel(cli_redis_ctx(r), id, now_ms(), &cancelled, &leased, was,
                                   sizeof was, err, sizeof err);
    if (rc == VL_ESTATE) return fail(name, rc, err);
    printf("campaign %s cancelled: %lld waiting row%s cancelled", id, cancelled,
           cancelled == 1 ? "" : "s");
    if (leased)
        printf("; %lld row%s held by workers will finish first", leased, leased == 1 ? "" : "s");
    putchar('\n');
    return rc ? fail(name, rc, err) : EX_OK;
}

int cmd_status(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_status);
}

int cmd_pause(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_set_state);
}

int cmd_resume(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_set_state);
}

int cmd_cancel(int argc, char **argv)
{
    return run_campaign_cmd(argc, argv, do_set_state);
}
