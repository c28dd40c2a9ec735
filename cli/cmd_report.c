/* cmd_report.c: `volley report CAMPAIGN [--redis URL] [--format F] [-o FILE]`:
 * a campaign's results from Redis, as a summary or row by row (report.h). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/redisconn.h"
#include "cli/report.h"
#include "common/err.h"

static void report_usage(FILE *f)
{
    fprintf(f,
            "usage: volley report CAMPAIGN [--redis URL] [--format text|csv|json|html] [-o FILE]\n"
            "\n"
            "Report a campaign's results. CAMPAIGN is the campaign file (its embedded Redis in\n"
            "the state directory is started for the report), or with --redis the campaign id.\n"
            "  --redis URL      redis://[user:pass@]host:port[/db] or unix:///path.sock\n"
            "                   (a password is better given in VOLLEY_REDIS_PASSWORD)\n"
            "  -f, --format F   text (default): counts by state, provider and reply code,\n"
            "                   the most common reply texts, duration and throughput;\n"
            "                   csv: row,email,provider,status,attempts,code,enhanced_code,\n"
            "                   response,first_attempt_at,last_attempt_at (RFC 4180, times\n"
            "                   RFC 3339 UTC); json: one object per line, same fields;\n"
            "                   html: a self-contained page\n"
            "  -o, --output F   write to F (atomically: a temporary file renamed) instead of\n"
            "                   standard output\n"
            "Rows are read from Redis in batches, so memory stays flat for any campaign size.\n"
            "Exit codes: 0, 64 usage, 66 unknown campaign, 69 Redis unavailable, 78 bad\n"
            "campaign file.\n");
}

/* Map a cli_report_write() code to an exit code. */
static int report_exit(int rc)
{
    switch (rc) {
    case 0:
        return EX_OK;
    case VL_EINVAL:
        return EX_USAGE;
    case VL_ENOENT:
        return EX_NOINPUT;
    case VL_ESTATE: /* a campaign of an older layout, as send says */
        return EX_DATAERR;
    case VL_EREDIS:
    case VL_ENETWORK:
        return EX_UNAVAILABLE;
    case VL_EIO:
        return EX_IOERR;
    default:
        return EX_SOFTWARE;
    }
}

/* Write the report to path through a temporary file in the same directory,
 * renamed over path only once complete, so a reader never sees half. */
static int report_to_file(redisContext *c, const char *id, const char *format, const char *path,
                          char *err, size_t errlen)
{
    size_t n = strlen(path) + 16;
    char *tmp = malloc(n);
    if (!tmp) {
        snprintf(err, errlen, "out of memory");
        return VL_ENOMEM;
    }
    snprintf(tmp, n, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return VL_EIO;
    }
    FILE *f = fdopen(fd, "w");
    if (!f) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        free(tmp);
        return VL_EIO;
    }
    int rc = cli_report_write(c, id, format, f, err, errlen);
    if (!rc && (fflush(f) != 0 || fsync(fileno(f)) != 0)) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        rc = VL_EIO;
    }
    if (fclose(f) != 0 && !rc) {
        snprintf(err, errlen, "%s: %s", tmp, strerror(errno));
        rc = VL_EIO;
    }
    if (!rc && rename(tmp, path) != 0) {
        snprintf(err, errlen, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
        rc = VL_EIO;
    }
    if (rc) unlink(tmp);
    free(tmp);
    return rc;
}

int cmd_report(int argc, char **argv)
{
    static const struct option opts[] = {{"redis", required_argument, NULL, 'R'},
                                         {"format", required_argument, NULL, 'f'},
                                         {"output", required_argument, NULL, 'o'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    const char *url = NULL, *format = "text", *output = NULL;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "f:o:h", opts, NULL)) != -1) {
        switch (c) {
        case 'R':
            url = cli_redis_url_arg(optarg);
            break;
        case 'f':
            format = optarg;
            break;
        case 'o':
            output = optarg;
            break;
        case 'h':
            report_usage(stdout);
            return EX_OK;
        default:
            report_usage(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc - 1) {
        report_usage(stderr);
        return EX_USAGE;
    }
    if (!cli_report_format_ok(format)) {
        fprintf(stderr, "volley report: unknown format '%s' (text, csv, json or html)\n", format);
        return EX_USAGE;
    }
    char err[1024] = "";
    cli_redis_t *r;
    int code = cli_redis_open_campaign(&r, argv[optind], url, CLI_REDIS_KNOWN, 0, err, sizeof err);
    if (code) {
        fprintf(stderr, "volley report: %s\n", err);
        return code;
    }
    int rc =
        output
            ? report_to_file(cli_redis_ctx(r), cli_redis_id(r), format, output, err, sizeof err)
            : cli_report_write(cli_redis_ctx(r), cli_redis_id(r), format, stdout, err, sizeof err);
    if (rc) fprintf(stderr, "volley report: %s\n", err);
    cli_redis_close(r);
    return report_exit(rc);
}
