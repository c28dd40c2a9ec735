/* cmd_check.c: `volley check CAMPAIGN.json`: validate a campaign before
 * anything is sent.
 *
 * Reads the campaign file, the template, the DKIM keys, the providers file
 * and every CSV row, renders every good row (without signing), and lists
 * every problem as file:line:column: message, then a summary line. Exit
 * codes: 0 clean, 65 bad data (CSV, template), 66 a missing file, 78 bad
 * configuration; the worst wins in that order: 66, 78, 65.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "cli/campaign.h"
#include "cli/cmds.h"
#include "cli/exitcodes.h"
#include "common/err.h"

static void check_usage(FILE *f)
{
    fprintf(f, "usage: volley check CAMPAIGN.json\n\n"
               "Validate the campaign file, template, DKIM keys, providers and every CSV row,\n"
               "and render every row without sending. Lists every error as\n"
               "FILE:LINE:COLUMN: message, then a summary.\n"
               "Exit: 0 clean, 65 bad data, 66 missing file, 78 bad configuration.\n");
}

int cmd_check(int argc, char **argv)
{
    static const struct option opts[] = {{"help", no_argument, NULL, 'h'}, {NULL, 0, NULL, 0}};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (c == 'h') {
            check_usage(stdout);
            return EX_OK;
        }
        check_usage(stderr);
        return EX_USAGE;
    }
    if (optind != argc - 1) {
        check_usage(stderr);
        return EX_USAGE;
    }
    camp_job_t j;
    int rc = camp_job_open(&j, argv[optind], 1, camp_print_diag, stdout);
    if (rc == VL_ENOMEM) {
        fprintf(stderr, "volley check: out of memory\n");
        camp_job_close(&j);
        return EX_OSERR;
    }
    unsigned long rows = 0, ok = 0, bad = 0;
    msg_out_t *o = NULL;
    if (j.f && msg_out_new(&o, j.f)) {
        fprintf(stderr, "volley check: out of memory\n");
        camp_job_close(&j);
        return EX_OSERR;
    }
    if (j.csv) {
        tpl_csv_row_t *row;
        time_t now = time(NULL);
        while ((rc = camp_job_next(&j, &row)) == 1) {
            rows++;
            if (row->nerrors) {
                for (size_t i = 0; i < row->nerrors; i++)
                    camp_job_csv_error(&j, &row->errors[i]);
                bad++;
                continue;
            }
            if (!o) {
                ok++;
                continue;
            }
            rc = msg_render(j.f, o, row, now, MSG_NO_DKIM);
            if (rc == VL_EINVAL) {
                camp_job_row_error(&j, msg_out_error(o));
                bad++;
            } else if (rc) {
                fprintf(stderr, "volley check: row %lu: %s\n", row->row, vl_err_str(rc));
                msg_out_free(o);
                camp_job_close(&j);
                return EX_SOFTWARE;
            } else {
                ok++;
            }
        }
    }
    msg_out_free(o);
    int code = camp_exit_code(j.worst);
    if (j.nerrors == 0)
        printf("%s: OK: %lu rows, all valid\n", argv[optind], rows);
    else
        printf("%s: %lu error%s; %lu rows read: %lu valid, %lu rejected%s\n", argv[optind],
               j.nerrors, j.nerrors == 1 ? "" : "s", rows, ok, bad,
               j.csv ? "" : " (the CSV could not be read)");
    camp_job_close(&j);
    return code;
}
