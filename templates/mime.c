/* mime.c: encoders for message bodies and header fields (see mime.h). */
#include "templates/mime.h"

#include <stdio.h>
#include <string.h>

#include "common/err.h"

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char hexdig[] = "0123456789ABCDEF";

/* Eight bytes at a time: the common case of plain ASCII text is checked a
 * word at a time and handled byte by byte only where something needs care. */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static inline uint64_t load64(const unsigned char *p)
{
    uint64_t x;
    memcpy(&x, p, 8);
    return x;
}

static inline uint64_t has_zero(uint64_t v)
{
    return (v - ONES) & ~v & HIGHS;
}

/* True when all eight bytes lie in [lo, 0x7e] and none is '='. */
static inline bool plain8(uint64_t x, unsigned lo)
{
    uint64_t bad = ((x - ONES * lo) & ~x & HIGHS) | (x & HIGHS) | has_zero(x ^ (ONES * 0x7f)) |
                   has_zero(x ^ (ONES * '='));
    return bad == 0;
}

const char *mime_cte_name(enum mime_cte cte)
{
    switch (cte) {
    case MIME_CTE_7BIT:
        return "7bit";
    case MIME_CTE_QP:
        return "quoted-printable";
    case MIME_CTE_BASE64:
        return "base64";
    }
    return "7bit";
}

/* ---- base64 ---- */

/* Encode whole groups of three; the caller has reserved the room. Returns the
 * output length. */
static size_t b64_block(char *dst, const unsigned char *s, size_t n)
{
    char *d = dst;
    size_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8 | s[i + 2];
        d[0] = b64_alphabet[v >> 18];
        d[1] = b64_alphabet[(v >> 12) & 63];
        d[2] = b64_alphabet[(v >> 6) & 63];
        d[3] = b64_alphabet[v & 63];
        d += 4;
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)s[i] << 16;
        d[0] = b64_alphabet[v >> 18];
        d[1] = b64_alphabet[(v >> 12) & 63];
        d[2] = d[3] = '=';
        d += 4;
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)s[i] << 16 | (uint32_t)s[i + 1] << 8;
        d[0] = b64_alphabet[v >> 18];
        d[1] = b64_alphabet[(v >> 12) & 63];
        d[2] = b64_alphabet[(v >> 6) & 63];
        d[3] = '=';
        d += 4;
    }
    return (size_t)(d - dst);
}

size_t mime_b64_encoded_len(size_t n)
{
    size_t chars = (n + 2) / 3 * 4;
    size_t lines = (chars + MIME_LINE_MAX - 1) / MIME_LINE_MAX;
    return chars + 2 * lines;
}

int mime_b64_encode(buf_t *out, const void *src, size_t n)
{
    size_t need = mime_b64_encoded_len(n);
    int rc = buf_reserve(out, need);
    if (rc) return rc;
    const unsigned char *s = src;
    char *d = out->data + out->len;
    /* 57 input bytes make exactly one 76-character line. */
    while (n > 0) {
        size_t take = n < 57 ? n : 57;
        d += b64_block(d, s, take);
        *d++ = '\r';
        *d++ = '\n';
        s += take;
        n -= take;
    }
    out->len += need;
    out->data[out->len] = '\0';
    return 0;
}

int mime_b64_encode_raw(buf_t *out, const void *src, size_t n)
{
    int rc = buf_reserve(out, (n + 2) / 3 * 4);
    if (rc) return rc;
    out->len += b64_block(out->data + out->len, src, n);
    out->data[out->len] = '\0';
    return 0;
}

/* ---- text bodies ---- */

/* Bytes that quoted-printable writes as they are. */
static inline bool qp_literal(unsigned char c)
{
    return (c >= 33 && c <= 126 && c != '=');
}

