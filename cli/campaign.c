/* campaign.c: the campaign file and opening a campaign's parts (see campaign.h). */
#include "cli/campaign.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/exitcodes.h"
#include "common/err.h"
#include "ratelimit/provider.h"

struct loader {
    campaign_t *c;
    char *text;
    size_t len;
    tplf_diag_fn diag;
    void *ud;
    int nerr;
};

__attribute__((format(printf, 4, 5))) static void report(struct loader *ld, enum tplf_kind kind,
                                                         const char *where, const char *fmt, ...)
{
    ld->nerr++;
    va_list ap;
    va_start(ap, fmt);
    tplf_vreport(ld->diag, ld->ud, kind, ld->c->path, ld->text, ld->len, where, fmt, ap);
    va_end(ap);
}

/* A string member as an owned copy, or NULL (reported when of the wrong type). */
static char *get_str(struct loader *ld, json_t *obj, const char *key, const char *where,
                     bool required)
{
    json_t *v = json_object_get(obj, key);
    if (!v) {
        if (required) report(ld, TPLF_CONFIG, NULL, "the campaign has no `%s`", where);
        return NULL;
    }
    if (!json_is_string(v) || json_string_length(v) == 0) {
        report(ld, TPLF_CONFIG, where, "`%s` must be a non-empty string", where);
        return NULL;
    }
    return strdup(json_string_value(v));
}

static char *resolve(struct loader *ld, char *rel)
{
    if (!rel) return NULL;
    char *p = tplf_path_join(ld->c->path, rel);
    free(rel);
    return p;
}

static bool valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64 || id[0] == '.') return false;
    for (size_t i = 0; i < n; i++) {
        char c = id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static void load_dkim_entry(struct loader *ld, json_t *v, const char *where, camp_dkim_t *d)
{
    char w[96];
    if (!json_is_object(v)) {
        report(ld, TPLF_CONFIG, where, "`%s` must be an object {domain, selector, key}", where);
        return;
    }
    const char *k;
    json_t *x;
    json_object_foreach(v, k, x)
    {
        if (strcmp(k, "domain") && strcmp(k, "selector") && strcmp(k, "key")) {
            snprintf(w, sizeof w, "%s.%s", where, k);
            report(ld, TPLF_CONFIG, w, "unknown key `%s` in `%s` (known: domain, selector, key)", k,
                   where);
        }
    }
    snprintf(w, sizeof w, "%s.domain", where);
    d->domain = get_str(ld, v, "domain", w, true);
    snprintf(w, sizeof w, "%s.selector", where);
    d->selector = get_str(ld, v, "selector", w, true);
    snprintf(w, sizeof w, "%s.key", where);
    d->key = resolve(ld, get_str(ld, v, "key", w, true));
}

static void load_root(struct loader *ld, json_t *root)
{
    campaign_t *c = ld->c;
    static const char *const known[] = {"id",   "recipients", "template", "providers",
                                        "vars", "schedule",   "dkim",     "state_dir"};
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v)
    {
        bool ok = false;
        for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
            ok = ok || !strcmp(key, known[i]);
        if (!ok)
            report(ld, TPLF_CONFIG, key,
                   "unknown key `%s` (known: id, recipients, template, providers, vars, "
                   "schedule, dkim, state_dir)",
                   key);
    }
    c->id = get_str(ld, root, "id", "id", true);
    if (c->id && !valid_id(c->id))
        report(ld, TPLF_CONFIG, "id",
               "`id` must be 1 to 64 letters, digits, '-', '_' or '.' (it names keys, files "
               "and Message-IDs)");
    c->recipients = resolve(ld, get_str(ld, root, "recipients", "recipients", true));
    c->template_path = resolve(ld, get_str(ld, root, "template", "template", true));
    c->providers = resolve(ld, get_str(ld, root, "providers", "providers", false));
    json_t *vars = json_object_get(root, "vars");
    if (vars) {
        if (json_is_object(vars))
            c->vars = json_incref(vars);
        else
            report(ld, TPLF_CONFIG, "vars", "`vars` must be an object of name -> value");
    }
    json_t *sched = json_object_get(root, "schedule");
    if (sched) {
        if (!json_is_object(sched)) {
            report(ld, TPLF_CONFIG, "schedule", "`schedule` must be an object {start_at}");
        } else {
            json_object_foreach(sched, key, v)
            {
                if (strcmp(key, "start_at")) {
                    char w[96];
                    snprintf(w, sizeof w, "schedule.%s", key);
                    report(ld, TPLF_CONFIG, w, "unknown key `%s` in `schedule` (known: start_at)",
                           key);
                }
            }
            c->start_at = get_str(ld, sched, "start_at", "schedule.start_at", false);
        }
    }
    json_t *dk = json_object_get(root, "dkim");
    if (dk) {
        size_t n = json_is_array(dk) ? json_array_size(dk) : 1;
        c->dkim = calloc(n ? n : 1, sizeof *c->dkim);
        if (c->dkim) {
            c->ndkim = n;
            if (json_is_array(dk)) {
                for (size_t i = 0; i < n; i++) {
                    char w[32];
                    snprintf(w, sizeof w, "dkim.%zu", i);
                    load_dkim_entry(ld, json_array_get(dk, i), w, &c->dkim[i]);
                }
            } else {
                load_dkim_entry(ld, dk, "dkim", &c->dkim[0]);
            }
        }
    }
    char *sd = get_str(ld, root, "state_dir", "state_dir", false);
    if (sd) {
        c->state_dir = resolve(ld, sd);
    } else if (c->id) {
        char rel[128];
        snprintf(rel, sizeof rel, ".volley/%s/", c->id);
        c->state_dir = tplf_path_join(c->path, rel);
    }
}

