/* metrics.h: a minimal HTTP endpoint for Prometheus on the caller's loop
 * (`volley worker --metrics HOST:PORT`).
 *
 * GET /metrics answers with the text exposition format (version 0.0.4) that
 * the caller's fill function writes; anything else gets 404. One request per
 * connection (HTTP/1.0 style: the answer ends with the close), requests over
 * 8 kB or slower than 10 s are dropped, so a stray client cannot hold memory.
 */
#ifndef VL_CLI_METRICS_H
#define VL_CLI_METRICS_H

#include <uv.h>

#include "common/buf.h"

typedef struct cli_metrics cli_metrics_t;

/* Append the current metrics to out (0, or a VL_E* code from the buffer). */
typedef int (*cli_metrics_fill)(buf_t *out, void *ud);

/* Listen on hostport ("127.0.0.1:9100", "[::1]:9100", ":9100" for
 * 127.0.0.1; port 0 picks one). On success *out is set and bound[] holds the
 * address really bound ("127.0.0.1:43123"). 0, or VL_EINVAL / VL_ENETWORK with
 * err filled. */
int cli_metrics_start(cli_metrics_t **out, uv_loop_t *loop, const char *hostport,
                      cli_metrics_fill fill, void *ud, char *bound, size_t boundlen, char *err,
                      size_t errlen);

/* Stop listening and close open connections (run the loop to finish). NULL ok. */
void cli_metrics_close(cli_metrics_t *m);

/* Append s as a Prometheus label value (backslash, quote and newline escaped). */
BUF_MUST_USE int cli_metrics_label(buf_t *out, const char *s);

#endif
