/* message.c: the campaign message factory (see message.h).
 *
 * The body of every message is laid out once, when the factory is built, as
 * a list of segments: static bytes (boundaries, part headers, encoded
 * attachments and images, bodies without tags), all kept in one buffer of
 * the factory, and slots for the personalised text and HTML bodies. A render
 * fills the slots and writes the header block; the iovec array then points
 * at the factory's static bytes and at the output object's buffers.
 */
#include "templates/message.h"

#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "common/err.h"
#include "common/rand.h"
#include "templates/mime.h"
#include "templates/mustache.h"

#define MSG_MAX_SIZE (64u << 20)
#define HDR_MAX (1u << 20)

enum seg_kind { SEG_STATIC, SEG_TEXT, SEG_HTML };

struct seg {
    enum seg_kind kind;
    bool part_header; /* SEG_TEXT/HTML: write the part's own Content-Type first */
    size_t off, len;  /* SEG_STATIC: bytes in f->statics */
};

/* One Mustache field of the template. */
struct field {
    char name[80];     /* "subject", "headers.X-Tag": for messages and locating */
    tpl_template_t *t; /* NULL when the template lacks the field */
    const char *stat;  /* the output when the field has no tags, else NULL */
    size_t stat_len;
};

struct msg_factory {
    const tplf_t *tpl;
    char *campaign;
    char mid_campaign[80]; /* the id as Message-ID characters */
    json_t *vars;
    char **columns;
    size_t *collen;
    size_t ncolumns;
    int name_col; /* the "name" column (To display name), or -1 */

    struct field from, reply_to, subject, unsub_url, unsub_mailto, text, html;
    struct field *hdrs;
    size_t nhdrs;

    /* A static From, formatted once. */
    buf_t from_line;
    char from_sender[512];
    char from_domain[256];
    bool from_utf8;

    char *top_hdr;          /* top-level Content-Type (and CTE) lines, or NULL: a dynamic single
                               body writes its own */
    enum seg_kind top_leaf; /* SEG_TEXT/HTML when the body is one dynamic leaf, else STATIC */

    buf_t statics;
    struct seg *segs;
    size_t nsegs, segcap;
    bool body_static;
    uint8_t bh[DKIM_HASH_LEN];

    dkim_key_t **keys;
    size_t nkeys;
    char boundary[4][MIME_BOUNDARY_MAX];

    tplf_diag_fn diag;
    void *ud;
    int nerr;
};

/* Where a span of the message lives until the pointers are fixed. */
enum span_src { SRC_STATIC, SRC_BODY, SRC_SCRATCH };

struct span {
    enum span_src src;
    size_t off, len;
};

struct msg_out {
    const msg_factory_t *f;
    buf_t hdr, dkim, body, scratch, tmp;
    struct span *spans;
    struct iovec *iov;
    size_t nspans, cap, niov, size;
    int wire_ready; /* see iov_wire_ready() */
    dkim_signer_t *signer;
    msg_error_t err;

    /* Built-ins and the row, for the lookup callbacks during a render. */
    const tpl_csv_row_t *row;
    tpl_slot_t *slots; /* the row's fields by column, for the bound tags (ncolumns) */
    char rowstr[24];
    size_t rowlen;
    char date[MIME_DATE_MAX];
    size_t datelen;
    char mid[512];
    size_t midlen;
    uint64_t rng;

    char sender[512];
    char recipient[512];
    bool smtputf8;
};

/* ---- diagnostics ---- */

__attribute__((format(printf, 5, 6))) static void fdiag(msg_factory_t *f, const char *field,
                                                        int vline, int vcol, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    f->nerr++;
    int line = 0, col = 0;
    if (field) tplf_locate(f->tpl->text, f->tpl->text_len, field, vline, vcol, &line, &col);
    if (f->diag) f->diag(f->ud, TPLF_DATA, f->tpl->path, line, col, msg);
}

/* ---- lookups ---- */

static int row_lookup(void *ud, const char *name, size_t len, tpl_value_t *v)
{
    msg_out_t *o = ud;
    const msg_factory_t *f = o->f;
    for (size_t i = 0; i < f->ncolumns; i++) {
        if (f->collen[i] == len && !memcmp(f->columns[i], name, len)) {
            v->type = TPL_VAL_STRING;
            if (i < o->row->nfields) {
                v->str = o->row->fields[i].ptr;
                v->len = o->row->fields[i].len;
            } else {
                v->str = "";
                v->len = 0;
            }
            return 1;
        }
    }
    return 0;
}

static int builtin_lookup(void *ud, const char *name, size_t len, tpl_value_t *v)
{
    msg_out_t *o = ud;
    v->type = TPL_VAL_STRING;
#define IS(lit) (len == sizeof(lit) - 1 && !memcmp(name, lit, len))
    if (IS("campaign")) {
        v->str = o->f->campaign;
        v->len = strlen(o->f->campaign);
    } else if (IS("row")) {
        v->str = o->rowstr;
        v->len = o->rowlen;
    } else if (IS("email")) {
        v->str = o->row->email.ptr;
        v->len = o->row->email.len;
    } else if (IS("message_id")) {
        v->str = o->mid;
        v->len = o->midlen;
    } else if (IS("date")) {
        v->str = o->date;
        v->len = o->datelen;
    } else {
        return 0;
    }
#undef IS
    return 1;
}

/* At build time: names only, for the unknown-variable check. */
/* The column a name is bound to: the first of that name, as row_lookup()
 * finds it. */
static long column_slot(void *ud, const char *name, size_t len)
{
    const msg_factory_t *f = ud;
    for (size_t i = 0; i < f->ncolumns; i++)
        if (f->collen[i] == len && !memcmp(f->columns[i], name, len)) return (long)i;
    return -1;
}

