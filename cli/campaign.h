/* campaign.h: the campaign file (JSON), and opening everything a campaign
 * names (template, recipients CSV, DKIM keys) for check, render and send.
 *
 * Keys: id, recipients (CSV path), template (path), providers (optional
 * path), vars (object), schedule {start_at}, dkim ({domain, selector, key}
 * or a list of them), state_dir (default .volley/<id>/ beside the campaign
 * file). Paths are relative to the campaign file. Problems are reported
 * through a tplf_diag_fn with file, line and column, all of them.
 */
#ifndef VL_CLI_CAMPAIGN_H
#define VL_CLI_CAMPAIGN_H

#include <stddef.h>

#include <jansson.h>

#include "templates/csv.h"
#include "templates/dkim.h"
#include "templates/message.h"
#include "templates/tplfile.h"

typedef struct camp_dkim {
    char *domain;   /* owned */
    char *selector; /* owned */
    char *key;      /* owned: the PEM file, resolved against the campaign file */
} camp_dkim_t;

typedef struct campaign {
    char *path;          /* owned: the campaign file as given */
    char *id;            /* owned */
    char *recipients;    /* owned: resolved path */
    char *template_path; /* owned: resolved path */
    char *providers;     /* owned: resolved path, or NULL for the built-in defaults */
    json_t *vars;        /* owned reference to an object, or NULL */
    char *start_at;      /* owned, or NULL */
    camp_dkim_t *dkim;   /* owned array */
    size_t ndkim;
    char *state_dir; /* owned: resolved */
} campaign_t;

/* Load the campaign file at path. Every problem goes to diag. Returns 0 and
 * *out (free with camp_free()); VL_ENOENT (no such file), VL_ECONFIG (bad
 * JSON or bad keys), VL_ENOMEM. */
int camp_load(campaign_t **out, const char *path, tplf_diag_fn diag, void *ud);

void camp_free(campaign_t *c);

/* Everything a command needs to render a campaign's rows. */
typedef struct camp_job {
    campaign_t *c;
    tplf_t *tpl;
    tpl_csv_reader_t *csv;
    dkim_key_t **keys;
    size_t nkeys;
    msg_factory_t *f;
    tpl_csv_row_t *pending; /* the first row, read to learn the header */
    int pending_rc;         /* what that read returned (1 row, 0 end) */
    int first;              /* camp_job_next() has yet to hand out `pending` */
    int worst;              /* the worst tplf_kind reported so far, 0 for none */
    unsigned long nerrors;  /* diagnostics reported */
    tplf_diag_fn diag;      /* the caller's */
    void *ud;
} camp_job_t;

/* Open a campaign: the campaign file, the template, the DKIM keys, the
 * CSV (its header) and the message factory, reporting every problem to diag
 * (each counted in j->nerrors, the worst kind in j->worst). With
 * keep_going, a problem in one piece does not stop the others from being
 * checked (for `volley check`). Returns 0 when the job can render rows,
 * else a negative code (see j->worst for why). j is always initialised and
 * must be released with camp_job_close(). */
int camp_job_open(camp_job_t *j, const char *path, int keep_going, tplf_diag_fn diag, void *ud);

/* The next CSV row (borrowed until the next call): 1 and *row, 0 at the end,
 * or a negative code on a fatal CSV error (already reported to diag). */
int camp_job_next(camp_job_t *j, tpl_csv_row_t **row);

void camp_job_close(camp_job_t *j);

/* camp_job_open for a command: problems go to stderr; returns 0, or the
 * sysexits code to exit with (j is then already closed). */
int camp_job_open_cmd(camp_job_t *j, const char *path);

/* Report a CSV error through the job's diag (counted). */
void camp_job_csv_error(camp_job_t *j, const tpl_csv_error_t *e);

/* The sysexits code for the worst kind reported: 0, 65, 66 or 78. */
int camp_exit_code(int worst_kind);

/* A tplf_diag_fn that prints "file:line:column: message" (the location
 * parts left out when unknown) on the FILE * given as ud. */
void camp_print_diag(void *ud, enum tplf_kind kind, const char *file, int line, int column,
                     const char *message);

/* Report a row error of msg_render() through the job's diag, located in the
 * recipients file, and count it as bad data. */
void camp_job_row_error(camp_job_t *j, const msg_error_t *e);

#endif