int mime_qp_encode(buf_t *out, const void *src, size_t n)
{
    /* Worst case: every byte as =XX, plus a soft break every 25 of them. */
    size_t worst = n * 3 + (n * 3 / 75 + 1) * 3 + 2;
    int rc = buf_reserve(out, worst);
    if (rc) return rc;
    const unsigned char *s = src;
    char *d = out->data + out->len;
    size_t col = 0;
    for (size_t i = 0; i < n; i++) {
        /* Runs of literal characters (no space: a space may be trailing)
         * go eight at a time while the line has room. */
        while (i + 8 <= n && col + 8 <= MIME_LINE_MAX - 1 && plain8(load64(s + i), 0x21)) {
            memcpy(d, s + i, 8);
            d += 8;
            i += 8;
            col += 8;
        }
        if (i >= n) break;
        unsigned char c = s[i];
        if (c == '\n' || (c == '\r' && i + 1 < n && s[i + 1] == '\n')) {
            if (c == '\r') i++;
            *d++ = '\r';
            *d++ = '\n';
            col = 0;
            continue;
        }
        bool lit = qp_literal(c);
        if (c == ' ' || c == '\t') {
            /* Whitespace at the end of a line would be lost in transport
             * (and by DKIM's relaxed body form): encode it there. */
            bool at_end = i + 1 == n || s[i + 1] == '\n' ||
                          (s[i + 1] == '\r' && i + 2 < n && s[i + 2] == '\n');
            lit = !at_end;
        }
        size_t len = lit ? 1 : 3;
        if (col + len > MIME_LINE_MAX - 1) {
            *d++ = '=';
            *d++ = '\r';
            *d++ = '\n';
            col = 0;
        }
        if (lit) {
            *d++ = (char)c;
        } else {
            *d++ = '=';
            *d++ = hexdig[c >> 4];
            *d++ = hexdig[c & 15];
        }
        col += len;
    }
    out->len = (size_t)(d - out->data);
    out->data[out->len] = '\0';
    return 0;
}

int mime_7bit_encode(buf_t *out, const void *src, size_t n)
{
    int rc = buf_reserve(out, n * 2);
    if (rc) return rc;
    const unsigned char *s = src;
    char *d = out->data + out->len;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\r') {
            *d++ = '\r';
            *d++ = '\n';
            if (i + 1 < n && s[i + 1] == '\n') i++;
        } else if (c == '\n') {
            *d++ = '\r';
            *d++ = '\n';
        } else {
            *d++ = (char)c;
        }
    }
    out->len = (size_t)(d - out->data);
    out->data[out->len] = '\0';
    return 0;
}

/* Byte classes for the text scan: 0 ordinary printable ASCII; 1 '='; 2 line
 * ends; 3 bytes that 7bit may not carry (controls, NUL, 8-bit). */
static const unsigned char text_class[256] = {
    [0] = 3,  [1] = 3,  [2] = 3,  [3] = 3,  [4] = 3,   [5] = 3,   [6] = 3,
    [7] = 3,  [8] = 3,  [9] = 0,  [10] = 2, [11] = 3,  [12] = 3,  [13] = 2,
    [14] = 3, [15] = 3, [16] = 3, [17] = 3, [18] = 3,  [19] = 3,  [20] = 3,
    [21] = 3, [22] = 3, [23] = 3, [24] = 3, [25] = 3,  [26] = 3,  [27] = 3,
    [28] = 3, [29] = 3, [30] = 3, [31] = 3, ['='] = 1, [127] = 3, [128 ... 255] = 3,
};

/* The common case in one cheap pass: printable ASCII ('=' included) in lines
 * ended by LF or CRLF, none longer than the limit, none starting like one of
 * our boundaries. Such text is 7bit; *bare says whether an LF lacks its CR.
 * False as soon as anything else turns up (a tab, a control, an 8-bit byte, a
 * lone CR): the full scan below decides then. Lines are found with memchr
 * and checked a word at a time, which costs a quarter of the full scan on
 * the text every message carries. */
static bool plain_text(const unsigned char *s, size_t n, bool *bare)
{
    *bare = false;
    size_t start = 0;
    for (;;) {
        const unsigned char *nl = start < n ? memchr(s + start, '\n', n - start) : NULL;
        size_t end = nl ? (size_t)(nl - s) : n, len = end - start;
        if (nl) {
            if (len && s[end - 1] == '\r')
                len--;
            else
                *bare = true;
        }
        if (len > MIME_HARD_LINE_MAX || (len >= 4 && !memcmp(s + start, "--=_", 4))) return false;
        const unsigned char *p = s + start;
        size_t i = 0;
        for (; i + 8 <= len; i += 8) {
            uint64_t x = load64(p + i);
            /* Any byte below 0x20, at or above 0x80, or 0x7f. */
            if (((x - ONES * 0x20) & ~x & HIGHS) | (x & HIGHS) | has_zero(x ^ (ONES * 0x7f)))
                return false;
        }
        for (; i < len; i++)
            if (p[i] < 0x20 || p[i] >= 0x7f) return false;
        if (!nl) return true;
        start = end + 1;
    }
}