static int check_row_lookup(void *ud, const char *name, size_t len, tpl_value_t *v)
{
    const msg_factory_t *f = ud;
    for (size_t i = 0; i < f->ncolumns; i++) {
        if (f->collen[i] == len && !memcmp(f->columns[i], name, len)) {
            v->type = TPL_VAL_STRING;
            v->str = "x";
            v->len = 1;
            return 1;
        }
    }
    return 0;
}

static int check_builtin_lookup(void *ud, const char *name, size_t len, tpl_value_t *v)
{
    static const char *const names[] = {"campaign", "row", "email", "message_id", "date"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i]) == len && !memcmp(names[i], name, len)) {
            v->type = TPL_VAL_STRING;
            v->str = "x";
            v->len = 1;
            return 1;
        }
    }
    return 0;
}

/* ---- building ---- */

/* LF -> CRLF in body sources, so static text is already in wire form and a
 * rendered body needs no copy unless a value brings its own line breaks. */
static char *to_crlf(const char *s, size_t n, size_t *outlen)
{
    size_t extra = 0;
    for (size_t i = 0; i < n; i++)
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) extra++;
    char *d = malloc(n + extra + 1);
    if (!d) return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) d[k++] = '\r';
        d[k++] = s[i];
    }
    d[k] = '\0';
    *outlen = k;
    return d;
}

struct check_ud {
    msg_factory_t *f;
    const char *field;
};

static int on_unknown(void *ud, const tpl_var_ref_t *ref)
{
    struct check_ud *c = ud;
    char where[300];
    const char *field = c->field;
    if (ref->partial) {
        snprintf(where, sizeof where, "partials.%s", ref->partial);
        field = where;
    }
    if (ref->flags & TPL_VAR_PARTIAL)
        fdiag(c->f, field, ref->line, ref->column,
              "unknown partial `%.*s` in `%s`: the template's `partials` have no such name "
              "(it would render as nothing)",
              (int)ref->len, ref->name, c->field);
    else
        fdiag(c->f, field, ref->line, ref->column,
              "unknown variable `%.*s` in `%s`: not a CSV column, a campaign var or a built-in "
              "(campaign, row, email, message_id, date)",
              (int)ref->len, ref->name, c->field);
    return 0;
}

static int compile_field(msg_factory_t *f, struct field *fld, const char *name,
                         const tplf_str_t *src, const tpl_partials_t *partials, bool body,
                         const tpl_ctx_t *checkctx)
{
    snprintf(fld->name, sizeof fld->name, "%s", name);
    if (!src->s) return 0;
    if (!body && mime_has_crlf(src->s, src->len)) {
        fdiag(f, name, 0, 0, "`%s` holds a line break; a header value may not", name);
        return 0;
    }
    char *conv = NULL;
    size_t clen = src->len;
    if (body && !(conv = to_crlf(src->s, src->len, &clen))) return VL_ENOMEM;
    tpl_error_t err;
    memset(&err, 0, sizeof err);
    int rc = tpl_compile(&fld->t, conv ? conv : src->s, clen, partials, &err);
    free(conv);
    if (rc == VL_ENOMEM) return rc;
    if (rc) {
        char where[300];
        const char *at = name;
        if (err.partial[0]) {
            snprintf(where, sizeof where, "partials.%s", err.partial);
            at = where;
        }
        fdiag(f, at, err.line, err.column, "%s: %s", name, err.message);
        return 0;
    }
    struct check_ud cu = {f, name};
    tpl_check(fld->t, checkctx, on_unknown, &cu);
    tpl_bind_slots(fld->t, column_slot, f);
    if (tpl_is_static(fld->t)) fld->stat = tpl_static_text(fld->t, &fld->stat_len);
    return 0;
}

static int add_seg(msg_factory_t *f, struct seg s)
{
    if (f->nsegs == f->segcap) {
        size_t cap = f->segcap ? f->segcap * 2 : 8;
        struct seg *p = realloc(f->segs, cap * sizeof *p);
        if (!p) return VL_ENOMEM;
        f->segs = p;
        f->segcap = cap;
    }
    f->segs[f->nsegs++] = s;
    return 0;
}

/* Append static bytes to the plan, merging with a static segment before. */
static int plan_bytes(msg_factory_t *f, const void *p, size_t n)
{
    size_t off = f->statics.len;
    int rc = buf_append(&f->statics, p, n);
    if (rc) return rc;
    if (f->nsegs && f->segs[f->nsegs - 1].kind == SEG_STATIC &&
        f->segs[f->nsegs - 1].off + f->segs[f->nsegs - 1].len == off) {
        f->segs[f->nsegs - 1].len += n;
        return 0;
    }
    return add_seg(f, (struct seg){SEG_STATIC, false, off, n});
}

static int plan_str(msg_factory_t *f, const char *s)
{
    return plan_bytes(f, s, strlen(s));
}

static int plan_leaf(msg_factory_t *f, enum seg_kind which, bool top)
{
    const struct field *fld = which == SEG_TEXT ? &f->text : &f->html;
    const char *sub = which == SEG_TEXT ? "plain" : "html";
    if (!fld->stat) return add_seg(f, (struct seg){which, !top, 0, 0});
    enum mime_cte cte = mime_text_cte(fld->stat, fld->stat_len, NULL);
    buf_t b;
    buf_init(&b, MSG_MAX_SIZE);
    int rc = 0;
    if (top) {
        rc = buf_printf(&b,
                        "Content-Type: text/%s; charset=UTF-8\r\n"
                        "Content-Transfer-Encoding: %s\r\n",
                        sub, mime_cte_name(cte));
        if (!rc) f->top_hdr = buf_take(&b);
    } else {
        rc = mime_text_part_header(&b, sub, cte);
        if (!rc) rc = plan_bytes(f, b.data, b.len);
    }
    buf_reset(&b);
    if (!rc) rc = mime_body_encode(&b, cte, fld->stat, fld->stat_len);
    if (!rc) rc = plan_bytes(f, b.data, b.len);
    buf_free(&b);
    return rc;
}

