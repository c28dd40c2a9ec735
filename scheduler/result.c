#include "scheduler/result.h"

#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "scheduler/keys.h"
#include "scheduler/status.h"

size_t sched_utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF)
        len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len) return 0;
    unsigned cp = c & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

/* Copy the UTF-8 sequence at s[*i] (n bytes in all), or U+FFFD for a byte
 * that does not start a valid one, and step *i past it. */
static int put_utf8_or_fffd(buf_t *out, const char *s, size_t n, size_t *i)
{
    size_t l = sched_utf8_len((const unsigned char *)s + *i, n - *i);
    int rc = l ? buf_append(out, s + *i, l) : buf_puts(out, "\xEF\xBF\xBD");
    *i += l ? l : 1;
    return rc;
}

int sched_json_string(buf_t *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    int rc = buf_reserve(out, n + 2);
    if (rc) return rc;
    rc = buf_putc(out, '"');
    size_t i = 0;
    while (!rc && i < n) {
        /* Copy the run of bytes that need no escaping in one go. */
        size_t j = i;
        while (j < n && (unsigned char)s[j] >= 0x20 && (unsigned char)s[j] < 0x80 && s[j] != '"' &&
               s[j] != '\\')
            j++;
        if (j > i) {
            rc = buf_append(out, s + i, j - i);
            i = j;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            rc = put_utf8_or_fffd(out, s, n, &i);
            continue;
        }
        char esc[7] = {'\\', 0};
        switch (c) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
        }
        rc = buf_puts(out, esc);
        i++;
    }
    return rc ? rc : buf_putc(out, '"');
}

/* Bytes a text field copies as they are: ASCII but for backslash, tab, CR
 * and LF. A table because every result runs six fields through the scan on
 * the loop thread, and nearly every byte is plain. */
static const unsigned char text_plain[256] = {
    /* all of 0x00..0x7F but '\t' (9), '\n' (10), '\r' (13) and '\\' (92) */
    [0x00 ... 0x08] = 1,
    [0x0B ... 0x0C] = 1,
    [0x0E ... 0x5B] = 1,
    [0x5D ... 0x7F] = 1,
};

/* Append s (n bytes) as a text field of a result line: backslash, tab, CR
 * and LF escaped, invalid UTF-8 as U+FFFD. */
static int text_field(buf_t *out, const char *s, size_t n)
{
    int rc = buf_reserve(out, n + 1);
    size_t i = 0;
    while (!rc && i < n) {
        /* Copy the run of bytes that need no escaping in one go. */
        size_t j = i;
        while (j < n && text_plain[(unsigned char)s[j]])
            j++;
        if (j > i) {
            rc = buf_append(out, s + i, j - i);
            i = j;
            continue;
        }
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x80) {
            rc = put_utf8_or_fffd(out, s, n, &i);
            continue;
        }
        char esc[3] = {'\\', c == '\\' ? '\\' : c == '\t' ? 't' : c == '\r' ? 'r' : 'n', 0};
        rc = buf_append(out, esc, 2);
        i++;
    }
    return rc;
}

static int text_col(buf_t *out, const char *v)
{
    int rc = text_field(out, v ? v : "", v ? strlen(v) : 0);
    return rc ? rc : buf_putc(out, '\t');
}

static int num_col(buf_t *out, long long v)
{
    int rc = buf_put_dec(out, v);
    return rc ? rc : buf_putc(out, '\t');
}

int sched_result_encode(buf_t *out, const sched_result_t *r)
{
    int rc = text_col(out, r->status);
    if (!rc) rc = num_col(out, r->attempts);
    if (!rc) rc = num_col(out, r->code);
    if (!rc) rc = text_col(out, r->enhanced);
    if (!rc) rc = num_col(out, r->first_ms);
    if (!rc) rc = num_col(out, r->last_ms);
    if (!rc) rc = text_col(out, r->host);
    if (!rc) rc = text_col(out, r->provider);
    if (!rc) rc = text_col(out, r->email);
    if (!rc)
        rc = text_field(out, r->response ? r->response : "", r->response ? strlen(r->response) : 0);
    return rc;
}

/* A decimal integer filling s[0..n) (an optional '-', then 1 to 18 digits). */
static int parse_int(const char *s, size_t n, long long *v)
{
    int neg = n && s[0] == '-';
    long long x = 0;
    if (n == (size_t)neg || n - (size_t)neg > 18) return -1;
    for (size_t i = (size_t)neg; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        x = x * 10 + (s[i] - '0');
    }
    *v = neg ? -x : x;
    return 0;
}