enum mime_cte mime_text_cte(const void *src, size_t n, bool *clean)
{
    const unsigned char *s = src;
    bool bare_lf;
    if (plain_text(s, n, &bare_lf)) {
        if (clean) *clean = !bare_lf;
        return MIME_CTE_7BIT;
    }
    size_t line_start = 0, maxline = 0, enc = 0;
    bool bad7 = false, bare = false, boundary = false;
    for (size_t i = 0; i < n; i++) {
        while (i + 8 <= n && plain8(load64(s + i), 0x20))
            i += 8;
        if (i >= n) break;
        unsigned char k = text_class[s[i]];
        if (k == 0) continue;
        if (k == 1) {
            enc++;
        } else if (k == 3) {
            enc++;
            bad7 = true;
        } else if (s[i] == '\n' || (i + 1 < n && s[i + 1] == '\n')) {
            /* A line end (LF or CRLF): measure the line just finished. */
            if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r')) bare = true;
            size_t end = s[i] == '\r' ? i : (i > 0 && s[i - 1] == '\r' ? i - 1 : i);
            if (end >= line_start && end - line_start > maxline) maxline = end - line_start;
            if (s[i] == '\r') i++;
            line_start = i + 1;
            if (line_start + 4 <= n && !memcmp(s + line_start, "--=_", 4)) boundary = true;
        } else {
            bare = true; /* a CR without LF */
            enc++;
        }
    }
    if (n - line_start > maxline) maxline = n - line_start;
    if (n >= 4 && !memcmp(s, "--=_", 4)) boundary = true;
    bool ok7 = !bad7 && maxline <= MIME_HARD_LINE_MAX && !boundary;
    if (clean) *clean = ok7 && !bare;
    if (ok7) return MIME_CTE_7BIT;
    /* Quoted-printable costs two extra characters per encoded byte; base64
     * a third of the size. Soft breaks add about the same to both. */
    if (n + 2 * enc <= (n + 2) / 3 * 4) return MIME_CTE_QP;
    return MIME_CTE_BASE64;
}

bool mime_is_clean_7bit(const void *src, size_t n)
{
    bool clean;
    return mime_text_cte(src, n, &clean) == MIME_CTE_7BIT && clean;
}

/* Base64 for text: line ends go in canonical form (CRLF, RFC 2045 6.8), as
 * QP and 7bit write them, so a bare LF from a CSV field decodes the same
 * whichever encoding the row needed. */
static int text_b64_encode(buf_t *out, const void *src, size_t n)
{
    const unsigned char *s = src;
    bool bare = false;
    for (size_t i = 0; i < n && !bare; i++) {
        if (s[i] == '\n' && (i == 0 || s[i - 1] != '\r'))
            bare = true;
        else if (s[i] == '\r' && (i + 1 == n || s[i + 1] != '\n'))
            bare = true;
    }
    if (!bare) return mime_b64_encode(out, src, n);
    /* Normalise through a chunk of whole 57-byte lines, so the lines of the
     * output are the same as for one call over the normalised text. */
    unsigned char chunk[57 * 64];
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = s[i];
        if (c == '\r' || c == '\n') {
            if (c == '\r' && i + 1 < n && s[i + 1] == '\n') i++;
            chunk[k++] = '\r';
            if (k == sizeof chunk) {
                int rc = mime_b64_encode(out, chunk, k);
                if (rc) return rc;
                k = 0;
            }
            c = '\n';
        }
        chunk[k++] = c;
        if (k == sizeof chunk) {
            int rc = mime_b64_encode(out, chunk, k);
            if (rc) return rc;
            k = 0;
        }
    }
    return k ? mime_b64_encode(out, chunk, k) : 0;
}

int mime_body_encode(buf_t *out, enum mime_cte cte, const void *src, size_t n)
{
    switch (cte) {
    case MIME_CTE_7BIT:
        return mime_7bit_encode(out, src, n);
    case MIME_CTE_QP:
        return mime_qp_encode(out, src, n);
    case MIME_CTE_BASE64:
        return text_b64_encode(out, src, n);
    }
    return VL_EINVAL;
}

/* ---- header fields ---- */