/* The Content-Type of a multipart: in the header block at the top, else as
 * the part's header. */
static int plan_multipart_head(msg_factory_t *f, const char *type, int level, bool top)
{
    char line[256];
    snprintf(line, sizeof line, "Content-Type: multipart/%s;\r\n boundary=\"%s\"\r\n%s", type,
             f->boundary[level], top ? "" : "\r\n");
    if (top) {
        f->top_hdr = strdup(line);
        return f->top_hdr ? 0 : VL_ENOMEM;
    }
    return plan_str(f, line);
}

static int plan_delim(msg_factory_t *f, int level, bool first, bool close)
{
    char line[96];
    snprintf(line, sizeof line, "%s--%s%s\r\n", first ? "" : "\r\n", f->boundary[level],
             close ? "--" : "");
    return plan_str(f, line);
}

static int plan_alternative(msg_factory_t *f, bool top)
{
    if (f->text.t && f->html.t) {
        int rc = plan_multipart_head(f, "alternative", 3, top);
        if (!rc) rc = plan_delim(f, 3, true, false);
        if (!rc) rc = plan_leaf(f, SEG_TEXT, false);
        if (!rc) rc = plan_delim(f, 3, false, false);
        if (!rc) rc = plan_leaf(f, SEG_HTML, false);
        if (!rc) rc = plan_delim(f, 3, false, true);
        return rc;
    }
    return plan_leaf(f, f->text.t ? SEG_TEXT : SEG_HTML, top);
}

static int plan_file(msg_factory_t *f, const tplf_file_part_t *p, bool is_inline)
{
    buf_t b;
    buf_init(&b, MSG_MAX_SIZE);
    int rc = mime_file_part(&b, p->type, is_inline ? "inline" : "attachment", p->filename,
                            is_inline ? p->cid : NULL, p->data, p->len);
    if (!rc) rc = plan_bytes(f, b.data, b.len);
    buf_free(&b);
    return rc;
}

static int plan_related(msg_factory_t *f, bool top)
{
    const tplf_t *t = f->tpl;
    if (t->ninlines == 0) return plan_alternative(f, top);
    const char *inner = f->text.t && f->html.t ? "multipart/alternative"
                        : f->html.t            ? "text/html"
                                               : "text/plain";
    char type[64];
    snprintf(type, sizeof type, "related; type=\"%s\"", inner);
    int rc = plan_multipart_head(f, type, 2, top);
    if (!rc) rc = plan_delim(f, 2, true, false);
    if (!rc) rc = plan_alternative(f, false);
    for (size_t i = 0; !rc && i < t->ninlines; i++) {
        rc = plan_delim(f, 2, false, false);
        if (!rc) rc = plan_file(f, &t->inlines[i], true);
    }
    if (!rc) rc = plan_delim(f, 2, false, true);
    return rc;
}

static int plan_body(msg_factory_t *f)
{
    const tplf_t *t = f->tpl;
    if (t->nattachments == 0) return plan_related(f, true);
    int rc = plan_multipart_head(f, "mixed", 1, true);
    if (!rc) rc = plan_delim(f, 1, true, false);
    if (!rc) rc = plan_related(f, false);
    for (size_t i = 0; !rc && i < t->nattachments; i++) {
        rc = plan_delim(f, 1, false, false);
        if (!rc) rc = plan_file(f, &t->attachments[i], false);
    }
    if (!rc) rc = plan_delim(f, 1, false, true);
    return rc;
}

/* Split a checked address into envelope form: local part, '@', ASCII domain. */
static bool envelope_addr(const char *addr, size_t len, const tpl_email_info_t *info, char *dst,
                          size_t dstlen)
{
    int n = snprintf(dst, dstlen, "%.*s@%s", (int)info->at, addr, info->ascii_domain);
    (void)len;
    return n > 0 && (size_t)n < dstlen;
}

static int prepare_from(msg_factory_t *f)
{
    const struct field *fld = &f->from;
    if (!fld->stat) return 0;
    mime_addr_t a;
    tpl_email_info_t info;
    if (mime_addr_parse(fld->stat, fld->stat_len, &a) ||
        tpl_email_check(a.addr, a.addr_len, &info)) {
        fdiag(f, "from", 0, 0,
              "`from` is not an address (`Name <local@domain>` or `local@domain`)");
        return 0;
    }
    if (!envelope_addr(a.addr, a.addr_len, &info, f->from_sender, sizeof f->from_sender)) {
        fdiag(f, "from", 0, 0, "`from` is too long");
        return 0;
    }
    snprintf(f->from_domain, sizeof f->from_domain, "%s", info.ascii_domain);
    f->from_utf8 = info.needs_smtputf8;
    mime_addr_t env = a;
    /* The header carries the domain in ASCII too, so it stays 7-bit. */
    env.addr = f->from_sender;
    env.addr_len = strlen(f->from_sender);
    return mime_header_addr(&f->from_line, "From", &env) == VL_ENOMEM ? VL_ENOMEM : 0;
}

