/* redisconn.c: opening the Redis of a campaign; see redisconn.h. */
#include "cli/redisconn.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/exitcodes.h"
#include "cli/url.h"
#include "common/err.h"
#include "scheduler/campaign.h"
#include "scheduler/redis.h"
#include "scheduler/redisproc.h"

struct cli_redis {
    redisContext *c;
    sched_rproc_t *proc; /* the embedded server, or NULL */
    campaign_t *camp;    /* the campaign file, or NULL */
    char *id;            /* owned copy of the campaign id, or NULL */
    char where[512];
};

enum { DEFAULT_TIMEOUT_MS = 5000 };

/* Where the password of a redis://[user]:pass@host URL is: *start and its length, or 0 when
 * there is none. The user info ends at the LAST '@', as scheduler/redis.c parses it, so a
 * password may hold '@' or '/' and still be found whole. */
static size_t password_span(const char *url, size_t *start)
{
    const char *scheme = strstr(url, "://");
    if (!scheme) return 0;
    const char *auth = scheme + 3;
    const char *at = strrchr(auth, '@');
    if (!at) return 0;
    const char *colon = memchr(auth, ':', (size_t)(at - auth));
    if (!colon) return 0;
    *start = (size_t)(colon + 1 - url);
    return (size_t)(at - colon - 1);
}

void cli_redis_redact(const char *url, char *dst, size_t n)
{
    if (n == 0) return;
    size_t start = 0, len = password_span(url, &start);
    if (!len) {
        snprintf(dst, n, "%s", url);
        return;
    }
    snprintf(dst, n, "%.*s***%s", (int)start, url, url + start + len);
}

const char *cli_redis_url_arg(char *arg)
{
    /* Reachable until exit (so not a leak) and replaced if a command is given --redis twice. */
    static char *copy;
    free(copy);
    copy = strdup(arg);
    if (!copy) {
        /* Argument parsing has nothing to unwind yet. */
        fprintf(stderr, "volley: out of memory\n");
        exit(EX_OSERR);
    }
    size_t start = 0, len = password_span(arg, &start);
    if (len) {
        fprintf(stderr,
                "volley: warning: a password in the Redis URL is visible to other users "
                "of this machine; use VOLLEY_REDIS_PASSWORD or VOLLEY_REDIS_PASSWORD_FILE\n");
        memset(arg + start, '*', len);
    }
    return copy;
}

int cli_redis_password_file(char *err, size_t errlen)
{
    const char *file = getenv("VOLLEY_REDIS_PASSWORD_FILE");
    const char *env = getenv("VOLLEY_REDIS_PASSWORD");
    if (!file || !*file || (env && *env)) return EX_OK;
    char *pw = NULL;
    if (cli_read_secret(file, "VOLLEY_REDIS_PASSWORD", &pw, err, errlen)) return EX_CONFIG;
    /* scheduler/redis.c reads it from the environment on every (re)connect; the
     * environment, unlike the command line, is readable only by this user. */
    int rc = setenv("VOLLEY_REDIS_PASSWORD", pw, 1);
    explicit_bzero(pw, strlen(pw));
    free(pw);
    if (rc) {
        snprintf(err, errlen, "out of memory");
        return EX_OSERR;
    }
    return EX_OK;
}

int cli_redis_reply_error(redisContext *c, const redisReply *r, const char *what, char *err,
                          size_t errlen)
{
    if (!r || c->err) {
        snprintf(err, errlen, "Redis: %s: %s", what, c->err ? c->errstr : "no reply");
        return EX_UNAVAILABLE;
    }
    snprintf(err, errlen, "Redis: %s: %.*s", what, (int)r->len, r->str ? r->str : "");
    return EX_SOFTWARE;
}

static int connect_url(cli_redis_t *r, const char *url, int timeout_ms, char *err, size_t errlen)
{
    char why[256] = "";
    r->c = sched_redis_connect_sync(url, timeout_ms > 0 ? timeout_ms : DEFAULT_TIMEOUT_MS, why,
                                    sizeof why);
    if (!r->c) {
        snprintf(err, errlen, "cannot reach Redis at %s: %s", r->where,
                 why[0] ? why : "connection failed");
        return EX_UNAVAILABLE;
    }
    return EX_OK;
}

int cli_redis_open_url(cli_redis_t **out, const char *url, int timeout_ms, char *err, size_t errlen)
{
    *out = NULL;
    cli_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return EX_OSERR;
    }
    cli_redis_redact(url, r->where, sizeof r->where);
    int rc = connect_url(r, url, timeout_ms, err, errlen);
    if (rc) {
        cli_redis_close(r);
        return rc;
    }
    *out = r;
    return EX_OK;
}