bool mime_has_crlf(const char *s, size_t n)
{
    return memchr(s, '\r', n) != NULL || memchr(s, '\n', n) != NULL;
}

bool mime_valid_field_name(const char *s, size_t n)
{
    if (n == 0) return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 33 || c > 126 || c == ':') return false;
    }
    return true;
}

/* Length of the UTF-8 sequence starting at s[0] (at most avail); a byte
 * that does not start a valid sequence counts as one character, so bad input
 * is still encoded (and decoded as a replacement) rather than split. */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t len = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    if (len > avail) return 1;
    for (size_t i = 1; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 1;
    return len;
}

/* Characters RFC 2047 5(3) lets a Q-encoded word carry literally anywhere. */
static inline bool q_literal(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '!' ||
           c == '*' || c == '+' || c == '-' || c == '/';
}

static size_t q_cost(unsigned char c)
{
    return (q_literal(c) || c == ' ') ? 1 : 3;
}

int mime_encoded_words(buf_t *out, size_t *col, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    size_t qlen = 0;
    for (size_t i = 0; i < n; i++)
        qlen += q_cost(s[i]);
    bool useq = qlen <= (n + 2) / 3 * 4;
    const size_t overhead = 12; /* =?UTF-8?B? and ?= */
    size_t i = 0;
    bool first = true;
    while (i < n) {
        if (!first || *col + overhead + 4 > MIME_LINE_MAX) {
            int rc = buf_append(out, "\r\n ", 3);
            if (rc) return rc;
            *col = 1;
        }
        first = false;
        size_t budget = MIME_LINE_MAX - *col - overhead;
        /* Take whole characters while the encoded word fits. */
        size_t j = i, cost = 0;
        while (j < n) {
            size_t cl = utf8_len(s + j, n - j);
            size_t add = 0;
            if (useq) {
                for (size_t k = 0; k < cl; k++)
                    add += q_cost(s[j + k]);
                if (cost + add > budget) break;
                cost += add;
            } else {
                size_t bytes = j - i + cl;
                if ((bytes + 2) / 3 * 4 > budget) break;
            }
            j += cl;
        }
        if (j == i) /* budget below one character: cannot happen at column 1 */
            j = i + utf8_len(s + i, n - i);
        int rc = buf_reserve(out, overhead + (j - i) * 3 + 4);
        if (rc) return rc;
        size_t before = out->len;
        rc = buf_append(out, useq ? "=?UTF-8?Q?" : "=?UTF-8?B?", 10);
        if (rc) return rc;
        if (useq) {
            char *d = out->data + out->len;
            for (size_t k = i; k < j; k++) {
                unsigned char c = s[k];
                if (c == ' ') {
                    *d++ = '_';
                } else if (q_literal(c)) {
                    *d++ = (char)c;
                } else {
                    *d++ = '=';
                    *d++ = hexdig[c >> 4];
                    *d++ = hexdig[c & 15];
                }
            }
            out->len = (size_t)(d - out->data);
        } else {
            out->len += b64_block(out->data + out->len, s + i, j - i);
        }
        rc = buf_append(out, "?=", 2);
        if (rc) return rc;
        *col += out->len - before;
        i = j;
    }
    return 0;
}

/* Does an unstructured value need RFC 2047? Non-ASCII and control
 * characters, a literal "=?" (a decoder would take it for an encoded word),
 * or a run without spaces too long to fold. */
static bool text_needs_words(const char *s, size_t n, size_t first_col)
{
    size_t run = first_col;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c < 32 && c != '\t') || c >= 127) return true;
        if (c == '=' && i + 1 < n && s[i + 1] == '?') return true;
        if (c == ' ' || c == '\t') {
            run = 0;
        } else if (++run > MIME_HARD_LINE_MAX - 2) {
            return true;
        }
    }
    return false;
}

/* Append ASCII text folded at whitespace so lines stay within 78 characters
 * where the words allow. */
static int fold_ascii(buf_t *out, size_t *col, const char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        size_t j = i;
        while (j < n && (s[j] == ' ' || s[j] == '\t'))
            j++;
        size_t ws = j - i;
        while (j < n && s[j] != ' ' && s[j] != '\t')
            j++;
        /* Fold before the whitespace, unless the segment is only whitespace
         * (a line of nothing but spaces is not allowed) or the line is new. */
        if (ws > 0 && j > i + ws && *col + (j - i) > 78 && *col > 1) {
            int rc = buf_append(out, "\r\n", 2);
            if (rc) return rc;
            *col = 0;
        }
        int rc = buf_append(out, s + i, j - i);
        if (rc) return rc;
        *col += j - i;
        i = j;
    }
    return 0;
}