int sched_result_parse(const char *s, size_t len, sched_result_view_t *v)
{
    const char *col[10];
    size_t cl[10], n = 0;
    const char *p = s, *end = s + len;
    /* Ten columns: nine tabs, the response (last) may hold none. */
    while (n < 9) {
        const char *t = memchr(p, '\t', (size_t)(end - p));
        if (!t) return -1;
        col[n] = p;
        cl[n++] = (size_t)(t - p);
        p = t + 1;
    }
    col[9] = p;
    cl[9] = (size_t)(end - p);
    if (memchr(p, '\t', cl[9]) || !cl[0] || parse_int(col[1], cl[1], &v->attempts) ||
        parse_int(col[2], cl[2], &v->code) || parse_int(col[4], cl[4], &v->first_ms) ||
        parse_int(col[5], cl[5], &v->last_ms))
        return -1;
    v->status = (sched_text_t){col[0], cl[0]};
    v->enhanced = (sched_text_t){col[3], cl[3]};
    v->host = (sched_text_t){col[6], cl[6]};
    v->provider = (sched_text_t){col[7], cl[7]};
    v->email = (sched_text_t){col[8], cl[8]};
    v->response = (sched_text_t){col[9], cl[9]};
    return 0;
}

int sched_text_unescape(buf_t *out, sched_text_t t)
{
    size_t i = 0;
    int rc = 0;
    while (!rc && i < t.len) {
        const char *bs = memchr(t.p + i, '\\', t.len - i);
        size_t j = bs ? (size_t)(bs - t.p) : t.len;
        if (j > i) rc = buf_append(out, t.p + i, j - i);
        if (rc || j >= t.len) break;
        char e = j + 1 < t.len ? t.p[j + 1] : '\\';
        rc = buf_putc(out, e == 't' ? '\t' : e == 'r' ? '\r' : e == 'n' ? '\n' : e);
        i = j + 2;
    }
    return rc;
}

static int read_num(const char *s, size_t len, size_t *pos, unsigned long *v)
{
    size_t i = *pos;
    unsigned long n = 0;
    if (i >= len || s[i] < '0' || s[i] > '9') return -1;
    while (i < len && s[i] >= '0' && s[i] <= '9') {
        if (n > (~0UL - 9) / 10) return -1;
        n = n * 10 + (unsigned long)(s[i++] - '0');
    }
    *v = n;
    *pos = i;
    return 0;
}

int sched_blob_next(const char *blob, size_t len, size_t *pos, sched_line_t *line)
{
    size_t i = *pos;
    if (i >= len) return 0;
    if (read_num(blob, len, &i, &line->row) || i >= len || blob[i] != '\t') return -1;
    const char *p = blob + ++i;
    const char *tab = memchr(p, '\t', len - i);
    if (!tab) return -1;
    line->provider = p;
    line->provider_len = (size_t)(tab - p);
    i += line->provider_len + 1;
    const char *nl = memchr(blob + i, '\n', len - i);
    if (!nl) return -1;
    line->fields = blob + i;
    line->fields_len = (size_t)(nl - (blob + i));
    *pos = (size_t)(nl - blob) + 1;
    return 1;
}

int sched_member_parse(const char *m, size_t len, sched_member_t *out)
{
    size_t i = 0;
    memset(out, 0, sizeof *out);
    if (read_num(m, len, &i, &out->first) || i >= len || m[i++] != '-' ||
        read_num(m, len, &i, &out->last) || i >= len || out->last < out->first)
        return -1;
    char kind = m[i++];
    unsigned long v;
    if (read_num(m, len, &i, &v) || i != len) return -1;
    if (kind == '/') {
        out->rows = v;
    } else if (kind == ':' && v >= out->first && v <= out->last) {
        out->row = v;
        out->rows = 1;
    } else {
        return -1;
    }
    return 0;
}

int sched_row_state(const char *bits, size_t len, unsigned long first, unsigned long row)
{
    if (row < first) return 0;
    size_t byte = (size_t)(2 * row / 8 - 2 * first / 8);
    if (byte >= len) return 0;
    return ((unsigned char)bits[byte] >> (6 - (2 * row) % 8)) & 3;
}

