/* csv.c: the recipients CSV as a stream of validated rows (see csv.h).
 *
 * libcsv does the quoting; this file adds what a mailer needs around it:
 * feed/next without I/O, line numbers, the header, the BOM, and per-row
 * validation. Input is handed to libcsv one physical line at a time (each
 * piece ends at a CR or LF), so every row end falls at the end of a piece and
 * the current line number is always known when libcsv calls back.
 */
#include "csv.h"

#include <csv.h>

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/buf.h"
#include "common/err.h"

/* A single row (all its fields together) may not be larger than this; a
 * runaway quote in a huge file otherwise swallows the rest of it. */
#define ROW_MAX ((size_t)64 << 20)
#define CHUNK_SIZE ((size_t)64 << 10)

struct tpl_csv_reader {
    char *filename;
    unsigned flags;
    struct csv_parser parser;

    buf_t in; /* fed input not yet parsed, from in_off */
    size_t in_off;
    int bom_checked;
    int finished;  /* tpl_csv_finish() was called */
    int fini_done; /* csv_fini() ran */
    int done;
    int fatal_rc;
    tpl_csv_error_t fatal;

    unsigned long line;     /* physical line of the next byte handed to libcsv */
    int awaiting_row;       /* no byte of the next row seen yet */
    unsigned long row_line; /* where the row being built starts */
    int row_complete;
    int row_taken;    /* the last tpl_csv_next() handed out a row */
    int cb_error;     /* a callback ran out of room */
    size_t row_bytes; /* input handed to libcsv for the row being built */
    size_t row_max;   /* the limit on a row (TPL_CSV_ROW_MAX unless set) */

    buf_t rowdata; /* fields of the row being built, each NUL-terminated */
    size_t *offs;  /* start of each field in rowdata */
    size_t *lens;
    size_t nf, fcap;

    /* The header, kept for the whole read. */
    int have_header;
    buf_t hdr;
    char **names;
    size_t *name_lens;
    size_t ncols;
    int email_col;

    /* The row handed out. */
    unsigned long nrows;
    tpl_csv_row_t row;
    tpl_csv_field_t *views;
    size_t vcap;
    tpl_csv_error_t *errors;
    size_t nerr, ecap;
    tpl_email_info_t email;

    /* Addresses seen, as 64-bit hashes: memory stays flat on huge files
     * (a collision, about one in 10^8 over a million rows, would reject one
     * good address as a duplicate; that row is reported, not lost). */
    uint64_t *set;
    size_t set_cap, set_n;

    FILE *fp; /* tpl_csv_open() only */
};

/* ---- UTF-8 ---- */

/* Decode one UTF-8 sequence at s[0..len): the code point and its length, or
 * 0 when the bytes are not a valid shortest-form sequence. */
static size_t utf8_decode(const unsigned char *s, size_t len, uint32_t *cp)
{
    unsigned char c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t n;
    uint32_t v, min;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2, v = c & 0x1f, min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3, v = c & 0x0f, min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = (v << 6) | (s[i] & 0x3f);
    }
    if (v < min || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return n;
}

/* Offset of the first invalid byte, or len when all of s is valid. */
static size_t utf8_check(const char *s, size_t len)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < len) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        uint32_t cp;
        size_t n = utf8_decode(u + i, len - i, &cp);
        if (!n) return i;
        i += n;
    }
    return len;
}

int tpl_utf8_valid(const char *s, size_t len)
{
    return utf8_check(s, len) == len;
}

/* ---- email addresses ---- */

