/* cmd_send.c: `volley send CAMPAIGN.json`.
 *
 * The dry run renders every row (streaming the CSV, so memory stays flat
 * however many rows there are), sends nothing, needs no Redis, and prints
 * counts, bytes and every row error. The real send is in send_run.c.
 */
#include <errno.h>
#include <getopt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "cli/campaign.h"
#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "cli/redisconn.h"
#include "cli/send_run.h"
#include "common/err.h"

static void send_usage(FILE *f)
{
    fprintf(f, "usage: volley send CAMPAIGN.json [--redis URL] [--dry-run] [--limit N]\n"
               "                   [--no-progress] [--ca-file FILE] [--insecure] [--sign]\n"
               "                   [--dns SERVERS]\n\n"
               "Send a campaign. Without --redis a private redis-server runs under the\n"
               "campaign's state directory; a second send resumes where the first stopped and\n"
               "sends nothing twice. At the end report.csv is written there and a summary\n"
               "printed.\n"
               "  --redis URL   use that Redis (redis://[user:pass@]host:port[/db], unix:///path)\n"
               "  --dry-run     render every row, send nothing, need no Redis; print counts,\n"
               "                bytes and each rejected row; exit 65 when a row is rejected\n"
               "  --limit N     only the first N data rows (a trial run)\n"
               "  --sign        with --dry-run: also DKIM-sign each message\n"
               "  --no-progress no progress line (none either when stderr is not a terminal)\n"
               "  --ca-file F   trust these CAs for every route (private test CAs)\n"
               "  --insecure    do not verify certificates (tests only)\n"
               "  --dns SERVERS MX lookups of route \"mx\" ask these DNS servers\n"
               "                (IP[:PORT],...; default: /etc/resolv.conf's)\n"
               "  --retry-base-ms N  first backoff of a generic retry (default 60000)\n"
               "  --lease-ms N  how long a claimed row stays this worker's (default 120000)\n");
}

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int dry_run(const char *path, unsigned long limit, int sign)
{
    camp_job_t j;
    int rc = camp_job_open_cmd(&j, path);
    if (rc) return rc;
    msg_out_t *o;
    if (msg_out_new(&o, j.f)) {
        camp_job_close(&j);
        return EX_OSERR;
    }
    unsigned long rows = 0, rendered = 0, rejected = 0;
    uint64_t bytes = 0;
    int code = EX_OK;
    double t0 = mono();
    tpl_csv_row_t *row;
    while ((limit == 0 || rows < limit) && (rc = camp_job_next(&j, &row)) == 1) {
        rows++;
        if (row->nerrors) {
            for (size_t i = 0; i < row->nerrors; i++)
                camp_job_csv_error(&j, &row->errors[i]);
            rejected++;
            continue;
        }
        rc = msg_render(j.f, o, row, time(NULL), sign ? 0 : MSG_NO_DKIM);
        if (rc == VL_EINVAL) {
            camp_job_row_error(&j, msg_out_error(o));
            rejected++;
        } else if (rc) {
            fprintf(stderr, "volley send: row %lu: %s\n", row->row, vl_err_str(rc));
            code = EX_SOFTWARE;
            break;
        } else {
            rendered++;
            bytes += msg_out_size(o);
        }
    }
    double secs = mono() - t0;
    if (rc < 0 && code == EX_OK)
        code = camp_exit_code(j.worst) ? camp_exit_code(j.worst) : EX_DATAERR;
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("dry run of campaign %s: %lu rows, %lu rendered, %lu rejected\n", j.c->id, rows,
           rendered, rejected);
    printf("bytes: %llu (%llu per message%s); shared static parts: %zu bytes, encoded once\n",
           (unsigned long long)bytes, rendered ? (unsigned long long)(bytes / rendered) : 0ULL,
           sign ? ", signed" : ", without DKIM signatures", msg_factory_static_size(j.f));
    printf("time: %.3f s (%.0f messages/s); peak RSS: %.1f MB\n", secs,
           secs > 0 ? (double)rendered / secs : 0.0, (double)ru.ru_maxrss / 1024.0);
    if (code == EX_OK && rejected) code = EX_DATAERR;
    msg_out_free(o);
    camp_job_close(&j);
    return code;
}

int cmd_send(int argc, char **argv)
{
    enum {
        OPT_DRY = 1000,
        OPT_SIGN,
        OPT_NOPROG,
        OPT_REDIS,
        OPT_CA,
        OPT_INSECURE,
        OPT_RETRY,
        OPT_LEASE,
        OPT_DNS
    };
    static const struct option opts[] = {{"dry-run", no_argument, NULL, OPT_DRY},
                                         {"limit", required_argument, NULL, 'n'},
                                         {"sign", no_argument, NULL, OPT_SIGN},
                                         {"no-progress", no_argument, NULL, OPT_NOPROG},
                                         {"redis", required_argument, NULL, OPT_REDIS},
                                         {"ca-file", required_argument, NULL, OPT_CA},
                                         {"insecure", no_argument, NULL, OPT_INSECURE},
                                         {"retry-base-ms", required_argument, NULL, OPT_RETRY},
                                         {"lease-ms", required_argument, NULL, OPT_LEASE},
                                         {"dns", required_argument, NULL, OPT_DNS},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int dry = 0, sign = 0, c;
    unsigned long limit = 0;
    cli_send_opts_t so = {.progress = 1};
    optind = 1;
    while ((c = getopt_long(argc, argv, "n:h", opts, NULL)) != -1) {
        switch (c) {
        case 'h':
            send_usage(stdout);
            return EX_OK;
        case OPT_DRY:
            dry = 1;
            break;
        case OPT_SIGN:
            sign = 1;
            break;
        case OPT_NOPROG:
            so.progress = 0;
            break;
        case OPT_REDIS:
            so.redis_url = cli_redis_url_arg(optarg);
            break;
        case OPT_CA:
            so.ca_file = optarg;
            break;
        case OPT_INSECURE:
            so.insecure = 1;
            break;
        case OPT_DNS:
            so.dns_servers = optarg;
            break;
        case OPT_RETRY:
            so.retry_base_ms = strtoull(optarg, NULL, 10);
            break;
        case OPT_LEASE:
            so.lease_ms = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'n': {
            char *end;
            errno = 0;
            limit = strtoul(optarg, &end, 10);
            if (errno || *end || limit == 0 || optarg[0] == '-') {
                fprintf(stderr, "volley send: --limit wants a positive number, not '%s'\n", optarg);
                return EX_USAGE;
            }
            break;
        }
        default:
            send_usage(stderr);
            return EX_USAGE;
        }
    }
    if (optind != argc - 1) {
        send_usage(stderr);
        return EX_USAGE;
    }
    if (!dry) {
        so.limit = limit;
        return cli_send_run(argv[optind], &so);
    }
    return dry_run(argv[optind], limit, sign);
}
