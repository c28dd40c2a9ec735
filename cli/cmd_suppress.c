/* cmd_suppress.c: `volley suppress import FILE | list | check ADDRESS`: the
 * global suppression list (scheduler/suppress.h) that every campaign
 * consults before sending. Hard bounces join it on their own; this
 * command adds addresses a person knows about (unsubscribes, complaints). */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/redisconn.h"
#include "common/err.h"
#include "scheduler/suppress.h"
#include "templates/csv.h"

enum {
    SUPPRESS_BATCH = 1000, /* addresses per sched_suppress_add call */
    SHOW_INVALID = 20,     /* invalid lines printed one by one; the rest are counted */
};

#define DEFAULT_REDIS "redis://127.0.0.1:6379"

static void suppress_usage(FILE *f)
{
    fprintf(f,
            "usage: volley suppress import FILE [--redis URL]\n"
            "       volley suppress list [--redis URL]\n"
            "       volley suppress check ADDRESS [--redis URL]\n\n"
            "The suppression list: addresses no campaign sends to (they end as \"suppressed\").\n"
            "Hard bounces are added automatically.\n"
            "  import FILE    add the addresses of FILE: a CSV file with an `email` column, or\n"
            "                 one address per line; lines starting with # are ignored. Each\n"
            "                 address is checked and lowercased; invalid ones are listed with\n"
            "                 file:line and skipped. Prints how many were added, already\n"
            "                 suppressed, and invalid.\n"
            "  list           print every suppressed address, one per line\n"
            "  check ADDRESS  say whether ADDRESS is suppressed (exit 0 if it is, 1 if not)\n"
            "  --redis URL    redis://[user:pass@]host:port[/db] or unix:///path.sock; without\n"
            "                 it, $VOLLEY_REDIS, else " DEFAULT_REDIS "\n"
            "Exit codes: 0, 64 usage, 66 no such FILE, 69 Redis unavailable.\n");
}

/* ASCII-lowercase s in place: the list is case-insensitive by convention
 * (domains are; local parts are in practice). */
static void lower(char *s)
{
    for (; *s; s++)
        *s = (char)tolower((unsigned char)*s);
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t' || s[n - 1] == '\r' || s[n - 1] == '\n'))
        s[--n] = '\0';
    return s;
}

/* Field `want` (0-based) of a one-line CSV record, unquoted, into dst (size n).
 * Returns 0, 1 when the line has fewer fields, -1 for an unclosed quote. */
static int csv_field(const char *line, int want, char *dst, size_t n)
{
    int field = 0;
    const char *p = line;
    for (;;) {
        size_t len = 0;
        int quoted = 0;
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p == '"') {
            quoted = 1;
            p++;
        }
        for (;;) {
            char c = *p;
            if (quoted) {
                if (!c) return -1;
                if (c == '"' && p[1] == '"') {
                    p += 2;
                } else if (c == '"') {
                    quoted = 0;
                    p++;
                    continue;
                } else {
                    p++;
                }
            } else {
                if (!c || c == ',' || c == '\r' || c == '\n') break;
                p++;
            }
            if (field == want && len + 1 < n) dst[len++] = c;
        }
        if (field == want) {
            dst[len] = '\0';
            return 0;
        }
        if (*p != ',') return 1;
        p++;
        field++;
    }
}

/* The exit code for a scheduler error (suppress.h). */
static int redis_exit(int rc)
{
    return rc == VL_ENETWORK ? EX_UNAVAILABLE : rc == VL_ENOMEM ? EX_OSERR : EX_SOFTWARE;
}

typedef struct importer {
    cli_redis_t *r;
    char *batch[SUPPRESS_BATCH];
    size_t n;
    long long added, already, invalid;
} importer_t;

static int flush_batch(importer_t *im)
{
    if (im->n == 0) return EX_OK;
    char err[512];
    long long added = 0;
    int rc = sched_suppress_add(cli_redis_ctx(im->r), (const char *const *)im->batch, im->n, &added,
                                err, sizeof err);
    int code = EX_OK;
    if (rc) {
        code = redis_exit(rc);
        fprintf(stderr, "volley suppress: %s\n", err);
    } else {
        im->added += added;
        im->already += (long long)im->n - added;
    }
    for (size_t i = 0; i < im->n; i++)
        free(im->batch[i]);
    im->n = 0;
    return code;
}

static void bad_line(importer_t *im, const char *file, unsigned long line, const char *addr,
                     const char *why)
{
    if (im->invalid++ < SHOW_INVALID)
        fprintf(stderr, "%s:%lu: %s%s%s\n", file, line, addr[0] ? addr : "", addr[0] ? ": " : "",
                why);
}

static int add_address(importer_t *im, const char *file, unsigned long line, char *addr)
{
    tpl_email_info_t info;
    if (tpl_email_check(addr, strlen(addr), &info)) {
        bad_line(im, file, line, addr, info.error ? info.error : "not a valid address");
        return EX_OK;
    }
    lower(addr);
    if (!(im->batch[im->n] = strdup(addr))) {
        fprintf(stderr, "volley suppress: out of memory\n");
        return EX_OSERR;
    }
    if (++im->n == SUPPRESS_BATCH) return flush_batch(im);
    return EX_OK;
}