static int hex4(const char *s, unsigned *v)
{
    unsigned n = 0;
    for (int i = 0; i < 4; i++) {
        int d = vl_hexval((unsigned char)s[i]);
        if (d < 0) return -1;
        n = n << 4 | (unsigned)d;
    }
    *v = n;
    return 0;
}

static int put_utf8(buf_t *out, unsigned cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp, n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3F)), n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | cp >> 12), u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F)), n = 3;
    } else {
        u[0] = (char)(0xF0 | cp >> 18), u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F)), u[3] = (char)(0x80 | (cp & 0x3F)), n = 4;
    }
    return buf_append(out, u, n);
}

int sched_fields_decode(const char *json, size_t len, buf_t *out, size_t *offs, size_t *lens,
                        size_t max)
{
    size_t i = 0, nf = 0;
    buf_reset(out);
    if (len < 2 || json[0] != '[' || json[len - 1] != ']') return VL_EPARSE;
    i = 1;
    if (i == len - 1) return 0;
    for (;;) {
        if (i >= len || json[i] != '"') return VL_EPARSE;
        i++;
        size_t start = out->len;
        for (;;) {
            size_t j = i;
            while (j < len && json[j] != '"' && json[j] != '\\')
                j++;
            if (j >= len) return VL_EPARSE;
            int rc = buf_append(out, json + i, j - i);
            if (rc) return rc;
            i = j;
            if (json[i] == '"') break;
            if (i + 1 >= len) return VL_EPARSE;
            char e = json[i + 1], c;
            i += 2;
            switch (e) {
            case '"':
                c = '"';
                break;
            case '\\':
                c = '\\';
                break;
            case '/':
                c = '/';
                break;
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case 'n':
                c = '\n';
                break;
            case 'r':
                c = '\r';
                break;
            case 't':
                c = '\t';
                break;
            case 'u': {
                unsigned cp, lo;
                if (i + 4 > len || hex4(json + i, &cp)) return VL_EPARSE;
                i += 4;
                if (cp >= 0xD800 && cp <= 0xDBFF && i + 6 <= len && json[i] == '\\' &&
                    json[i + 1] == 'u' && !hex4(json + i + 2, &lo) && lo >= 0xDC00 &&
                    lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                } else if (cp >= 0xD800 && cp <= 0xDFFF) {
                    cp = 0xFFFD;
                }
                if ((rc = put_utf8(out, cp))) return rc;
                continue;
            }
            default:
                return VL_EPARSE;
            }
            if ((rc = buf_putc(out, c))) return rc;
        }
        i++; /* the closing quote */
        if (nf < max) {
            offs[nf] = start;
            lens[nf] = out->len - start;
        }
        nf++;
        int rc = buf_putc(out, '\0');
        if (rc) return rc;
        if (json[i] == ']' && i == len - 1) break;
        if (json[i] != ',') return VL_EPARSE;
        i++;
    }
    return (int)(nf < max ? nf : max);
}

size_t sched_res_hashes_add(unsigned long *ks, size_t *n, unsigned long f, unsigned long l)
{
    unsigned long kf = f / SCHED_RES_ROWS, kl = (l < f ? f : l) / SCHED_RES_ROWS;
    size_t k = 0;
    while (k < *n && !(ks[k] == kf && (kl == kf || (k + 1 < *n && ks[k + 1] == kl))))
        k++;
    if (k == *n) {
        ks[(*n)++] = kf;
        if (kl != kf) ks[(*n)++] = kl;
    }
    return k;
}

static const char *const status_names[SCHED_ST_LAST] = {
    [SCHED_ST_DELIVERED] = "delivered", [SCHED_ST_BOUNCED] = "bounced",
    [SCHED_ST_FAILED] = "failed",       [SCHED_ST_SUPPRESSED] = "suppressed",
    [SCHED_ST_REJECTED] = "rejected",   [SCHED_ST_CANCELLED] = "cancelled",
    [SCHED_ST_PENDING] = "pending",     [SCHED_ST_DEFERRED] = "deferred",
    [SCHED_ST_UNKNOWN] = "unknown",
};

const char *sched_status_name(sched_status_t s)
{
    return (unsigned)s < SCHED_ST_LAST ? status_names[s] : "unknown";
}

sched_status_t sched_status_parse(const char *s, size_t len)
{
    for (int i = 0; i < SCHED_ST_UNKNOWN; i++)
        if (strlen(status_names[i]) == len && !memcmp(s, status_names[i], len))
            return (sched_status_t)i;
    return SCHED_ST_UNKNOWN;
}