static bool valid_campaign_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)id[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

int msg_factory_new(msg_factory_t **out, const msg_config_t *cfg, tplf_diag_fn diag, void *ud)
{
    *out = NULL;
    msg_factory_t *f = calloc(1, sizeof *f);
    if (!f) return VL_ENOMEM;
    f->tpl = cfg->tpl;
    f->diag = diag;
    f->ud = ud;
    f->name_col = -1;
    buf_init(&f->statics, 256u << 20);
    buf_init(&f->from_line, 4096);
    int rc = VL_ENOMEM;
    tpl_partials_t *partials = NULL;
    const tplf_t *t = cfg->tpl;

    if (!(f->campaign = strdup(cfg->campaign_id ? cfg->campaign_id : ""))) goto fail;
    if (!valid_campaign_id(f->campaign)) {
        f->nerr++;
        if (diag)
            diag(ud, TPLF_CONFIG, NULL, 0, 0,
                 "the campaign id must be 1 to 64 characters of letters, digits, '-', '_', '.'");
    }
    for (size_t i = 0, k = 0; f->campaign[i] && k + 1 < sizeof f->mid_campaign; i++, k++) {
        char c = f->campaign[i];
        f->mid_campaign[k] = (c == '.') ? '-' : c;
    }
    if (cfg->vars) f->vars = json_incref(cfg->vars);
    f->ncolumns = cfg->ncolumns;
    f->columns = calloc(cfg->ncolumns + 1, sizeof *f->columns);
    f->collen = calloc(cfg->ncolumns + 1, sizeof *f->collen);
    if (!f->columns || !f->collen) goto fail;
    for (size_t i = 0; i < cfg->ncolumns; i++) {
        if (!(f->columns[i] = strdup(cfg->columns[i]))) goto fail;
        f->collen[i] = strlen(cfg->columns[i]);
        if (!strcasecmp(cfg->columns[i], "name")) f->name_col = (int)i;
    }
    if (cfg->nkeys) {
        f->keys = calloc(cfg->nkeys, sizeof *f->keys);
        if (!f->keys) goto fail;
        memcpy(f->keys, cfg->keys, cfg->nkeys * sizeof *f->keys);
        f->nkeys = cfg->nkeys;
    }
    uint8_t seed[12];
    if (getrandom(seed, sizeof seed, 0) != (ssize_t)sizeof seed) {
        rc = VL_EIO;
        goto fail;
    }
    for (int l = 1; l <= 3; l++)
        mime_boundary(f->boundary[l], seed, l);

    if (!(partials = tpl_partials_new())) goto fail;
    for (size_t i = 0; i < t->npartials; i++) {
        /* Partials go into bodies: in CRLF form like the bodies' own text. */
        size_t cl;
        char *conv = to_crlf(t->partials[i].src.s, t->partials[i].src.len, &cl);
        int prc = conv ? tpl_partials_add(partials, t->partials[i].name, conv, cl) : VL_ENOMEM;
        free(conv);
        if (prc) goto fail;
    }

    /* The context every field is checked against: the columns, the vars
     * and the built-ins, as at render time. */
    tpl_ctx_t cc;
    tpl_ctx_init(&cc);
    (void)tpl_ctx_push_lookup(&cc, check_builtin_lookup, f);
    if (f->vars) (void)tpl_ctx_push_json(&cc, f->vars);
    (void)tpl_ctx_push_lookup(&cc, check_row_lookup, f);

    if ((rc = compile_field(f, &f->from, "from", &t->from, partials, false, &cc)) ||
        (rc = compile_field(f, &f->reply_to, "reply_to", &t->reply_to, partials, false, &cc)) ||
        (rc = compile_field(f, &f->subject, "subject", &t->subject, partials, false, &cc)) ||
        (rc = compile_field(f, &f->text, "text", &t->body_text, partials, true, &cc)) ||
        (rc = compile_field(f, &f->html, "html", &t->body_html, partials, true, &cc)) ||
        (rc = compile_field(f, &f->unsub_url, "unsubscribe.url", &t->unsub_url, partials, false,
                            &cc)) ||
        (rc = compile_field(f, &f->unsub_mailto, "unsubscribe.mailto", &t->unsub_mailto, partials,
                            false, &cc)))
        goto fail;
    rc = VL_ENOMEM;
    f->hdrs = calloc(t->nheaders + 1, sizeof *f->hdrs);
    if (!f->hdrs) goto fail;
    for (size_t i = 0; i < t->nheaders; i++, f->nhdrs++) {
        char name[300];
        snprintf(name, sizeof name, "headers.%s", t->headers[i].name);
        if ((rc = compile_field(f, &f->hdrs[i], name, &t->headers[i].value, partials, false, &cc)))
            goto fail;
    }
    tpl_partials_free(partials);
    partials = NULL;
    if (f->nerr) {
        rc = VL_EPARSE;
        goto fail;
    }
    if ((rc = prepare_from(f))) goto fail;
    if (f->nerr) {
        rc = VL_EPARSE;
        goto fail;
    }

    if ((rc = plan_body(f))) goto fail;
    f->top_leaf = SEG_STATIC;
    f->body_static = true;
    for (size_t i = 0; i < f->nsegs; i++) {
        if (f->segs[i].kind != SEG_STATIC) {
            f->body_static = false;
            if (!f->top_hdr) f->top_leaf = f->segs[i].kind;
        }
    }
    if (f->body_static && f->nkeys) {
        /* A body without variables: its DKIM hash is the same for every message. */
        struct iovec v = {f->statics.data, f->statics.len};
        if ((rc = dkim_body_hash_once(&v, 1, f->bh))) goto fail;
    }
    *out = f;
    return 0;
fail:
    tpl_partials_free(partials);
    msg_factory_free(f);
    return rc ? rc : VL_EPARSE;
}

static void free_field(struct field *fld)
{
    tpl_free(fld->t);
}

void msg_factory_free(msg_factory_t *f)
{
    if (!f) return;
    free(f->campaign);
    if (f->vars) json_decref(f->vars);
    for (size_t i = 0; f->columns && i < f->ncolumns; i++)
        free(f->columns[i]);
    free(f->columns);
    free(f->collen);
    free_field(&f->from);
    free_field(&f->reply_to);
    free_field(&f->subject);
    free_field(&f->unsub_url);
    free_field(&f->unsub_mailto);
    free_field(&f->text);
    free_field(&f->html);
    for (size_t i = 0; i < f->nhdrs; i++)
        free_field(&f->hdrs[i]);
    free(f->hdrs);
    buf_free(&f->from_line);
    free(f->top_hdr);
    buf_free(&f->statics);
    free(f->segs);
    free(f->keys);
    free(f);
}

size_t msg_factory_static_size(const msg_factory_t *f)
{
    return f->statics.len;
}

/* ---- output objects ---- */

int msg_out_new(msg_out_t **out, const msg_factory_t *f)
{
    *out = NULL;
    msg_out_t *o = calloc(1, sizeof *o);
    if (!o) return VL_ENOMEM;
    o->f = f;
    buf_init(&o->hdr, HDR_MAX);
    buf_init(&o->dkim, HDR_MAX);
    buf_init(&o->body, MSG_MAX_SIZE);
    buf_init(&o->scratch, MSG_MAX_SIZE);
    buf_init(&o->tmp, HDR_MAX);
    o->cap = f->nsegs * 2 + 4;
    o->spans = calloc(o->cap, sizeof *o->spans);
    o->iov = calloc(o->cap + 2, sizeof *o->iov);
    o->slots = calloc(f->ncolumns + 1, sizeof *o->slots);
    if (!o->spans || !o->iov || !o->slots ||
        getrandom(&o->rng, sizeof o->rng, 0) != sizeof o->rng) {
        msg_out_free(o);
        return VL_ENOMEM;
    }
    o->rng |= 1;
    if (f->nkeys && dkim_signer_new(&o->signer, f->keys, f->nkeys)) {
        msg_out_free(o);
        return VL_ENOMEM;
    }
    *out = o;
    return 0;
}

void msg_out_free(msg_out_t *o)
{
    if (!o) return;
    buf_free(&o->hdr);
    buf_free(&o->dkim);
    buf_free(&o->body);
    buf_free(&o->scratch);
    buf_free(&o->tmp);
    free(o->spans);
    free(o->iov);
    free(o->slots);
    dkim_signer_free(o->signer);
    free(o);
}

const msg_error_t *msg_out_error(const msg_out_t *o)
{
    return &o->err;
}

const struct iovec *msg_out_iov(const msg_out_t *o, size_t *n)
{
    *n = o->niov;
    return o->iov;
}

size_t msg_out_size(const msg_out_t *o)
{
    return o->size;
}

int msg_out_wire_ready(const msg_out_t *o)
{
    return o->wire_ready;
}

/* 1 when the message (its iovecs in order) is in SMTP's wire form: every LF
 * after a CR, a final CRLF, and no line that starts with '.' (DATA would
 * need dot-stuffing). The sender's loop would otherwise read every message
 * to find out; here the bytes were just written and are still in this
 * thread's cache. */
static int iov_wire_ready(const struct iovec *v, size_t n)
{
    int line_start = 1;
    char prev = '\n';
    for (size_t i = 0; i < n; i++) {
        const char *p = v[i].iov_base, *end = p + v[i].iov_len;
        if (p == end) continue;
        if (line_start && *p == '.') return 0;
        for (;;) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            if (!nl) break;
            if ((nl > (const char *)v[i].iov_base ? nl[-1] : prev) != '\r') return 0;
            if (nl + 1 < end && nl[1] == '.') return 0;
            p = nl + 1;
        }
        prev = end[-1];
        line_start = prev == '\n';
    }
    return line_start && prev == '\n' && n > 0;
}

