/* tplfile.c: loading and checking the template JSON file (see tplfile.h). */
#include "templates/tplfile.h"

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#include <jansson.h>

#include "common/err.h"
#include "templates/mime.h"

/* Inline images and attachments are read whole, once per campaign; this
 * bounds what one file may add to every message. */
#define TPLF_FILE_MAX (25u << 20)
#define TPLF_JSON_MAX (16u << 20)

/* ---- files and paths ---- */

int tplf_read_file(const char *path, size_t max, char **data, size_t *len)
{
    *data = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) return errno == ENOENT || errno == ENOTDIR ? VL_ENOENT : VL_EIO;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        return VL_EIO;
    }
    if ((size_t)st.st_size > max) {
        fclose(f);
        return VL_ETOOBIG;
    }
    char *p = malloc((size_t)st.st_size + 1);
    if (!p) {
        fclose(f);
        return VL_ENOMEM;
    }
    size_t n = fread(p, 1, (size_t)st.st_size, f);
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(p);
        return VL_EIO;
    }
    p[n] = '\0';
    *data = p;
    *len = n;
    return 0;
}

char *tplf_path_join(const char *base, const char *rel)
{
    if (rel[0] == '/') return strdup(rel);
    const char *slash = strrchr(base, '/');
    size_t dl = slash ? (size_t)(slash - base) + 1 : 0;
    size_t rl = strlen(rel);
    char *p = malloc(dl + rl + 1);
    if (!p) return NULL;
    memcpy(p, base, dl);
    memcpy(p + dl, rel, rl + 1);
    return p;
}

const char *tplf_guess_type(const char *filename)
{
    static const char *const map[][2] = {
        {"png", "image/png"},
        {"jpg", "image/jpeg"},
        {"jpeg", "image/jpeg"},
        {"gif", "image/gif"},
        {"webp", "image/webp"},
        {"svg", "image/svg+xml"},
        {"pdf", "application/pdf"},
        {"txt", "text/plain"},
        {"csv", "text/csv"},
        {"html", "text/html"},
        {"htm", "text/html"},
        {"zip", "application/zip"},
        {"ics", "text/calendar"},
        {"json", "application/json"},
        {"doc", "application/msword"},
        {"docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document"},
        {"xls", "application/vnd.ms-excel"},
        {"xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"},
        {"pptx", "application/vnd.openxmlformats-officedocument.presentationml.presentation"},
    };
    const char *dot = strrchr(filename, '.');
    if (dot && !strchr(dot, '/'))
        for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
            if (!strcasecmp(dot + 1, map[i][0])) return map[i][1];
    return "application/octet-stream";
}

/* ---- locating values in the JSON text ---- */

struct scan {
    const char *s;
    size_t n, i;
    const char *target;
    size_t found; /* offset of the target value, or (size_t)-1 */
};

static void skip_ws(struct scan *sc)
{
    while (sc->i < sc->n && strchr(" \t\r\n", sc->s[sc->i]) && sc->s[sc->i])
        sc->i++;
}

/* Skip a string literal starting at the quote; append its raw contents (not
 * decoded: keys with escapes are rare and simply not found) to key. */
static void skip_string(struct scan *sc, char *key, size_t keymax)
{
    size_t kl = 0;
    sc->i++;
    while (sc->i < sc->n && sc->s[sc->i] != '"') {
        if (sc->s[sc->i] == '\\')
            sc->i++;
        else if (key && kl + 1 < keymax)
            key[kl++] = sc->s[sc->i];
        sc->i++;
    }
    sc->i++;
    if (key) key[kl] = '\0';
}

static void walk(struct scan *sc, char *path, size_t plen, int depth)
{
    skip_ws(sc);
    if (sc->i >= sc->n || depth > 64) return;
    if (!strcmp(path, sc->target) && sc->found == (size_t)-1) sc->found = sc->i;
    char c = sc->s[sc->i];
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        sc->i++;
        for (int idx = 0;; idx++) {
            skip_ws(sc);
            if (sc->i >= sc->n) return;
            if (sc->s[sc->i] == close) {
                sc->i++;
                return;
            }
            char comp[256];
            if (c == '{') {
                if (sc->s[sc->i] != '"') return;
                skip_string(sc, comp, sizeof comp);
                skip_ws(sc);
                if (sc->i < sc->n && sc->s[sc->i] == ':') sc->i++;
            } else {
                snprintf(comp, sizeof comp, "%d", idx);
            }
            size_t cl = strlen(comp);
            if (plen + cl + 2 >= 1024) return; /* deeper than any path we look for */
            if (plen) path[plen] = '.';
            memcpy(path + plen + (plen ? 1 : 0), comp, cl + 1);
            walk(sc, path, plen + (plen ? 1 : 0) + cl, depth + 1);
            path[plen] = '\0';
            skip_ws(sc);
            if (sc->i < sc->n && sc->s[sc->i] == ',') sc->i++;
        }
    } else if (c == '"') {
        skip_string(sc, NULL, 0);
    } else {
        while (sc->i < sc->n && !strchr(",}] \t\r\n", sc->s[sc->i]))
            sc->i++;
    }
}

