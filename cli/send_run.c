/* send_run.c: the real `volley send`, and `volley enqueue` / `volley worker`.
 *
 * send without --redis starts a private redis-server for the campaign (unix
 * socket and append-only file in its state directory), ingests the CSV
 * (idempotent: a rerun adds nothing twice), runs a worker in this process
 * until every row is final, writes report.csv into the state directory,
 * prints the summary and stops Redis. A second send of the same campaign
 * resumes where the first stopped. With --redis URL it uses that server.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/campaign.h"
#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/report.h"
#include "cli/send_run.h"
#include "common/err.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/prio.h"
#include "ratelimit/provider.h"
#include "scheduler/ingest.h"
#include "scheduler/redis.h"
#include "scheduler/redisproc.h"
#include "scheduler/worker.h"

typedef struct ingest_thread ingest_thread_t;

typedef struct run {
    uv_loop_t *loop;
    ingest_thread_t *ingest; /* send's ingest, running beside the worker */
    sched_redis_t *r;
    sched_worker_t *w;
    int rc;
    char why[1024];
    int progress; /* draw a progress line on stderr */
    int drew;
    time_t t0;
    uv_signal_t sigint, sigterm;
    int stopping;
} run_t;

typedef struct ingest_src {
    camp_job_t *j;
    unsigned long limit, n;
} ingest_src_t;

static int next_row(void *ud, tpl_csv_row_t **row)
{
    ingest_src_t *s = ud;
    if (s->limit && s->n >= s->limit) return 0;
    int rc = camp_job_next(s->j, row);
    if (rc == 1) s->n++;
    return rc;
}

static int64_t wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_progress(const sched_progress_t *p, void *ud)
{
    run_t *run = ud;
    if (!run->progress) return;
    long long left = p->total - p->final;
    char eta[32] = "--";
    if (p->rate > 0.5 && left > 0) {
        long long s = (long long)((double)left / p->rate);
        snprintf(eta, sizeof eta, "%lld:%02lld", s / 60, s % 60);
    }
    fprintf(stderr,
            "\r\033[K%lld/%lld done  delivered %lld  deferred %lld  failed %lld  "
            "%.0f msg/s  ETA %s  [%s]",
            p->final, p->total, p->delivered, p->deferred, p->failed + p->bounced + p->rejected,
            p->rate, eta, p->state);
    run->drew = 1;
}

static void on_finish(int rc, const char *why, void *ud)
{
    run_t *run = ud;
    /* An interrupted run keeps its VL_ECANCELED (exit 75: rows are left to resume) over
     * the worker's 0 for a clean stop, unless the worker failed for a reason of its own. */
    if (rc || !run->stopping) {
        run->rc = rc;
        snprintf(run->why, sizeof run->why, "%s", why ? why : "");
    }
    run->w = NULL;
    uv_close((uv_handle_t *)&run->sigint, NULL);
    uv_close((uv_handle_t *)&run->sigterm, NULL);
    sched_redis_close(run->r);
    run->r = NULL;
}

static void on_signal(uv_signal_t *s, int signum)
{
    run_t *run = s->data;
    if (run->stopping) {
        /* A second interrupt: leave now; leases bring the in-flight rows back. */
        fprintf(stderr, "\nvolley: interrupted again, leaving at once\n");
        _exit(EX_TEMPFAIL);
    }
    run->stopping = 1;
    fprintf(stderr, "\nvolley: stopping after the messages in flight (again to quit now)\n");
    if (run->w) sched_worker_stop(run->w);
    run->rc = VL_ECANCELED;
    snprintf(run->why, sizeof run->why, "interrupted");
}

/* send ingests in a thread of its own (with its own Redis connection) while
 * the worker sends the rows already in: a million rows take seconds to
 * ingest, and the worker need not wait for the last to send the first. */
struct ingest_thread {
    uv_thread_t tid;
    uv_async_t done; /* the thread's end, on the worker's loop */
    run_t *run;
    const char *url;
    camp_job_t *j;
    const rl_providers_t *provs;
    const char *abspath;
    unsigned long limit;
    int code; /* cli_ingest()'s exit code */
};

static void ingest_main(void *arg)
{
    ingest_thread_t *t = arg;
    char err[1024];
    /* Ingest runs beside the first seconds of sending (prio.h). */
    vl_prio_background();
    pthread_setname_np(pthread_self(), "volley-ingest");
    redisContext *c = sched_redis_connect_sync(t->url, 5000, err, sizeof err);
    if (!c) {
        fprintf(stderr, "volley: Redis: %s\n", err);
        t->code = EX_UNAVAILABLE;
    } else {
        t->code = cli_ingest(c, t->j, t->provs, t->abspath, NULL, t->limit);
        redisFree(c);
    }
    uv_async_send(&t->done);
}

