/* worker.h: the claim -> render -> submit -> record loop for one campaign.
 *
 * A worker runs on the caller's libuv loop beside the engine. For every
 * provider with due rows it leases batches of rows (claim.lua, keys.h) about
 * one window ahead of need and drops suppressed addresses; then, as its
 * connections have room, it takes tokens from the provider's shared rate and
 * quotas (Redis, ratelimit/lua), renders each row with the campaign's message
 * factory on libuv's thread pool (in items of rows, on as many threads as
 * the machine has cores besides the loop's, at most four; the factory and
 * `o.factory` must allow that, as message.h's do), submits the rows in
 * their claimed order to the provider's connection pool, turns the outcome
 * into an action with the provider's reply rules (ratelimit/rules.h), and
 * records the result atomically with the row's state change (record.lua).
 * Leases are renewed while held; rows whose worker dies come back when their
 * lease expires (reap.lua), so many workers can share one Redis.
 */
#ifndef VL_SCHED_WORKER_H
#define VL_SCHED_WORKER_H

#include <stdint.h>
#include <uv.h>

#include "ratelimit/provider.h"
#include "scheduler/redis.h"
#include "templates/message.h"

typedef struct sched_worker sched_worker_t;

/* Counts as recorded in Redis ({c:ID}:count), for progress lines. */
typedef struct sched_progress {
    long long total, final, delivered, bounced, failed, suppressed, rejected, cancelled;
    long long deferred, attempts;
    unsigned inflight; /* this worker's messages on the wire */
    double rate;       /* this worker's deliveries per second, recent */
    const char *state; /* campaign state: running, paused, cancelled, done */
} sched_progress_t;

typedef struct sched_worker_opts {
    const char *id;                  /* campaign id (copied) */
    const msg_factory_t *factory;    /* borrowed; outlives the worker */
    const rl_providers_t *providers; /* borrowed */
    int email_col;                   /* index of `email` among the stored fields */
    unsigned batch;                  /* most tokens asked for at once (0: 500) */
    uint32_t lease_ms;               /* 0: 120 s */
    unsigned max_attempts;           /* then a retried row fails (0: 10) */
    uint64_t retry_base_ms;          /* first backoff of a generic retry (0: 60 s) */
    int until_done;                  /* finish when the campaign is done (send) */
    int require_ingested;            /* ...and only once its CSV is fully in (a worker
                                      * beside a running `enqueue`) */
    int reclaim_leases;              /* at start, take back every lease at once: only
                                      * when no other worker can hold one (embedded
                                      * Redis), so a resumed send does not wait for
                                      * the leases of a killed run to expire */
    /* TLS overrides for every route (tests against private CAs). */
    const char *ca_file;
    int tls_insecure;
    /* DNS servers for route "mx" ("IP[:PORT],..."), NULL for the system's. */
    const char *dns_servers;
    /* Called about twice a second with fresh counts (optional). */
    void (*on_progress)(const sched_progress_t *p, void *ud);
    /* Called for every result recorded, with the provider's name and the
     * status (a final state or "deferred"; both static strings). Optional. */
    void (*on_result)(const char *provider, const char *status, void *ud);
    /* Called once when the worker has stopped: 0 when the campaign is done,
     * else a VL_E* code with why (a provider stopped, Redis lost for good). */
    void (*on_finish)(int rc, const char *why, void *ud);
    void *ud;
} sched_worker_opts_t;

/* Start a worker for campaign o->id using r (borrowed, must outlive it). */
int sched_worker_start(sched_worker_t **out, uv_loop_t *loop, sched_redis_t *r,
                       const sched_worker_opts_t *o, char *err, size_t errlen);

/* What one provider of a worker is doing now, for metrics. */
typedef struct sched_prov_stats {
    const char *provider;     /* borrowed from the providers file */
    unsigned inflight;        /* messages handed to the connections */
    unsigned backlog;         /* claimed rows waiting for tokens */
    unsigned connections;     /* open */
    unsigned max_connections; /* the ceiling in force (learned or configured) */
} sched_prov_stats_t;

/* The number of providers of w, and the stats of the i-th. */
size_t sched_worker_providers(const sched_worker_t *w);
void sched_worker_provider_stats(sched_worker_t *w, size_t i, sched_prov_stats_t *out);

/* The caller's ingest (running beside the worker, as in `send`) has ended:
 * from now on the worker finishes when every row is final even if the
 * campaign is not marked fully ingested (a trial run with --limit). */
void sched_worker_ingest_ended(sched_worker_t *w);

/* Stop claiming; finish what is in flight, record it, then call on_finish and
 * free the worker. */
void sched_worker_stop(sched_worker_t *w);

#endif
