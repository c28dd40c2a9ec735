/* send_run.h: the real `volley send` (embedded Redis or --redis), shared by
 * cmd_send.c. */
#ifndef VL_CLI_SEND_RUN_H
#define VL_CLI_SEND_RUN_H

#include <stdint.h>

typedef struct cli_send_opts {
    const char *redis_url; /* NULL: the campaign's embedded redis-server */
    unsigned long limit;   /* only the first N data rows (0: all) */
    int progress;          /* a progress line on stderr when it is a terminal */
    const char *ca_file;   /* TLS overrides for every route (tests) */
    int insecure;
    const char *dns_servers; /* for route "mx"; NULL: the system's */
    uint64_t retry_base_ms;  /* first backoff of generic retries (0: 60 s) */
    uint32_t lease_ms;       /* how long a claimed row stays a worker's (0: 120 s) */
} cli_send_opts_t;

#include <hiredis/hiredis.h>

#include "cli/campaign.h"
#include "ratelimit/provider.h"

/* Load the providers file of campaign c, or the built-in defaults; *out is
 * the caller's (rl_providers_free). A sysexits code; errors are printed. */
int cli_load_providers(const campaign_t *c, rl_providers_t **out);

/* Stream the rows of an open campaign job into Redis over c (idempotent).
 * abspath: the campaign file's absolute path (workers open it); at: a start
 * time overriding schedule.start_at, or NULL; limit: only the first N rows
 * (0: all). A sysexits code; progress and errors are printed. */
int cli_ingest(redisContext *c, camp_job_t *j, const rl_providers_t *provs, const char *abspath,
               const char *at, unsigned long limit);

/* Send campaign file path. Returns a sysexits code; prints the summary. */
int cli_send_run(const char *path, const cli_send_opts_t *o);

#endif