static void on_ingest_done(uv_async_t *a)
{
    ingest_thread_t *t = a->data;
    run_t *run = t->run;
    uv_thread_join(&t->tid);
    uv_close((uv_handle_t *)a, NULL);
    if (!run->w) return;
    if (t->code) {
        /* Nothing more will come: finish what is in flight and stop. */
        sched_worker_stop(run->w);
        if (!run->rc) run->rc = VL_EPARSE;
        snprintf(run->why, sizeof run->why, "ingest failed");
    } else {
        sched_worker_ingest_ended(run->w);
    }
}

/* Run a worker for campaign id over url until it finishes; with ingest, that
 * thread runs beside it. */
static int run_worker(const char *url, const char *id, const msg_factory_t *f,
                      const rl_providers_t *provs, int email_col, int until_done, int progress,
                      const cli_send_opts_t *o, ingest_thread_t *ingest, char *why, size_t whylen)
{
    run_t run = {0};
    run.loop = uv_default_loop();
    run.ingest = ingest;
    run.progress = progress;
    run.t0 = time(NULL);
    char err[512];
    sched_redis_opts_t ro = {0};
    if (sched_redis_new(&run.r, run.loop, url, &ro, err, sizeof err)) {
        snprintf(why, whylen, "Redis: %s", err);
        return VL_EREDIS;
    }
    sched_worker_opts_t wo = {0};
    wo.id = id;
    wo.factory = f;
    wo.providers = provs;
    wo.email_col = email_col;
    wo.until_done = until_done;
    wo.require_ingested = ingest != NULL;     /* until the thread says it ended */
    wo.reclaim_leases = o->redis_url == NULL; /* the embedded Redis has no other worker */
    wo.ca_file = o->ca_file;
    wo.tls_insecure = o->insecure;
    wo.dns_servers = o->dns_servers;
    wo.retry_base_ms = o->retry_base_ms;
    wo.lease_ms = o->lease_ms;
    wo.on_progress = on_progress;
    wo.on_finish = on_finish;
    wo.ud = &run;
    if (sched_worker_start(&run.w, run.loop, run.r, &wo, err, sizeof err)) {
        snprintf(why, whylen, "%s", err);
        sched_redis_close(run.r);
        uv_run(run.loop, UV_RUN_DEFAULT);
        return VL_ECONFIG;
    }
    uv_signal_init(run.loop, &run.sigint);
    uv_signal_init(run.loop, &run.sigterm);
    run.sigint.data = run.sigterm.data = &run;
    uv_signal_start(&run.sigint, on_signal, SIGINT);
    uv_signal_start(&run.sigterm, on_signal, SIGTERM);
    if (ingest) {
        ingest->run = &run;
        ingest->done.data = ingest;
        uv_async_init(run.loop, &ingest->done, on_ingest_done);
        if (uv_thread_create(&ingest->tid, ingest_main, ingest)) {
            ingest->code = EX_OSERR;
            fprintf(stderr, "volley: cannot start the ingest thread\n");
            uv_async_send(&ingest->done);
        }
    }
    uv_run(run.loop, UV_RUN_DEFAULT);
    if (run.drew) fputc('\n', stderr);
    snprintf(why, whylen, "%s", run.why);
    return run.rc;
}

static void on_reject(void *ud, const tpl_csv_row_t *row, const char *why)
{
    (void)ud;
    (void)row;
    fprintf(stderr, "volley: rejected: %s\n", why);
}

/* Load the providers file of a campaign, or the built-in defaults. */
int cli_load_providers(const campaign_t *c, rl_providers_t **out)
{
    char err[1024];
    if (!c->providers) {
        *out = rl_providers_default();
        return *out ? 0 : EX_OSERR;
    }
    int rc = rl_providers_load(c->providers, out, err, sizeof err);
    if (rc) {
        fprintf(stderr, "volley: %s\n", err);
        return rc == VL_ENOENT ? EX_NOINPUT : EX_CONFIG;
    }
    return 0;
}

/* Stream a campaign's rows into Redis (see send_run.h). */
int cli_ingest(redisContext *c, camp_job_t *j, const rl_providers_t *provs, const char *abspath,
               const char *at, unsigned long limit)
{
    char err[1024];
    int code = 0;
    const char *cols[TPL_CSV_MAX_COLUMNS];
    size_t ncols = tpl_csv_ncolumns(j->csv); /* the reader refuses more */
    for (size_t i = 0; i < ncols; i++)
        cols[i] = tpl_csv_column_name(j->csv, i);
    int64_t start_at = wall_ms();
    const char *when = at ? at : j->c->start_at;
    if (when && sched_parse_time(when, strlen(when), &start_at)) {
        fprintf(stderr,
                "volley: %s: '%s' is not a time (RFC 3339, e.g. 2026-11-23T09:00:00+08:00)\n",
                at ? "--at" : "schedule.start_at", when);
        return EX_USAGE;
    }
    ingest_src_t src = {.j = j, .limit = limit};
    sched_ingest_opts_t io = {.id = j->c->id,
                              .path = abspath,
                              .columns = cols,
                              .ncolumns = ncols,
                              .email_col = tpl_csv_email_column(j->csv),
                              .send_at_col = tpl_csv_column(j->csv, "send_at"),
                              .start_at_ms = start_at,
                              .providers = provs,
                              .next = next_row,
                              .ud = &src,
                              .on_reject = on_reject,
                              .now_ms = wall_ms(),
                              .partial = limit != 0};
    sched_ingest_stats_t st;
    int rc = sched_ingest(c, &io, &st, err, sizeof err);
    if (rc) {
        fprintf(stderr, "volley: ingest: %s\n", err);
        return rc == VL_ESTATE ? EX_DATAERR : EX_UNAVAILABLE;
    }
    if (!st.skipped)
        fprintf(stderr, "volley: campaign %s: %lu rows read, %lu new, %lu rejected\n", j->c->id,
                st.rows, st.added, st.rejected);
    else
        fprintf(stderr, "volley: campaign %s: resuming (already ingested)\n", j->c->id);
    return code;
}