static int is_atext(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')) return 1;
    return c != 0 && strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int is_ldh(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-';
}

static int email_fail(tpl_email_info_t *info, const char *msg)
{
    info->error = msg;
    info->ascii_domain[0] = '\0';
    info->ascii_domain_len = 0;
    return VL_EPARSE;
}

/* The local part at s[0..len): sets *end to the '@' that follows it. */
static int check_local(const char *s, size_t len, size_t *end, tpl_email_info_t *info)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    if (len && u[0] == '"') {
        /* quoted-string: qtext or quoted-pair, UTF-8 allowed (RFC 6531). */
        i = 1;
        for (;;) {
            if (i >= len) return email_fail(info, "unterminated quoted local part");
            unsigned char c = u[i];
            if (c == '"') break;
            if (c == '\\') {
                if (i + 1 >= len || u[i + 1] < 32 || u[i + 1] > 126)
                    return email_fail(info, "bad escape in quoted local part");
                i += 2;
                continue;
            }
            if (c >= 0x80) {
                uint32_t cp;
                size_t n = utf8_decode(u + i, len - i, &cp);
                if (!n) return email_fail(info, "invalid UTF-8 in local part");
                info->needs_smtputf8 = 1;
                i += n;
                continue;
            }
            if (c < 32 || c > 126) return email_fail(info, "control character in local part");
            i++;
        }
        i++; /* closing quote */
        if (i == 2) return email_fail(info, "empty quoted local part");
    } else {
        /* dot-atom: atoms of atext joined by single dots. */
        int need_atext = 1;
        while (i < len && u[i] != '@') {
            unsigned char c = u[i];
            if (c == '.') {
                if (need_atext)
                    return email_fail(info, i == 0 ? "local part starts with a dot"
                                                   : "two dots in a row in local part");
                need_atext = 1;
                i++;
                continue;
            }
            if (c >= 0x80) {
                uint32_t cp;
                size_t n = utf8_decode(u + i, len - i, &cp);
                if (!n) return email_fail(info, "invalid UTF-8 in local part");
                info->needs_smtputf8 = 1;
                i += n;
            } else if (is_atext(c)) {
                i++;
            } else if (c == ' ' || c == '\t') {
                return email_fail(info, "space in local part");
            } else if (c < 32 || c == 127) {
                return email_fail(info, "control character in local part");
            } else {
                return email_fail(info, "character not allowed in local part");
            }
            need_atext = 0;
        }
        if (i == 0)
            return email_fail(info, len && u[0] == '@' ? "empty local part" : "no @ in address");
        if (need_atext) return email_fail(info, "local part ends with a dot");
    }
    if (i >= len || u[i] != '@')
        return email_fail(info, i >= len ? "no @ in address" : "text after quoted local part");
    if (i > 64) return email_fail(info, "local part longer than 64 octets");
    *end = i;
    return 0;
}

static int check_literal(const char *s, size_t len, tpl_email_info_t *info)
{
    /* s is "[...]"; the inside is an IPv4 address or "IPv6:" and an IPv6
     * address. Checked by hand so nothing is read past len. */
    if (len < 3 || s[len - 1] != ']') return email_fail(info, "unterminated address literal");
    const char *p = s + 1;
    size_t n = len - 2;
    if (n > 5 && strncasecmp(p, "IPv6:", 5) == 0) {
        p += 5, n -= 5;
        int groups = 0, dbl = 0, run = 0;
        for (size_t i = 0; i < n; i++) {
            char c = p[i];
            if (c == ':') {
                if (i + 1 < n && p[i + 1] == ':') {
                    if (dbl) return email_fail(info, "bad IPv6 address literal");
                    dbl = 1;
                    i++;
                } else if (i == 0 || i + 1 == n) {
                    return email_fail(info, "bad IPv6 address literal");
                }
                run = 0;
            } else if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) {
                if (run == 0) groups++;
                if (++run > 4) return email_fail(info, "bad IPv6 address literal");
            } else {
                return email_fail(info, "bad IPv6 address literal");
            }
        }
        if (groups > 8 || (!dbl && groups != 8) || (dbl && groups > 7))
            return email_fail(info, "bad IPv6 address literal");
    } else {
        int parts = 0, digits = 0, val = 0;
        for (size_t i = 0; i <= n; i++) {
            if (i == n || p[i] == '.') {
                if (!digits || val > 255) return email_fail(info, "bad IPv4 address literal");
                parts++, digits = 0, val = 0;
            } else if (p[i] >= '0' && p[i] <= '9') {
                if (++digits > 3) return email_fail(info, "bad IPv4 address literal");
                val = val * 10 + (p[i] - '0');
            } else {
                return email_fail(info, "bad address literal");
            }
        }
        if (parts != 4) return email_fail(info, "bad IPv4 address literal");
    }
    if (len >= sizeof info->ascii_domain) return email_fail(info, "domain too long");
    for (size_t i = 0; i < len; i++)
        info->ascii_domain[i] = s[i];
    info->ascii_domain[len] = '\0';
    info->ascii_domain_len = len;
    return 0;
}