int tplf_locate(const char *text, size_t len, const char *path, int vline, int vcol, int *line,
                int *col)
{
    char pbuf[1024] = "";
    struct scan sc = {text, len, 0, path, (size_t)-1};
    walk(&sc, pbuf, 0, 0);
    if (sc.found == (size_t)-1) return VL_EINVAL;
    int l = 1, c = 1;
    for (size_t i = 0; i < sc.found; i++) {
        if (text[i] == '\n') {
            l++;
            c = 1;
        } else if (((unsigned char)text[i] & 0xC0) != 0x80) {
            c++;
        }
    }
    if (vline > 0 && text[sc.found] == '"') {
        /* Walk the literal: decoded line/column against file line/column. */
        int dl = 1, dc = 1;
        size_t i = sc.found + 1;
        c++;
        while (i < len && text[i] != '"' && (dl < vline || (dl == vline && dc < vcol))) {
            if (text[i] == '\\' && i + 1 < len) {
                char e = text[i + 1];
                size_t adv = e == 'u' ? 6 : 2;
                if (e == 'n') {
                    dl++;
                    dc = 1;
                } else if (e == 'u') {
                    dc += 1; /* \uXXXX: counted as one, whatever its UTF-8 size */
                } else {
                    dc++;
                }
                i += adv;
                c += (int)adv;
            } else {
                /* Columns count characters, as the Mustache compiler's do. */
                if (((unsigned char)text[i] & 0xC0) != 0x80) {
                    c++;
                    dc++;
                }
                i++;
                while (i < len && ((unsigned char)text[i] & 0xC0) == 0x80)
                    i++;
            }
        }
    }
    *line = l;
    *col = c;
    return 0;
}

/* ---- loading ---- */

struct loader {
    tplf_t *t;
    tplf_diag_fn diag;
    void *ud;
    int nerr;
    bool missing;
};

void tplf_vreport(tplf_diag_fn diag, void *ud, enum tplf_kind kind, const char *file,
                  const char *text, size_t len, const char *where, const char *fmt, va_list ap)
{
    if (!diag) return;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    int line = 0, col = 0;
    if (where && text) tplf_locate(text, len, where, 0, 0, &line, &col);
    diag(ud, kind, file, line, col, msg);
}

__attribute__((format(printf, 4, 5))) static void report(struct loader *ld, enum tplf_kind kind,
                                                         const char *where, const char *fmt, ...)
{
    ld->nerr++;
    if (kind == TPLF_NOINPUT) ld->missing = true;
    va_list ap;
    va_start(ap, fmt);
    tplf_vreport(ld->diag, ld->ud, kind, ld->t->path, ld->t->text, ld->t->text_len, where, fmt, ap);
    va_end(ap);
}

static int take_string(struct loader *ld, json_t *v, const char *where, tplf_str_t *dst)
{
    if (!json_is_string(v)) {
        report(ld, TPLF_DATA, where, "`%s` must be a string", where);
        return 1; /* reported */
    }
    dst->len = json_string_length(v);
    dst->s = malloc(dst->len + 1);
    if (!dst->s) return VL_ENOMEM;
    memcpy(dst->s, json_string_value(v), dst->len + 1);
    return 0;
}

static bool valid_mime_type(const char *s)
{
    const char *slash = strchr(s, '/');
    if (!slash || slash == s || !slash[1] || strchr(slash + 1, '/')) return false;
    for (const char *p = s; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if (c <= 32 || c >= 127 || (c != '/' && strchr("()<>@,;:\\\"[]?=", c))) return false;
    }
    return true;
}

/* Header fields volley writes itself, or that would change who receives
 * the message: a template may not set them through `headers`. */