int mime_header_text(buf_t *out, const char *name, const char *value, size_t n)
{
    if (mime_has_crlf(value, n)) return VL_EINVAL;
    size_t nl = strlen(name);
    size_t before = out->len;
    int rc = buf_append(out, name, nl);
    if (!rc) rc = buf_append(out, ": ", 2);
    size_t col = nl + 2;
    if (!rc) {
        if (text_needs_words(value, n, col))
            rc = mime_encoded_words(out, &col, value, n);
        else
            rc = fold_ascii(out, &col, value, n);
    }
    if (!rc) rc = buf_append(out, "\r\n", 2);
    if (rc) {
        out->len = before;
        if (out->data) out->data[before] = '\0';
    }
    return rc;
}

static const char *skip_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    return p;
}

static const char *trim_end(const char *p, const char *end)
{
    while (end > p && (end[-1] == ' ' || end[-1] == '\t'))
        end--;
    return end;
}

int mime_addr_parse(const char *s, size_t n, mime_addr_t *a)
{
    const char *end = s + n;
    const char *p = skip_ws(s, end);
    end = trim_end(p, end);
    const char *lt = NULL;
    bool inq = false;
    for (const char *q = p; q < end; q++) {
        if (inq) {
            if (*q == '\\' && q + 1 < end)
                q++;
            else if (*q == '"')
                inq = false;
        } else if (*q == '"') {
            inq = true;
        } else if (*q == '<') {
            lt = q;
            break;
        }
    }
    if (inq) return VL_EPARSE;
    memset(a, 0, sizeof *a);
    if (!lt) {
        if (memchr(p, '>', (size_t)(end - p)) || p == end) return VL_EPARSE;
        a->addr = p;
        a->addr_len = (size_t)(end - p);
        a->name = p;
        return 0;
    }
    if (end[-1] != '>' || end - 1 <= lt) return VL_EPARSE;
    const char *ap = skip_ws(lt + 1, end - 1);
    const char *ae = trim_end(ap, end - 1);
    if (ap == ae || memchr(ap, '<', (size_t)(ae - ap)) || memchr(ap, '>', (size_t)(ae - ap)))
        return VL_EPARSE;
    a->addr = ap;
    a->addr_len = (size_t)(ae - ap);
    const char *ne = trim_end(p, lt);
    if (ne - p >= 2 && *p == '"' && ne[-1] == '"') {
        p++;
        ne--;
    }
    a->name = p;
    a->name_len = (size_t)(ne - p);
    return 0;
}

/* atext (RFC 5322 3.2.3) and space: a display name made only of these goes
 * out as it is. */
static bool phrase_plain(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == ' ')
        return true;
    return strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL && c != '\0';
}

int mime_header_addr(buf_t *out, const char *name, const mime_addr_t *a)
{
    if (mime_has_crlf(a->addr, a->addr_len) || mime_has_crlf(a->name, a->name_len))
        return VL_EINVAL;
    size_t before = out->len;
    size_t nl = strlen(name);
    size_t col = nl + 2;
    int rc = buf_append(out, name, nl);
    if (!rc) rc = buf_append(out, ": ", 2);
    if (!rc && a->name_len > 0) {
        /* Remove the backslash escapes a quoted name may carry, so the name
         * is re-encoded from its real characters. */
        char small[256];
        buf_t tmp;
        buf_init(&tmp, 1 << 16);
        const char *nm = a->name;
        size_t nlen = 0;
        char *dst = small;
        if (a->name_len > sizeof small) {
            rc = buf_reserve(&tmp, a->name_len);
            dst = tmp.data;
        }
        if (!rc) {
            for (size_t i = 0; i < a->name_len; i++) {
                if (nm[i] == '\\' && i + 1 < a->name_len) i++;
                dst[nlen++] = nm[i];
            }
            bool ascii = true, plain = true;
            for (size_t i = 0; i < nlen; i++) {
                unsigned char c = (unsigned char)dst[i];
                if (c < 32 || c >= 127) ascii = false;
                if (!phrase_plain(c)) plain = false;
                if (c == '=' && i + 1 < nlen && dst[i + 1] == '?') ascii = false;
            }
            if (!ascii || col + nlen + 2 > 900) {
                rc = mime_encoded_words(out, &col, dst, nlen);
            } else if (plain) {
                rc = buf_append(out, dst, nlen);
                col += nlen;
            } else {
                rc = buf_putc(out, '"');
                for (size_t i = 0; !rc && i < nlen; i++) {
                    if (dst[i] == '"' || dst[i] == '\\') rc = buf_putc(out, '\\');
                    if (!rc) rc = buf_putc(out, dst[i]);
                }
                if (!rc) rc = buf_putc(out, '"');
                col += nlen + 2;
            }
        }
        buf_free(&tmp);
        if (!rc && col + a->addr_len + 3 > 78) {
            rc = buf_append(out, "\r\n", 2);
            col = 0;
        }
        if (!rc) rc = buf_append(out, " <", 2);
        if (!rc) rc = buf_append(out, a->addr, a->addr_len);
        if (!rc) rc = buf_putc(out, '>');
    } else if (!rc) {
        rc = buf_append(out, a->addr, a->addr_len);
    }
    if (!rc) rc = buf_append(out, "\r\n", 2);
    if (rc) {
        out->len = before;
        if (out->data) out->data[before] = '\0';
    }
    return rc;
}