int camp_load(campaign_t **out, const char *path, tplf_diag_fn diag, void *ud)
{
    *out = NULL;
    campaign_t *c = calloc(1, sizeof *c);
    if (!c || !(c->path = strdup(path))) {
        free(c);
        return VL_ENOMEM;
    }
    struct loader ld = {c, NULL, 0, diag, ud, 0};
    int rc = tplf_read_file(path, 1u << 20, &ld.text, &ld.len);
    if (rc) {
        report(&ld, rc == VL_ETOOBIG ? TPLF_CONFIG : TPLF_NOINPUT, NULL,
               "cannot read the campaign file: %s",
               rc == VL_ENOENT    ? "no such file"
               : rc == VL_ETOOBIG ? "larger than 1 MB"
                                  : "not a readable file");
        camp_free(c);
        return rc == VL_ETOOBIG ? VL_ECONFIG : rc == VL_ENOMEM ? rc : VL_ENOENT;
    }
    json_error_t jerr;
    json_t *root = json_loadb(ld.text, ld.len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        ld.nerr++;
        if (diag) diag(ud, TPLF_CONFIG, path, jerr.line, jerr.column, jerr.text);
    } else if (!json_is_object(root)) {
        report(&ld, TPLF_CONFIG, NULL, "the campaign file must hold a JSON object");
    } else {
        load_root(&ld, root);
    }
    json_decref(root);
    free(ld.text);
    if (ld.nerr) {
        camp_free(c);
        return VL_ECONFIG;
    }
    *out = c;
    return 0;
}

void camp_free(campaign_t *c)
{
    if (!c) return;
    free(c->path);
    free(c->id);
    free(c->recipients);
    free(c->template_path);
    free(c->providers);
    if (c->vars) json_decref(c->vars);
    free(c->start_at);
    for (size_t i = 0; i < c->ndkim; i++) {
        free(c->dkim[i].domain);
        free(c->dkim[i].selector);
        free(c->dkim[i].key);
    }
    free(c->dkim);
    free(c->state_dir);
    free(c);
}

/* ---- jobs ---- */

static int rank(int kind)
{
    return kind == TPLF_NOINPUT ? 3 : kind == TPLF_CONFIG ? 2 : kind == TPLF_DATA ? 1 : 0;
}

int camp_exit_code(int worst)
{
    switch (worst) {
    case TPLF_NOINPUT:
        return EX_NOINPUT;
    case TPLF_CONFIG:
        return EX_CONFIG;
    case TPLF_DATA:
        return EX_DATAERR;
    default:
        return EX_OK;
    }
}

static void job_diag(void *ud, enum tplf_kind kind, const char *file, int line, int col,
                     const char *msg)
{
    camp_job_t *j = ud;
    j->nerrors++;
    if (rank((int)kind) > rank(j->worst)) j->worst = (int)kind;
    if (j->diag) j->diag(j->ud, kind, file, line, col, msg);
}

void camp_job_csv_error(camp_job_t *j, const tpl_csv_error_t *e)
{
    char msg[300];
    if (e->row)
        snprintf(msg, sizeof msg, "%s (row %lu)", e->message, e->row);
    else
        snprintf(msg, sizeof msg, "%s", e->message);
    job_diag(j, e->kind == TPL_CSV_E_IO ? TPLF_NOINPUT : TPLF_DATA, e->file, (int)e->line,
             e->column, msg);
}

void camp_print_diag(void *ud, enum tplf_kind kind, const char *file, int line, int column,
                     const char *message)
{
    FILE *f = ud;
    (void)kind;
    if (file && line > 0 && column > 0)
        fprintf(f, "%s:%d:%d: %s\n", file, line, column, message);
    else if (file && line > 0)
        fprintf(f, "%s:%d: %s\n", file, line, message);
    else if (file)
        fprintf(f, "%s: %s\n", file, message);
    else
        fprintf(f, "%s\n", message);
}

void camp_job_row_error(camp_job_t *j, const msg_error_t *e)
{
    char msg[400];
    snprintf(msg, sizeof msg, "%s (row %lu)", e->message, e->row);
    job_diag(j, TPLF_DATA, j->c->recipients, (int)e->line, e->column, msg);
}