static const char *reserved_header(const char *name)
{
    static const char *const reserved[][2] = {
        {"from", "use the `from` key"},
        {"reply-to", "use the `reply_to` key"},
        {"subject", "use the `subject` key"},
        {"to", "the recipient comes from the CSV's email column"},
        {"cc", "volley sends one message per CSV row"},
        {"bcc", "volley sends one message per CSV row"},
        {"date", "volley writes it"},
        {"message-id", "volley writes it"},
        {"mime-version", "volley writes it"},
        {"content-type", "volley writes it"},
        {"content-transfer-encoding", "volley writes it"},
        {"content-disposition", "volley writes it"},
        {"list-unsubscribe", "use the `unsubscribe` key"},
        {"list-unsubscribe-post", "use the `unsubscribe` key"},
        {"dkim-signature", "volley signs with the campaign's `dkim` keys"},
        {"x-volley-row", "volley writes it"},
        {"return-path", "the receiving server writes it"},
        {"received", "servers on the way write it"},
    };
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (!strcasecmp(name, reserved[i][0])) return reserved[i][1];
    return NULL;
}

static const char *base_name(const char *p)
{
    const char *s = strrchr(p, '/');
    return s ? s + 1 : p;
}

/* Read one inline image or attachment object. */
static int load_file_part(struct loader *ld, json_t *obj, const char *where, bool is_inline,
                          tplf_file_part_t *fp)
{
    char w[300];
    if (!json_is_object(obj)) {
        report(ld, TPLF_DATA, where, "`%s` must be an object", where);
        return 1; /* reported */
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        bool known = !strcmp(key, "path") || !strcmp(key, "type") ||
                     (is_inline ? !strcmp(key, "cid") : !strcmp(key, "filename"));
        if (!known) {
            snprintf(w, sizeof w, "%s.%s", where, key);
            report(ld, TPLF_DATA, w, "unknown key `%s` in `%s` (known: %s)", key, where,
                   is_inline ? "cid, path, type" : "path, filename, type");
        } else if (!json_is_string(v) || json_string_length(v) == 0) {
            snprintf(w, sizeof w, "%s.%s", where, key);
            report(ld, TPLF_DATA, w, "`%s.%s` must be a non-empty string", where, key);
            return 1; /* reported */
        }
    }
    const char *path = json_string_value(json_object_get(obj, "path"));
    if (!path) {
        report(ld, TPLF_DATA, where, "`%s` needs a `path`", where);
        return 1; /* reported */
    }
    fp->path = tplf_path_join(ld->t->path, path);
    const char *fname = json_string_value(json_object_get(obj, "filename"));
    fp->filename = strdup(fname ? fname : base_name(path));
    const char *type = json_string_value(json_object_get(obj, "type"));
    fp->type = strdup(type ? type : tplf_guess_type(fp->filename ? fp->filename : path));
    if (!fp->path || !fp->filename || !fp->type) return VL_ENOMEM;
    if (!valid_mime_type(fp->type)) {
        snprintf(w, sizeof w, "%s.type", where);
        report(ld, TPLF_DATA, w, "`%s` is not a MIME type (type/subtype)", fp->type);
    }
    if (mime_has_crlf(fp->filename, strlen(fp->filename)) || strchr(fp->filename, '/')) {
        snprintf(w, sizeof w, "%s.filename", where);
        report(ld, TPLF_DATA, w, "file name `%s` may hold neither line breaks nor '/'",
               fp->filename);
    }
    if (is_inline) {
        const char *cid = json_string_value(json_object_get(obj, "cid"));
        if (!cid) {
            report(ld, TPLF_DATA, where, "`%s` needs a `cid` (the HTML refers to cid:NAME)", where);
        } else {
            bool ok = true;
            for (const char *p = cid; *p; p++)
                if ((unsigned char)*p <= 32 || (unsigned char)*p >= 127 || strchr("<>\"", *p))
                    ok = false;
            if (!ok) {
                snprintf(w, sizeof w, "%s.cid", where);
                report(ld, TPLF_DATA, w, "cid `%s` must be printable ASCII without spaces or <>",
                       cid);
            }
            if (!(fp->cid = strdup(cid))) return VL_ENOMEM;
        }
    }
    char *data = NULL;
    size_t len = 0;
    int rc = tplf_read_file(fp->path, TPLF_FILE_MAX, &data, &len);
    if (rc == VL_ENOMEM) return rc;
    if (rc) {
        snprintf(w, sizeof w, "%s.path", where);
        report(ld, rc == VL_ETOOBIG ? TPLF_DATA : TPLF_NOINPUT, w, "cannot read %s %s: %s",
               is_inline ? "inline image" : "attachment", fp->path,
               rc == VL_ENOENT    ? "no such file"
               : rc == VL_ETOOBIG ? "larger than 25 MB"
                                  : "not a readable file");
        return 1; /* reported */
    }
    fp->data = (unsigned char *)data;
    fp->len = len;
    return 0;
}