const char *msg_out_sender(const msg_out_t *o)
{
    return o->sender;
}

const char *msg_out_recipient(const msg_out_t *o)
{
    return o->recipient;
}

int msg_out_needs_smtputf8(const msg_out_t *o)
{
    return o->smtputf8;
}

const char *msg_out_message_id(const msg_out_t *o)
{
    return o->mid;
}

/* ---- rendering ---- */

/* Hex without printf: this runs for every message (decimal: buf_fmt_dec). */
static size_t fmt_hex16(char *dst, uint64_t v)
{
    for (int i = 15; i >= 0; i--) {
        dst[i] = "0123456789abcdef"[v & 15];
        v >>= 4;
    }
    dst[16] = '\0';
    return 16;
}

/* Append several strings; NULL ends the list. */
static int put(buf_t *b, const char *s1, const char *s2, const char *s3, const char *s4)
{
    const char *v[4] = {s1, s2, s3, s4};
    int rc = 0;
    for (int i = 0; i < 4 && v[i] && !rc; i++)
        rc = buf_append(b, v[i], strlen(v[i]));
    return rc;
}

__attribute__((format(printf, 4, 5))) static int row_error(msg_out_t *o, const char *field,
                                                           int column, const char *fmt, ...)
{
    o->err.row = o->row->row;
    o->err.line = o->row->line;
    o->err.column = column;
    snprintf(o->err.field, sizeof o->err.field, "%s", field);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->err.message, sizeof o->err.message, fmt, ap);
    va_end(ap);
    o->niov = 0;
    o->size = 0;
    o->wire_ready = 0;
    return VL_EINVAL;
}

/* A render that passed a limit (a 10 MB CSV field in a header, a partial that includes
 * itself) is this row's fault, not the program's: a row error naming the field and the
 * limit, so check, --dry-run and the worker all reject the row and go on. */