int cli_send_run(const char *path, const cli_send_opts_t *o)
{
    camp_job_t j;
    int rc = camp_job_open_cmd(&j, path);
    if (rc) return rc;
    rl_providers_t *provs = NULL;
    int code = cli_load_providers(j.c, &provs);
    if (code) {
        camp_job_close(&j);
        return code;
    }
    char abspath[PATH_MAX];
    if (!realpath(path, abspath)) snprintf(abspath, sizeof abspath, "%s", path);

    sched_rproc_t *proc = NULL;
    char url[PATH_MAX + 16], err[1024];
    if (o->redis_url) {
        snprintf(url, sizeof url, "%s", o->redis_url);
    } else {
        if (sched_rproc_start(&proc, j.c->state_dir, err, sizeof err)) {
            fprintf(stderr, "volley: cannot start the campaign's Redis: %s\n", err);
            rl_providers_free(provs);
            camp_job_close(&j);
            return EX_UNAVAILABLE;
        }
        snprintf(url, sizeof url, "unix://%s", sched_rproc_socket(proc));
    }

    redisContext *c = sched_redis_connect_sync(url, 5000, err, sizeof err);
    if (!c) {
        fprintf(stderr, "volley: Redis: %s\n", err);
        sched_rproc_stop(proc);
        rl_providers_free(provs);
        camp_job_close(&j);
        return EX_UNAVAILABLE;
    }

    /* Ingest (a rerun adds nothing twice) in a thread, and send meanwhile. */
    ingest_thread_t it = {
        .url = url, .j = &j, .provs = provs, .abspath = abspath, .limit = o->limit};
    int wrc = 0;
    char why[1024] = "";
    {
        int progress = o->progress && isatty(STDERR_FILENO);
        wrc = run_worker(url, j.c->id, j.f, provs, tpl_csv_email_column(j.csv), 1, progress, o, &it,
                         why, sizeof why);
        if (it.code) {
            /* The ingest printed why; its code is send's. */
            wrc = 0;
            code = it.code;
        } else {
            if (wrc && why[0]) fprintf(stderr, "volley: %s\n", why);
            code = wrc == 0            ? EX_OK
                   : wrc == VL_ECONFIG ? EX_CONFIG
                   : wrc == VL_EREDIS  ? EX_UNAVAILABLE
                                       : EX_TEMPFAIL;
        }
    }

    /* The report: report.csv in the state directory, the summary on stdout. */
    if (!code || wrc) {
        char rpath[PATH_MAX + 32], tmp[PATH_MAX + 40];
        snprintf(rpath, sizeof rpath, "%s%sreport.csv", j.c->state_dir,
                 j.c->state_dir[0] && j.c->state_dir[strlen(j.c->state_dir) - 1] == '/' ? "" : "/");
        snprintf(tmp, sizeof tmp, "%s.tmp", rpath);
        /* With --redis the state directory may not exist yet, nor its parents. A report
         * that cannot be written fails the send (EX_CANTCREAT) after printing the summary:
         * the results are safe in Redis (`volley report` writes it again), but a script
         * that reads report.csv after exit 0 must find it. */
        int written = 0;
        int mrc = vl_mkdirs(j.c->state_dir, 0700);
        FILE *f = mrc ? NULL : fopen(tmp, "w");
        if (!f) {
            fprintf(stderr, "volley: could not write %s: %s\n", mrc ? j.c->state_dir : tmp,
                    strerror(mrc ? -mrc : errno));
            if (cli_report_write(c, j.c->id, "text", stdout, err, sizeof err))
                fprintf(stderr, "volley: report: %s\n", err);
        } else if (cli_report_write_csv_and_text(c, j.c->id, f, stdout, err, sizeof err) == 0) {
            if (fclose(f) == 0 && rename(tmp, rpath) == 0) {
                printf("report: %s\n", rpath);
                written = 1;
            } else {
                fprintf(stderr, "volley: could not write %s: %s\n", rpath, strerror(errno));
                unlink(tmp);
            }
        } else {
            fclose(f);
            unlink(tmp);
            fprintf(stderr, "volley: report: %s\n", err);
        }
        if (!written && !code) code = EX_CANTCREAT;
    }
    redisFree(c);
    sched_rproc_stop(proc);
    rl_providers_free(provs);
    camp_job_close(&j);
    return code;
}