static int load_parts(struct loader *ld, json_t *arr, const char *key, bool is_inline,
                      tplf_file_part_t **out, size_t *n)
{
    if (!json_is_array(arr)) {
        report(ld, TPLF_DATA, key, "`%s` must be a list of objects", key);
        return 0;
    }
    size_t cnt = json_array_size(arr);
    *out = calloc(cnt ? cnt : 1, sizeof **out);
    if (!*out) return VL_ENOMEM;
    *n = cnt;
    for (size_t i = 0; i < cnt; i++) {
        char where[64];
        snprintf(where, sizeof where, "%s.%zu", key, i);
        int rc = load_file_part(ld, json_array_get(arr, i), where, is_inline, &(*out)[i]);
        if (rc == VL_ENOMEM) return rc;
    }
    return 0;
}

static int load_object_strings(struct loader *ld, json_t *obj, const char *key, bool headers)
{
    if (!json_is_object(obj)) {
        report(ld, TPLF_DATA, key, "`%s` must be an object of name -> string", key);
        return 0;
    }
    size_t cnt = json_object_size(obj);
    tplf_t *t = ld->t;
    if (headers) {
        t->headers = calloc(cnt ? cnt : 1, sizeof *t->headers);
        if (!t->headers) return VL_ENOMEM;
    } else {
        t->partials = calloc(cnt ? cnt : 1, sizeof *t->partials);
        if (!t->partials) return VL_ENOMEM;
    }
    const char *name;
    json_t *v;
    json_object_foreach(obj, name, v)
    {
        char where[300];
        snprintf(where, sizeof where, "%s.%s", key, name);
        tplf_str_t s = {0};
        int rc = take_string(ld, v, where, &s);
        if (rc == VL_ENOMEM) return rc;
        if (rc) continue;
        char *nm = strdup(name);
        if (!nm) {
            free(s.s);
            return VL_ENOMEM;
        }
        if (headers) {
            const char *why = reserved_header(name);
            if (!mime_valid_field_name(name, strlen(name)))
                report(ld, TPLF_DATA, where, "`%s` is not a valid header field name", name);
            else if (why)
                report(ld, TPLF_DATA, where, "header `%s` cannot be set in `headers`: %s", name,
                       why);
            t->headers[t->nheaders++] = (tplf_header_t){nm, s};
        } else {
            t->partials[t->npartials++] = (tplf_partial_t){nm, s};
        }
    }
    return 0;
}

static int load_unsubscribe(struct loader *ld, json_t *obj)
{
    if (!json_is_object(obj)) {
        report(ld, TPLF_DATA, "unsubscribe", "`unsubscribe` must be an object {url, mailto}");
        return 0;
    }
    const char *key;
    json_t *v;
    json_object_foreach(obj, key, v)
    {
        char where[300];
        snprintf(where, sizeof where, "unsubscribe.%s", key);
        int rc = 0;
        if (!strcmp(key, "url"))
            rc = take_string(ld, v, where, &ld->t->unsub_url);
        else if (!strcmp(key, "mailto"))
            rc = take_string(ld, v, where, &ld->t->unsub_mailto);
        else
            report(ld, TPLF_DATA, where, "unknown key `%s` in `unsubscribe` (known: url, mailto)",
                   key);
        if (rc == VL_ENOMEM) return rc;
    }
    if (!ld->t->unsub_url.s && !ld->t->unsub_mailto.s)
        report(ld, TPLF_DATA, "unsubscribe", "`unsubscribe` needs a `url` or a `mailto`");
    return 0;
}