/* RFC 2045 token characters (no tspecials, no space or controls). */
static bool token_char(unsigned char c)
{
    return c > 32 && c < 127 && !strchr("()<>@,;:\\\"/[]?=", c);
}

/* RFC 2231 attribute-char: what needs no %XX in an extended value. */
static bool attr_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           (c && strchr("!#$&+-.^_`|~", c));
}

/* Start a parameter: ";" then a fold, so each parameter has its own line. */
static int param_start(buf_t *out, size_t *col)
{
    *col = 1;
    return buf_append(out, ";\r\n ", 4);
}

static bool all_ascii_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 32 || c >= 127) return false;
    }
    return true;
}

int mime_param(buf_t *out, size_t *col, const char *attr, const char *val, size_t n)
{
    if (mime_has_crlf(val, n)) return VL_EINVAL;
    int rc = param_start(out, col);
    if (rc) return rc;
    size_t al = strlen(attr);
    const unsigned char *s = (const unsigned char *)val;
    if (all_ascii_printable(val, n) && al + n + 4 < MIME_HARD_LINE_MAX) {
        bool tok = n > 0;
        for (size_t i = 0; i < n; i++)
            if (!token_char(s[i])) tok = false;
        rc = buf_printf(out, "%s=", attr);
        if (!rc && !tok) rc = buf_putc(out, '"');
        for (size_t i = 0; !rc && i < n; i++) {
            if (!tok && (s[i] == '"' || s[i] == '\\')) rc = buf_putc(out, '\\');
            if (!rc) rc = buf_putc(out, (char)s[i]);
        }
        if (!rc && !tok) rc = buf_putc(out, '"');
        *col += al + n + 3;
        return rc;
    }
    /* Extended value, cut into sections that each fit a 76-column line. */
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += attr_char(s[i]) ? 1 : 3;
    bool single = *col + al + 9 + total <= MIME_LINE_MAX;
    size_t i = 0;
    for (int sec = 0; i < n || sec == 0; sec++) {
        if (sec > 0) {
            rc = param_start(out, col);
            if (rc) return rc;
        }
        char head[96];
        int hl = single     ? snprintf(head, sizeof head, "%s*=UTF-8''", attr)
                 : sec == 0 ? snprintf(head, sizeof head, "%s*0*=UTF-8''", attr)
                            : snprintf(head, sizeof head, "%s*%d*=", attr, sec);
        rc = buf_append(out, head, (size_t)hl);
        if (rc) return rc;
        *col += (size_t)hl;
        /* Keep one column for the ';' that may follow. */
        size_t budget = *col + 1 < MIME_LINE_MAX ? MIME_LINE_MAX - 1 - *col : 0;
        size_t used = 0;
        while (i < n) {
            size_t cl = utf8_len(s + i, n - i);
            size_t cost = 0;
            for (size_t k = 0; k < cl; k++)
                cost += attr_char(s[i + k]) ? 1 : 3;
            if (!single && used + cost > budget && used > 0) break;
            for (size_t k = 0; k < cl; k++) {
                unsigned char c = s[i + k];
                if (attr_char(c)) {
                    rc = buf_putc(out, (char)c);
                } else {
                    char pct[3] = {'%', hexdig[c >> 4], hexdig[c & 15]};
                    rc = buf_append(out, pct, 3);
                }
                if (rc) return rc;
            }
            used += cost;
            i += cl;
        }
        *col += used;
        if (single) break;
    }
    return 0;
}