/* A campaign file argument: load it, reporting its problems on stderr. */
static int load_campaign(cli_redis_t *r, const char *path, char *err, size_t errlen)
{
    int rc = camp_load(&r->camp, path, camp_print_diag, stderr);
    if (rc == VL_ENOENT) {
        snprintf(err, errlen, "no campaign file %s", path);
        return EX_NOINPUT;
    }
    if (rc == VL_ENOMEM) {
        snprintf(err, errlen, "out of memory");
        return EX_OSERR;
    }
    if (rc) {
        snprintf(err, errlen, "the campaign file %s does not load (see above)", path);
        return EX_CONFIG;
    }
    r->id = strdup(r->camp->id);
    if (!r->id) {
        snprintf(err, errlen, "out of memory");
        return EX_OSERR;
    }
    return EX_OK;
}

/* With --redis, an argument that names an existing regular file is taken as
 * the campaign file (its id is used); anything else is the id itself. */
static int is_campaign_file(const char *arg)
{
    struct stat st;
    return (strchr(arg, '/') || strstr(arg, ".json")) && stat(arg, &st) == 0 && S_ISREG(st.st_mode);
}

int cli_redis_open_campaign(cli_redis_t **out, const char *arg, const char *url, unsigned flags,
                            int timeout_ms, char *err, size_t errlen)
{
    *out = NULL;
    cli_redis_t *r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        return EX_OSERR;
    }
    int rc = EX_OK;
    if (url) {
        if (is_campaign_file(arg))
            rc = load_campaign(r, arg, err, errlen);
        else if (!(r->id = strdup(arg)))
            rc = EX_OSERR;
        if (!rc) {
            cli_redis_redact(url, r->where, sizeof r->where);
            rc = connect_url(r, url, timeout_ms, err, errlen);
        }
    } else {
        rc = load_campaign(r, arg, err, errlen);
        struct stat st;
        if (!rc && !(flags & CLI_REDIS_CREATE) && stat(r->camp->state_dir, &st) != 0) {
            snprintf(err, errlen, "campaign %s has never been sent (no state in %s)", r->id,
                     r->camp->state_dir);
            rc = EX_NOINPUT;
        }
        if (!rc) {
            char why[256] = "";
            snprintf(r->where, sizeof r->where, "embedded redis in %s", r->camp->state_dir);
            int prc = sched_rproc_start(&r->proc, r->camp->state_dir, why, sizeof why);
            if (prc == VL_ESTATE && !(flags & CLI_REDIS_CREATE)) {
                /* A `send` of this campaign is running with its server: talk
                 * to that one (status, pause and cancel are meant for exactly
                 * this), and leave it running at the end. */
                snprintf(r->where, sizeof r->where, "the running redis of %s", r->camp->state_dir);
                /* As a path the URL parser takes: absolute (the state
                 * directory is relative when the campaign file was). */
                char dir[PATH_MAX], sock[PATH_MAX + 16];
                if (!realpath(r->camp->state_dir, dir)) {
                    snprintf(err, errlen, "state directory %s: %s", r->camp->state_dir,
                             strerror(errno));
                    rc = EX_UNAVAILABLE;
                } else {
                    snprintf(sock, sizeof sock, "%s/redis.sock", dir);
                    rc = connect_url(r, sock, timeout_ms, err, errlen);
                }
            } else if (prc) {
                snprintf(err, errlen, "cannot start the campaign's redis-server in %s: %s",
                         r->camp->state_dir, why[0] ? why : "failed");
                rc = EX_UNAVAILABLE;
            } else {
                rc = connect_url(r, sched_rproc_socket(r->proc), timeout_ms, err, errlen);
            }
        }
    }
    if (rc == EX_OSERR && !err[0]) snprintf(err, errlen, "out of memory");
    if (!rc && (flags & CLI_REDIS_KNOWN)) rc = cli_redis_require_campaign(r, err, errlen);
    if (rc) {
        cli_redis_close(r);
        return rc;
    }
    *out = r;
    return EX_OK;
}

int cli_redis_require_campaign(cli_redis_t *r, char *err, size_t errlen)
{
    int n = sched_campaign_exists(r->c, r->id, err, errlen);
    if (n < 0) return n == VL_ENETWORK ? EX_UNAVAILABLE : EX_SOFTWARE;
    if (n == 0) {
        snprintf(err, errlen, "unknown campaign '%s' (nothing in %s)", r->id, r->where);
        return EX_NOINPUT;
    }
    return EX_OK;
}

redisContext *cli_redis_ctx(const cli_redis_t *r)
{
    return r->c;
}

const char *cli_redis_id(const cli_redis_t *r)
{
    return r->id;
}

const campaign_t *cli_redis_campaign(const cli_redis_t *r)
{
    return r->camp;
}

const char *cli_redis_where(const cli_redis_t *r)
{
    return r->where;
}

void cli_redis_close(cli_redis_t *r)
{
    if (!r) return;
    if (r->c) redisFree(r->c);
    /* After the connection is gone, so the server's SHUTDOWN sees no client. */
    sched_rproc_stop(r->proc);
    camp_free(r->camp);
    free(r->id);
    free(r);
}
