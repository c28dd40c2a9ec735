/* sink_util.c: volley-sink's pure parsing helpers (see sink.h). */
#include "sink.h"

#include <ctype.h>
#include <string.h>

static int sink_b64_val(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z') return ch - 'A';
    if (ch >= 'a' && ch <= 'z') return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9') return ch - '0' + 52;
    if (ch == '+') return 62;
    if (ch == '/') return 63;
    return -1;
}

ssize_t sink__b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    /* Padding only at the end, at most two. */
    size_t pad = 0;
    while (n > 0 && in[n - 1] == '=' && pad < 2) {
        n--;
        pad++;
    }
    if (n % 4 == 1 || (pad && (n + pad) % 4 != 0)) return -1;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        int v = sink_b64_val((unsigned char)in[i]);
        if (v < 0) return -1;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (o >= cap) return -1;
            out[o++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    /* Leftover bits must be zero (canonical encoding). */
    if (acc != 0) return -1;
    return (ssize_t)o;
}

int sink__parse_path(const char *s, size_t n, const char **addr, size_t *alen, size_t *end)
{
    size_t i = 0;
    while (i < n && s[i] == ' ')
        i++;
    if (i == n) return -1;
    if (s[i] != '<') {
        /* Bare address: lenient, as many servers are. */
        size_t b = i;
        while (i < n && s[i] != ' ')
            i++;
        *addr = s + b;
        *alen = i - b;
        *end = i;
        return 0;
    }
    i++;
    size_t b = i;
    /* A source route (@a,@b:) is to be ignored (RFC 5321 section 4.1.2). */
    if (i < n && s[i] == '@') {
        const char *colon = memchr(s + i, ':', n - i);
        if (!colon) return -1;
        i = (size_t)(colon - s) + 1;
        b = i;
    }
    int quoted = 0;
    for (; i < n; i++) {
        char ch = s[i];
        if (ch == '\\' && quoted) {
            i++;
            continue;
        }
        if (ch == '"')
            quoted = !quoted;
        else if (ch == '>' && !quoted)
            break;
    }
    if (i >= n) return -1;
    *addr = s + b;
    *alen = i - b;
    *end = i + 1;
    return 0;
}

int sink__msgid(const char *s, size_t n, const char **id, size_t *idlen)
{
    const char *lt = memchr(s, '<', n);
    if (lt) {
        const char *gt = memchr(lt, '>', n - (size_t)(lt - s));
        if (gt) {
            *id = lt;
            *idlen = (size_t)(gt - lt) + 1;
            return 0;
        }
    }
    size_t b = 0, e = n;
    while (b < e && isspace((unsigned char)s[b]))
        b++;
    while (e > b && isspace((unsigned char)s[e - 1]))
        e--;
    if (b == e) return -1;
    *id = s + b;
    *idlen = e - b;
    return 0;
}

/* Length of the valid UTF-8 sequence at p (1..4), or 0 if invalid. */
static size_t sink_utf8_len(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80) return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (len > n) return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80) return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    /* Overlong forms, surrogates and values past U+10FFFF. */
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int sink__json_str(buf_t *b, const char *s, size_t n)
{
    int rc = buf_putc(b, '"');
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (rc == 0 && i < n) {
        /* Copy the longest run that needs no escaping in one go. */
        size_t run = i;
        while (run < n && p[run] >= 0x20 && p[run] < 0x80 && p[run] != '"' && p[run] != '\\')
            run++;
        if (run > i) {
            rc = buf_append(b, p + i, run - i);
            i = run;
            continue;
        }
        unsigned char c = p[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            rc = buf_append(b, esc, 2);
            i++;
        } else if (c < 0x20) {
            rc = buf_printf(b, "\\u%04x", c);
            i++;
        } else {
            size_t len = sink_utf8_len(p + i, n - i);
            if (len) {
                rc = buf_append(b, p + i, len);
                i += len;
            } else {
                rc = buf_puts(b, "\\ufffd");
                i++;
            }
        }
    }
    if (rc == 0) rc = buf_putc(b, '"');
    return rc;
}

int sink__parse_u64(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > 19) return -1;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

int sink__prefix(const char *s, size_t n, const char *prefix)
{
    size_t i = 0;
    for (; prefix[i]; i++) {
        if (i >= n || tolower((unsigned char)s[i]) != tolower((unsigned char)prefix[i])) return 0;
    }
    return 1;
}
