/* cmd_render.c: `volley render CAMPAIGN.json [--row N]`: write the exact
 * bytes that would be sent for data row N (1-based, default 1) to stdout,
 * DKIM signatures included. Errors go to stderr with their location. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli/campaign.h"
#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "common/err.h"

static void render_usage(FILE *f)
{
    fprintf(f, "usage: volley render CAMPAIGN.json [--row N]\n\n"
               "Print the RFC 5322 message for data row N (1-based, default 1) exactly as it\n"
               "would be sent, DKIM signatures included.\n"
               "  -r, --row N   the data row (the header row is not counted)\n");
}

int cmd_render(int argc, char **argv)
{
    static const struct option opts[] = {{"row", required_argument, NULL, 'r'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    unsigned long want = 1;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "r:h", opts, NULL)) != -1) {
        if (c == 'h') {
            render_usage(stdout);
            return EX_OK;
        }
        if (c == 'r') {
            char *end;
            errno = 0;
            want = strtoul(optarg, &end, 10);
            if (errno || *end || want == 0 || optarg[0] == '-') {
                fprintf(stderr, "volley render: --row wants a row number from 1, not '%s'\n",
                        optarg);
                return EX_USAGE;
            }
            continue;
        }
        render_usage(stderr);
        return EX_USAGE;
    }
    if (optind != argc - 1) {
        render_usage(stderr);
        return EX_USAGE;
    }
    camp_job_t j;
    int rc = camp_job_open_cmd(&j, argv[optind]);
    if (rc) return rc;
    tpl_csv_row_t *row = NULL;
    unsigned long seen = 0;
    while ((rc = camp_job_next(&j, &row)) == 1) {
        seen = row->row;
        if (row->row == want) break;
    }
    int code = EX_OK;
    if (rc < 0) {
        code = camp_exit_code(j.worst);
        if (!code) code = EX_DATAERR;
    } else if (rc == 0) {
        fprintf(stderr, "volley render: there is no row %lu: %s has %lu data row%s\n", want,
                j.c->recipients, seen, seen == 1 ? "" : "s");
        code = EX_DATAERR;
    } else if (row->nerrors) {
        for (size_t i = 0; i < row->nerrors; i++)
            camp_job_csv_error(&j, &row->errors[i]);
        code = EX_DATAERR;
    } else {
        msg_out_t *o;
        if (msg_out_new(&o, j.f)) {
            camp_job_close(&j);
            return EX_OSERR;
        }
        rc = msg_render(j.f, o, row, time(NULL), 0);
        if (rc == VL_EINVAL) {
            camp_job_row_error(&j, msg_out_error(o));
            code = EX_DATAERR;
        } else if (rc) {
            fprintf(stderr, "volley render: row %lu: %s\n", want, vl_err_str(rc));
            code = EX_SOFTWARE;
        } else {
            size_t n;
            const struct iovec *iov = msg_out_iov(o, &n);
            for (size_t i = 0; i < n; i++)
                if (fwrite(iov[i].iov_base, 1, iov[i].iov_len, stdout) != iov[i].iov_len)
                    code = EX_IOERR;
            if (fflush(stdout) != 0) code = EX_IOERR;
        }
        msg_out_free(o);
    }
    camp_job_close(&j);
    return code;
}
