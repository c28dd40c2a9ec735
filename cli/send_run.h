/* send_run.h: the real `volley send` (embedded Redis or --redis), shared by
 * cmd_send.c. */
#ifndef VL_CLI_SEND_RUN_H
#define VL_CLI_SEND_RUN_H

#include <stdint.h>

typedef struct cli_send_opts {
    const char *redis_url;  /* NULL: the campaign's embedded redis-server */
    unsigned long limit;    /* only the first N data rows (0: all) */
    int progress;           /* a progress line on stderr when it is a terminal */
    const char *ca_file;    /* TLS overrides for every route (tests) */
    int insecure;
    uint64_t retry_base_ms; /* first backoff of generic retries (0: 60 s) */
} cli_send_opts_t;

/* Send campaign file path. Returns a sysexits code; prints the summary. */
int cli_send_run(const char *path, const cli_send_opts_t *o);

#endif