static int render_error(msg_out_t *o, const struct field *fld, int rc, const tpl_error_t *e)
{
    if (rc != VL_ETOOBIG) return rc;
    if (e->line)
        return row_error(o, fld->name, 0, "%s: %s, at line %d%s%s%s", fld->name, e->message,
                         e->line, e->partial[0] ? " of partial `" : "", e->partial,
                         e->partial[0] ? "`" : "");
    return row_error(o, fld->name, 0, "%s: %s", fld->name, e->message);
}

/* The value of a header field for this row: the static text or a render
 * into o->tmp. */
static int field_value(msg_out_t *o, const struct field *fld, const tpl_ctx_t *ctx,
                       const char **val, size_t *len)
{
    if (fld->stat) {
        *val = fld->stat;
        *len = fld->stat_len;
        return 0;
    }
    buf_reset(&o->tmp);
    tpl_error_t terr;
    int rc = tpl_render(fld->t, ctx, 0, &o->tmp, &terr);
    if (rc) return render_error(o, fld, rc, &terr);
    *val = o->tmp.data ? o->tmp.data : "";
    *len = o->tmp.len;
    return 0;
}

static const char injection[] = "the rendered value holds a line break, which a header "
                                "field may not (it could add header fields)";

/* Append a span, merging it with the one before when contiguous. */
static int add_span(msg_out_t *o, enum span_src src, size_t off, size_t len)
{
    if (len == 0) return 0;
    if (o->nspans) {
        struct span *p = &o->spans[o->nspans - 1];
        if (p->src == src && p->off + p->len == off) {
            p->len += len;
            return 0;
        }
    }
    if (o->nspans == o->cap)
        return VL_ETOOBIG; /* cannot happen: cap covers two spans per segment */
    o->spans[o->nspans++] = (struct span){src, off, len};
    return 0;
}

static int render_body(msg_out_t *o, const struct seg *s, const tpl_ctx_t *ctx,
                       enum mime_cte *top_cte)
{
    const struct field *fld = s->kind == SEG_TEXT ? &o->f->text : &o->f->html;
    size_t off = o->scratch.len;
    tpl_error_t terr;
    int rc = tpl_render(fld->t, ctx, s->kind == SEG_HTML ? TPL_RENDER_HTML : 0, &o->scratch, &terr);
    if (rc) return render_error(o, fld, rc, &terr);
    size_t len = o->scratch.len - off;
    bool clean;
    enum mime_cte cte = mime_text_cte(o->scratch.data + off, len, &clean);
    if (s->part_header) {
        size_t hoff = o->body.len;
        rc = mime_text_part_header(&o->body, s->kind == SEG_TEXT ? "plain" : "html", cte);
        if (!rc) rc = add_span(o, SRC_BODY, hoff, o->body.len - hoff);
        if (rc) return rc;
    } else {
        *top_cte = cte;
    }
    if (cte == MIME_CTE_7BIT && clean) return add_span(o, SRC_SCRATCH, off, len);
    size_t boff = o->body.len;
    rc = mime_body_encode(&o->body, cte, o->scratch.data + off, len);
    if (!rc) rc = add_span(o, SRC_BODY, boff, o->body.len - boff);
    return rc;
}

/* URLs go between angle brackets in List-Unsubscribe: printable ASCII
 * without spaces or brackets. */
static bool url_ok(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 32 || c >= 127 || c == '<' || c == '>') return false;
    }
    return true;
}