static int do_import(cli_redis_t *r, const char *file)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        fprintf(stderr, "volley suppress: %s: %s\n", file, strerror(errno));
        return errno == ENOENT || errno == EACCES ? EX_NOINPUT : EX_IOERR;
    }
    importer_t im = {.r = r};
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    unsigned long lineno = 0;
    int mode = 0; /* 0 unknown yet, 1 one address per line, 2 CSV */
    int col = -1;
    int code = EX_OK;
    char field[1024];
    while (!code && (len = getline(&line, &cap, f)) != -1) {
        lineno++;
        char *s = line;
        if (lineno == 1 && (unsigned char)s[0] == 0xEF && (unsigned char)s[1] == 0xBB &&
            (unsigned char)s[2] == 0xBF)
            s += 3; /* a UTF-8 byte order mark */
        s = trim(s);
        if (!*s || *s == '#') continue;
        if (mode == 0) {
            /* The first line decides: a header with an `email` column makes
             * the file CSV; an address (it has an '@') means a plain list. */
            if (!strchr(s, '@') || strchr(s, ',')) {
                for (int i = 0;; i++) {
                    int rc = csv_field(s, i, field, sizeof field);
                    if (rc) break;
                    if (!strcasecmp(trim(field), "email")) {
                        col = i;
                        break;
                    }
                }
                if (col < 0 && !strchr(s, '@')) {
                    fprintf(stderr,
                            "volley suppress: %s:%lu: no `email` column in the CSV header, and "
                            "not an address either\n",
                            file, lineno);
                    code = EX_DATAERR;
                    break;
                }
            }
            mode = col >= 0 ? 2 : 1;
            if (mode == 2) continue;
        }
        if (mode == 1) {
            code = add_address(&im, file, lineno, s);
            continue;
        }
        int rc = csv_field(s, col, field, sizeof field);
        if (rc < 0) {
            bad_line(&im, file, lineno, "", "unclosed quote (a record must fit on one line)");
            continue;
        }
        char *addr = trim(field);
        if (rc > 0 || !*addr) {
            bad_line(&im, file, lineno, "", "no address in the email column");
            continue;
        }
        code = add_address(&im, file, lineno, addr);
    }
    if (!code && ferror(f)) {
        fprintf(stderr, "volley suppress: %s: read error\n", file);
        code = EX_IOERR;
    }
    if (!code) code = flush_batch(&im);
    for (size_t i = 0; i < im.n; i++)
        free(im.batch[i]);
    free(line);
    fclose(f);
    if (im.invalid > SHOW_INVALID)
        fprintf(stderr, "%s: ... and %lld more invalid lines\n", file, im.invalid - SHOW_INVALID);
    if (!code || code == EX_DATAERR)
        printf("%s: %lld added, %lld already suppressed, %lld invalid\n", file, im.added,
               im.already, im.invalid);
    return code;
}

static int print_address(const char *addr, void *ud)
{
    (void)ud;
    printf("%s\n", addr);
    return 0;
}

static int do_list(cli_redis_t *r)
{
    char err[512];
    int rc = sched_suppress_list(cli_redis_ctx(r), print_address, NULL, err, sizeof err);
    if (rc) {
        fprintf(stderr, "volley suppress: %s\n", err);
        return redis_exit(rc);
    }
    return fflush(stdout) ? EX_IOERR : EX_OK;
}

static int do_check(cli_redis_t *r, const char *address)
{
    char *a = strdup(address);
    if (!a) return EX_OSERR;
    lower(a);
    char err[512];
    int rc = sched_suppress_has(cli_redis_ctx(r), a, err, sizeof err);
    int code;
    if (rc < 0) {
        code = redis_exit(rc);
        fprintf(stderr, "volley suppress: %s\n", err);
    } else {
        printf("%s is %ssuppressed\n", a, rc ? "" : "not ");
        code = rc ? EX_OK : 1;
    }
    free(a);
    return code;
}

int cmd_suppress(int argc, char **argv)
{
    static const struct option opts[] = {{"redis", required_argument, NULL, 'R'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *url = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'R') {
            url = cli_redis_url_arg(optarg);
        } else if (c == 'h') {
            suppress_usage(stdout);
            return EX_OK;
        } else {
            suppress_usage(stderr);
            return EX_USAGE;
        }
    }
    int nargs = argc - optind;
    const char *sub = nargs > 0 ? argv[optind] : "";
    if (!((!strcmp(sub, "import") && nargs == 2) || (!strcmp(sub, "list") && nargs == 1) ||
          (!strcmp(sub, "check") && nargs == 2))) {
        suppress_usage(stderr);
        return EX_USAGE;
    }
    const char *from = "--redis";
    if (!url && (url = getenv("VOLLEY_REDIS")) && *url) {
        from = "VOLLEY_REDIS";
    } else if (!url) {
        url = DEFAULT_REDIS;
        from = "the default; set --redis or VOLLEY_REDIS to change it";
    }
    char shown[512];
    cli_redis_redact(url, shown, sizeof shown);
    if (strcmp(sub, "list"))
        fprintf(stderr, "volley suppress: using Redis at %s (%s)\n", shown, from);
    if (!strcmp(sub, "import")) {
        /* A missing file is reported before Redis is reached. */
        FILE *probe = fopen(argv[optind + 1], "r");
        if (!probe) {
            fprintf(stderr, "volley suppress: %s: %s\n", argv[optind + 1], strerror(errno));
            return EX_NOINPUT;
        }
        fclose(probe);
    }
    char err[1024];
    cli_redis_t *r;
    int code = cli_redis_open_url(&r, url, 0, err, sizeof err);
    if (code) {
        fprintf(stderr, "volley suppress: %s\n", err);
        return code;
    }
    if (!strcmp(sub, "import"))
        code = do_import(r, argv[optind + 1]);
    else if (!strcmp(sub, "list"))
        code = do_list(r);
    else
        code = do_check(r, argv[optind + 1]);
    cli_redis_close(r);
    return code;
}