int mime_param_2047(buf_t *out, size_t *col, const char *attr, const char *val, size_t n)
{
    if (all_ascii_printable(val, n)) return mime_param(out, col, attr, val, n);
    if (mime_has_crlf(val, n)) return VL_EINVAL;
    int rc = param_start(out, col);
    if (!rc) rc = buf_printf(out, "%s=\"", attr);
    *col += strlen(attr) + 2;
    if (!rc) rc = mime_encoded_words(out, col, val, n);
    if (!rc) rc = buf_putc(out, '"');
    *col += 1;
    return rc;
}

/* ---- parts ---- */

int mime_file_part(buf_t *out, const char *type, const char *disposition, const char *filename,
                   const char *cid, const void *data, size_t n)
{
    size_t fl = filename ? strlen(filename) : 0;
    if (mime_has_crlf(type, strlen(type)) || (filename && mime_has_crlf(filename, fl)) ||
        (cid && mime_has_crlf(cid, strlen(cid))))
        return VL_EINVAL;
    size_t col;
    int rc = buf_printf(out, "Content-Type: %s", type);
    if (!rc && filename) rc = mime_param_2047(out, &col, "name", filename, fl);
    if (!rc)
        rc = buf_printf(out,
                        "\r\nContent-Transfer-Encoding: base64\r\n"
                        "Content-Disposition: %s",
                        disposition);
    if (!rc && filename) rc = mime_param(out, &col, "filename", filename, fl);
    if (!rc) rc = buf_append(out, "\r\n", 2);
    if (!rc && cid) rc = buf_printf(out, "Content-ID: <%s>\r\n", cid);
    if (!rc) rc = buf_append(out, "\r\n", 2);
    if (!rc) rc = mime_b64_encode(out, data, n);
    return rc;
}

int mime_text_part_header(buf_t *out, const char *subtype, enum mime_cte cte)
{
    /* Appends rather than printf: this runs for every personalised body. */
    int rc = buf_append(out, "Content-Type: text/", 19);
    if (!rc) rc = buf_puts(out, subtype);
    if (!rc) rc = buf_append(out, "; charset=UTF-8\r\nContent-Transfer-Encoding: ", 44);
    if (!rc) rc = buf_puts(out, mime_cte_name(cte));
    if (!rc) rc = buf_append(out, "\r\n\r\n", 4);
    return rc;
}

void mime_boundary(char *dst, const uint8_t seed[12], int level)
{
    char *d = dst;
    memcpy(d, "=_vl_", 5);
    d += 5;
    for (int i = 0; i < 12; i++) {
        *d++ = "0123456789abcdef"[seed[i] >> 4];
        *d++ = "0123456789abcdef"[seed[i] & 15];
    }
    snprintf(d, MIME_BOUNDARY_MAX - (size_t)(d - dst), "_%d", level);
}

/* ---- dates ---- */

size_t mime_date(char *dst, time_t t)
{
    static const char days[] = "SunMonTueWedThuFriSat";
    static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
    /* The last date this thread formatted: a campaign renders thousands of
     * messages a second, each with its own output object, so the one-entry
     * cache in msg_out_t missed for nearly every row, and gmtime_r with
     * snprintf cost a tenth of a render. */
    static _Thread_local time_t last_t = (time_t)-1;
    static _Thread_local char last[MIME_DATE_MAX];
    static _Thread_local size_t last_len;
    if (t != last_t) {
        struct tm tm;
        gmtime_r(&t, &tm);
        int n = snprintf(last, sizeof last, "%.3s, %02d %.3s %04d %02d:%02d:%02d +0000",
                         days + 3 * tm.tm_wday, tm.tm_mday, months + 3 * tm.tm_mon,
                         tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
        last_len = n > 0 && (size_t)n < sizeof last ? (size_t)n : 0;
        last[last_len] = '\0';
        last_t = t;
    }
    memcpy(dst, last, last_len + 1);
    return last_len;
}