static int load_root(struct loader *ld, json_t *root)
{
    tplf_t *t = ld->t;
    const char *key;
    json_t *v;
    int rc = 0;
    json_object_foreach(root, key, v)
    {
        if (!strcmp(key, "from"))
            rc = take_string(ld, v, key, &t->from);
        else if (!strcmp(key, "reply_to"))
            rc = take_string(ld, v, key, &t->reply_to);
        else if (!strcmp(key, "subject"))
            rc = take_string(ld, v, key, &t->subject);
        else if (!strcmp(key, "text"))
            rc = take_string(ld, v, key, &t->body_text);
        else if (!strcmp(key, "html"))
            rc = take_string(ld, v, key, &t->body_html);
        else if (!strcmp(key, "headers"))
            rc = load_object_strings(ld, v, key, true);
        else if (!strcmp(key, "partials"))
            rc = load_object_strings(ld, v, key, false);
        else if (!strcmp(key, "inline"))
            rc = load_parts(ld, v, key, true, &t->inlines, &t->ninlines);
        else if (!strcmp(key, "attachments"))
            rc = load_parts(ld, v, key, false, &t->attachments, &t->nattachments);
        else if (!strcmp(key, "unsubscribe"))
            rc = load_unsubscribe(ld, v);
        else
            report(ld, TPLF_DATA, key,
                   "unknown key `%s` (known: from, reply_to, subject, headers, text, html, "
                   "inline, attachments, partials, unsubscribe)",
                   key);
        if (rc == VL_ENOMEM) return rc;
        rc = 0;
    }
    if (!json_object_get(root, "from")) report(ld, TPLF_DATA, NULL, "the template has no `from`");
    if (!json_object_get(root, "text") && !json_object_get(root, "html"))
        report(ld, TPLF_DATA, NULL, "the template needs a `text` or an `html` body (or both)");
    return 0;
}

int tplf_load(tplf_t **out, const char *path, tplf_diag_fn diag, void *ud)
{
    *out = NULL;
    tplf_t *t = calloc(1, sizeof *t);
    if (!t || !(t->path = strdup(path))) {
        free(t);
        return VL_ENOMEM;
    }
    struct loader ld = {t, diag, ud, 0, false};
    int rc = tplf_read_file(path, TPLF_JSON_MAX, &t->text, &t->text_len);
    if (rc) {
        if (rc == VL_ENOMEM) {
            tplf_free(t);
            return rc;
        }
        report(&ld, rc == VL_ENOENT || rc == VL_EIO ? TPLF_NOINPUT : TPLF_DATA, NULL,
               "cannot read the template: %s",
               rc == VL_ENOENT    ? "no such file"
               : rc == VL_ETOOBIG ? "larger than 16 MB"
                                  : "not a readable file");
        tplf_free(t);
        return rc == VL_ETOOBIG ? VL_EPARSE : VL_ENOENT;
    }
    json_error_t jerr;
    json_t *root = json_loadb(t->text, t->text_len, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        ld.nerr++;
        if (diag) diag(ud, TPLF_DATA, path, jerr.line, jerr.column, jerr.text);
        tplf_free(t);
        return VL_EPARSE;
    }
    if (!json_is_object(root)) {
        report(&ld, TPLF_DATA, NULL, "the template must be a JSON object");
        rc = VL_EPARSE;
    } else {
        rc = load_root(&ld, root);
    }
    json_decref(root);
    if (!rc && ld.nerr) rc = ld.missing ? VL_ENOENT : VL_EPARSE;
    if (rc) {
        tplf_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

static void free_parts(tplf_file_part_t *p, size_t n)
{
    for (size_t i = 0; p && i < n; i++) {
        free(p[i].path);
        free(p[i].filename);
        free(p[i].type);
        free(p[i].cid);
        free(p[i].data);
    }
    free(p);
}

void tplf_free(tplf_t *t)
{
    if (!t) return;
    free(t->path);
    free(t->text);
    free(t->from.s);
    free(t->reply_to.s);
    free(t->subject.s);
    free(t->body_text.s);
    free(t->body_html.s);
    free(t->unsub_url.s);
    free(t->unsub_mailto.s);
    for (size_t i = 0; i < t->nheaders; i++) {
        free(t->headers[i].name);
        free(t->headers[i].value.s);
    }
    free(t->headers);
    for (size_t i = 0; i < t->npartials; i++) {
        free(t->partials[i].name);
        free(t->partials[i].src.s);
    }
    free(t->partials);
    free_parts(t->inlines, t->ninlines);
    free_parts(t->attachments, t->nattachments);
    free(t);
}