static int check_domain(const char *s, size_t len, tpl_email_info_t *info)
{
    if (len == 0) return email_fail(info, "empty domain");
    if (s[0] == '[') return check_literal(s, len, info);
    const unsigned char *u = (const unsigned char *)s;
    char *out = info->ascii_domain;
    size_t cap = sizeof info->ascii_domain, o = 0;
    size_t i = 0;
    for (;;) {
        size_t start = i;
        int ascii = 1;
        while (i < len && u[i] != '.') {
            if (u[i] >= 0x80) ascii = 0;
            i++;
        }
        size_t llen = i - start;
        if (llen == 0)
            return email_fail(info, start == 0 ? "domain starts with a dot"
                                    : i >= len ? "domain ends with a dot"
                                               : "empty label in domain");
        if (ascii) {
            for (size_t k = start; k < i; k++) {
                if (!is_ldh(u[k]))
                    return email_fail(info, u[k] < 32 || u[k] == 127
                                                ? "control character in domain"
                                                : "character not allowed in domain");
            }
            if (u[start] == '-' || u[i - 1] == '-')
                return email_fail(info, "domain label starts or ends with a hyphen");
            if (llen > 63) return email_fail(info, "domain label longer than 63 octets");
            if (o + llen + 1 >= cap) return email_fail(info, "domain longer than 253 octets");
            for (size_t k = start; k < i; k++) {
                unsigned char c = u[k];
                out[o++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
            }
        } else {
            /* An IDN label: decode, check the ASCII part is LDH, lowercase
             * ASCII letters, punycode with the ACE prefix. */
            uint32_t cps[64];
            size_t ncp = 0;
            size_t k = start;
            while (k < i) {
                uint32_t cp;
                size_t n = utf8_decode(u + k, i - k, &cp);
                if (!n) return email_fail(info, "invalid UTF-8 in domain");
                if (cp < 0x80) {
                    if (!is_ldh((unsigned char)cp))
                        return email_fail(info, "character not allowed in domain");
                    if (cp >= 'A' && cp <= 'Z') cp += 32;
                } else if (cp < 0xa0 || cp == 0x3002 || cp == 0xff0e || cp == 0xff61) {
                    /* C1 controls, and ideographic full stops that IDNA
                     * would map to dots: reject rather than guess. */
                    return email_fail(info, "character not allowed in domain");
                }
                if (ncp == sizeof cps / sizeof cps[0])
                    return email_fail(info, "domain label longer than 63 octets");
                cps[ncp++] = cp;
                k += n;
            }
            if (cps[0] == '-' || cps[ncp - 1] == '-')
                return email_fail(info, "domain label starts or ends with a hyphen");
            char label[64];
            int n = tpl_punycode_encode(cps, ncp, label, sizeof label);
            if (n < 0 || n + 4 > 63)
                return email_fail(info, "domain label longer than 63 octets once punycoded");
            if (o + 4 + (size_t)n + 1 >= cap)
                return email_fail(info, "domain longer than 253 octets");
            memcpy(out + o, "xn--", 4);
            memcpy(out + o + 4, label, (size_t)n);
            o += 4 + (size_t)n;
            info->idn_domain = 1;
        }
        if (i >= len) break;
        out[o++] = '.';
        i++;
        if (i >= len) return email_fail(info, "domain ends with a dot");
    }
    if (o > 253) return email_fail(info, "domain longer than 253 octets");
    out[o] = '\0';
    info->ascii_domain_len = o;
    return 0;
}

int tpl_email_check(const char *s, size_t len, tpl_email_info_t *info)
{
    info->needs_smtputf8 = 0;
    info->idn_domain = 0;
    info->at = 0;
    info->error = NULL;
    info->ascii_domain[0] = '\0';
    info->ascii_domain_len = 0;
    if (len == 0) return email_fail(info, "empty address");
    size_t at;
    int rc = check_local(s, len, &at, info);
    if (rc) return rc;
    info->at = at;
    rc = check_domain(s + at + 1, len - at - 1, info);
    if (rc) return rc;
    /* RFC 5321 4.5.3.1.3: a path is at most 256 octets with its brackets. */
    if (at + 1 + info->ascii_domain_len > 254)
        return email_fail(info, "address longer than 254 octets");
    return 0;
}

/* ---- the set of addresses seen ---- */

static uint64_t hash_bytes(uint64_t h, const void *p, size_t n)
{
    const unsigned char *u = p;
    for (size_t i = 0; i < n; i++) {
        h ^= u[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t hash_final(uint64_t h)
{
    /* FNV-1a spreads low bits poorly; the MurmurHash3 finaliser fixes that
     * before the hash picks a slot. */
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdULL;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ULL;
    h ^= h >> 33;
    return h ? h : 1; /* 0 marks an empty slot */
}

static int set_grow(tpl_csv_reader_t *r)
{
    size_t ncap = r->set_cap ? r->set_cap * 2 : 1024;
    uint64_t *ns = calloc(ncap, sizeof *ns);
    if (!ns) return VL_ENOMEM;
    for (size_t i = 0; i < r->set_cap; i++) {
        uint64_t h = r->set[i];
        if (!h) continue;
        size_t j = (size_t)h & (ncap - 1);
        while (ns[j])
            j = (j + 1) & (ncap - 1);
        ns[j] = h;
    }
    free(r->set);
    r->set = ns;
    r->set_cap = ncap;
    return 0;
}

/* 1 when h was there already, 0 when it was added, or VL_ENOMEM. */
static int set_add(tpl_csv_reader_t *r, uint64_t h)
{
    if ((r->set_n + 1) * 2 > r->set_cap) {
        int rc = set_grow(r);
        if (rc) return rc;
    }
    size_t mask = r->set_cap - 1, j = (size_t)h & mask;
    while (r->set[j]) {
        if (r->set[j] == h) return 1;
        j = (j + 1) & mask;
    }
    r->set[j] = h;
    r->set_n++;
    return 0;
}

/* ---- the reader ---- */

static int no_space(unsigned char c)
{
    (void)c;
    return 0; /* keep spaces: fields are data, "  Li Lei" stays as it is */
}

tpl_csv_reader_t *tpl_csv_new(const char *filename, unsigned flags)
{
    tpl_csv_reader_t *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    r->filename = strdup(filename ? filename : "-");
    if (!r->filename || csv_init(&r->parser, CSV_STRICT | CSV_STRICT_FINI | CSV_APPEND_NULL)) {
        free(r->filename);
        free(r);
        return NULL;
    }
    csv_set_space_func(&r->parser, no_space);
    /* libcsv grows a field's buffer by this much at a time (128 bytes by default): a
     * large field cost a realloc every 128 bytes. */
    csv_set_blk_size(&r->parser, 64 * 1024);
    r->flags = flags;
    buf_init(&r->in, (size_t)-1 / 2);
    r->row_max = ROW_MAX;
    buf_init(&r->rowdata, ROW_MAX);
    buf_init(&r->hdr, ROW_MAX);
    r->line = 1;
    r->awaiting_row = 1;
    r->email_col = -1;
    return r;
}

void tpl_csv_set_row_max(tpl_csv_reader_t *r, size_t bytes)
{
    r->row_max = bytes && bytes < ROW_MAX ? bytes : ROW_MAX;
}

void tpl_csv_free(tpl_csv_reader_t *r)
{
    if (!r) return;
    csv_free(&r->parser);
    if (r->fp) fclose(r->fp);
    buf_free(&r->in);
    buf_free(&r->rowdata);
    buf_free(&r->hdr);
    free(r->offs);
    free(r->lens);
    free(r->names);
    free(r->name_lens);
    free(r->views);
    free(r->errors);
    free(r->set);
    free(r->filename);
    free(r);
}

const char *tpl_csv_filename(const tpl_csv_reader_t *r)
{
    return r->filename;
}

int tpl_csv_feed(tpl_csv_reader_t *r, const void *data, size_t len)
{
    if (r->finished) return VL_ESTATE;
    if (r->in_off && r->in_off == r->in.len) {
        buf_reset(&r->in);
        r->in_off = 0;
    }
    return buf_append(&r->in, data, len);
}

int tpl_csv_finish(tpl_csv_reader_t *r)
{
    if (r->finished) return VL_ESTATE;
    r->finished = 1;
    return 0;
}

int tpl_csv_done(const tpl_csv_reader_t *r)
{
    return r->done;
}

const tpl_csv_error_t *tpl_csv_fatal(const tpl_csv_reader_t *r)
{
    return r->fatal_rc ? &r->fatal : NULL;
}

int tpl_csv_header_ready(const tpl_csv_reader_t *r)
{
    return r->have_header;
}

size_t tpl_csv_ncolumns(const tpl_csv_reader_t *r)
{
    return r->ncols;
}

const char *tpl_csv_column_name(const tpl_csv_reader_t *r, size_t i)
{
    return i < r->ncols ? r->names[i] : NULL;
}

int tpl_csv_column(const tpl_csv_reader_t *r, const char *name)
{
    for (size_t i = 0; i < r->ncols; i++)
        if (strcmp(r->names[i], name) == 0) return (int)i;
    return -1;
}

int tpl_csv_column_n(const tpl_csv_reader_t *r, const char *name, size_t len)
{
    for (size_t i = 0; i < r->ncols; i++)
        if (r->name_lens[i] == len && memcmp(r->names[i], name, len) == 0) return (int)i;
    return -1;
}

int tpl_csv_email_column(const tpl_csv_reader_t *r)
{
    return r->email_col;
}

/* Copy s[0..len) into dst (of size n) for a message: cut at a UTF-8
 * boundary with "..." when long, control characters shown as '?', so an
 * error line can never be split or forged by the data it quotes. */
static void quote_for_message(char *dst, size_t n, const char *s, size_t len)
{
    size_t o = 0, i = 0;
    while (i < len && o + 4 < n) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x80) {
            dst[o++] = (c < 32 || c == 127) ? '?' : (char)c;
            i++;
            continue;
        }
        uint32_t cp;
        size_t k = utf8_decode((const unsigned char *)s + i, len - i, &cp);
        if (!k) {
            dst[o++] = '?';
            i++;
            continue;
        }
        if (o + k + 4 >= n) break;
        memcpy(dst + o, s + i, k);
        o += k, i += k;
    }
    if (i < len && n >= 4) {
        while (o + 4 > n)
            o--;
        memcpy(dst + o, "...", 3);
        o += 3;
    }
    if (n) dst[o < n ? o : n - 1] = '\0';
}

static void set_fatal(tpl_csv_reader_t *r, int rc, enum tpl_csv_errkind kind, unsigned long line,
                      int column, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

static void set_fatal(tpl_csv_reader_t *r, int rc, enum tpl_csv_errkind kind, unsigned long line,
                      int column, const char *fmt, ...)
{
    tpl_csv_error_t *e = &r->fatal;
    memset(e, 0, sizeof *e);
    e->file = r->filename;
    e->row = 0;
    e->line = line;
    e->column = column;
    e->kind = kind;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    r->fatal_rc = rc;
}

static void on_field(void *s, size_t len, void *ud)
{
    tpl_csv_reader_t *r = ud;
    if (r->cb_error) return;
    if (r->nf == r->fcap) {
        size_t ncap = r->fcap ? r->fcap * 2 : 16;
        size_t *no = realloc(r->offs, ncap * sizeof *no);
        if (no) r->offs = no;
        size_t *nl = no ? realloc(r->lens, ncap * sizeof *nl) : NULL;
        if (!no || !nl) {
            r->cb_error = VL_ENOMEM;
            return;
        }
        r->lens = nl;
        r->fcap = ncap;
    }
    size_t off = r->rowdata.len;
    int rc = buf_append(&r->rowdata, s ? s : "", len);
    if (!rc) rc = buf_putc(&r->rowdata, '\0');
    if (rc) {
        r->cb_error = rc;
        return;
    }
    r->offs[r->nf] = off;
    r->lens[r->nf] = len;
    r->nf++;
}

static void on_row(int c, void *ud)
{
    (void)c;
    tpl_csv_reader_t *r = ud;
    r->row_complete = 1;
}

/* The line where field k of the row being built starts: fields are joined
 * by commas, so only newlines inside earlier (quoted) fields move it. */
static unsigned long field_line(const tpl_csv_reader_t *r, size_t k)
{
    unsigned long line = r->row_line;
    for (size_t i = 0; i < k && i < r->nf; i++) {
        const char *p = r->rowdata.data + r->offs[i];
        for (size_t j = 0; j < r->lens[i]; j++)
            line += p[j] == '\n';
    }
    return line;
}

static int take_header(tpl_csv_reader_t *r)
{
    /* One limit for every path (check, render, the ingest): past it a column would be
     * shown by one and empty in another. */
    if (r->nf > TPL_CSV_MAX_COLUMNS) {
        set_fatal(r, VL_EPARSE, TPL_CSV_E_HEADER, r->row_line, TPL_CSV_MAX_COLUMNS + 1,
                  "the header has %zu columns; at most %d are allowed", r->nf, TPL_CSV_MAX_COLUMNS);
        return r->fatal_rc;
    }
    for (size_t i = 0; i < r->nf; i++) {
        const char *p = r->rowdata.data + r->offs[i];
        size_t bad = utf8_check(p, r->lens[i]);
        if (bad != r->lens[i]) {
            set_fatal(r, VL_EPARSE, TPL_CSV_E_HEADER, field_line(r, i), (int)i + 1,
                      "invalid UTF-8 in the name of column %zu (byte %zu)", i + 1, bad + 1);
            return r->fatal_rc;
        }
    }
    /* Keep the names for the whole read: rowdata is reused by data rows. */
    int rc = buf_append(&r->hdr, r->rowdata.data, r->rowdata.len);
    r->names = rc ? NULL : calloc(r->nf ? r->nf : 1, sizeof *r->names);
    r->name_lens = r->names ? calloc(r->nf ? r->nf : 1, sizeof *r->name_lens) : NULL;
    if (!r->name_lens) {
        set_fatal(r, VL_ENOMEM, TPL_CSV_E_NOMEM, r->row_line, 0, "out of memory");
        return r->fatal_rc;
    }
    r->ncols = r->nf;
    for (size_t i = 0; i < r->nf; i++) {
        r->names[i] = r->hdr.data + r->offs[i];
        r->name_lens[i] = r->lens[i];
    }
    for (size_t i = 0; i < r->ncols; i++) {
        for (size_t j = 0; j < i; j++) {
            if (strcmp(r->names[i], r->names[j]) == 0 && r->names[i][0]) {
                char q[80];
                quote_for_message(q, sizeof q, r->names[i], strlen(r->names[i]));
                set_fatal(r, VL_EPARSE, TPL_CSV_E_HEADER, field_line(r, i), (int)i + 1,
                          "column `%s` appears twice in the header (columns %zu and %zu)", q, j + 1,
                          i + 1);
                return r->fatal_rc;
            }
        }
        if (r->email_col < 0 && strcasecmp(r->names[i], "email") == 0) r->email_col = (int)i;
    }
    if (r->email_col < 0 && !(r->flags & TPL_CSV_NO_EMAIL)) {
        set_fatal(r, VL_EPARSE, TPL_CSV_E_HEADER, r->row_line, 0,
                  "no `email` column in the header (%zu column%s)", r->ncols,
                  r->ncols == 1 ? "" : "s");
        return r->fatal_rc;
    }
    r->have_header = 1;
    return 0;
}

static tpl_csv_error_t *add_error(tpl_csv_reader_t *r, enum tpl_csv_errkind kind, size_t col,
                                  const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* Record a row error for 0-based column col (SIZE_MAX: none). NULL when out
 * of memory, which the caller turns into a fatal error. */
static tpl_csv_error_t *add_error(tpl_csv_reader_t *r, enum tpl_csv_errkind kind, size_t col,
                                  const char *fmt, ...)
{
    if (r->nerr == r->ecap) {
        size_t ncap = r->ecap ? r->ecap * 2 : 4;
        tpl_csv_error_t *ne = realloc(r->errors, ncap * sizeof *ne);
        if (!ne) return NULL;
        r->errors = ne;
        r->ecap = ncap;
    }
    tpl_csv_error_t *e = &r->errors[r->nerr++];
    e->file = r->filename;
    e->row = r->nrows;
    e->kind = kind;
    if (col == (size_t)-1) {
        e->line = r->row_line;
        e->column = 0;
        e->column_name = NULL;
    } else {
        e->line = field_line(r, col);
        e->column = (int)col + 1;
        e->column_name = col < r->ncols ? r->names[col] : NULL;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return e;
}

#define ADD_ERROR(...)                                                                             \
    do {                                                                                           \
        if (!add_error(r, __VA_ARGS__)) goto nomem;                                                \
    } while (0)

/* Turn the completed row in rowdata into r->row, with its errors. */
static int build_row(tpl_csv_reader_t *r)
{
    r->nrows++;
    r->nerr = 0;
    if (r->vcap < r->nf) {
        tpl_csv_field_t *nv = realloc(r->views, r->nf * sizeof *nv);
        if (!nv) goto nomem;
        r->views = nv;
        r->vcap = r->nf;
    }
    for (size_t i = 0; i < r->nf; i++) {
        r->views[i].ptr = r->rowdata.data + r->offs[i];
        r->views[i].len = r->lens[i];
    }
    tpl_csv_row_t *row = &r->row;
    memset(row, 0, sizeof *row);
    row->row = r->nrows;
    row->line = r->row_line;
    row->nfields = r->nf;
    row->fields = r->views;

    if (r->nf != r->ncols) {
        if (r->nf < r->ncols)
            ADD_ERROR(TPL_CSV_E_FIELDS, r->nf, "expected %zu fields, found %zu (no `%s`)", r->ncols,
                      r->nf, r->names[r->nf]);
        else
            ADD_ERROR(TPL_CSV_E_FIELDS, r->ncols, "expected %zu fields, found %zu", r->ncols,
                      r->nf);
    }
    int email_utf8_ok = 1;
    for (size_t i = 0; i < r->nf; i++) {
        size_t bad = utf8_check(r->views[i].ptr, r->views[i].len);
        if (bad != r->views[i].len) {
            ADD_ERROR(TPL_CSV_E_UTF8, i, "invalid UTF-8 at byte %zu of the field", bad + 1);
            if ((int)i == r->email_col) email_utf8_ok = 0;
        }
    }
    if (r->email_col >= 0 && !(r->flags & TPL_CSV_NO_EMAIL) && (size_t)r->email_col < r->nf) {
        size_t ec = (size_t)r->email_col;
        /* Surrounding blanks are a spreadsheet habit, not part of the address. */
        const char *p = r->views[ec].ptr;
        size_t n = r->views[ec].len;
        while (n && (*p == ' ' || *p == '\t'))
            p++, n--;
        while (n && (p[n - 1] == ' ' || p[n - 1] == '\t'))
            n--;
        row->email.ptr = p;
        row->email.len = n;
        if (n == 0) {
            ADD_ERROR(TPL_CSV_E_NO_EMAIL, ec, "empty email address");
        } else if (email_utf8_ok) {
            tpl_email_info_t *info = &r->email;
            char q[120];
            if (tpl_email_check(p, n, info)) {
                quote_for_message(q, sizeof q, p, n);
                ADD_ERROR(TPL_CSV_E_EMAIL, ec, "invalid email address `%s`: %s", q, info->error);
            } else {
                row->needs_smtputf8 = info->needs_smtputf8;
                row->idn_domain = info->idn_domain;
                row->ascii_domain = info->ascii_domain;
                row->ascii_domain_len = info->ascii_domain_len;
                /* Only a row that is otherwise good claims its address, so
                 * a later good row is not lost to a rejected one. */
                if (!(r->flags & TPL_CSV_NO_DEDUP) && r->nerr == 0) {
                    uint64_t h = hash_bytes(0xcbf29ce484222325ULL, p, info->at + 1);
                    h = hash_final(hash_bytes(h, info->ascii_domain, info->ascii_domain_len));
                    int dup = set_add(r, h);
                    if (dup < 0) goto nomem;
                    if (dup) {
                        quote_for_message(q, sizeof q, p, n);
                        ADD_ERROR(TPL_CSV_E_DUPLICATE, ec,
                                  "duplicate email address `%s` (already in an earlier row)", q);
                    }
                }
            }
        }
    }
    row->nerrors = r->nerr;
    row->errors = r->errors;
    return 0;
nomem:
    set_fatal(r, VL_ENOMEM, TPL_CSV_E_NOMEM, r->row_line, 0, "out of memory");
    return r->fatal_rc;
}

static void start_row(tpl_csv_reader_t *r)
{
    buf_reset(&r->rowdata);
    r->nf = 0;
    r->row_bytes = 0;
    r->row_complete = 0;
    r->awaiting_row = 1;
}

/* Hand one piece of input (ending at the first CR or LF, or at the end of
 * what we have) to libcsv. */
static int parse_piece(tpl_csv_reader_t *r)
{
    const char *p = r->in.data + r->in_off;
    size_t avail = r->in.len - r->in_off;
    size_t n = 0;
    while (n < avail && p[n] != '\n' && p[n] != '\r')
        n++;
    int has_content = n > 0;
    if (n < avail) n++; /* the terminator belongs to this piece */
    if (r->awaiting_row && has_content) {
        r->row_line = r->line;
        r->awaiting_row = 0;
    }
    /* libcsv gathers a field in its own buffer until the field ends, with no limit: a
     * file of NUL bytes (/dev/zero) or an unclosed quote grew memory without bound. The
     * row's input so far bounds that buffer, so the row limit is checked on it. */
    r->row_bytes += n;
    if (r->row_bytes > r->row_max) {
        set_fatal(r, VL_ETOOBIG, TPL_CSV_E_NOMEM, r->row_line, 0,
                  "row larger than %zu bytes (an unclosed quote, or not a CSV file?)", r->row_max);
        return r->fatal_rc;
    }
    size_t done = csv_parse(&r->parser, p, n, on_field, on_row, r);
    if (r->cb_error) {
        set_fatal(r, r->cb_error, TPL_CSV_E_NOMEM, r->row_line, 0,
                  r->cb_error == VL_ETOOBIG ? "row larger than %zu bytes (an unclosed quote?)"
                                            : "out of memory (row of %zu bytes at most)",
                  ROW_MAX);
        return r->fatal_rc;
    }
    if (done != n) {
        set_fatal(r, VL_EPARSE, TPL_CSV_E_SYNTAX, r->line, (int)r->nf + 1,
                  "CSV syntax error: a quote inside an unquoted field, or text after a "
                  "closing quote (a field with quotes must be wholly quoted, quotes doubled)");
        return r->fatal_rc;
    }
    if (p[n - 1] == '\n') r->line++;
    r->in_off += n;
    return 0;
}

int tpl_csv_next(tpl_csv_reader_t *r, tpl_csv_row_t **row)
{
    if (r->fatal_rc) return r->fatal_rc;
    if (r->row_taken) {
        r->row_taken = 0;
        start_row(r);
    }
    for (;;) {
        if (r->row_complete) {
            if (!r->have_header) {
                if (take_header(r)) return r->fatal_rc;
                start_row(r);
                continue;
            }
            if (build_row(r)) return r->fatal_rc;
            r->row_taken = 1;
            *row = &r->row;
            return 1;
        }
        if (!r->bom_checked && r->in.len - r->in_off < 3 && !r->finished) {
            /* Wait for three bytes, or the end, before deciding on a BOM. */
            return 0;
        }
        if (!r->bom_checked) {
            r->bom_checked = 1;
            if (r->in.len - r->in_off >= 3 &&
                memcmp(r->in.data + r->in_off, "\xef\xbb\xbf", 3) == 0)
                r->in_off += 3;
        }
        if (r->in_off < r->in.len) {
            if (parse_piece(r)) return r->fatal_rc;
            continue;
        }
        /* All input parsed: forget it, so fed data never piles up. */
        buf_reset(&r->in);
        r->in_off = 0;
        if (!r->finished) return 0;
        if (!r->fini_done) {
            r->fini_done = 1;
            if (csv_fini(&r->parser, on_field, on_row, r) != 0) {
                set_fatal(r, VL_EPARSE, TPL_CSV_E_SYNTAX, r->row_line, (int)r->nf + 1,
                          "unterminated quoted field: the quote opened on line %lu is never "
                          "closed",
                          field_line(r, r->nf));
                return r->fatal_rc;
            }
            if (r->cb_error) {
                set_fatal(r, r->cb_error, TPL_CSV_E_NOMEM, r->row_line, 0, "out of memory");
                return r->fatal_rc;
            }
            continue;
        }
        if (!r->have_header && !(r->flags & TPL_CSV_NO_EMAIL)) {
            set_fatal(r, VL_EPARSE, TPL_CSV_E_HEADER, 1, 0,
                      "the file is empty: no header row with an `email` column");
            return r->fatal_rc;
        }
        r->done = 1;
        return 0;
    }
}

int tpl_csv_format_error(const tpl_csv_error_t *e, char *dst, size_t n)
{
    char pos[48] = "";
    char row[48] = "";
    /* No line (the file could not be opened): "file: message". */
    if (e->line > 0 && e->column > 0)
        snprintf(pos, sizeof pos, ":%lu:%d", e->line, e->column);
    else if (e->line > 0)
        snprintf(pos, sizeof pos, ":%lu", e->line);
    if (e->row > 0) snprintf(row, sizeof row, " (row %lu)", e->row);
    return snprintf(dst, n, "%s%s: %s%s", e->file ? e->file : "-", pos, e->message, row);
}

/* ---- the file reader ---- */

int tpl_csv_open(const char *path, unsigned flags, tpl_csv_reader_t **out)
{
    tpl_csv_reader_t *r = tpl_csv_new(path, flags);
    *out = r;
    if (!r) return VL_ENOMEM;
    r->fp = fopen(path, "rb");
    if (!r->fp) {
        int e = errno;
        int rc = e == ENOENT ? VL_ENOENT : VL_EIO;
        set_fatal(r, rc, TPL_CSV_E_IO, 0, 0, "cannot open: %s", strerror(e));
        return rc;
    }
    return 0;
}

int tpl_csv_read(tpl_csv_reader_t *r, tpl_csv_row_t **row)
{
    if (!r->fp && !r->finished) return r->fatal_rc ? r->fatal_rc : VL_ESTATE;
    for (;;) {
        int rc = tpl_csv_next(r, row);
        if (rc != 0 || r->done) return rc;
        if (r->finished) return 0;
        /* tpl_csv_next() only asks for more once all input is used (or
         * fewer than three bytes wait for the BOM check), so reading
         * straight into the input buffer keeps it at one chunk. */
        rc = buf_reserve(&r->in, CHUNK_SIZE);
        if (rc) {
            set_fatal(r, rc, TPL_CSV_E_NOMEM, r->line, 0, "out of memory");
            return rc;
        }
        size_t got = fread(r->in.data + r->in.len, 1, CHUNK_SIZE, r->fp);
        r->in.len += got;
        r->in.data[r->in.len] = '\0';
        if (got < CHUNK_SIZE) {
            if (ferror(r->fp)) {
                set_fatal(r, VL_EIO, TPL_CSV_E_IO, r->line, 0, "read error: %s", strerror(errno));
                return VL_EIO;
            }
            r->finished = 1;
        }
    }
}