static int write_unsubscribe(msg_out_t *o, const tpl_ctx_t *ctx)
{
    const msg_factory_t *f = o->f;
    buf_t *h = &o->hdr;
    int rc = buf_puts(h, "List-Unsubscribe: ");
    bool https = false, any = false;
    if (!rc && f->unsub_mailto.t) {
        const char *v;
        size_t n;
        if ((rc = field_value(o, &f->unsub_mailto, ctx, &v, &n))) return rc;
        if (mime_has_crlf(v, n))
            return row_error(o, "unsubscribe.mailto", 0, "unsubscribe.mailto: %s", injection);
        if (n >= 7 && !strncasecmp(v, "mailto:", 7)) {
            v += 7;
            n -= 7;
        }
        if (!url_ok(v, n))
            return row_error(o, "unsubscribe.mailto", 0,
                             "unsubscribe.mailto: `%.*s` is not a mailto address (no spaces, "
                             "<, > or non-ASCII characters)",
                             (int)n, v);
        rc = buf_printf(h, "<mailto:%.*s>", (int)n, v);
        any = true;
    }
    if (!rc && f->unsub_url.t) {
        const char *v;
        size_t n;
        if ((rc = field_value(o, &f->unsub_url, ctx, &v, &n))) return rc;
        if (mime_has_crlf(v, n))
            return row_error(o, "unsubscribe.url", 0, "unsubscribe.url: %s", injection);
        if (!url_ok(v, n) || n > 900)
            return row_error(o, "unsubscribe.url", 0,
                             "unsubscribe.url: `%.*s` is not a URL (no spaces, <, > or "
                             "non-ASCII characters; percent-encode them)",
                             (int)n, v);
        https = n > 8 && !strncasecmp(v, "https://", 8);
        rc = buf_printf(h, "%s<%.*s>", any ? ",\r\n " : "", (int)n, v);
    }
    if (!rc) rc = buf_puts(h, "\r\n");
    /* One-click (RFC 8058) needs an HTTPS URI to POST to. */
    if (!rc && https) rc = buf_puts(h, "List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
    return rc;
}

static int render_from(msg_out_t *o, const tpl_ctx_t *ctx, char *domain, size_t domlen)
{
    const msg_factory_t *f = o->f;
    if (f->from.stat) {
        int rc = buf_append(&o->hdr, f->from_line.data, f->from_line.len);
        memcpy(o->sender, f->from_sender, strlen(f->from_sender) + 1);
        memcpy(domain, f->from_domain, strlen(f->from_domain) + 1);
        (void)domlen; /* both are 256 bytes, like from_domain */
        o->smtputf8 = o->smtputf8 || f->from_utf8;
        return rc;
    }
    const char *v;
    size_t n;
    int rc = field_value(o, &f->from, ctx, &v, &n);
    if (rc) return rc;
    if (mime_has_crlf(v, n)) return row_error(o, "from", 0, "from: %s", injection);
    mime_addr_t a;
    tpl_email_info_t info;
    if (mime_addr_parse(v, n, &a) || tpl_email_check(a.addr, a.addr_len, &info) ||
        !envelope_addr(a.addr, a.addr_len, &info, o->sender, sizeof o->sender))
        return row_error(o, "from", 0, "from: `%.*s` is not an address", (int)(n > 200 ? 200 : n),
                         v);
    snprintf(domain, domlen, "%s", info.ascii_domain);
    o->smtputf8 = o->smtputf8 || info.needs_smtputf8;
    a.addr = o->sender;
    a.addr_len = strlen(o->sender);
    rc = mime_header_addr(&o->hdr, "From", &a);
    return rc == VL_EINVAL ? row_error(o, "from", 0, "from: %s", injection) : rc;
}

static int render_reply_to(msg_out_t *o, const tpl_ctx_t *ctx)
{
    const char *v;
    size_t n;
    int rc = field_value(o, &o->f->reply_to, ctx, &v, &n);
    if (rc) return rc;
    if (mime_has_crlf(v, n)) return row_error(o, "reply_to", 0, "reply_to: %s", injection);
    mime_addr_t a;
    tpl_email_info_t info;
    if (mime_addr_parse(v, n, &a) || tpl_email_check(a.addr, a.addr_len, &info))
        return row_error(o, "reply_to", 0, "reply_to: `%.*s` is not an address",
                         (int)(n > 200 ? 200 : n), v);
    char addr[512];
    if (!info.needs_smtputf8 && envelope_addr(a.addr, a.addr_len, &info, addr, sizeof addr)) {
        a.addr = addr;
        a.addr_len = strlen(addr);
    }
    rc = mime_header_addr(&o->hdr, "Reply-To", &a);
    return rc == VL_EINVAL ? row_error(o, "reply_to", 0, "reply_to: %s", injection) : rc;
}

static int render_row(const msg_factory_t *f, msg_out_t *o, const tpl_csv_row_t *row, time_t now,
                      unsigned flags)
{
    buf_reset(&o->hdr);
    buf_reset(&o->dkim);
    buf_reset(&o->body);
    buf_reset(&o->scratch);
    o->nspans = 0;
    o->niov = 0;
    o->size = 0;
    o->wire_ready = 0;
    o->row = row;
    o->smtputf8 = false;
    o->mid[0] = '\0';
    o->midlen = 0;
    memset(&o->err, 0, sizeof o->err);

    /* The recipient, with its domain in ASCII. */
    const char *email = row->email.ptr;
    size_t elen = row->email.len;
    if (!email || elen == 0) return row_error(o, "email", 0, "the row has no email address");
    if (mime_has_crlf(email, elen)) return row_error(o, "email", 0, "email: %s", injection);
    const char *at = NULL;
    for (size_t i = elen; i > 0; i--)
        if (email[i - 1] == '@') {
            at = email + i - 1;
            break;
        }
    tpl_email_info_t info;
    const char *dom = row->ascii_domain;
    size_t domlen = row->ascii_domain_len;
    bool utf8 = row->needs_smtputf8;
    if (!at || domlen == 0) {
        if (tpl_email_check(email, elen, &info))
            return row_error(o, "email", 0, "`%.*s` is not a valid address", (int)elen, email);
        at = email + info.at;
        dom = info.ascii_domain;
        domlen = info.ascii_domain_len;
        utf8 = info.needs_smtputf8;
    }
    size_t local = (size_t)(at - email);
    if (local + 1 + domlen >= sizeof o->recipient)
        return row_error(o, "email", 0, "the address is too long");
    memcpy(o->recipient, email, local);
    o->recipient[local] = '@';
    memcpy(o->recipient + local + 1, dom, domlen);
    o->recipient[local + 1 + domlen] = '\0';
    o->smtputf8 = utf8;

    /* Built-ins. */
    o->rowlen = buf_fmt_dec(o->rowstr, row->row);
    o->datelen = mime_date(o->date, now); /* cached per thread by mime_date */
    tpl_ctx_t ctx;
    tpl_ctx_init(&ctx);
    (void)tpl_ctx_push_lookup(&ctx, builtin_lookup, o);
    if (f->vars) (void)tpl_ctx_push_json(&ctx, f->vars);
    size_t nslots = row->nfields < f->ncolumns ? row->nfields : f->ncolumns;
    for (size_t i = 0; i < nslots; i++) {
        o->slots[i].ptr = row->fields[i].ptr;
        o->slots[i].len = row->fields[i].len;
    }
    (void)tpl_ctx_push_slots(&ctx, row_lookup, o, o->slots, nslots);

    buf_t *h = &o->hdr;
    int rc = put(h, "Date: ", o->date, "\r\n", NULL);
    if (rc) return rc;
    char from_domain[256];
    if ((rc = render_from(o, &ctx, from_domain, sizeof from_domain))) return rc;
    {
        /* random.row.campaign@from-domain: unique per message, and a rerun of
         * the same row gets a new one. */
        char *m = o->mid;
        m += fmt_hex16(m, vl_xorshift64s(&o->rng));
        *m++ = '.';
        m += buf_fmt_dec(m, row->row);
        *m++ = '.';
        size_t cl = strlen(f->mid_campaign), dl = strlen(from_domain);
        memcpy(m, f->mid_campaign, cl);
        m += cl;
        *m++ = '@';
        memcpy(m, from_domain, dl + 1);
        m += dl;
        o->midlen = (size_t)(m - o->mid);
    }

    /* Bodies first: the top-level Content-Type of a single dynamic body
     * depends on the encoding its text needs. */
    enum mime_cte top_cte = MIME_CTE_7BIT;
    for (size_t i = 0; i < f->nsegs; i++) {
        const struct seg *s = &f->segs[i];
        if (s->kind == SEG_STATIC)
            rc = add_span(o, SRC_STATIC, s->off, s->len);
        else
            rc = render_body(o, s, &ctx, &top_cte);
        if (rc) return rc;
    }

    mime_addr_t to = {"", 0, o->recipient, strlen(o->recipient)};
    if (f->name_col >= 0 && (size_t)f->name_col < row->nfields) {
        to.name = row->fields[f->name_col].ptr;
        to.name_len = row->fields[f->name_col].len;
        /* Leading and trailing spaces do not survive a header anyway. */
        while (to.name_len && (to.name[0] == ' ' || to.name[0] == '\t')) {
            to.name++;
            to.name_len--;
        }
        while (to.name_len && (to.name[to.name_len - 1] == ' ' || to.name[to.name_len - 1] == '\t'))
            to.name_len--;
    }
    rc = mime_header_addr(h, "To", &to);
    if (rc == VL_EINVAL) return row_error(o, "name", f->name_col + 1, "name: %s", injection);
    if (rc) return rc;
    if (f->reply_to.t && (rc = render_reply_to(o, &ctx))) return rc;
    if (f->subject.t) {
        const char *v;
        size_t vn;
        if ((rc = field_value(o, &f->subject, &ctx, &v, &vn))) return rc;
        rc = mime_header_text(h, "Subject", v, vn);
        if (rc == VL_EINVAL) return row_error(o, "subject", 0, "subject: %s", injection);
        if (rc) return rc;
    }
    rc = put(h, "Message-ID: <", o->mid, ">\r\nMIME-Version: 1.0\r\n", NULL);
    if (!rc) {
        if (f->top_hdr)
            rc = buf_puts(h, f->top_hdr);
        else
            rc = put(h, "Content-Type: text/", f->top_leaf == SEG_HTML ? "html" : "plain",
                     "; charset=UTF-8\r\nContent-Transfer-Encoding: ", mime_cte_name(top_cte));
        if (!rc && !f->top_hdr) rc = buf_append(h, "\r\n", 2);
    }
    if (!rc && (f->unsub_url.t || f->unsub_mailto.t)) rc = write_unsubscribe(o, &ctx);
    if (!rc) rc = put(h, "X-Volley-Row: ", f->campaign, "/", o->rowstr);
    if (!rc) rc = buf_append(h, "\r\n", 2);
    for (size_t i = 0; !rc && i < f->nhdrs; i++) {
        const char *v;
        size_t vn;
        if ((rc = field_value(o, &f->hdrs[i], &ctx, &v, &vn))) return rc;
        const char *name = f->tpl->headers[i].name;
        rc = mime_header_text(h, name, v, vn);
        if (rc == VL_EINVAL)
            return row_error(o, f->hdrs[i].name, 0, "%s: %s", f->hdrs[i].name, injection);
    }
    if (rc) return rc;

    /* The iovecs: signature, header block, then the body spans. */
    size_t ni = 0;
    for (size_t i = 0; i < o->nspans; i++) {
        const struct span *s = &o->spans[i];
        const char *base = s->src == SRC_STATIC ? f->statics.data
                           : s->src == SRC_BODY ? o->body.data
                                                : o->scratch.data;
        o->iov[2 + ni++] = (struct iovec){(void *)(base + s->off), s->len};
    }
    if (f->nkeys && !(flags & MSG_NO_DKIM)) {
        uint8_t bh[DKIM_HASH_LEN];
        const uint8_t *bhp = f->bh;
        if (!f->body_static) {
            if ((rc = dkim_body_hash(o->signer, o->iov + 2, ni, bh))) return rc;
            bhp = bh;
        }
        if ((rc = dkim_sign(o->signer, &o->dkim, h->data, h->len, bhp, now)))
            return rc == VL_EINVAL ? VL_EIO : rc;
    }
    if ((rc = buf_append(h, "\r\n", 2))) return rc;
    size_t first = 1;
    if (o->dkim.len) {
        o->iov[0] = (struct iovec){o->dkim.data, o->dkim.len};
        first = 0;
    }
    o->iov[1] = (struct iovec){h->data, h->len};
    if (first == 1) memmove(o->iov, o->iov + 1, (ni + 1) * sizeof *o->iov);
    o->niov = ni + 2 - first;
    o->size = iov_total(o->iov, o->niov);
    o->wire_ready = iov_wire_ready(o->iov, o->niov);
    if (o->size > MSG_MAX_SIZE)
        return row_error(o, "", 0, "the message would be larger than 64 MB");
    return 0;
}

int msg_render(const msg_factory_t *f, msg_out_t *o, const tpl_csv_row_t *row, time_t now,
               unsigned flags)
{
    int rc = render_row(f, o, row, now, flags);
    /* Any other limit passed on the way (a header block over 1 MB once encoded) is the
     * row's too. */
    if (rc == VL_ETOOBIG && !o->err.message[0])
        rc = row_error(o, "", 0, "the message's header fields are larger than %u bytes", HDR_MAX);
    return rc;
}