static int open_keys(camp_job_t *j)
{
    campaign_t *c = j->c;
    if (!c->ndkim) return 0;
    j->keys = calloc(c->ndkim, sizeof *j->keys);
    if (!j->keys) return VL_ENOMEM;
    int bad = 0;
    for (size_t i = 0; i < c->ndkim; i++) {
        camp_dkim_t *d = &c->dkim[i];
        if (!d->domain || !d->selector || !d->key) continue;
        char err[400];
        int rc = dkim_key_load(&j->keys[j->nkeys], d->domain, d->selector, d->key, err, sizeof err);
        if (rc == VL_ENOMEM) return rc;
        if (rc) {
            char full[600];
            snprintf(full, sizeof full, "%s%s", err,
                     rc == VL_ENOENT ? " (make one with `openssl genpkey`; for the example, "
                                       "scripts/make-example-dkim)"
                                     : "");
            job_diag(j, rc == VL_ENOENT ? TPLF_NOINPUT : TPLF_CONFIG, c->path, 0, 0, full);
            bad = 1;
            continue;
        }
        j->nkeys++;
    }
    return bad ? VL_ECONFIG : 0;
}

int camp_job_open(camp_job_t *j, const char *path, int keep_going, tplf_diag_fn diag, void *ud)
{
    memset(j, 0, sizeof *j);
    j->diag = diag;
    j->ud = ud;
    int rc = camp_load(&j->c, path, job_diag, j);
    if (rc) return rc;
    campaign_t *c = j->c;
    int failed = 0;

    rc = tplf_load(&j->tpl, c->template_path, job_diag, j);
    if (rc == VL_ENOMEM) return rc;
    if (rc) {
        failed = rc;
        if (!keep_going) return rc;
    }
    rc = open_keys(j);
    if (rc == VL_ENOMEM) return rc;
    if (rc) {
        failed = rc;
        if (!keep_going) return rc;
    }
    if (c->providers) {
        rl_providers_t *ps = NULL;
        char err[512];
        rc = rl_providers_load(c->providers, &ps, err, sizeof err);
        rl_providers_free(ps);
        if (rc) {
            job_diag(j, rc == VL_ENOENT ? TPLF_NOINPUT : TPLF_CONFIG, NULL, 0, 0, err);
            failed = rc;
            if (!keep_going) return rc;
        }
    }

    rc = tpl_csv_open(c->recipients, 0, &j->csv);
    if (rc) {
        const tpl_csv_error_t *e = j->csv ? tpl_csv_fatal(j->csv) : NULL;
        if (e)
            camp_job_csv_error(j, e);
        else
            job_diag(j, TPLF_NOINPUT, c->recipients, 0, 0, "cannot open the recipients file");
        return rc;
    }
    /* The first row, read now so the header is known to the factory. */
    j->pending_rc = tpl_csv_read(j->csv, &j->pending);
    if (j->pending_rc < 0) {
        const tpl_csv_error_t *e = tpl_csv_fatal(j->csv);
        if (e) camp_job_csv_error(j, e);
        return j->pending_rc;
    }
    j->first = 1;
    if (!j->tpl) return failed ? failed : VL_EPARSE;
    size_t ncol = tpl_csv_header_ready(j->csv) ? tpl_csv_ncolumns(j->csv) : 0;
    const char **cols = calloc(ncol + 1, sizeof *cols);
    if (!cols) return VL_ENOMEM;
    for (size_t i = 0; i < ncol; i++)
        cols[i] = tpl_csv_column_name(j->csv, i);
    msg_config_t cfg = {
        .tpl = j->tpl,
        .campaign_id = c->id,
        .vars = c->vars,
        .columns = cols,
        .ncolumns = ncol,
        .keys = j->keys,
        .nkeys = j->nkeys,
    };
    rc = msg_factory_new(&j->f, &cfg, job_diag, j);
    free(cols);
    if (rc) return rc;
    return failed;
}

int camp_job_next(camp_job_t *j, tpl_csv_row_t **row)
{
    if (j->first) {
        j->first = 0;
        *row = j->pending;
        return j->pending_rc;
    }
    if (j->pending_rc == 0) return 0;            /* the first read already found the end */
    if (j->pending_rc < 0) return j->pending_rc; /* the open reported it */
    int rc = tpl_csv_read(j->csv, row);
    if (rc < 0) {
        const tpl_csv_error_t *e = tpl_csv_fatal(j->csv);
        if (e) camp_job_csv_error(j, e);
    }
    return rc;
}

void camp_job_close(camp_job_t *j)
{
    msg_factory_free(j->f);
    for (size_t i = 0; i < j->nkeys; i++)
        dkim_key_free(j->keys[i]);
    free(j->keys);
    tpl_csv_free(j->csv);
    tplf_free(j->tpl);
    camp_free(j->c);
    memset(j, 0, sizeof *j);
}

int camp_job_open_cmd(camp_job_t *j, const char *path)
{
    int rc = camp_job_open(j, path, 0, camp_print_diag, stderr);
    if (!rc) return 0;
    int code = rc == VL_ENOMEM ? EX_OSERR : camp_exit_code(j->worst);
    camp_job_close(j);
    return code ? code : EX_DATAERR;
}
