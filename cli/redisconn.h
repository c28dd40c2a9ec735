/* redisconn.h: opening the Redis that holds a campaign, for the commands that
 * act on one (report, status, pause, resume, cancel, and send/enqueue/worker).
 *
 * A campaign is named on the command line in one of two ways (DESIGN.md "The
 * command line"):
 *   - without --redis, by its campaign FILE: the campaign's own redis-server
 *     is started in its state directory (scheduler/redisproc.h), connected to
 *     over its unix socket, and stopped again by cli_redis_close(); when a
 *     `send` of the campaign already runs that server, it is used as it is
 *     and left running (unless CLI_REDIS_CREATE, for which it is an error);
 *   - with --redis URL, by its ID on that server. A path to an existing
 *     campaign file is accepted there too (its id is used), so
 *     `volley enqueue CAMPAIGN.json --redis URL` works the same way.
 *
 * The connection is synchronous hiredis: these commands are not on the hot
 * path. Functions return a sysexits code (cli/exitcodes.h) and leave a
 * sentence in err for the caller to print; they print nothing themselves,
 * except campaign-file diagnostics, which go to stderr with file:line:col.
 */
#ifndef VL_CLI_REDISCONN_H
#define VL_CLI_REDISCONN_H

#include <stddef.h>

#include <hiredis/hiredis.h>

#include "cli/campaign.h"

typedef struct cli_redis cli_redis_t;

/* Flags for cli_redis_open_campaign(). */
enum cli_redis_flags {
    /* Start the embedded server even if the state directory does not exist
     * yet (it is created): for `send`. Without it, a campaign file whose state
     * directory is missing is EX_NOINPUT ("has never been sent"). */
    CLI_REDIS_CREATE = 1 << 0,
    /* Require the campaign to be known on the server (the scheduler has its meta data);
     * EX_NOINPUT ("unknown campaign") otherwise. */
    CLI_REDIS_KNOWN = 1 << 1,
};

/* Open the Redis of a campaign. arg (borrowed) is the campaign file, or with
 * url (borrowed, non-NULL) the campaign id (or a campaign file, see above);
 * url is redis://[user:pass@]host:port[/db], unix:///path.sock or /path.sock.
 * flags: CLI_REDIS_* values. timeout_ms bounds connecting and each command
 * (0 for 5000). Returns EX_OK and *out (caller closes with cli_redis_close),
 * or: EX_NOINPUT (no campaign file; never sent; unknown campaign), EX_CONFIG
 * (a campaign file that does not load), EX_UNAVAILABLE (Redis could not be
 * started or reached), EX_OSERR (out of memory), with a message in err
 * (errlen bytes) that never contains a password. */
int cli_redis_open_campaign(cli_redis_t **out, const char *arg, const char *url, unsigned flags,
                            int timeout_ms, char *err, size_t errlen);

/* Open a Redis server by URL alone (no campaign): for `suppress` and
 * `worker`. Returns EX_OK and *out, EX_UNAVAILABLE or EX_OSERR with err. */
int cli_redis_open_url(cli_redis_t **out, const char *url, int timeout_ms, char *err,
                       size_t errlen);

/* The connection (borrowed, valid until cli_redis_close). */
redisContext *cli_redis_ctx(const cli_redis_t *r);

/* The campaign id (borrowed), or NULL when opened by cli_redis_open_url. */
const char *cli_redis_id(const cli_redis_t *r);

/* The loaded campaign file (borrowed), or NULL when the campaign was named
 * by id with --redis. */
const campaign_t *cli_redis_campaign(const cli_redis_t *r);

/* Where the data lives, for messages: the URL with any password replaced by
 * "***", or "embedded redis in DIR". Borrowed. */
const char *cli_redis_where(const cli_redis_t *r);

/* Check that the campaign is known (the scheduler has its meta data). EX_OK, EX_NOINPUT
 * or EX_UNAVAILABLE, with a message in err. */
int cli_redis_require_campaign(cli_redis_t *r, char *err, size_t errlen);

/* Close the connection, stop the embedded server if one was started (it
 * writes its append-only file first) and free r. NULL allowed. */
void cli_redis_close(cli_redis_t *r);

/* Copy url into dst (size n) with the password of a redis://user:pass@
 * URL replaced by "***", for printing. */
void cli_redis_redact(const char *url, char *dst, size_t n);

/* Take a --redis URL argument: returns a copy to use (borrowed, valid until exit or the
 * next call; exits with EX_OSERR when out of memory) and overwrites any password in arg itself with
 * '*', so that it does not stay readable in /proc/PID/cmdline for the process's life (with a
 * warning on stderr). arg is the argv string, modified in place. */
const char *cli_redis_url_arg(char *arg);

/* When VOLLEY_REDIS_PASSWORD_FILE names a file and VOLLEY_REDIS_PASSWORD is not set, read
 * the password from the file's first line into VOLLEY_REDIS_PASSWORD (where every Redis
 * connection looks for it). EX_OK, or EX_CONFIG (unreadable or empty file) / EX_OSERR with
 * a message in err. */
int cli_redis_password_file(char *err, size_t errlen);

/* The sysexits code for a failed reply: EX_UNAVAILABLE when the connection
 * is broken (r == NULL or c->err), EX_SOFTWARE for an error reply. Writes
 * a message naming what into err. */
int cli_redis_reply_error(redisContext *c, const redisReply *r, const char *what, char *err,
                          size_t errlen);

#endif
